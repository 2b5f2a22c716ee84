"""The minimal-budget search: each sample's rounds of the loop, at other budgets.

``minimal="off"``        one round at each sample's budget;
``minimal="escalate"``   the budgets of ``eps_schedule`` in turn, a round
                         only while the sample has not succeeded;
``minimal="bisect"``     escalate, then bisect ``bisect_steps`` times between
                         the last failing and the first succeeding budget,
                         keeping the best (smallest) success.

Every round of every sample is one :class:`~pyvlmx.attacks.engine.Job` of
one :class:`~pyvlmx.attacks.engine.SlotLoop`; the schedule is the loop's
refill policy.  A sample becomes *final* (reported through ``on_final``) as
soon as nothing more will change it: in plain mode when it leaves the loop,
in escalation when it succeeds or the last budget fails, in bisection after
its last round.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from pyvlmx.attacks.engine import Job, JobQueue, Leaving, Parts, SlotLoop


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

    def store(self, ev: Leaving, eps_now: Sequence[float], t_start: float | Sequence[float]) -> None:
        """Record a group that left the loop at budgets ``eps_now``; wall time counts from ``t_start``
        (one time, or one per sample)."""
        gl = ev.index.tolist()
        where = ev.index.to(self.images.device, non_blocking=True)
        self.images.index_copy_(0, where, ev.images.to(self.images.dtype))
        self.emb.index_copy_(0, where, ev.embeddings.to(self.emb.dtype))
        now = time.perf_counter()
        succ = ev.success.tolist()
        for j, i in enumerate(gl):
            k = ev.step_of(j)
            self.success[i] = bool(succ[j])
            self.steps[i] = k
            self.total_steps[i] += k
            self.reason[i] = ev.reasons[j]
            self.rounds[i] += 1
            self.eps[i] = float(eps_now[j])
            self.wall[i] = now - (t_start if isinstance(t_start, (int, float)) else t_start[j])

    def set_best(self, i: int, best: tuple, eps: float, wall: float) -> None:
        """Sample i's result is its best bisection success ``(image, embedding, steps, reason)`` at ``eps``."""
        img, emb, steps, reason = best
        self.images[i] = img
        self.emb[i] = emb
        self.steps[i] = steps
        self.reason[i] = reason
        self.success[i] = True
        self.eps[i] = float(eps)
        self.wall[i] = wall

    def bookkeeping(self, i: int) -> dict:
        """The attack's own record of sample i (no metrics: see :mod:`pyvlmx.metrics`)."""
        return {"success": bool(self.success[i]), "reason": self.reason[i], "steps": int(self.steps[i]),
                "total_steps": int(self.total_steps[i]), "rounds": int(self.rounds[i]),
                "eps": float(self.eps[i]), "wall_s": float(self.wall[i])}


class BudgetSearch:
    """The search, one sample at a time, over the loop's slots.

    Each (sample, budget) round is a :class:`~pyvlmx.attacks.engine.Job`;
    when a round leaves its slot the sample's next round (the next budget of
    the schedule, or the next bisection midpoint) goes to the front of the
    queue, so a sample's rounds follow each other and it becomes final as
    soon as its own search ends.  A sample's decisions depend on its own
    rounds only, so its record does not depend on which samples share its
    slots, nor on the refill policy.

    Args:
        parts: the attack's parts.
        step_size: ``eps -> pixels per step``.
        norm, step_kind: the budget's norm and the projected step's mode.
        minimal, eps_schedule, bisect_steps, random_start: as in :class:`BudgetSearch`.
        batch_size: slots.
        refill: as in :class:`~pyvlmx.attacks.engine.SlotLoop`: "eager" (continuous
            batching), "half" or "drain" (the fixed schedule).
        read_every: as in :class:`~pyvlmx.attacks.engine.SlotLoop`.
    """

    def __init__(self, parts: Parts, step_size: Callable[[float], float], *, norm: str, step_kind: str,
                 minimal: str, eps_schedule: Sequence[float], bisect_steps: int, random_start: bool,
                 batch_size: int, refill: str = "eager", read_every: int = 1):
        self.parts = parts
        self.step_size = step_size
        self.norm, self.step_kind = norm, step_kind
        self.minimal = minimal
        self.schedule = [float(e) for e in eps_schedule]
        self.bisect_steps = bisect_steps
        self.random_start = random_start
        self.batch_size = batch_size
        self.refill = refill
        self.read_every = read_every
        self.loop: SlotLoop | None = None

    def _job(self, i: int, eps: float, seeds, phase: str, rnd: int = 0) -> Job:
        e = _f32(eps)  # budgets are float32: the value a per-sample budget tensor holds
        return Job(i, e, float(self.step_size(e)), int(seeds[i]), phase, rnd)

    def run(self, x0: torch.Tensor, eps: torch.Tensor, seeds: Sequence[int], out: Outcome,
            on_final: Callable[[torch.Tensor], None], order: Sequence[int] | None = None) -> None:
        """Run every sample of ``x0`` (in ``order``, default 0..B-1) to its final result."""
        B = x0.shape[0]
        order = list(range(B)) if order is None else [int(i) for i in order]
        if self.minimal == "off":
            eps_h = eps.tolist()
            first = [self._job(i, eps_h[i], seeds, "plain") for i in order]
        else:
            first = [self._job(i, self.schedule[0], seeds, "escalate", 0) for i in order]
        queue = JobQueue(first)
        lo = [0.0] * B
        hi = [float("nan")] * B
        left = [self.bisect_steps] * B  # bisection rounds still to run
        best: dict[int, tuple] = {}
        started: dict[int, float] = {}
        last_round = len(self.schedule) - 1

        def leave(ev: Leaving, jobs: list[Job]) -> None:
            final, follow = [], []
            succ = ev.success.tolist()
            index = ev.index.tolist()
            for j, (i, job) in enumerate(zip(index, jobs)):
                started.setdefault(i, job.started)
            stored = [j for j, job in enumerate(jobs) if job.phase != "bisect"]
            if stored:  # plain and escalation rounds are the sample's outcome until bisection improves on it
                sub = _subset(ev, stored)
                out.store(sub, [jobs[j].eps for j in stored], [started[index[j]] for j in stored])
            for j, (i, job) in enumerate(zip(index, jobs)):
                nonfinite = ev.reasons[j].startswith("non-finite")
                if job.phase == "plain":
                    final.append(i)
                elif job.phase == "escalate":
                    if succ[j]:
                        hi[i] = _f32(job.eps)
                        if self.minimal == "bisect" and left[i] > 0:
                            best[i] = (out.images[i].clone(), out.emb[i].clone(), int(out.steps[i]), out.reason[i])
                            follow.append(self._job(i, _mid(lo[i], hi[i]), seeds, "bisect"))
                        else:
                            final.append(i)
                    else:
                        lo[i] = job.eps
                        if job.round == last_round or nonfinite:
                            final.append(i)
                        else:
                            follow.append(self._job(i, self.schedule[job.round + 1], seeds, "escalate",
                                                    job.round + 1))
                else:  # a bisection round: counts its steps, keeps the smallest success
                    out.total_steps[i] += ev.step_of(j)
                    out.rounds[i] += 1
                    if succ[j]:
                        hi[i] = job.eps
                        best[i] = (ev.images[j].clone(), ev.embeddings[j].clone(), ev.step_of(j), ev.reasons[j])
                    else:
                        lo[i] = job.eps
                    left[i] -= 1
                    if left[i] > 0:
                        follow.append(self._job(i, _mid(lo[i], hi[i]), seeds, "bisect"))
                    else:
                        final.append(i)
            queue.push_front(follow)
            now = time.perf_counter()
            for i in final:
                if i in best:  # a bisected sample: its best (smallest-budget) success
                    out.set_best(i, best.pop(i), hi[i], now - started[i])
            if final:
                on_final(torch.tensor(sorted(final)))

        self.loop = SlotLoop(self.parts, x0, queue, self.batch_size, self.norm, self.step_kind, self.random_start,
                             leave, refill=self.refill, read_every=self.read_every)
        self.loop.run()


def _f32(v: float) -> float:
    return float(torch.tensor(float(v), dtype=torch.float32))


def _mid(lo: float, hi: float) -> float:
    """(lo + hi) / 2 in float32 (the midpoint of two float32 budgets, rounded to float32)."""
    return float((torch.tensor(lo, dtype=torch.float32) + torch.tensor(hi, dtype=torch.float32)) / 2)


def _subset(ev: Leaving, rows: Sequence[int]) -> Leaving:
    r = torch.tensor(list(rows), dtype=torch.long)
    steps = ev.steps if isinstance(ev.steps, int) else [ev.steps[j] for j in rows]
    return Leaving(ev.index[r], ev.images[r.to(ev.images.device)], ev.embeddings[r.to(ev.embeddings.device)],
                   ev.success[r], steps, [ev.reasons[j] for j in rows])
