"""How a step is taken: a direction from the gradient, with per-sample state.

A step rule maps the gradient g of the samples still in the batch to the
direction the budget's projected step descends along:

    sign   g as is; the projected step takes sign(g) (L-inf, no budget) or
           g / ||g||_2 (L2 ball): steepest descent for the budget's norm (PGD)
    gd     g as is, moved by step_size * g (plain gradient descent, the paper)
    adam   m_hat / (sqrt(v_hat) + 1e-12) with Adam's moments (Kingma, Ba 2015)

State lives per slot of the loop (Adam's moments and its step count): a
slot's state is zeroed when a new sample takes it (:meth:`StepRule.reset`)
and a step reads and writes the state of the slots it moves
(``direction(g, rows)``), so a sample's state is its own whoever shares
the batch.
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

    def reset(self, rows: list[int]) -> None:
        """Zero the state of rows ``rows`` (a new sample takes those slots)."""

    def direction(self, g: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        """Direction for the gradient ``g``; advances the state.

        ``rows`` None: ``g`` has one row per state row. Else ``g`` holds the
        gradients of state rows ``rows`` (slot positions), in that order.
        """
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

    def reset(self, rows: list[int]) -> None:
        if rows:
            r = torch.tensor(rows).to(self.m.device, non_blocking=True)
            self.m.index_fill_(0, r, 0.0)
            self.v.index_fill_(0, r, 0.0)
            for i in rows:
                self.count[i] = 0

    def direction(self, g: torch.Tensor, rows: list[int] | None = None) -> torch.Tensor:
        b1, b2 = self.b1, self.b2
        if rows is None:
            m0, v0, counts = self.m, self.v, self.count
        else:
            r = torch.tensor(rows).to(g.device, non_blocking=True)
            m0, v0, counts = self.m.index_select(0, r), self.v.index_select(0, r), [self.count[i] for i in rows]
        m = b1 * m0 + (1 - b1) * g
        v = b2 * v0 + (1 - b2) * g * g
        steps = [c + 1 for c in counts]
        # per-sample bias corrections, computed in float64 on the host like a Python scalar would be
        # (a CPU tensor copied without blocking: no host synchronisation)
        shape = (-1,) + (1,) * (g.dim() - 1)
        c1 = torch.tensor([1 - b1 ** k for k in steps], dtype=g.dtype).to(g.device, non_blocking=True).view(shape)
        c2 = torch.tensor([1 - b2 ** k for k in steps], dtype=g.dtype).to(g.device, non_blocking=True).view(shape)
        mhat, vhat = m / c1, v / c2
        if rows is None:
            self.m, self.v = m, v
            self.count = steps
        else:
            self.m.index_copy_(0, r, m)
            self.v.index_copy_(0, r, v)
            for i, k in zip(rows, steps):
                self.count[i] = k
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
