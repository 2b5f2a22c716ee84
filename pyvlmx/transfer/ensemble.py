"""A VisionLanguageModel made of several models: ensemble alignment and resized inputs.

:class:`EnsembleModel` concatenates its members' unit embeddings, each scaled
by ``1/sqrt(M)``:

    f(x) = [f_1(r_1(x)), ..., f_M(r_M(x))] / sqrt(M),        ||f(x)|| = 1,

where ``r_m`` resizes the input (bilinear, antialiased, differentiable) to
member m's ``image_size``.  Text and class embeddings are concatenated the
same way, so for an image embedding f and a target t built like it

    cos(f, t)          = (1/M) sum_m cos(f_m, t_m),
    1/2 ||f - t||^2    = (1/M) sum_m 1/2 ||f_m - t_m||^2,

i.e. the alignment loss on the ensemble (``l2`` or ``cosine``) is the mean of
the members' losses, and its zero-shot logits are ``logit_scale`` times the
members' mean cosine.  Any single-model attack (``EmbeddingAlignment``) thus
aligns against all members at once.  With one member it is just a resizing
wrapper, which lets a 224-px model be attacked and evaluated on 260-px images.

Example:
    >>> import torch
    >>> from pyvlmx.models import load_model
    >>> a = load_model("open_clip:pyvlmx-tiny-vit", seed=0)      # 32 px
    >>> b = load_model("open_clip:pyvlmx-tiny-vit-64", seed=0)   # 64 px
    >>> ens = EnsembleModel([a, b])                              # takes 64 px
    >>> ens.encode_image(torch.rand(2, 3, 64, 64)).shape
    torch.Size([2, 96])
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyvlmx.models.base import VisionLanguageModel


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Differentiable bilinear (antialiased) resize of (B, 3, H, W) pixels to ``size`` x ``size``.

    The filter weights are non-negative and sum to one, so pixels in [0, 1]
    stay in [0, 1] (the clamp only removes rounding error).
    """
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    out = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1)


class EnsembleModel(VisionLanguageModel):
    """Members' embeddings concatenated (each / sqrt(M)); see the module docstring.

    Args:
        members: the models (any :class:`VisionLanguageModel`).
        image_size: input side; default the largest member ``image_size``.
        name: registry-like name for reports; default ``ensemble(a+b+...)``.

    Attributes:
        logit_scale: mean of the members' logit scales.
        member_dims: embedding dimension of each member, in order.
    """

    family = "ensemble"

    def __init__(self, members: Sequence[VisionLanguageModel], image_size: int | None = None,
                 name: str | None = None):
        members = list(members)
        if not members:
            raise ValueError("EnsembleModel: expected at least one member model, got none")
        bad = [type(m).__name__ for m in members if not isinstance(m, VisionLanguageModel)]
        if bad:
            raise TypeError(f"EnsembleModel: members must be VisionLanguageModel instances, got {bad}")
        size = max(m.image_size for m in members) if image_size is None else int(image_size)
        if size <= 0:
            raise ValueError(f"EnsembleModel: image_size must be > 0, got {image_size!r}")
        super().__init__(image_size=size, embed_dim=sum(m.embed_dim for m in members),
                         logit_scale=sum(m.logit_scale for m in members) / len(members),
                         mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.members = nn.ModuleList(members)
        self.member_dims = [m.embed_dim for m in members]
        self.name = name or ("ensemble(" + "+".join(m.name for m in members) + ")")
        self._weight = 1.0 / math.sqrt(len(members))

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        # The input was checked once by encode_image; the resizes stay in [0, 1],
        # so each member's normalise + encode runs without a second check.
        feats = [F.normalize(m._encode_image(m.normalize_pixels(resize_pixels(pixels, m.image_size))), dim=-1)
                 for m in self.members]
        return torch.cat(feats, dim=1) * self._weight

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.cat([m.encode_text(texts) for m in self.members], dim=1) * self._weight

    @torch.no_grad()
    def class_embeddings(self, classnames: Sequence[str], templates: Sequence[str] = ("{}",)) -> torch.Tensor:
        """Members' own zero-shot weights, concatenated and scaled: (C, sum of dims), unit rows."""
        rows = [m.class_embeddings(classnames, templates).to(self.device) for m in self.members]
        return torch.cat(rows, dim=1) * self._weight

    def split(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """Split (N, embed_dim) ensemble embeddings into the members' unit embeddings."""
        return [e / self._weight for e in embeddings.split(self.member_dims, dim=1)]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", members={len(self.members)}"
