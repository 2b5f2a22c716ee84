"""The one interface every model in pyvlmx speaks.

Images cross this boundary as float pixels in [0, 1] of shape (B, 3, H, W);
normalisation (mean/std, resizing is the caller's job) lives inside the
wrapper, so that every budget, PSNR and SSIM later in pyvlmx is in pixels.
Embeddings come back unit-norm.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_pixels(pixels: torch.Tensor, image_size: int | None = None, name: str = "pixels") -> None:
    """Raise a ValueError unless ``pixels`` is a float (B, 3, H, W) batch in [0, 1]."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"expected {name} as a torch.Tensor, got {type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected {name} of shape (B, 3, H, W) in [0, 1], got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise ValueError(f"expected float {name} in [0, 1], got dtype {pixels.dtype}")
    if image_size is not None and tuple(pixels.shape[-2:]) != (image_size, image_size):
        raise ValueError(
            f"expected {name} of spatial size {image_size}x{image_size}, got "
            f"{tuple(pixels.shape[-2:])}; resize and centre-crop with pyvlmx.data first")
    if pixels.numel():
        with torch.no_grad():
            lo, hi = float(pixels.min()), float(pixels.max())
        if not (lo >= -1e-6 and hi <= 1 + 1e-6):  # also catches NaN
            raise ValueError(f"expected {name} in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")


def save_state_dict(module: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``module.state_dict()`` to ``path`` (parents created); returns the path.

    The adapters' ``save_checkpoint`` functions call this with the wrapped
    network, so the file loads back through ``load_model(..., pretrained=path)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.state_dict(), path)
    return path


class VisionLanguageModel(nn.Module):
    """Base class: an image tower and a text tower that share one embedding space.

    Subclasses implement :meth:`_encode_image` (normalised pixels in, raw
    features out) and :meth:`_encode_text`; this class handles the pixel
    normalisation, unit norms, input checks and the text-embedding cache.

    Attributes:
        name: registry name the model was loaded under.
        image_size: side of the square input the image tower expects.
        embed_dim: dimension of the shared embedding.
        logit_scale: temperature applied to cosine similarities for zero-shot
            logits (CLIP's ``exp(logit_scale)``; 100 for OpenAI CLIP).
        mean, std: per-channel normalisation applied inside ``encode_image``.
    """

    name: str = "model"
    family: str = "base"

    def __init__(self, image_size: int, embed_dim: int, logit_scale: float,
                 mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.image_size = int(image_size)
        self.embed_dim = int(embed_dim)
        self.logit_scale = float(logit_scale)
        self.register_buffer("pixel_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self._text_cache: dict[tuple, torch.Tensor] = {}
        self.check_inputs = True

    # --- to implement -------------------------------------------------------
    def _encode_image(self, normalized: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # --- public interface ---------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        return self.pixel_mean.device

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = self.pixel_mean.to(device=pixels.device, dtype=pixels.dtype)
        std = self.pixel_std.to(device=pixels.device, dtype=pixels.dtype)
        return (pixels - mean) / std

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Embed images.

        Args:
            pixels: (B, 3, H, W) float in [0, 1], H = W = ``image_size``.
            normalize: return unit-norm embeddings (default) or raw features.

        Returns:
            (B, embed_dim) embeddings, differentiable with respect to ``pixels``.
        """
        if self.check_inputs:
            check_pixels(pixels, self.image_size)
        feats = self._encode_image(self.normalize_pixels(pixels))
        return F.normalize(feats, dim=-1) if normalize else feats

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encode_image(pixels)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
        """Embed strings: (len(texts), embed_dim), unit norm by default."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a list of strings, got a single str")
        texts = list(texts)
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        feats = self._encode_text(texts)
        return F.normalize(feats, dim=-1) if normalize else feats

    @torch.no_grad()
    def class_embeddings(self, classnames: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """Zero-shot classifier weights, cached per (classes, templates).

        Each class embedding is the renormalised mean over templates of the
        unit-norm text embeddings of ``template.format(classname)``, as in
        CLIP's zero-shot ImageNet protocol.

        Returns:
            (C, embed_dim) unit-norm class embeddings.
        """
        key = (tuple(classnames), tuple(templates), str(self.device))
        cached = self._text_cache.get(key)
        if cached is not None:
            return cached
        rows = []
        for name in classnames:
            emb = self.encode_text([t.format(name) for t in templates])
            rows.append(F.normalize(emb.mean(dim=0), dim=-1))
        weights = torch.stack(rows) if rows else torch.empty(0, self.embed_dim, device=self.device)
        self._text_cache[key] = weights
        return weights

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def logits(self, pixels: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits ``logit_scale * cos(image, class)``: (B, C)."""
        return self.logit_scale * self.encode_image(pixels) @ class_weights.t().to(pixels.dtype)

    def _apply(self, fn, *args, **kwargs):  # .to()/.cuda() must drop device-bound caches
        self._text_cache = {}
        return super()._apply(fn, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, image_size={self.image_size}, embed_dim={self.embed_dim}, "
                f"logit_scale={self.logit_scale:g}")
