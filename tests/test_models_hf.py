"""Hugging Face adapter: tiny random CLIPModel / SiglipModel saved to a folder, loaded by name.

The references are transformers' own forward passes on the processor's
normalised pixels (``logits_per_image``), so the wrapper's folded
normalisation, tokenisation and logit scale/bias are checked against the
model it wraps.
"""

import math

import pytest
import torch

from pyvlmx.models import load_model

transformers = pytest.importorskip("transformers")

IMAGE = 32
MEAN = (0.40, 0.45, 0.50)
STD = (0.20, 0.25, 0.30)


def tiny_tokenizer():
    """A CLIP BPE tokenizer with a byte-level vocabulary (516 tokens), built offline."""
    from open_clip.tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>")]
    for m in merges:
        vocab["".join(m)] = len(vocab)
    for s in ("<|startoftext|>", "<|endoftext|>"):
        vocab[s] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges)


def make_tiny_hf(folder, model_type="clip", seed=0, processor=True):
    """Save a seeded random ``CLIPModel``/``SiglipModel`` + tokenizer (+ image processor) to ``folder``."""
    tok = tiny_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=IMAGE, patch_size=8)
    torch.manual_seed(seed)
    if model_type == "clip":
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=24))
        with torch.no_grad():
            model.logit_scale.fill_(math.log(50.0))
    else:
        model = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=vision))
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    if processor:
        cls = transformers.CLIPImageProcessor if model_type == "clip" else transformers.SiglipImageProcessor
        cls(size={"height": IMAGE, "width": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
            image_mean=list(MEAN), image_std=list(STD)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("hf_clip"), "clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("hf_siglip"), "siglip")


def _reference_logits(folder, model_type, pixels, texts, padding):
    """transformers' own forward: processor-style normalisation, tokenizer, logits_per_image."""
    cls = transformers.CLIPModel if model_type == "clip" else transformers.SiglipModel
    model = cls.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    normed = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    enc = tok(texts, padding=padding, max_length=16, truncation=True, return_tensors="pt")
    if model_type == "siglip":
        enc = {"input_ids": enc["input_ids"]}
    with torch.no_grad():
        return model(pixel_values=normed, **enc).logits_per_image


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_logits_match_transformers(model_type, clip_dir, siglip_dir):
    folder = clip_dir if model_type == "clip" else siglip_dir
    m = load_model(f"hf:{folder}")
    assert m.family == "hf" and m.preprocess_source == "preprocessor_config.json"
    torch.testing.assert_close(m.pixel_mean.flatten(), torch.tensor(MEAN))
    torch.testing.assert_close(m.pixel_std.flatten(), torch.tensor(STD))
    x = torch.rand(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    texts = ["a photo of the cat", "dog", "the red car on a road"]
    W = m.encode_text(texts)
    ours = m.logits(x, W)
    ref = _reference_logits(folder, model_type, x, texts, "longest" if model_type == "clip" else "max_length")
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_scale_and_bias_from_model(clip_dir, siglip_dir):
    clip = load_model(f"hf:{clip_dir}")
    sig = load_model(f"hf:{siglip_dir}")
    assert clip.logit_scale == pytest.approx(50.0, rel=1e-5)
    assert not hasattr(clip, "logit_bias")
    assert sig.logit_scale == pytest.approx(10.0, rel=1e-5)
    assert sig.logit_bias == pytest.approx(-10.0)
    # The bias is a constant shift per image: zero-shot argmax and softmax are those of scale * cos.
    x = torch.rand(2, 3, IMAGE, IMAGE)
    W = sig.encode_text(["cat", "dog", "car"])
    cos = sig.encode_image(x) @ W.t()
    torch.testing.assert_close(sig.logits(x, W), 10.0 * cos - 10.0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sig.logits(x, W).softmax(-1), (10.0 * cos).softmax(-1))


def test_siglip_pads_to_max_length(siglip_dir, clip_dir):
    sig = load_model(f"hf:{siglip_dir}")
    assert sig._tokenize(["a", "a much longer prompt"])["input_ids"].shape == (2, 16)
    assert set(sig._tokenize(["a"])) == {"input_ids"}
    clip = load_model(f"hf:{clip_dir}")
    enc = clip._tokenize(["a", "abc"])
    assert enc["input_ids"].shape[1] < 16 and "attention_mask" in enc
    # SigLIP's text embedding of a string does not depend on the batch it is in (fixed padding)
    torch.testing.assert_close(sig.encode_text(["dog"]), sig.encode_text(["dog", "a much longer prompt"])[:1],
                               rtol=1e-5, atol=1e-6)


def test_missing_processor_uses_defaults_with_warning(tmp_path):
    folder = make_tiny_hf(tmp_path / "noproc", "siglip", processor=False)
    with pytest.warns(UserWarning, match="no image processor config"):
        m = load_model(f"hf:{folder}")
    assert m.preprocess_source == "siglip defaults"
    torch.testing.assert_close(m.pixel_mean.flatten(), torch.full((3,), 0.5))


def test_rescale_factor_folded_into_mean_std(tmp_path):
    folder = make_tiny_hf(tmp_path / "rescale", "clip")
    proc = transformers.CLIPImageProcessor.from_pretrained(folder)
    proc.rescale_factor = 1 / 127.5  # pixels x 2 before normalising
    proc.save_pretrained(folder)
    m = load_model(f"hf:{folder}")
    # (2 p - mean) / std == (p - mean / 2) / (std / 2)
    torch.testing.assert_close(m.pixel_mean.flatten(), torch.tensor(MEAN) / 2)
    torch.testing.assert_close(m.pixel_std.flatten(), torch.tensor(STD) / 2)


def test_errors(tmp_path, clip_dir):
    with pytest.raises(ValueError, match="needs a model id or folder"):
        load_model("hf:")
    with pytest.raises(ValueError, match="pretrained='x' is not used"):
        load_model(f"hf:{clip_dir}", pretrained="x")
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                                   intermediate_size=8, vocab_size=10)).save_pretrained(bert)
    with pytest.raises(ValueError, match="model_type 'bert' is not supported; supported model types: "
                                         r"\['clip', 'siglip'\]"):
        load_model(f"hf:{bert}")
