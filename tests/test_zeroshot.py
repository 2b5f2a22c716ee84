"""pyvlmx.zeroshot: templates, ZeroShotClassifier, evaluate, and the ``pyvlmx zeroshot`` CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from pyvlmx.cli import main
from pyvlmx.data import ImageFolderDataset, save_png
from pyvlmx.models.base import VisionLanguageModel
from pyvlmx.zeroshot import (CLIP_SHORT_TEMPLATES, IMAGENET_TEMPLATES, SHORT_TEMPLATES, ZeroShotClassifier, evaluate,
                             format_table, resolve_templates)

COLOURS = ["red", "green", "blue"]


class ColourModel(VisionLanguageModel):
    """A model whose answers are known by construction.

    Image embedding: the mean (R, G, B) of the pixels.  Text embedding: the
    one-hot vector of the colour word in the prompt.  A pure red image has
    cosine 1 with "red" and 0 with the others.
    """

    family = "test"

    def __init__(self, logit_scale=4.0):
        super().__init__(image_size=8, embed_dim=3, logit_scale=logit_scale, mean=(0, 0, 0), std=(1, 1, 1))
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # gives the model a device and dtype
        self.name = "colour"

    def _encode_image(self, normalized):
        return normalized.mean(dim=(2, 3))

    def _encode_text(self, texts):
        out = torch.zeros(len(texts), 3)
        for i, t in enumerate(texts):
            hits = [c for c, w in enumerate(COLOURS) if w in t.split() or f"{w}." in t.split()]
            assert len(hits) == 1, t
            out[i, hits[0]] = 1.0
        return out


def _solid(c):
    x = torch.zeros(3, 8, 8)
    x[c] = 1.0
    return x


@pytest.fixture
def colour_folder(tmp_path):
    # 2 red, 2 green, 2 blue images; one "blue" image is actually green (a known error)
    layout = {"red": [0, 0], "green": [1, 1], "blue": [2, 1]}
    for name, cs in layout.items():
        for k, c in enumerate(cs):
            save_png(_solid(c), tmp_path / name / f"{k}.png")
    return ImageFolderDataset(tmp_path, image_size=8)


def test_templates():
    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    assert len(CLIP_SHORT_TEMPLATES) == 7 and set(CLIP_SHORT_TEMPLATES) <= set(IMAGENET_TEMPLATES)
    for t in IMAGENET_TEMPLATES + SHORT_TEMPLATES:
        assert t.count("{}") == 1
    assert "a photo of a {}." in SHORT_TEMPLATES
    assert resolve_templates("imagenet") is IMAGENET_TEMPLATES
    with pytest.raises(ValueError, match=r"unknown template set 'long'; choose from \['clip-short', 'imagenet'"):
        resolve_templates("long")
    with pytest.raises(ValueError, match=r"exactly one '\{\}'.*got \['no slot'\]"):
        resolve_templates(["a {}", "no slot"])


def test_classifier_weights_logits_predict():
    m = ColourModel(logit_scale=4.0)
    clf = ZeroShotClassifier(m, COLOURS, templates=["a {} thing", "the colour {}"])
    torch.testing.assert_close(clf.weights, torch.eye(3))
    x = torch.stack([_solid(2), _solid(0)])
    torch.testing.assert_close(clf.logits(x), 4.0 * torch.tensor([[0., 0, 1], [1, 0, 0]]))
    pred, conf = clf.predict(x)
    assert pred.tolist() == [2, 0]
    p = math.exp(4) / (math.exp(4) + 2)
    torch.testing.assert_close(conf, torch.tensor([p, p]))
    assert torch.equal(clf(x), clf.logits(x))
    # a mixed colour: cosine with each one-hot class
    mix = torch.zeros(1, 3, 8, 8)
    mix[0, 0], mix[0, 1] = 0.6, 0.8
    torch.testing.assert_close(clf.logits(mix), 4.0 * torch.tensor([[0.6, 0.8, 0.0]]))


def test_classifier_weights_average_templates(tiny_clip):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    clf = ZeroShotClassifier(tiny_clip, ["cat", "dog"], templates)
    e = tiny_clip.encode_text(["a photo of a dog.", "a drawing of a dog."])
    torch.testing.assert_close(clf.weights[1], F.normalize(e.mean(0), dim=-1))
    assert clf.weights is clf.weights  # cached per (classes, templates)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    (g,) = torch.autograd.grad(clf.logits(x)[:, 0].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_classifier_errors():
    m = ColourModel()
    with pytest.raises(ValueError, match="classnames must not be empty"):
        ZeroShotClassifier(m, [])
    with pytest.raises(ValueError, match=r"classnames must be distinct .*duplicates \['red'\]"):
        ZeroShotClassifier(m, ["red", "blue", "red"])
    with pytest.raises(TypeError, match="a list of strings, got a single str"):
        ZeroShotClassifier(m, "red")
    clf = ZeroShotClassifier(m, COLOURS, ["{}"])
    with pytest.raises(ValueError, match=r"spatial size 8x8, got \(4, 4\)"):
        clf.logits(torch.rand(1, 3, 4, 4))


def test_evaluate_known_answers(colour_folder):
    ds = colour_folder
    assert ds.classnames == ["blue", "green", "red"]
    r = evaluate(ColourModel(logit_scale=4.0), ds, templates=["a {} thing"], batch_size=4, progress=False)
    assert r["n_images"] == 6 and r["n_classes"] == 3 and r["topk"] == 3
    assert r["top1"] == pytest.approx(5 / 6) and r["top5"] == 1.0
    assert r["per_class"]["blue"] == {"n": 2, "correct": 1, "top1": 0.5,
                                      "mean_confidence": pytest.approx(math.exp(4) / (math.exp(4) + 2))}
    assert r["per_class"]["red"]["top1"] == 1.0
    assert r["mean_per_class_top1"] == pytest.approx((0.5 + 1 + 1) / 3)
    # rows = true class, columns = prediction: one blue image predicted green
    assert r["confusion"] == [[1, 1, 0], [0, 2, 0], [0, 0, 2]]
    wrong = [p for p in r["predictions"] if not p["correct"]]
    assert len(wrong) == 1 and wrong[0]["label_name"] == "blue" and wrong[0]["pred_name"] == "green"
    assert wrong[0]["path"].endswith("1.png") and wrong[0]["label_prob"] == pytest.approx(1 / (math.exp(4) + 2))
    assert wrong[0]["topk"][0] == ["green", pytest.approx(math.exp(4) / (math.exp(4) + 2))]
    json.dumps(r)  # JSON-able
    table = format_table(r)
    assert "| blue | 2 | 1 | 50.0% | 0.965 |" in table and "**83.3%**" in table
    # batch size does not change anything
    r1 = evaluate(ColourModel(logit_scale=4.0), ds, templates=["a {} thing"], batch_size=1, progress=False)
    assert r1["confusion"] == r["confusion"] and r1["predictions"] == r["predictions"]


def test_evaluate_errors(colour_folder):
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        evaluate(ColourModel(), colour_folder, batch_size=0)


def test_default_model_on_samples(default_model, samples):
    """The offline default classifies the embedded sample photos zero-shot (goal: >= 90% top-1)."""
    r = evaluate(default_model, samples, batch_size=32, progress=False)
    assert r["n_images"] >= 20 and r["n_classes"] >= 10
    assert r["top1"] >= 0.9, format_table(r)  # measured 23/23 with SHORT_TEMPLATES


def test_cli_zeroshot(tmp_path, tiny_clip, capsys):
    for c, name in enumerate(["cat", "dog"]):
        for k in range(2):
            save_png(torch.rand(3, 40, 36, generator=torch.Generator().manual_seed(10 * c + k)),
                     tmp_path / "data" / name / f"{k}.png")
    out = tmp_path / "out"
    rc = main(["zeroshot", "--model", "open_clip:pyvlmx-tiny-vit", "--data", str(tmp_path / "data"),
               "--out", str(out), "--batch-size", "3", "--no-progress"])
    assert rc == 0
    r = json.loads((out / "zeroshot.json").read_text())
    assert r["n_images"] == 4 and r["classnames"] == ["cat", "dog"] and r["template_set"] == "short"
    assert sum(map(sum, r["confusion"])) == 4
    assert r["top1"] == sum(p["correct"] for p in r["predictions"]) / 4
    # same numbers as the Python API on the same model (seed 0)
    api = evaluate(tiny_clip, ImageFolderDataset(tmp_path / "data", 32), progress=False)
    assert api["confusion"] == r["confusion"]
    assert "| **all** | 4 |" in capsys.readouterr().out
    assert (out / "zeroshot.md").read_text().startswith("# pyvlmx zeroshot")


def test_cli_zeroshot_errors(tmp_path, capsys):
    rc = main(["zeroshot", "--model", "open_clip:pyvlmx-tiny-vit", "--data", str(tmp_path / "missing"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert "dataset folder" in capsys.readouterr().err
    rc = main(["zeroshot", "--model", "no-such-model", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
