"""How a step is taken: a direction from the gradient, with per-sample state.

A step rule maps the gradient g of the samples still in the batch to the
direction the budget's projected step descends along:

    sign   g as is; the projected step takes sign(g) (L-inf, no budget) or
           g / ||g||_2 (L2 ball): steepest descent for the budget's norm (PGD)
    gd     g as is, moved by step_size * g (plain gradient descent, the paper)
    adam   m_hat / (sqrt(v_hat) + 1e-12) with Adam's moments (Kingma, Ba 2015)

State lives per sample (Adam's moments and its step count) and follows a
sample when others leave the batch (:meth:`StepRule.keep`); a sample that
enters starts from zero state (:meth:`StepRule.add`).
"""

from __future__ import annotations

import torch


class StepRule:
    """Base: stateless; ``direction`` returns the gradient."""

    name = "sign"

    def step_kind(self, norm: str) -> str:
        """The :func:`pyvlmx.ops.projected_step` mode for this rule under budget ``norm``."""
        return "raw"

    def init(self, z: torch.Tensor) -> None:
        """Start state for the batch ``z`` (B, ...)."""

    def add(self, z: torch.Tensor) -> None:
        """Append zero state for new rows ``z``."""

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the state of batch rows ``rows`` only (others left)."""

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """Direction for the gradient ``g`` (one row per state row); advances the state."""
        return g


class SignStep(StepRule):
    name = "sign"

    def step_kind(self, norm: str) -> str:
        return "l2" if norm == "l2" else "sign"


class GradientStep(StepRule):
    name = "gd"


class AdamStep(StepRule):
    """Adam with bias correction; the step count is kept per sample."""

    name = "adam"

    def __init__(self, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12):
        self.b1, self.b2 = betas
        self.eps = eps
        self.m = self.v = None
        self.count: list[int] = []

    def init(self, z: torch.Tensor) -> None:
        self.m = torch.zeros_like(z)
        self.v = torch.zeros_like(z)
        self.count = [0] * z.shape[0]

    def add(self, z: torch.Tensor) -> None:
        self.m = torch.cat([self.m, torch.zeros_like(z)])
        self.v = torch.cat([self.v, torch.zeros_like(z)])
        self.count += [0] * z.shape[0]

    def keep(self, rows: torch.Tensor) -> None:
        self.m, self.v = self.m[rows], self.v[rows]
        rl = rows.tolist()
        self.count = [self.count[r] for r in rl]

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        b1, b2 = self.b1, self.b2
        m = b1 * self.m + (1 - b1) * g
        v = b2 * self.v + (1 - b2) * g * g
        steps = [c + 1 for c in self.count]
        # per-sample bias corrections, computed in float64 on the host like a Python scalar would be
        shape = (-1,) + (1,) * (g.dim() - 1)
        c1 = torch.tensor([1 - b1 ** k for k in steps], dtype=g.dtype, device=g.device).view(shape)
        c2 = torch.tensor([1 - b2 ** k for k in steps], dtype=g.dtype, device=g.device).view(shape)
        mhat, vhat = m / c1, v / c2
        self.m, self.v = m, v
        self.count = steps
        return mhat / (vhat.sqrt() + self.eps)


def make_step_rule(name: str, betas: tuple[float, float] = (0.9, 0.999)) -> StepRule:
    """The step rule called ``name`` ("sign", "gd" or "adam")."""
    if name == "sign":
        return SignStep()
    if name == "gd":
        return GradientStep()
    if name == "adam":
        return AdamStep(betas)
    raise ValueError(f"unknown step rule {name!r}; step rules: ['adam', 'gd', 'sign']")
