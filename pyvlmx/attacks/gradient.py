"""Where the gradient comes from: exact autograd, or the paper's fixed Jacobian.

    exact            g = dL/dx at the current iterate (autograd through the encoder)
    fixed_jacobian   g = J(x0)^T dL/df(x): one VJP closure of the encoder at x0
                     (``torch.func.vjp``), built once and reused at every step

Both are asked for the rows of the batch that stay; the exact source needs
the forward to have run with autograd on (:attr:`GradientSource.needs_graph`).
"""

from __future__ import annotations

from typing import Callable

import torch

from pyvlmx.attacks.objective import Objective


class GradientSource:
    needs_graph = True

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], objective: Objective):
        self.encode = encode
        self.objective = objective

    def start(self, x0: torch.Tensor) -> None:
        """A new loop over samples with originals ``x0`` (rows of the batch)."""

    def __call__(self, z: torch.Tensor, emb: torch.Tensor, gidx: torch.Tensor, act: torch.Tensor,
                 rows: torch.Tensor, step, keys=None) -> torch.Tensor:
        """Gradient of the objective for batch rows ``rows``: (len(rows), ...).

        ``z`` (R, ...) is the batch, ``emb`` its embeddings, ``gidx`` (R,) the
        rows' sample indices and ``act`` (R,) their positions in the loop
        (slots, in continuous batching); ``step`` the step (one, or one per
        row of ``rows``) and ``keys`` the rows' sample indices on the host.
        """
        raise NotImplementedError


class ExactGradient(GradientSource):
    def __call__(self, z, emb, gidx, act, rows, step, keys=None):
        loss = self.objective.total(self.encode, z, emb, gidx, rows, step, keys)
        (g,) = torch.autograd.grad(loss, z)
        return g[rows]


class FixedJacobianGradient(GradientSource):
    """J(x0)^T dL/df at the current embedding; the closure is rebuilt only when half its rows have left."""

    needs_graph = False

    def __init__(self, encode, objective):
        if objective.eot_samples:
            raise ValueError("embedding-alignment: gradient='fixed_jacobian' takes no EOT (eot_samples > 0): "
                             "the noisy copies need their own Jacobians; use gradient='exact'")
        super().__init__(encode, objective)
        self.closure = None  # (positions covered, vjp_fn)

    def start(self, x0: torch.Tensor) -> None:
        self.x0 = x0
        self.closure = None

    def __call__(self, z, emb, gidx, act, rows, step, keys=None):
        e = emb.detach()[rows].clone().requires_grad_(True)
        with torch.enable_grad():
            lk = self.objective.rows(e, gidx[rows]).sum()
            (cot,) = torch.autograd.grad(lk, e)
        cover = act[rows]
        if self.closure is None or cover.numel() * 2 <= self.closure[0].numel():
            _, vjp_fn = torch.func.vjp(self.encode, self.x0[cover])
            self.closure = (cover, vjp_fn)
        full = torch.zeros(self.closure[0].numel(), cot.shape[1], device=cot.device)
        where = torch.searchsorted(self.closure[0], cover)
        full[where] = cot
        with torch.no_grad():
            (g,) = self.closure[1](full)
        return g[where]
