"""The one optimisation loop every attack in pyvlmx runs.

An attack is a combination of parts (torchattacks' and AutoAttack's
separation of loss, step rule and schedule):

* an :class:`~pyvlmx.attacks.objective.Objective` (what is minimised, with
  optional expectation over noise),
* a :class:`~pyvlmx.attacks.steps.StepRule` (how a step is taken, with
  per-sample state),
* a :class:`~pyvlmx.attacks.budget.Budget` (where the image may go),
* a :class:`~pyvlmx.attacks.stop.StopRule` (when a sample is done), judged on
  the 8-bit image when ``quantize``,
* a :class:`~pyvlmx.attacks.gradient.GradientSource` (exact or fixed Jacobian).

:func:`run_loop` steps a batch; each sample leaves as soon as its stop rule
holds (or it fails, or reaches the step limit), so finished samples cost
nothing more.  Leaving samples are reported through ``on_leave`` with their
image, embedding, success, step count and reason.  The loop knows nothing of
PSNR, predictions or files: evaluation is :mod:`pyvlmx.metrics`' job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from pyvlmx.attacks.budget import Budget
from pyvlmx.attacks.gradient import GradientSource
from pyvlmx.attacks.objective import Objective
from pyvlmx.attacks.steps import StepRule
from pyvlmx.attacks.stop import StopRule


@dataclass
class Leaving:
    """Samples that left the loop together at one step.

    Attributes:
        index: (k,) sample indices (into the attack's batch).
        images: (k, 3, H, W) final images (their 8-bit rounding when quantizing).
        embeddings: (k, D) embeddings of ``images``.
        success: (k,) bool.
        steps: the step at which they left.
        reasons: k strings: "class reached", "cosine reached", "step limit",
            "ran N steps" or "non-finite ... at step N".
    """

    index: torch.Tensor
    images: torch.Tensor
    embeddings: torch.Tensor
    success: torch.Tensor
    steps: int
    reasons: list[str]


@dataclass
class Parts:
    """The parts of one attack, shared by every loop it runs."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    objective: Objective
    stop: StopRule
    gradient: GradientSource
    make_step_rule: Callable[[], StepRule]
    quantize: bool
    max_steps: int
    errors: str  # "raise" or "record"


def _fail_nonfinite(parts: Parts, what: str, rows: list[int], step: int) -> None:
    if parts.errors == "raise":
        raise RuntimeError(f"embedding-alignment: non-finite {what} (NaN/Inf) from the model at step "
                           f"{step} for sample(s) {rows[:8]}; check the model and its inputs "
                           f"(errors='record' marks such samples failed instead)")


def run_loop(parts: Parts, x0: torch.Tensor, idx: torch.Tensor, budget: Budget, seeds: Sequence[int],
             random_start: bool, on_leave: Callable[[Leaving], None]) -> None:
    """Run the step loop for samples ``idx`` of ``x0`` under ``budget`` (one radius per entry of ``idx``).

    Args:
        parts: the attack's parts.
        x0: (B, 3, H, W) originals of the whole attack batch.
        idx: (n,) sample indices this loop runs.
        budget: radii and step sizes for the n samples, in ``idx`` order.
        seeds: the n samples' seeds (random start).
        random_start: start uniformly in the ball.
        on_leave: called with each :class:`Leaving` group; every sample of
            ``idx`` leaves exactly once.
    """
    stop = parts.stop
    x0_loop = x0[idx]
    z = budget.start(x0_loop, seeds, random_start)
    act = torch.arange(idx.numel(), device=x0.device)  # batch row -> position in idx
    rule = parts.make_step_rule()
    rule.init(z)
    parts.gradient.start(x0_loop)
    graph = parts.gradient.needs_graph

    for k in range(parts.max_steps + 1):
        gidx = idx[act]
        if graph:
            z.requires_grad_(True)
            emb = parts.encode(z)
        else:
            with torch.no_grad():
                emb = parts.encode(z)
        with torch.no_grad():
            e = emb.detach()
            finite = torch.isfinite(e).all(dim=1)
            if not bool(finite.all()):
                _fail_nonfinite(parts, "embedding", gidx[~finite].tolist(), k)
            ok = stop.ok(e, gidx) & finite
            done = torch.zeros_like(ok)
            final_img = z.detach()
            final_emb = e
            if stop.rule != "steps" and bool(ok.any()):
                if parts.quantize:
                    cand = ok.nonzero().squeeze(1)
                    q = budget.quantize(z.detach()[cand], x0_loop[act[cand]], act[cand])
                    eq = parts.encode(q)
                    okq = stop.ok(eq, gidx[cand]) & torch.isfinite(eq).all(dim=1)
                    sel = cand[okq]
                    done[sel] = True
                    final_img = z.detach().clone()
                    final_img[sel] = q[okq]
                    final_emb = e.clone()
                    final_emb[sel] = eq[okq]
                else:
                    done = ok
            bad = ~finite
            last = k == parts.max_steps
            leaving = done | bad | (torch.ones_like(done) if last else torch.zeros_like(done))
            if bool(leaving.any()):
                on_leave(_leave(parts, stop, budget, x0_loop, act, gidx, leaving, done, bad, final_img,
                                final_emb, k))
            if last:
                break
            keep = ~leaving
            if not bool(keep.any()):
                return
            kpos = keep.nonzero().squeeze(1)

        g = parts.gradient(z, emb, gidx, act, kpos, k)
        z = z.detach()
        with torch.no_grad():
            gfin = torch.isfinite(g.flatten(1)).all(dim=1)
            if not bool(gfin.all()):
                _fail_nonfinite(parts, "gradient", gidx[kpos][~gfin].tolist(), k)
                pos = kpos[~gfin]
                n = pos.numel()
                on_leave(Leaving(gidx[pos], z[pos], e[pos], torch.zeros(n, dtype=torch.bool), k,
                                 [f"non-finite gradient at step {k}"] * n))
                kpos, g = kpos[gfin], g[gfin]
                if kpos.numel() == 0:
                    return
            rule.keep(kpos)  # the step rule's state follows the samples that stay
            direction = rule.direction(g)
            ak = act[kpos]
            z = budget.step(z[kpos], x0_loop[ak], direction, ak)
            act = ak


def _leave(parts, stop, budget, x0_loop, act, gidx, leaving, done, bad, final_img, final_emb, k) -> Leaving:
    pos = leaving.nonzero().squeeze(1)
    reasons = []
    for p in pos.tolist():
        if bool(done[p]):
            reasons.append(stop.reason)
        elif bool(bad[p]):
            reasons.append(f"non-finite embedding at step {k}")
        else:
            reasons.append("step limit")
    imgs = final_img[pos]
    embs = final_emb[pos]
    if parts.quantize:  # failed samples too are returned as their 8-bit rounding
        nq = (~done[pos]) & (~bad[pos])
        if bool(nq.any()):
            sub = nq.nonzero().squeeze(1)
            imgs = imgs.clone()
            embs = embs.clone()
            imgs[sub] = budget.quantize(imgs[sub], x0_loop[act[pos[sub]]], act[pos[sub]])
            embs[sub] = parts.encode(imgs[sub])
    succ = done[pos]
    if stop.rule == "steps":  # judged once, on the final (rounded) image
        succ = stop.ok(embs, gidx[pos], stop.final) & ~bad[pos]
        reasons = [r if r != "step limit" else f"ran {k} steps" for r in reasons]
    return Leaving(gidx[pos], imgs, embs, succ, k, reasons)
