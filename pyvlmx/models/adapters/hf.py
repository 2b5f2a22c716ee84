"""Hugging Face ``transformers`` adapter: ``CLIPModel`` and ``SiglipModel``.

Names are ``hf:<model id or local folder>`` (``hf:openai/clip-vit-base-patch32``,
``hf:google/siglip-base-patch16-224``, ``hf:/path/to/saved/folder``).  The
folder or id must hold what ``save_pretrained`` writes: ``config.json`` with
``model_type`` ``clip`` or ``siglip``, the weights, a tokenizer, and normally
the image processor's ``preprocessor_config.json``.  transformers downloads an
id on a machine with a network (or reads its cache); a folder never touches
the network.  Extra keyword arguments go to ``from_pretrained`` (``revision``,
``local_files_only``, ...).

Pixels stay in [0, 1]: the image processor's rescale + normalise step,
``(255 * rescale_factor * p - mean) / std``, is folded into the wrapper's
``pixel_mean``/``pixel_std`` (``mean / (255 * rescale_factor)``,
``std / (255 * rescale_factor)``), so it is exactly the processor's
arithmetic on an image that has already been resized and cropped (resizing is
the caller's job, as everywhere in pyvlmx; use ``pyvlmx.data`` with
``image_size``).  When a folder has no image-processor config the model
type's published defaults are used (OpenAI CLIP mean/std for ``clip``,
0.5/0.5 for ``siglip``) and a warning says so; ``preprocess_source`` records
which one applied.

Text goes through the model's own tokenizer: CLIP pads to the longest string
and passes the attention mask (it pools at the end-of-text token); SigLIP
pads to ``max_length`` = ``text_config.max_position_embeddings`` because it
pools the last position, exactly as its processor is meant to be called.

Logits: ``logit_scale`` is ``exp(model.logit_scale)``.  SigLIP also learns a
``logit_bias`` b; its pairwise logits are ``exp(t) * cos + b`` and
``sigmoid`` of them is its per-pair match probability.  :meth:`HFSiglip.logits`
returns those logits (bias included, equal to ``SiglipModel``'s
``logits_per_image``).  For zero-shot classification the bias is one constant
added to every class, so it changes neither the argmax nor the softmax over
classes nor any cross-entropy computed from the logits; it only matters if you
read ``sigmoid(logits)`` as probabilities.

Example (needs a downloaded checkpoint folder, so the doctests skip it):
    >>> from pyvlmx.models import load_model
    >>> m = load_model("hf:/path/to/clip-folder")  # doctest: +SKIP
    >>> m.encode_image(torch.rand(2, 3, m.image_size, m.image_size)).shape  # doctest: +SKIP
    torch.Size([2, 512])
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from pyvlmx.models.base import VisionLanguageModel
from pyvlmx.models.registry import ModelFamily, register_family

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# Well-known ids, listed as examples; any CLIP/SigLIP id or folder works.
KNOWN_IDS = (
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-large-patch14",
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
    "google/siglip-base-patch16-224",
    "google/siglip-so400m-patch14-384",
)
SUPPORTED_TYPES = ("clip", "siglip")


def _available() -> str | None:
    # find_spec, not import: importing transformers takes seconds.
    if importlib.util.find_spec("transformers") is None:
        return "transformers is not installed"
    return None


def _features(out) -> torch.Tensor:
    """Projected features from ``get_*_features``: a tensor before transformers 5, an output object after."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def _normalisation(source: str, model_type: str, hf_kwargs: dict) -> tuple[tuple, tuple, str]:
    """mean/std for pixels in [0, 1] from the saved image processor, else the model type's defaults."""
    from transformers import AutoImageProcessor

    defaults = {"clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "siglip": (SIGLIP_MEAN, SIGLIP_STD)}
    kw = {k: v for k, v in hf_kwargs.items() if k in ("revision", "local_files_only", "cache_dir", "token")}
    try:
        proc = AutoImageProcessor.from_pretrained(source, **kw)
    except OSError as exc:  # transformers' "no preprocessor_config.json here"
        mean, std = defaults[model_type]
        warnings.warn(f"hf:{source}: no image processor config ({exc}); using the {model_type} "
                      f"defaults mean={mean}, std={std}", stacklevel=3)
        return mean, std, f"{model_type} defaults"
    scale = 255.0 * float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 255.0
    if getattr(proc, "do_normalize", True):
        mean, std = proc.image_mean, proc.image_std
        if isinstance(mean, (int, float)):
            mean = (mean,) * 3
        if isinstance(std, (int, float)):
            std = (std,) * 3
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = tuple(float(m) / scale for m in mean)
    std = tuple(float(s) / scale for s in std)
    return mean, std, "preprocessor_config.json"


class HFDualEncoder(VisionLanguageModel):
    """A transformers CLIP-style dual encoder behind the pyvlmx interface.

    Args:
        hf_model: a ``CLIPModel`` or ``SiglipModel``.
        tokenizer: its tokenizer.
        source: the id or folder it came from.
        mean, std: normalisation for pixels in [0, 1] (see the module docstring).
        preprocess_source: where mean/std came from, for reports.
    """

    family = "hf"
    pad_to_max_length = False

    def __init__(self, hf_model, tokenizer, source: str, mean, std, preprocess_source: str):
        cfg = hf_model.config
        size = cfg.vision_config.image_size
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"hf:{source}: only square inputs are supported, got image_size={tuple(size)}")
            size = size[0]
        embed_dim = getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size
        super().__init__(image_size=size, embed_dim=embed_dim,
                         logit_scale=float(hf_model.logit_scale.detach().exp()), mean=mean, std=std)
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        self.source = source
        self.preprocess_source = preprocess_source
        self.max_text_length = int(cfg.text_config.max_position_embeddings)

    def _encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        out = self.hf_model.get_image_features(pixel_values=normalized.to(self.dtype))
        return _features(out).float()

    def _tokenize(self, texts: list[str]) -> dict:
        padding = "max_length" if self.pad_to_max_length else "longest"
        enc = self.tokenizer(texts, padding=padding, truncation=True, max_length=self.max_text_length,
                             return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        return _features(self.hf_model.get_text_features(**self._tokenize(texts))).float()


class HFCLIP(HFDualEncoder):
    """``transformers.CLIPModel``: pools the end-of-text token, uses the attention mask."""


class HFSiglip(HFDualEncoder):
    """``transformers.SiglipModel``: pads text to max_length; has a learnt ``logit_bias``.

    Attributes:
        logit_bias: SigLIP's bias b; :meth:`logits` returns ``logit_scale * cos + b``.
    """

    pad_to_max_length = True

    def __init__(self, hf_model, tokenizer, source, mean, std, preprocess_source):
        super().__init__(hf_model, tokenizer, source, mean, std, preprocess_source)
        self.logit_bias = float(hf_model.logit_bias.detach().reshape(-1)[0])

    def _tokenize(self, texts: list[str]) -> dict:
        # SigLIP was trained without an attention mask on max_length-padded text.
        enc = super()._tokenize(texts)
        return {"input_ids": enc["input_ids"]}

    def logits(self, pixels: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        """SigLIP logits ``logit_scale * cos(image, class) + logit_bias``: (B, C).

        The bias shifts every class equally: argmax and softmax over classes
        are those of ``logit_scale * cos``; ``sigmoid`` gives SigLIP's
        per-pair probabilities.
        """
        return super().logits(pixels, class_weights) + self.logit_bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", logit_bias={self.logit_bias:g}"


def load_hf(arch: str, pretrained: str | None = None, device="cpu", dtype=torch.float32,
            **kwargs) -> HFDualEncoder:
    """Build ``hf:<id or folder>``.

    Args:
        arch: a Hugging Face model id or a local folder written by ``save_pretrained``.
        pretrained: unused (the weights come with ``arch``); must be None.
        dtype: parameter dtype to load in (float32 by default, so gradients
            with respect to pixels are float32).
        **kwargs: passed to ``from_pretrained`` (``revision``, ``local_files_only``, ...).
    """
    if not arch:
        raise ValueError("hf: needs a model id or folder after 'hf:', e.g. hf:openai/clip-vit-base-patch32")
    if pretrained is not None:
        raise ValueError(f"hf:{arch}: pretrained={pretrained!r} is not used by the hf family; "
                         f"the weights come with the id or folder (hf:<id or folder>)")
    from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

    config = AutoConfig.from_pretrained(arch, **kwargs)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(f"hf:{arch}: model_type {model_type!r} is not supported; "
                         f"supported model types: {list(SUPPORTED_TYPES)} (CLIPModel, SiglipModel)")
    cls = {"clip": CLIPModel, "siglip": SiglipModel}[model_type]
    hf_model = cls.from_pretrained(arch, dtype=dtype, **kwargs)
    hf_model.eval()
    tokenizer = AutoTokenizer.from_pretrained(arch, **kwargs)
    mean, std, src = _normalisation(arch, model_type, kwargs)
    wrapper = {"clip": HFCLIP, "siglip": HFSiglip}[model_type]
    return wrapper(hf_model, tokenizer, arch, mean, std, src)


register_family(ModelFamily(
    name="hf",
    loader=load_hf,
    list_archs=lambda: list(KNOWN_IDS),
    requires="transformers (CLIPModel, SiglipModel)",
    available=_available,
    description="Hugging Face transformers CLIPModel / SiglipModel: hf:<model id or local "
                "save_pretrained folder> (ids are downloaded by transformers; folders stay offline)",
))
