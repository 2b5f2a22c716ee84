"""open_clip adapter: any architecture, any pretrained tag, or a local checkpoint.

Names are ``open_clip:<arch>`` with ``<arch>`` from ``open_clip.list_models()``
(plus pyvlmx's tiny test configs ``pyvlmx-tiny-vit`` and
``pyvlmx-tiny-vit-64``).  ``pretrained`` is an open_clip tag (open_clip
downloads it on a machine with a network), a path to a checkpoint file, or
None for a seeded random initialisation.

Example:
    >>> from pyvlmx.models import load_model
    >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> m.encode_image(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 32])
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import torch

from pyvlmx.models.base import VisionLanguageModel, diagnose_checkpoint, save_state_dict
from pyvlmx.models.registry import ModelFamily, register_family

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
_CONFIGS_ADDED = False


def _open_clip():
    global _CONFIGS_ADDED
    import open_clip

    if not _CONFIGS_ADDED:
        open_clip.add_model_config(str(CONFIG_DIR))
        _CONFIGS_ADDED = True
    return open_clip


def _available() -> str | None:
    try:
        import open_clip  # noqa: F401
    except ImportError as exc:
        return f"open_clip is not installed ({exc})"
    return None


def _archs() -> list[str]:
    return list(_open_clip().list_models())


class OpenCLIPModel(VisionLanguageModel):
    """An open_clip ``CLIP``/``CustomTextCLIP`` behind the pyvlmx interface."""

    family = "open_clip"

    def __init__(self, clip: torch.nn.Module, tokenizer, arch: str, pretrained: str | None):
        cfg = getattr(clip.visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        size = cfg.get("size", getattr(clip.visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if size[0] != size[1]:
                raise ValueError(f"open_clip:{arch}: only square inputs are supported, got {tuple(size)}")
            size = size[0]
        with torch.no_grad():
            probe = clip.encode_text(tokenizer(["a"]))
        logit_scale = float(clip.logit_scale.detach().exp()) if hasattr(clip, "logit_scale") else 100.0
        super().__init__(image_size=size, embed_dim=probe.shape[-1], logit_scale=logit_scale,
                         mean=mean, std=std)
        self.clip = clip
        self.tokenizer = tokenizer
        self.arch = arch
        self.pretrained = pretrained

    def _encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(normalized)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.clip.encode_text(tokens)


def load_open_clip(arch: str, pretrained: str | None = None, device="cpu", seed: int | None = 0,
                   **kwargs) -> OpenCLIPModel:
    """Build ``open_clip:<arch>``.

    Args:
        arch: an architecture from ``open_clip.list_models()``.
        pretrained: a tag from ``open_clip.list_pretrained_tags_by_model(arch)``,
            a checkpoint file, or None (random weights, seeded by ``seed``).
        seed: seed for the random initialisation (ignored when loading weights).
    """
    oc = _open_clip()
    archs = oc.list_models()
    if arch not in archs:
        close = difflib.get_close_matches(arch, archs, n=8, cutoff=0.4)
        near = f"close matches: {close}" if close else "no close match"
        raise ValueError(f"unknown open_clip architecture {arch!r}; {near}; "
                         f"{len(archs)} architectures in all (pyvlmx list-models --all)")
    if pretrained is not None and not os.path.isfile(pretrained):
        tags = oc.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            raise ValueError(f"pretrained={pretrained!r} is neither a file nor a tag of open_clip:{arch}; "
                             f"valid tags: {tags}")
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        if pretrained is None and seed is not None:
            torch.manual_seed(seed)
        try:
            clip = oc.create_model(arch, pretrained=pretrained, device="cpu", **kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad local file: one line naming it and the reason
            err = diagnose_checkpoint(pretrained, exc, model=f"open_clip:{arch}") \
                if pretrained is not None and os.path.isfile(pretrained) else None
            if err is None:
                raise
            raise err from exc
    clip.eval()
    tokenizer = oc.get_tokenizer(arch)
    return OpenCLIPModel(clip, tokenizer, arch, pretrained)


def save_checkpoint(model: OpenCLIPModel, path: str | os.PathLike) -> Path:
    """Save the open_clip weights as a state-dict file that ``pretrained=path`` loads."""
    return save_state_dict(model.clip, path)


register_family(ModelFamily(
    name="open_clip",
    loader=load_open_clip,
    list_archs=_archs,
    requires="open_clip_torch",
    available=_available,
    description="open_clip CLIP models: any architecture; pretrained = tag (downloaded by open_clip) or checkpoint file",
))
