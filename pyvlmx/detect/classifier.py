"""The zero-shot classifier as a plain ``nn.Module`` from [0, 1] pixels to logits (for torchattacks).

    logits(x) = logit_scale * normalize(f(x)) @ W^T

with ``f = model.encode_image`` (normalisation of the pixels lives inside the
model wrapper) and ``W`` the (C, D) unit-norm class embeddings of
:class:`pyvlmx.zeroshot.ZeroShotClassifier` (``.weights``).  Unlike
``ZeroShotClassifier`` the weights are a fixed buffer: no text is encoded
while an attack runs, and the module moves with ``.to(device)``.

torchattacks (Kim, "Torchattacks: A PyTorch repository for adversarial
attacks", arXiv 2010.01950) expects exactly this: a model taking images in
[0, 1] and returning logits; its attacks clamp their iterates to [0, 1].

Example:
    >>> import torch
    >>> from pyvlmx.models import load_model
    >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> W = m.class_embeddings(["cat", "dog", "car"])
    >>> net = ZeroShotLogits(m, W)
    >>> x = torch.rand(2, 3, 32, 32, requires_grad=True)
    >>> out = net(x)
    >>> out.shape, torch.allclose(out, m.logits(x, W))
    (torch.Size([2, 3]), True)
"""

from __future__ import annotations

import torch
from torch import nn


class ZeroShotLogits(nn.Module):
    """``x -> logit_scale * normalize(model.encode_image(x)) @ W^T``: (B, 3, H, W) in [0, 1] to (B, C).

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        class_weights: (C, D) class embeddings (unit norm, e.g. ``ZeroShotClassifier.weights``).
        logit_scale: softmax temperature (default ``model.logit_scale``).
    """

    def __init__(self, model, class_weights: torch.Tensor, logit_scale: float | None = None):
        super().__init__()
        if not hasattr(model, "encode_image"):
            raise TypeError(f"ZeroShotLogits: expected a VisionLanguageModel (with encode_image), "
                            f"got {type(model).__name__}")
        D = int(model.embed_dim)
        if not isinstance(class_weights, torch.Tensor) or class_weights.dim() != 2 or class_weights.shape[1] != D:
            got = tuple(class_weights.shape) if isinstance(class_weights, torch.Tensor) else type(class_weights)
            raise ValueError(f"ZeroShotLogits: expected class_weights of shape (C, {D}), got {got}")
        if class_weights.shape[0] < 2:
            raise ValueError(f"ZeroShotLogits: need at least 2 classes, got {class_weights.shape[0]}")
        self.model = model
        self.register_buffer("weights", class_weights.detach().to(torch.float32).clone())
        self.logit_scale = float(logit_scale if logit_scale is not None else model.logit_scale)

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        emb = self.model.encode_image(pixels)                       # unit norm
        return self.logit_scale * emb @ self.weights.t().to(emb.dtype)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """(B,) predicted classes, in batches of ``batch_size``."""
        if pixels.shape[0] == 0:
            return torch.empty(0, dtype=torch.long, device=pixels.device)
        return torch.cat([self(pixels[i:i + batch_size]).argmax(dim=1)
                          for i in range(0, pixels.shape[0], batch_size)])

    def extra_repr(self) -> str:
        return f"classes={self.num_classes}, logit_scale={self.logit_scale:g}"
