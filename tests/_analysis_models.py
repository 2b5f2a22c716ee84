"""Tiny VisionLanguageModel subclasses whose Jacobians and noise behaviour are known.

Used by tests/test_jacobian.py, test_noise.py and test_detect.py.
"""

from __future__ import annotations

import torch

from pyvlmx.models.base import VisionLanguageModel


class LinearVLM(VisionLanguageModel):
    """Image tower ``x -> A x`` (mean 0, std 1: J = A exactly); text = fixed random vectors."""

    name = "test-linear"
    family = "test"

    def __init__(self, A: torch.Tensor, image_size: int, bias: torch.Tensor | None = None):
        D = A.shape[0]
        super().__init__(image_size=image_size, embed_dim=D, logit_scale=100.0, mean=(0, 0, 0), std=(1, 1, 1))
        self.register_buffer("A", A.clone())
        self.register_buffer("b", bias.clone() if bias is not None else torch.zeros(D, dtype=A.dtype))

    def _encode_image(self, normalized):
        return normalized.flatten(1).to(self.A.dtype) @ self.A.t() + self.b

    def _encode_text(self, texts):
        g = torch.Generator().manual_seed(abs(hash(tuple(texts))) % 2**31)
        return torch.randn(len(texts), self.embed_dim, generator=g, dtype=self.A.dtype)


class TanhMLP(VisionLanguageModel):
    """``x -> W2 tanh(W1 x + c)``: smooth, nonlinear, curvature set by ``gain``."""

    name = "test-tanh-mlp"
    family = "test"

    def __init__(self, image_size: int = 8, hidden: int = 64, embed_dim: int = 16, gain: float = 3.0, seed: int = 0):
        super().__init__(image_size=image_size, embed_dim=embed_dim, logit_scale=100.0,
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        g = torch.Generator().manual_seed(seed)
        P = 3 * image_size * image_size
        self.W1 = torch.nn.Parameter(gain * torch.randn(hidden, P, generator=g) / P ** 0.5, requires_grad=False)
        self.c = torch.nn.Parameter(torch.randn(hidden, generator=g), requires_grad=False)
        self.W2 = torch.nn.Parameter(torch.randn(embed_dim, hidden, generator=g) / hidden ** 0.5, requires_grad=False)

    def _encode_image(self, normalized):
        return torch.tanh(normalized.flatten(1) @ self.W1.t() + self.c) @ self.W2.t()

    def _encode_text(self, texts):
        g = torch.Generator().manual_seed(len(texts))
        return torch.randn(len(texts), self.embed_dim, generator=g)


def designed_linear(singular_values, image_size: int = 8, seed: int = 0, dtype=torch.float64) -> LinearVLM:
    """A LinearVLM with J = U diag(s) V^T of the given singular values."""
    s = torch.as_tensor(singular_values, dtype=dtype)
    D = s.numel()
    P = 3 * image_size * image_size
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=dtype)).Q
    V = torch.linalg.qr(torch.randn(P, D, generator=g, dtype=dtype)).Q
    return LinearVLM((U * s) @ V.t(), image_size).eval()
