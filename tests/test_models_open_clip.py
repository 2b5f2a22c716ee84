"""open_clip adapter: interface, errors, and a checkpoint round trip offline."""

import pytest
import torch

from pyvlmx.models import load_model
from pyvlmx.models.adapters.open_clip import save_checkpoint


def test_interface(tiny_clip):
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    e = tiny_clip.encode_image(x)
    assert e.shape == (3, tiny_clip.embed_dim)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    e[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    t = tiny_clip.encode_text(["a cat", "a dog"])
    assert t.shape == (2, tiny_clip.embed_dim)
    torch.testing.assert_close(t.norm(dim=-1), torch.ones(2))


def test_checkpoint_round_trip(tmp_path, tiny_clip):
    path = save_checkpoint(tiny_clip, tmp_path / "tiny.pt")
    loaded = load_model("open_clip:pyvlmx-tiny-vit", pretrained=str(path))
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(x), tiny_clip.encode_image(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_text(["a photo"]), tiny_clip.encode_text(["a photo"]), rtol=0, atol=0)


def test_seed_changes_weights():
    a = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    b = load_model("open_clip:pyvlmx-tiny-vit", seed=1)
    x = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(a.encode_image(x), b.encode_image(x))


def test_bad_names_list_valid_ones():
    with pytest.raises(ValueError, match="close matches: .*ViT-B-32"):
        load_model("open_clip:ViT-B-3")
    with pytest.raises(ValueError, match="valid tags: .*laion2b"):
        load_model("open_clip:ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        load_model("nope:x")


def test_pixels_outside_unit_box_rejected(tiny_clip):
    with pytest.raises(ValueError, match=r"in \[0, 1\], got values in"):
        tiny_clip.encode_image(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        tiny_clip.encode_image(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="spatial size 32x32"):
        tiny_clip.encode_image(torch.rand(1, 3, 16, 16))


def test_text_embeddings_cached(tiny_clip):
    w1 = tiny_clip.class_embeddings(["cat", "dog"], ["a photo of a {}."])
    w2 = tiny_clip.class_embeddings(["cat", "dog"], ["a photo of a {}."])
    assert w1 is w2
