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

:class:`SlotLoop` steps B slots, one (sample, budget) :class:`Job` in each;
each sample leaves as soon as its stop rule holds (or it fails, or reaches
the step limit), so finished samples cost nothing more, and its slot is
refilled from the :class:`JobQueue` by the loop's refill policy: at once
(continuous batching), when half the slots are free, or only when all are
(the fixed schedule: the batch shrinks as samples finish, as a plain batched
loop does).  Leaving samples are reported through ``on_leave`` with their
image, embedding, success, step count and reason.  The loop knows nothing of
PSNR, predictions or files: evaluation is :mod:`pyvlmx.metrics`' job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from pyvlmx.attacks.budget import Budget
from pyvlmx.attacks.gradient import GradientSource
from pyvlmx.attacks.objective import Objective
from pyvlmx.attacks.precision import Precision
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
        steps: the step at which they left (one int for all, or one per sample).
        reasons: k strings: "class reached", "cosine reached", "step limit",
            "ran N steps" or "non-finite ... at step N".
    """

    index: torch.Tensor
    images: torch.Tensor
    embeddings: torch.Tensor
    success: torch.Tensor
    steps: int | list[int]
    reasons: list[str]

    def step_of(self, j: int) -> int:
        """The step at which sample ``j`` of this group left."""
        return self.steps if isinstance(self.steps, int) else self.steps[j]


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
    precision: Precision | None = None  # the search's precision and its certifying fp32 forward

    @property
    def certify(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The forward every reported result comes from (fp32; ``encode`` when none is set)."""
        return self.encode if self.precision is None else self.precision.certify

    @property
    def exact(self) -> bool:
        """The search forward is the certifying one (no second check needed without quantisation)."""
        return self.precision is None or self.precision.exact


def _fail_nonfinite(parts: Parts, what: str, rows: list[int], step: int) -> None:
    if parts.errors == "raise":
        raise RuntimeError(f"embedding-alignment: non-finite {what} (NaN/Inf) from the model at step "
                           f"{step} for sample(s) {rows[:8]}; check the model and its inputs "
                           f"(errors='record' marks such samples failed instead)")


# --------------------------------------------------------------------------- continuous batching
@dataclass
class Job:
    """One loop run of one sample: sample ``index`` (into the attack batch) at budget ``eps``."""

    index: int
    eps: float
    step_size: float
    seed: int
    phase: str = "plain"  # the search round it is: "plain", "escalate" or "bisect"
    round: int = 0
    started: float = 0.0  # perf_counter() when it took a slot


class JobQueue:
    """Pending jobs; follow-up jobs of a search go to the front (a pair's rounds finish early)."""

    def __init__(self, jobs: Sequence[Job] = ()):
        from collections import deque

        self._q = deque(jobs)

    def __len__(self) -> int:
        return len(self._q)

    def push_front(self, jobs: Sequence[Job]) -> None:
        for j in reversed(list(jobs)):
            self._q.appendleft(j)

    def pop(self, n: int) -> list[Job]:
        out = []
        while self._q and len(out) < n:
            out.append(self._q.popleft())
        return out


def _dev(values: Sequence[int], device) -> torch.Tensor:
    """A host list as a device index tensor, copied without blocking (no host synchronisation)."""
    return torch.tensor(list(values), dtype=torch.long).to(device, non_blocking=True)


class _HostRead:
    """Reads small device tensors on the host: a non-blocking copy into pinned memory, then a wait
    on an event recorded after it (on CUDA; a plain copy on the CPU).  This is the loop's one
    device-to-host transfer per step; it never calls a stream or device synchronisation."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, t: torch.Tensor) -> list:
        if not self.cuda:
            return t.tolist()
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        ev.synchronize()
        return host.tolist()


REFILLS = ("eager", "half", "drain")


@dataclass
class _Seen:
    """One step of the live slots, as kept until the next read: the slots, their samples and steps,
    their iterates, embeddings and originals, and the step's (3, n) flags (stop rule met, embedding
    finite, previous gradient non-finite), still on the device."""

    live: list[int]
    live_t: torch.Tensor
    key_host: list[int]
    keys: torch.Tensor
    steps: list[int]
    z: torch.Tensor
    e: torch.Tensor
    x: torch.Tensor
    flags: torch.Tensor


class SlotLoop:
    """Continuous batching: ``batch_size`` slots kept busy until the queue is empty.

    When a sample leaves its slot (stop rule met, failure, step limit), the
    next job takes the slot at step 0 with its own step-rule state, budget
    and seed.  A sample's path depends only on its own job: its noise and
    start are seeded per sample, its state is per slot, and the encoder's
    rows do not mix.  ``on_leave(group, jobs)`` may push follow-up jobs (the
    next budget of a search) to the queue.

    The loop reads its decisions with one device-to-host transfer (the stop,
    finite and gradient-finite flags of the live slots) every ``read_every``
    steps, plus one more where some sample meets its stop rule (the fp32
    check of its 8-bit image).  Between reads every live slot steps on; each
    step's iterates, embeddings and flags are kept, and a read replays the
    window step by step, so a sample leaves at the step (with the image) it
    would have left at when read every step: its record does not depend on
    ``read_every``.  A read also comes whenever a live slot reaches the step
    limit.  Budgets and step sizes live on the host, so the projected step
    validates them without reading device memory; index lists go to the
    device with non-blocking copies.

    Args:
        parts: the attack's parts.
        x0: (N, 3, H, W) originals of every sample a job may name.
        queue: the jobs.
        batch_size: B, the number of slots.
        norm, step_kind: the budget's norm and the projected step's mode.
        random_start: start uniformly in each job's ball.
        on_leave: called with each :class:`Leaving` group (``index`` on the
            host) and its jobs.
        refill: "eager" fills a free slot at the next step; "half" waits
            until half the slots are free (for the fixed-Jacobian gradient,
            whose VJP closure is rebuilt when slots change); "drain" waits
            until every slot is free (the fixed schedule: the jobs run in
            batches of B that shrink as their samples leave).
        read_every: steps between reads of the decisions (1: every step);
            slots are freed and refilled at reads only.

    The loop steps the occupied slots only; fixed shapes are the encoder's
    business (:class:`~pyvlmx.attacks.precision.Precision` with a ``block``:
    every forward in blocks of one shape, padded), which keeps a sample's
    numbers independent of how many companions it has.
    """

    def __init__(self, parts: Parts, x0: torch.Tensor, queue: JobQueue, batch_size: int, norm: str,
                 step_kind: str, random_start: bool, on_leave: Callable[[Leaving, list[Job]], None], *,
                 refill: str = "eager", read_every: int = 1):
        if refill not in REFILLS:
            raise ValueError(f"refill must be one of {list(REFILLS)}, got {refill!r}")
        if isinstance(read_every, bool) or not isinstance(read_every, int) or read_every < 1:
            raise ValueError(f"read_every must be an integer >= 1, got {read_every!r}")
        self.read_every = read_every
        self.window: list[_Seen] = []  # the steps since the last read
        B = int(batch_size)
        if B < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.parts, self.x0, self.queue, self.B = parts, x0, queue, B
        self.device = x0.device
        self.refill = refill
        self.random_start = random_start
        self.on_leave = on_leave
        self.read = _HostRead(self.device)
        self.z = torch.zeros((B, *x0.shape[1:]), dtype=torch.float32, device=self.device)
        self.xs = torch.zeros_like(self.z)
        self.job: list[Job | None] = [None] * B
        self.steps = [0] * B  # each slot's step
        self.gbad = torch.zeros(B, dtype=torch.bool, device=self.device)  # last gradient was non-finite
        self.budget = Budget(norm, torch.zeros(B, dtype=torch.float32), torch.zeros(B, dtype=torch.float32),
                             step_kind)
        self.rule = parts.make_step_rule()
        self.rule.init(self.z)
        self.fresh = True  # slots changed since the gradient source last started
        self.entered = 0   # samples that took a slot since the last step (for tests and telemetry)

    # ------------------------------------------------------------------ slots
    def _fill(self) -> None:
        free = [s for s in range(self.B) if self.job[s] is None]
        self.entered = 0
        if not free or not len(self.queue):
            return
        if len(free) < self.B and (self.refill == "drain" or (self.refill == "half" and len(free) * 2 < self.B)):
            return
        new = self.queue.pop(len(free))
        rows = free[:len(new)]
        now = time.perf_counter()
        for s, job in zip(rows, new):
            job.started = now
            self.job[s] = job
            self.steps[s] = 0
            self.budget.eps[s] = job.eps
            self.budget.step_sizes[s] = job.step_size
        r = _dev(rows, self.device)
        xr = self.x0.index_select(0, _dev([j.index for j in new], self.device))
        self.xs.index_copy_(0, r, xr)
        self.z.index_copy_(0, r, self.budget.start(xr, [j.seed for j in new], self.random_start,
                                                   [j.eps for j in new]))
        self.gbad.index_fill_(0, r, False)
        self.rule.reset(rows)
        self.fresh = True
        self.entered = len(new)

    @property
    def busy(self) -> int:
        """Occupied slots."""
        return sum(j is not None for j in self.job)

    def run(self) -> None:
        """Step until every job has left."""
        while self.step():
            pass

    # ------------------------------------------------------------------- step
    def step(self) -> bool:
        """Fill free slots (after a read), then one step of every occupied slot; False when nothing is
        left to run."""
        parts, stop, device = self.parts, self.parts.stop, self.device
        if self.window:  # slots are freed and refilled at reads only: the window's slots are still live
            self.entered = 0
            w0 = self.window[0]
            live, live_t, key_host, keys, xb = w0.live, w0.live_t, w0.key_host, w0.keys, w0.x
        else:
            self._fill()
            live = [s for s in range(self.B) if self.job[s] is not None]
            if not live:
                return False
            live_t = _dev(live, device)
            key_host = [self.job[s].index for s in live]
            keys = _dev(key_host, device)
            xb = self.xs.index_select(0, live_t)
        zb = self.z.index_select(0, live_t)
        if self.fresh:
            parts.gradient.start(self.xs)
            self.fresh = False
        if parts.gradient.needs_graph:
            zb = zb.detach().requires_grad_(True)
            emb = parts.encode(zb)
        else:
            with torch.no_grad():
                emb = parts.encode(zb)
        with torch.no_grad():
            e = emb.detach()
            finite = torch.isfinite(e).all(dim=1)
            ok = stop.ok(e, keys) & finite
            flags = torch.stack([ok, finite, self.gbad.index_select(0, live_t)])
        steps = [self.steps[s] for s in live]
        self.window.append(_Seen(live, live_t, key_host, keys, steps, zb.detach(), e, xb, flags))
        if len(self.window) >= self.read_every or max(steps) >= parts.max_steps:
            self._read()
        stay = [j for j, s in enumerate(live) if self.job[s] is not None]
        if stay:
            self._move(zb, emb, keys, live, live_t, stay, key_host)
        return True

    def _read(self) -> None:
        """Read the window's flags (one transfer), and replay its steps in order: each live slot
        leaves at its first step with a non-finite embedding or gradient, a stop rule that holds for
        its fp32-checked 8-bit image, or the step limit."""
        parts, stop, device = self.parts, self.parts.stop, self.device
        window, self.window = self.window, []
        flags = self.read(torch.stack([w.flags for w in window]))  # (T, 3, n): stop met, finite, last gradient bad
        first = window[0]
        n, T = len(first.live), len(window)
        check = parts.quantize or not parts.exact
        bad_at: dict[int, int] = {}
        cands: list[tuple[int, int]] = []  # (window step, row): stop rule met, to be checked in fp32
        for j in range(n):
            for t in range(T):
                ok, fin, gbad = flags[t][0][j], flags[t][1][j], flags[t][2][j]
                if not fin or gbad:
                    bad_at[j] = t
                    break
                if ok and stop.rule != "steps":
                    cands.append((t, j))
                    if not check:
                        break  # the search forward is the certifying one: it leaves here
        done_at: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}
        if cands:
            with torch.no_grad():
                zc = torch.stack([window[t].z[j] for t, j in cands])
                if check:
                    rows = _dev([j for _, j in cands], device)
                    q = self.budget.quantize(zc, first.x.index_select(0, rows),
                                             torch.tensor([first.live[j] for _, j in cands])) \
                        if parts.quantize else zc
                    eq = parts.certify(q)
                    okq = self.read(stop.ok(eq, first.keys.index_select(0, rows)) & torch.isfinite(eq).all(dim=1))
                else:
                    q, eq, okq = zc, torch.stack([window[t].e[j] for t, j in cands]), [True] * len(cands)
            for c, (t, j) in enumerate(cands):
                if okq[c] and j not in done_at:
                    done_at[j] = (t, q[c], eq[c])
        leave_at: dict[int, int] = {}
        for j in range(n):  # candidates come before a row's first bad step, so a success is the earlier
            t = done_at[j][0] if j in done_at else bad_at.get(j)
            if t is None and window[-1].steps[j] >= parts.max_steps:
                t = T - 1
            if t is not None:
                leave_at[j] = t
        for t in range(T):
            rows = [j for j in range(n) if leave_at.get(j) == t]
            if not rows:
                continue
            w = window[t]
            fin_h, gbad_h = flags[t][1], flags[t][2]
            bad = [j for j in rows if not fin_h[j] or gbad_h[j]]
            if bad:
                what = "embedding" if any(not fin_h[j] for j in bad) else "gradient"
                j0 = bad[0]
                _fail_nonfinite(parts, what, [w.key_host[j] for j in bad], w.steps[j0] - (1 if fin_h[j0] else 0))
            done = {j: done_at[j][1:] for j in rows if j in done_at}
            group = self._leave(w, rows, done, fin_h, gbad_h)
            jobs = [self.job[first.live[j]] for j in rows]
            for j in rows:
                self.job[first.live[j]] = None
            self.on_leave(group, jobs)

    def _move(self, zb, emb, keys, live, live_t, stay, key_host) -> None:
        """The gradient step of rows ``stay``; a non-finite gradient leaves its sample where it was."""
        device = self.device
        stay_t = _dev(stay, device)
        slots = [live[j] for j in stay]
        g = self.parts.gradient(zb, emb, keys, live_t, stay_t, [self.steps[s] for s in slots],
                                [key_host[j] for j in stay])
        with torch.no_grad():
            gfin = torch.isfinite(g.flatten(1)).all(dim=1)
            shape = (-1,) + (1,) * (g.dim() - 1)
            g = torch.where(gfin.view(shape), g, torch.zeros_like(g))
            direction = self.rule.direction(g, slots)
            sd = _dev(slots, device)
            zs = self.z.index_select(0, sd)
            moved = self.budget.step(zs, self.xs.index_select(0, sd), direction, torch.tensor(slots))
            self.z.index_copy_(0, sd, torch.where(gfin.view(shape), moved, zs))
            self.gbad.index_copy_(0, sd, ~gfin)
        for s in slots:
            self.steps[s] += 1

    def _leave(self, w: "_Seen", leaving, done, fin_h, gbad_h) -> Leaving:
        """The :class:`Leaving` group of rows ``leaving`` at window step ``w``: final images, fp32
        embeddings, reasons."""
        parts, stop, device = self.parts, self.parts.stop, self.device
        zb, e, xb, live, key_host = w.z, w.e, w.x, w.live, w.key_host
        n = len(leaving)
        imgs = torch.empty((n, *zb.shape[1:]), dtype=zb.dtype, device=device)
        embs = torch.empty((n, e.shape[1]), dtype=e.dtype, device=device)
        reasons, succ, steps, limit = [], [], [], []
        for i, j in enumerate(leaving):
            k = w.steps[j]
            if j in done:
                imgs[i], embs[i] = done[j]
                reasons.append(stop.reason)
            else:
                imgs[i], embs[i] = zb[j], e[j]
                if not fin_h[j]:
                    reasons.append(f"non-finite embedding at step {k}")
                elif gbad_h[j]:  # the gradient of the step before was non-finite; the image is that step's
                    k -= 1
                    reasons.append(f"non-finite gradient at step {k}")
                else:
                    reasons.append("step limit")
                    limit.append(i)
            steps.append(k)
            succ.append(j in done)
        if limit and (parts.quantize or not parts.exact):  # the 8-bit rounding of the last iterate, in fp32
            lt = _dev(limit, device)
            q = imgs.index_select(0, lt)
            with torch.no_grad():
                if parts.quantize:
                    q = self.budget.quantize(q, xb.index_select(0, _dev([leaving[i] for i in limit], device)),
                                             torch.tensor([live[leaving[i]] for i in limit]))
                imgs.index_copy_(0, lt, q)
                embs.index_copy_(0, lt, self.parts.certify(q))
        index = torch.tensor([key_host[j] for j in leaving], dtype=torch.long)
        success = torch.tensor(succ, dtype=torch.bool)
        if stop.rule == "steps":  # judged once, on the final (rounded) image
            with torch.no_grad():
                ok = torch.tensor(self.read(stop.ok(embs, index.to(device, non_blocking=True), stop.final)),
                                  dtype=torch.bool)
            success = ok & torch.tensor([r == "step limit" for r in reasons], dtype=torch.bool)
            reasons = [r if r != "step limit" else f"ran {k} steps" for r, k in zip(reasons, steps)]
        return Leaving(index, imgs, embs, success, steps, reasons)
