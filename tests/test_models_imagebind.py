"""ImageBind adapter: a tiny random ImageBind from the package's own model class, offline.

The reference is the package's own ``ImageBindModel.forward`` (vision and
text inputs, its postprocessors included) on the same weights.
"""

import pytest
import torch

from pyvlmx.models import load_model
from pyvlmx.models.adapters import imagebind as ib_adapter

pytestmark = pytest.mark.skipif(ib_adapter._available() is not None,
                                reason=f"imagebind extra not installed: {ib_adapter._available()}")


@pytest.fixture(scope="module")
def tiny_ib():
    return load_model("imagebind:pyvlmx-tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_ib):
    return str(ib_adapter.save_checkpoint(tiny_ib, tmp_path_factory.mktemp("ib") / "tiny.pth"))


def test_matches_package_forward(tiny_ib):
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    texts = ["a photo of a dog.", "a cat"]
    ours_img = tiny_ib.encode_image(x)
    ours_txt = tiny_ib.encode_text(texts)
    normed = (x - torch.tensor(ib_adapter.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(ib_adapter.CLIP_STD).view(1, 3, 1, 1)
    tokens = tiny_ib.tokenizer(texts)
    with torch.no_grad():
        ref = tiny_ib.imagebind({"vision": normed, "text": tokens})
    torch.testing.assert_close(ours_img, ref["vision"], rtol=1e-5, atol=1e-6)
    # the package's text output is the unit embedding times the learnt scale: our logit_scale
    torch.testing.assert_close(ours_txt * tiny_ib.logit_scale, ref["text"], rtol=1e-5, atol=1e-5)
    assert tiny_ib.logit_scale == pytest.approx(1 / 0.07, rel=1e-6)
    assert (tiny_ib.embed_dim, tiny_ib.image_size) == (24, 224)


def test_only_vision_and_text_towers(tiny_ib):
    for group in (tiny_ib.imagebind.modality_preprocessors, tiny_ib.imagebind.modality_trunks,
                  tiny_ib.imagebind.modality_heads, tiny_ib.imagebind.modality_postprocessors):
        assert sorted(group.keys()) == ["text", "vision"]


def test_checkpoint_round_trip_through_load_model(tiny_ib, tiny_ckpt):
    loaded = load_model("imagebind:pyvlmx-tiny", pretrained=tiny_ckpt, seed=123)
    x = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(loaded.encode_image(x), tiny_ib.encode_image(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode_text(["a dog"]), tiny_ib.encode_text(["a dog"]), rtol=0, atol=0)
    assert loaded.pretrained == tiny_ckpt


def test_full_six_modality_checkpoint_loads(tmp_path):
    """A checkpoint with every modality (like imagebind_huge.pth) loads: extra towers are ignored."""
    mod = ib_adapter._imagebind_model()
    torch.manual_seed(0)
    full = mod.ImageBindModel(**ib_adapter.CONFIGS["pyvlmx-tiny"], **ib_adapter._UNUSED_TOWERS)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    assert any(k.startswith("modality_trunks.audio.") for k in full.state_dict())
    m = load_model("imagebind:pyvlmx-tiny", pretrained=str(path))
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        normed = m.normalize_pixels(x)
        ref = full({"vision": normed})["vision"]
    torch.testing.assert_close(m.encode_image(x), ref, rtol=1e-5, atol=1e-6)


def test_size_overrides_and_errors(tiny_ckpt):
    m = load_model("imagebind:pyvlmx-tiny", out_embed_dim=16, vision_num_blocks=1)
    assert m.embed_dim == 16 and len(m.imagebind.modality_trunks["vision"].blocks) == 1
    with pytest.raises(RuntimeError, match="does not match the pyvlmx-tiny sizes"):
        load_model("imagebind:pyvlmx-tiny", pretrained=tiny_ckpt, out_embed_dim=16)
    with pytest.raises(ValueError, match=r"unknown imagebind architecture 'giant'; known: \['huge', 'pyvlmx-tiny'\]"):
        load_model("imagebind:giant")
    with pytest.raises(ValueError, match="unknown size overrides \\['depth'\\]"):
        load_model("imagebind:pyvlmx-tiny", depth=3)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_model("imagebind:pyvlmx-tiny", pretrained="/no/such/imagebind_huge.pth")


def test_tokenizer_vocab_shipped_offline():
    path = ib_adapter.bpe_path()
    assert path.is_file() and path.stat().st_size > 1_000_000
    ib_adapter._imagebind_model()  # registers the package without its audio/video __init__
    from imagebind.models.multimodal_preprocessors import SimpleTokenizer

    t = SimpleTokenizer(bpe_path=str(path))
    ids = t(["a photo of a dog"])
    # start token, the BPE ids of the words, end token, zero padding to 77
    assert ids.shape == (77,) and int(ids[0]) == 49406
    n = ids.nonzero().numel()
    assert int(ids[n - 1]) == 49407 and ids[n:].eq(0).all() and n == 2 + len(t.encode("a photo of a dog"))
