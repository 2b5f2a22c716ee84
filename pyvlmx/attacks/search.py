"""The minimal-budget search: the loop, called again with other budgets.

``minimal="off"``        one loop at each sample's budget;
``minimal="escalate"``   the budgets of ``eps_schedule`` in turn, each round
                         only for the samples that have not succeeded yet;
``minimal="bisect"``     escalate, then bisect ``bisect_steps`` times between
                         the last failing and the first succeeding budget,
                         keeping the best (smallest) success.

A sample becomes *final* (reported through ``on_final``) as soon as nothing
more will change it: in plain mode when it leaves the loop, in escalation
when it succeeds or the last budget fails, in bisection at the end.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from pyvlmx.attacks.budget import Budget
from pyvlmx.attacks.engine import Leaving, Parts, run_loop


class Outcome:
    """Per-sample results of an attack run, filled as samples leave the loop."""

    def __init__(self, B: int, shape, D: int, device, eps: torch.Tensor):
        self.images = torch.zeros((B, *shape), device=device)
        self.emb = torch.zeros(B, D, device=device)
        self.steps = torch.zeros(B, dtype=torch.long)
        self.success = torch.zeros(B, dtype=torch.bool)
        self.wall = torch.zeros(B, dtype=torch.float64)
        self.reason = [""] * B
        self.eps = eps.clone()
        self.rounds = torch.zeros(B, dtype=torch.long)
        self.total_steps = torch.zeros(B, dtype=torch.long)

    def store(self, ev: Leaving, eps_now: Sequence[float], t_start: float) -> None:
        gl = ev.index.tolist()
        self.images[ev.index] = ev.images.to(self.images.dtype)
        self.emb[ev.index] = ev.embeddings
        now = time.perf_counter() - t_start
        for j, i in enumerate(gl):
            self.success[i] = bool(ev.success[j])
            self.steps[i] = ev.steps
            self.total_steps[i] += ev.steps
            self.reason[i] = ev.reasons[j]
            self.rounds[i] += 1
            self.eps[i] = float(eps_now[j])
            self.wall[i] = now

    def bookkeeping(self, i: int) -> dict:
        """The attack's own record of sample i (no metrics: see :mod:`pyvlmx.metrics`)."""
        return {"success": bool(self.success[i]), "reason": self.reason[i], "steps": int(self.steps[i]),
                "total_steps": int(self.total_steps[i]), "rounds": int(self.rounds[i]),
                "eps": float(self.eps[i]), "wall_s": float(self.wall[i])}


class BudgetSearch:
    """Runs the loop for a batch under a minimal-budget mode.

    Args:
        parts: the attack's parts.
        make_budget: ``(eps (n,)) -> Budget`` for n samples.
        minimal: "off", "escalate" or "bisect".
        eps_schedule, bisect_steps: the search's budgets and rounds.
        random_start: start uniformly in the ball.
    """

    def __init__(self, parts: Parts, make_budget: Callable[[torch.Tensor], Budget], *, minimal: str,
                 eps_schedule: Sequence[float], bisect_steps: int, random_start: bool):
        self.parts = parts
        self.make_budget = make_budget
        self.minimal = minimal
        self.schedule = list(eps_schedule)
        self.bisect_steps = bisect_steps
        self.random_start = random_start

    def run(self, x0: torch.Tensor, eps: torch.Tensor, seeds: Sequence[int], out: Outcome,
            on_final: Callable[[torch.Tensor], None]) -> None:
        t_start = time.perf_counter()
        B = x0.shape[0]
        device = x0.device
        all_idx = torch.arange(B, device=device)
        if self.minimal == "off":
            def leave(ev: Leaving) -> None:
                out.store(ev, eps[ev.index].tolist(), t_start)
                on_final(ev.index)
            self._loop_at(x0, all_idx, eps, seeds, leave)
            return
        lo, hi = self._escalate(x0, seeds, out, on_final, t_start)
        if self.minimal == "bisect":
            self._bisect(x0, seeds, out, on_final, t_start, lo, hi)

    def _escalate(self, x0, seeds, out, on_final, t_start):
        B = x0.shape[0]
        device = x0.device
        lo = torch.zeros(B, dtype=torch.float32, device=device)
        hi = torch.full((B,), float("nan"), dtype=torch.float32, device=device)
        pending = torch.arange(B, device=device)
        for r, e in enumerate(self.schedule):
            if pending.numel() == 0:
                break
            last_round = r == len(self.schedule) - 1
            succeeded: list[int] = []

            def leave(ev: Leaving, _e=e, _last=last_round) -> None:
                out.store(ev, [_e] * ev.index.numel(), t_start)
                final = []
                for j, i in enumerate(ev.index.tolist()):
                    if bool(ev.success[j]):
                        hi[i] = _e
                        succeeded.append(i)
                    else:
                        lo[i] = _e
                    if (bool(ev.success[j]) and self.minimal == "escalate") or \
                            (not bool(ev.success[j]) and _last) or ev.reasons[j].startswith("non-finite"):
                        final.append(i)
                if final:
                    on_final(torch.tensor(final, device=device))

            eps_now = torch.full((pending.numel(),), e, dtype=torch.float32, device=device)
            self._loop_at(x0, pending, eps_now, seeds, leave)
            done = set(succeeded) | {i for i in pending.tolist() if out.reason[i].startswith("non-finite")}
            pending = torch.tensor([i for i in pending.tolist() if i not in done], dtype=torch.long, device=device)
        return lo, hi

    def _loop_at(self, x0, idx, eps_for_idx, seeds, on_leave):
        run_loop(self.parts, x0, idx, self.make_budget(eps_for_idx), [seeds[i] for i in idx.tolist()],
                 self.random_start, on_leave)

    def _bisect(self, x0, seeds, out, on_final, t_start, lo, hi):
        B = x0.shape[0]
        device = x0.device
        cand = torch.tensor([i for i in range(B) if bool(out.success[i])], dtype=torch.long, device=device)
        best = {i: (out.images[i].clone(), out.emb[i].clone(), int(out.steps[i]), out.reason[i])
                for i in cand.tolist()}
        for _ in range(self.bisect_steps):
            if cand.numel() == 0:
                break
            mid = (lo[cand] + hi[cand]) / 2

            def leave(ev: Leaving, _mid=mid, _cand=cand) -> None:
                pos = torch.searchsorted(_cand, ev.index)
                for j, i in enumerate(ev.index.tolist()):
                    me = float(_mid[pos[j]])
                    out.total_steps[i] += ev.steps
                    out.rounds[i] += 1
                    if bool(ev.success[j]):
                        hi[i] = me
                        best[i] = (ev.images[j].clone(), ev.embeddings[j].clone(), ev.steps, ev.reasons[j])
                    else:
                        lo[i] = me

            self._loop_at(x0, cand, mid, seeds, leave)
        now = time.perf_counter() - t_start
        for i, (img, emb, steps, reason) in best.items():
            out.images[i] = img
            out.emb[i] = emb
            out.steps[i] = steps
            out.reason[i] = reason
            out.success[i] = True
            out.eps[i] = float(hi[i])
            out.wall[i] = now
        if best:
            on_final(torch.tensor(sorted(best), device=device))
