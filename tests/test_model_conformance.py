"""One conformance test for every model adapter.

Each adapter, built through ``load_model`` as a user would (tiny seeded
configs; for hf and ImageBind a folder or checkpoint file written first),
must: return unit-norm embeddings of the right shape for images and text,
pass gradients back to the pixels, be deterministic in eval mode (dropout
off), and classify a toy set whose answer is known by construction:

* image toy: the class weights are the model's own embeddings of K distinct
  images, each computed alone (batch of 1); the batch of all K must then be
  classified as itself, with logits equal to ``logit_scale * cos`` (+ bias for
  SigLIP) and each image's own class strictly ahead.
* text toy: class weights from ``class_embeddings`` with one template are the
  text embeddings of the prompts, so the K prompts' own embeddings are
  classified as themselves.
"""

import importlib.util

import pytest
import torch

from pyvlmx.models import load_model
from test_models_hf import make_tiny_hf


def _ib_ready():
    from pyvlmx.models.adapters import imagebind

    return imagebind._available()


def _conse_ready():
    if importlib.util.find_spec("pyvlmx.models.adapters.conse") is None:
        return "conse adapter not present"
    from pyvlmx.models.adapters import conse

    return conse._available()


def _build(kind, tmp):
    if kind == "open_clip-tiny":
        return load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    if kind in ("hf-clip-tiny", "hf-siglip-tiny"):
        model_type = kind.split("-")[1]
        return load_model(f"hf:{make_tiny_hf(tmp / model_type, model_type)}")
    if kind == "imagebind-tiny":
        from pyvlmx.models.adapters.imagebind import save_checkpoint

        path = save_checkpoint(load_model("imagebind:pyvlmx-tiny", seed=3), tmp / "ib.pth")
        return load_model("imagebind:pyvlmx-tiny", pretrained=str(path))
    if kind == "conse-default":
        return load_model("default")
    raise AssertionError(kind)


ADAPTERS = [
    pytest.param("open_clip-tiny", id="open_clip-tiny"),
    pytest.param("hf-clip-tiny", id="hf-clip-tiny"),
    pytest.param("hf-siglip-tiny", id="hf-siglip-tiny"),
    pytest.param("imagebind-tiny", id="imagebind-tiny",
                 marks=pytest.mark.skipif(_ib_ready() is not None, reason=f"imagebind: {_ib_ready()}")),
    pytest.param("conse-default", id="conse-default",
                 marks=pytest.mark.skipif(_conse_ready() is not None, reason=f"conse: {_conse_ready()}")),
]


@pytest.fixture(scope="module", params=ADAPTERS)
def model(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory.mktemp(request.param))


def _toy_images(n, size, seed=0):
    """n clearly different images: flat colours and seeded noise patterns."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, 3, size, size)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.1, 0.2, 0.9], [0.95, 0.9, 0.2]])
    for i in range(n):
        if i < len(colours):
            out[i] = colours[i].view(3, 1, 1).expand(3, size, size)
            out[i] += 0.05 * torch.rand(3, size, size, generator=g)
        else:
            out[i] = torch.rand(3, size, size, generator=g)
    return out.clamp(0, 1)


def test_registered_family_and_eval_mode(model):
    from pyvlmx.models import families

    assert model.family in families()
    assert not model.training
    # every submodule is in eval mode, so dropout and drop-path are off
    assert not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())


def test_shapes_and_unit_norms(model):
    S = model.image_size
    x = torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(0))
    e = model.encode_image(x)
    assert e.shape == (3, model.embed_dim) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    t = model.encode_text(["a photo of a dog.", "a cat", "an espresso"])
    assert t.shape == (3, model.embed_dim)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(3), rtol=0, atol=1e-5)
    raw = model.encode_image(x, normalize=False)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), e)
    assert model.logit_scale > 0


def test_gradients_reach_pixels(model):
    S = model.image_size
    x = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    W = model.class_embeddings(["dog", "cat"], ["a photo of a {}."])
    loss = model.logits(x, W).log_softmax(-1)[:, 0].sum()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.flatten(1).abs().sum(1) > 0).all()  # every image gets a gradient
    # the gradient is the derivative: a small step along it raises the loss (first-order check)
    with torch.no_grad():
        step = 1e-3 * x.grad / x.grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        x2 = (x + step).clamp(0, 1)
        after = model.logits(x2, W).log_softmax(-1)[:, 0].sum()
    assert after > loss.detach()


def test_deterministic_in_eval_mode(model):
    S = model.image_size
    x = torch.rand(2, 3, S, S, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(model.encode_image(x), model.encode_image(x), rtol=0, atol=0)
    model.clear_text_cache()
    a = model.encode_text(["a red car"])
    b = model.encode_text(["a red car"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_zero_shot_images_classified_as_themselves(model):
    K = 4
    x = _toy_images(K, model.image_size)
    W = torch.cat([model.encode_image(x[i:i + 1]) for i in range(K)])  # each image alone
    logits = model.logits(x, W)
    assert logits.shape == (K, K)
    cos = model.encode_image(x) @ W.t()
    bias = getattr(model, "logit_bias", 0.0)
    torch.testing.assert_close(logits, model.logit_scale * cos + bias, rtol=1e-5, atol=1e-4)
    # batch of K vs one at a time: the diagonal cosines are 1
    torch.testing.assert_close(cos.diagonal(), torch.ones(K), rtol=0, atol=1e-4)
    assert torch.equal(logits.argmax(dim=1), torch.arange(K))
    off = cos.masked_fill(torch.eye(K, dtype=torch.bool), -2).amax(dim=1)
    assert (cos.diagonal() - off > 1e-4).all(), f"toy images not distinct for {model.name}: {cos}"


def test_zero_shot_text_classified_as_itself(model):
    names = ["golden retriever", "tabby cat", "red sports car", "espresso"]
    W = model.class_embeddings(names, ["a photo of a {}."])
    T = model.encode_text([f"a photo of a {n}." for n in names])
    torch.testing.assert_close(W, T, rtol=1e-5, atol=1e-5)
    sims = T @ W.t()
    assert torch.equal(sims.argmax(dim=1), torch.arange(len(names)))


def test_list_models_shows_every_family(capsys):
    """``pyvlmx list-models`` names each family with what it needs installed."""
    from pyvlmx.cli import main

    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    heads = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert {"open_clip", "conse", "hf", "imagebind"} <= set(heads)
    assert "needs: open_clip_torch" in heads["open_clip"]
    assert "needs: transformers" in heads["hf"]
    assert "needs: imagebind-unofficial" in heads["imagebind"]
    assert "efficientnet-lite" in heads["conse"]
    assert "    imagebind:pyvlmx-tiny" in out and "    hf:openai/clip-vit-base-patch32" in out
