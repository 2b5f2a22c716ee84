"""Cross-model transfer: the ensemble wrapper's algebra, the matrix against a direct recomputation, the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from pyvlmx.models import load_model
from pyvlmx.transfer import EnsembleModel, assign_targets, format_markdown, resize_pixels, transfer_matrix

ATTACK = {"eps": 32 / 255, "max_steps": 25, "optimizer": "adam", "step_size": 0.01, "loss": "l2"}


class ToySet:
    """In-memory labelled images with the ImageFolderDataset interface used here."""

    def __init__(self, n=4, size=64, classes=("cat", "dog", "car"), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.classnames = list(classes)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = [i % len(classes) for i in range(n)]

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.fixture(scope="module")
def a():
    return load_model("open_clip:pyvlmx-tiny-vit", seed=0)       # 32 px, 32-d


@pytest.fixture(scope="module")
def b():
    return load_model("open_clip:pyvlmx-tiny-vit-64", seed=1)    # 64 px, 64-d


def test_resize_keeps_range_and_gradient():
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    r = resize_pixels(x, 32)
    assert r.shape == (2, 3, 32, 32) and r.min() >= 0 and r.max() <= 1
    torch.testing.assert_close(r, F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True).clamp(0, 1))
    r.sum().backward()
    assert x.grad.abs().sum() > 0
    assert resize_pixels(x, 64) is x


def test_ensemble_is_mean_of_members(a, b):
    ens = EnsembleModel([a, b])
    assert ens.image_size == 64 and ens.embed_dim == a.embed_dim + b.embed_dim
    assert ens.logit_scale == pytest.approx((a.logit_scale + b.logit_scale) / 2)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fa, fb = a.encode_image(resize_pixels(x, 32)), b.encode_image(x)
    ta, tb = a.encode_image(resize_pixels(t, 32)), b.encode_image(t)
    f, tt = ens.encode_image(x), ens.encode_image(t)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(3))
    ea, eb = ens.split(f)
    torch.testing.assert_close(ea, fa)
    torch.testing.assert_close(eb, fb)
    # cosine and the paper's L2 loss are the members' means
    torch.testing.assert_close((f * tt).sum(1), ((fa * ta).sum(1) + (fb * tb).sum(1)) / 2)
    torch.testing.assert_close(0.5 * (f - tt).pow(2).sum(1),
                               (0.5 * (fa - ta).pow(2).sum(1) + 0.5 * (fb - tb).pow(2).sum(1)) / 2)
    # zero-shot: logit_scale times the members' mean cosine to their own class weights
    names, tmpl = ["cat", "dog"], ["a photo of a {}."]
    W = ens.class_embeddings(names, tmpl)
    cos = ((fa @ a.class_embeddings(names, tmpl).t()) + (fb @ b.class_embeddings(names, tmpl).t())) / 2
    torch.testing.assert_close(ens.logits(x, W), ens.logit_scale * cos)
    # the text tower concatenates the same way
    torch.testing.assert_close(ens.split(ens.encode_text(["a cat"]))[1], b.encode_text(["a cat"]))


def test_ensemble_gradient_reaches_pixels_through_both_members(a, b):
    ens = EnsembleModel([a, b])
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    g_ens = torch.autograd.grad(ens.encode_image(x)[0, :a.embed_dim].sum(), x)[0]
    g_ref = torch.autograd.grad(a.encode_image(resize_pixels(x, 32))[0].sum() / 2 ** 0.5, x)[0]
    torch.testing.assert_close(g_ens, g_ref)
    assert a.check_inputs and b.check_inputs  # members are not modified


def test_ensemble_errors(a):
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleModel([])
    with pytest.raises(TypeError, match="VisionLanguageModel instances, got \\['Linear'\\]"):
        EnsembleModel([a, torch.nn.Linear(2, 2)])


def test_assign_targets():
    y = torch.tensor([0, 0, 1, 2, 2])
    t = assign_targets(y)
    assert torch.equal(t, torch.tensor([2, 2, 3, 0, 0]))
    assert (y[t] != y).all()
    with pytest.raises(ValueError, match="at least two classes"):
        assign_targets(torch.tensor([1, 1, 1]))


@pytest.fixture(scope="module")
def result(a, b):
    return transfer_matrix([a, b], None, ToySet(), ensemble=True, attack=ATTACK, templates="name",
                           batch_size=4, progress=False, keep_images=True)


def test_matrix_layout_and_white_box_diagonal(result, a, b):
    names = [a.name, b.name]
    assert result["sources"] == names + ["ensemble"] and result["evals"] == names
    assert result["rows"]["ensemble"]["members"] == names
    for s in result["sources"]:
        row = result["rows"][s]
        assert row["linf"] <= 32 / 255 + 1e-6
        assert result["images"][s].min() >= 0 and result["images"][s].max() <= 1
    for s in names:
        # success on the source means its target class wins under that same model
        assert result["rows"][s]["success_rate"] > 0.5
        assert result["cells"][s][s]["target_rate_given_success"] == 1.0
        assert result["cells"][s][s]["target_rate"] >= result["rows"][s]["success_rate"]
        assert result["cells"][s][s]["cos_target"] > result["cells"][s][s]["cos_target_clean"]


def test_cells_match_direct_recomputation(result, a, b):
    """Every cell recomputed here from the aligned images with the models themselves."""
    ds = ToySet()
    y = torch.tensor(ds.y)
    tidx = torch.tensor(result["target_index"])
    tclass = y[tidx]
    assert (tclass != y).all()
    for src in result["sources"]:
        adv = result["images"][src]
        for model in (a, b):
            W = model.class_embeddings(ds.classnames, ["{}"])
            emb = model.encode_image(resize_pixels(adv, model.image_size))
            pred = (emb @ W.t()).argmax(1)
            cell = result["cells"][src][model.name]
            assert cell["target_rate"] == pytest.approx(float((pred == tclass).float().mean()))
            assert cell["accuracy"] == pytest.approx(float((pred == y).float().mean()))
            assert cell["cos_target"] == pytest.approx(float((emb * W[tclass]).sum(1).mean()), abs=1e-5)
            assert result["per_image"][src]["pred"][model.name] == pred.tolist()


def test_image_targets_and_markdown(a):
    res = transfer_matrix([a], None, ToySet(size=32), target="image", attack=ATTACK, templates="name",
                          progress=False)
    cell = res["cells"][a.name][a.name]
    assert cell["cos_target"] > cell["cos_target_clean"]
    md = format_markdown(res)
    assert "| aligned against \\ evaluated on | open_clip:pyvlmx-tiny-vit |" in md
    assert f"{100 * cell['target_rate']:.0f}%" in md
    with pytest.raises(ValueError, match="target must be one of \\['text', 'image'\\], got 'x'"):
        transfer_matrix([a], None, ToySet(), target="x")


def test_cli_writes_json_and_markdown(tmp_path):
    from pyvlmx.cli import main
    from pyvlmx.data import save_png

    ds = ToySet(n=2, size=64, classes=("cat", "dog"))
    for i in range(len(ds)):
        d = tmp_path / "data" / ds.classnames[ds.y[i]]
        d.mkdir(parents=True, exist_ok=True)
        save_png(ds.x[i], d / f"{i}.png")
    out = tmp_path / "out"
    rc = main(["transfer", "--models", "open_clip:pyvlmx-tiny-vit", "open_clip:pyvlmx-tiny-vit-64",
               "--dataset", str(tmp_path / "data"), "--ensemble", "--eps", "16/255", "--steps", "3",
               "--templates", "name", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "transfer.json").read_text())
    assert res["sources"][-1] == "ensemble" and res["n_images"] == 2 and res["image_size"] == 64
    assert res["config"]["attack"]["eps"] == pytest.approx(16 / 255)
    md = (out / "transfer.md").read_text()
    assert "Target class reached" in md and "open_clip:pyvlmx-tiny-vit-64" in md
    assert main(["transfer", "--models", "nope:x", "--dataset", str(tmp_path / "data"), "--out", str(out)]) == 2
