"""Where an attack's image may go: the budget ball, the [0, 1] box, the 8-bit grid.

A :class:`Budget` holds one radius per sample (L-inf, L2 or none), moves a
batch by one projected step (:func:`pyvlmx.ops.projected_step`, which projects
onto the ball around x0 and clamps to the box in one pass) and draws the
random starts.  :func:`quantize_to_budget` is the one definition of "the
saved PNG" of an attacked image: used by the attack's stop rule, the sweep's
saved images and every consumer that means an 8-bit image.
"""

from __future__ import annotations

from typing import Sequence

import torch


def quantize_to_budget(x: torch.Tensor, x0: torch.Tensor | None = None,
                       eps: float | torch.Tensor | None = None, norm: str = "linf") -> torch.Tensor:
    """Round pixels to the 8-bit grid (what a PNG stores), inside the L-inf budget if one is given.

    Plain rounding is ``round(255 x) / 255``.  With ``norm="linf"``, ``x0`` and
    ``eps`` the rounding is clamped, per pixel, to the grid values inside
    [x0 - eps, x0 + eps] (where the interval holds one), so that the saved
    image keeps the L-inf budget the attack promised.  Other norms round
    plainly (an L2 ball has no per-pixel interval).

    Args:
        x: (B, ...) pixels in [0, 1].
        x0: (B, ...) centres of the budget ball, or None.
        eps: number or (B,) budgets (with ``x0``).
        norm: the budget's norm: "linf", "l2" or "none".

    Returns:
        (B, ...) values k / 255, k integer in [0, 255].

    Example:
        >>> x0 = torch.full((1, 3, 2, 2), 0.5)
        >>> q = quantize_to_budget(x0 + 0.9 / 255, x0, 1 / 255)
        >>> bool(((q * 255).round() == q * 255).all()), bool(((q - x0).abs() <= 1 / 255).all())
        (True, True)
    """
    k = torch.round(x.clamp(0, 1) * 255.0)
    if norm == "linf" and x0 is not None and eps is not None:
        e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if e.dim() == 1:
            e = e.view(-1, *([1] * (x.dim() - 1)))
        lo = torch.ceil((x0 - e) * 255.0 - 1e-4).clamp_(0, 255)
        hi = torch.floor((x0 + e) * 255.0 + 1e-4).clamp_(0, 255)
        inside = lo <= hi
        k = torch.where(inside, torch.minimum(torch.maximum(k, lo), hi), k)
    return k / 255.0


def quantize_8bit(x: torch.Tensor, x0: torch.Tensor | None = None,
                  eps: float | torch.Tensor | None = None) -> torch.Tensor:
    """:func:`quantize_to_budget` with an L-inf budget (the name earlier releases used)."""
    return quantize_to_budget(x, x0, eps, "linf")


class Budget:
    """Per-sample budgets and the projected step onto them.

    Args:
        norm: "linf", "l2" or "none".
        eps: (B,) radii in pixels (float32; on the host for continuous
            batching, so :func:`pyvlmx.ops.projected_step` checks them without
            reading device memory).
        step_sizes: (B,) pixels per step (same device as ``eps``).
        step_kind: how :func:`pyvlmx.ops.projected_step` turns a direction
            into a step: "sign", "l2" (unit L2 direction) or "raw".
    """

    def __init__(self, norm: str, eps: torch.Tensor, step_sizes: torch.Tensor, step_kind: str):
        self.norm = norm
        self.eps = eps
        self.step_sizes = step_sizes
        self.step_kind = step_kind

    def step(self, z: torch.Tensor, x0: torch.Tensor, direction: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Move rows ``z`` (budget rows ``pos``) along ``-direction``, project, clamp to [0, 1]."""
        from pyvlmx import ops

        # projected_step moves along +grad: descend with -direction
        return ops.projected_step(z, x0, -direction, self.step_sizes[pos], self.eps[pos],
                                  step=self.step_kind, norm=self.norm)

    def quantize(self, z: torch.Tensor, x0: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The 8-bit image of rows ``z`` inside their budgets (rows ``pos``)."""
        if self.norm != "linf":
            return quantize_to_budget(z)
        return quantize_to_budget(z, x0, self.eps[pos].to(z.device, non_blocking=True), "linf")

    def start(self, x0: torch.Tensor, seeds: Sequence[int], random: bool,
              eps: Sequence[float] | None = None) -> torch.Tensor:
        """Start points: x0, or uniform in each sample's ball (seeded per sample, not per batch).

        ``eps``: the rows' radii (default this budget's, row for row).
        """
        if not random:
            return x0.clone()
        radii = self.eps.tolist() if eps is None else list(eps)
        noise = torch.empty(x0.shape, dtype=x0.dtype)
        for j, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(int(seed))
            e = float(radii[j])
            if self.norm == "linf":
                n = torch.rand(x0.shape[1:], generator=g) * 2 - 1
                noise[j] = n * e
            else:  # l2: uniform in the ball
                n = torch.randn(x0.shape[1:], generator=g)
                r = float(torch.rand((), generator=g)) ** (1.0 / n.numel())
                noise[j] = n / n.norm() * r * e
        return (x0 + noise.to(x0.device, non_blocking=True)).clamp(0, 1)
