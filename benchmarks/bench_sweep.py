"""The systematic sweep's throughput: today's path, continuous batching, precision, a plain PGD loop.

    python -m benchmarks.bench_sweep [--quick] [--device cuda] [--out DIR]

Every row runs the same pairs (the sample photos, K target classes each, text
targets, L-inf 4/255, sign steps) in this one process:

a. ``fixed-fp32``: the path before continuous batching (``--schedule fixed
   --precision fp32``): fixed chunks of ``batch`` pairs, each running its
   rounds together and shrinking as its pairs finish, fp32, the model as
   loaded before its fast path (``load_model(..., fast=False)``: no
   BatchNorm folding, no channels-last).
b. ``continuous-fp32``: continuous batching (fixed shapes), fp32, the model's
   default (fast) load.
c. ``continuous-<best>``: continuous, the best precision the device runs
   (``--precision auto``: bf16 on CUDA, fp32 on the CPU); on the CPU a
   ``step-bf16`` row times one bf16 step against fp32, at the 4-row block
   the CPU search runs, to show why; on CUDA a ``c4`` row runs (c) with
   ``--read-every 4``.
d. ``plain-pgd``: a batched PyTorch PGD loop as researchers write it (fixed
   step count, no per-sample stopping, as in AttackVLM's MF-ii), on the
   same pairs, batch and model as (c); the step count is raised (8, 16, 32,
   ...; at most twice the attack's step cap) until its success reaches (a)'s, and that count's
   time is reported (one run serves every count: see :func:`plain_pgd`).

The sweep rows run ``repeats`` times, interleaved (a, b, c, a, b, c, ...;
3 on the CPU, ``PYVLMX_BENCH_REPEATS``): each row gives its median wall
time and range, and the median and range of the ratios of its runs to the
run of (a) beside them, so a drift of the machine's load moves both.

Columns: pairs/s, success, median PSNR (of the saved 8-bit images), the
ratio to (a) and, for the step, achieved TFLOP/s
counted by ``torch.utils.flop_counter`` on one forward+backward of the
encoder at the batch size, with the fraction of the device's peak (which
peak is named in the row).

Sizes: CPU: the offline default model, 3 targets per photo (the study's 69
pairs), batch 32, at most 100 steps (the study's attack).  CUDA:
``open_clip:ViT-B-16`` with random weights, every other class per photo (483
pairs), batch 256, at most 50 steps.  ``PYVLMX_BENCH_MODEL``,
``PYVLMX_BENCH_TARGETS``, ``PYVLMX_BENCH_BATCH``, ``PYVLMX_BENCH_STEPS`` and
``PYVLMX_BENCH_REPEATS`` override them.  ``--quick``: the tiny ViT on a few pairs (a smoke run).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from benchmarks._common import main as bench_main
from benchmarks._common import sync

COLUMNS = ["bench", "device", "model", "schedule", "precision", "fast_model", "batch", "pairs", "steps_cap",
           "runs", "wall_s", "wall_range", "pairs_per_s", "ratio_to_a", "ratio_range", "success", "median_psnr", "pgd_steps", "step_ms",
           "step_tflops", "peak_tflops", "peak", "frac_of_peak", "note"]

# dense peaks of the GPU the project is lent (NVIDIA H200 SXM datasheet), TFLOP/s
_GPU_PEAKS = {"bf16": (989.0, "H200 bf16 dense"), "tf32": (494.0, "H200 tf32 dense"),
              "fp32": (67.0, "H200 fp32 (no tensor cores)")}


def _cpu_peak() -> tuple[float | None, str]:
    """fp32 FMA peak of this CPU from its flags and clock: cores x GHz x lanes x 2 FMA units x 2."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, "unknown"
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    mhz = [float(ln.split(":", 1)[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")]
    if not mhz:
        return None, "unknown"
    lanes = 16 if "avx512f" in flags else (8 if "avx2" in flags else 4)
    cores = torch.get_num_threads()
    ghz = max(mhz) / 1000
    peak = cores * ghz * lanes * 2 * 2 / 1000
    return peak, f"{cores} threads x {ghz:.2f} GHz x {lanes} fp32 lanes x 2 FMA x 2"


def _settings(quick: bool, device: str) -> dict:
    cuda = torch.device(device).type == "cuda"
    if quick:
        base = {"model": "open_clip:pyvlmx-tiny-vit", "targets": 2, "batch": 4, "steps": 40, "eps": 32 / 255,
                "max_images": 6, "repeats": 1}
    elif cuda:
        base = {"model": "open_clip:ViT-B-16", "targets": "all",
                "batch": 256, "steps": 50, "eps": 4 / 255, "max_images": None, "repeats": 1}
    else:
        base = {"model": "default", "targets": 3, "batch": 32, "steps": 100, "eps": 4 / 255, "max_images": None,
                "repeats": 3}
    if os.environ.get("PYVLMX_BENCH_MODEL") and not quick:
        base["model"] = os.environ["PYVLMX_BENCH_MODEL"]
    env = {"targets": "PYVLMX_BENCH_TARGETS", "batch": "PYVLMX_BENCH_BATCH", "steps": "PYVLMX_BENCH_STEPS",
           "repeats": "PYVLMX_BENCH_REPEATS"}
    for key, var in env.items():
        if os.environ.get(var):
            v = os.environ[var]
            base[key] = v if v == "all" else int(v)
    return base


def _load(spec: str, device: str, fast: bool):
    from pyvlmx.models import load_model

    kw = {} if fast or not spec.startswith(("default", "conse")) else {"fast": False}
    return load_model(spec, device=device, seed=0, **kw) if spec.startswith("open_clip:") \
        else load_model(spec, device=device, **kw)


def _sweep_row(name, model, data, st, device, *, schedule, precision, fast, read_every=1) -> dict:
    from pyvlmx.systematic import load_records, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t0 = time.perf_counter()
        run_sweep(model, data, Path(tmp) / "s", progress=False, targets=st["targets"], batch_size=st["batch"],
                  max_images=st["max_images"], eps=st["eps"], max_steps=st["steps"], schedule=schedule,
                  precision=precision, read_every=read_every)
        sync(device)
        wall = time.perf_counter() - t0
        recs = load_records(Path(tmp) / "s")
    from pyvlmx.attacks import record_success

    psnr = [r["psnr"] for r in recs if r.get("psnr") is not None]
    return {"bench": name, "schedule": schedule, "precision": recs[0].get("search_precision", precision),
            "fast_model": fast, "pairs": len(recs), "steps_cap": st["steps"], "wall_s": wall,
            "pairs_per_s": len(recs) / wall, "success": sum(map(record_success, recs)) / len(recs),
            "median_psnr": statistics.median(psnr) if psnr else None}


def _summary(rs: list[dict], a_runs: list[dict]) -> dict:
    """One row of repeated sweep runs: the median wall time, its range, and the median (range) of the
    ratios of each run's pairs/s to the (a) run beside it.  Success and PSNR must not vary."""
    first = rs[0]
    for r in rs[1:]:
        if (r["success"], r["median_psnr"], r["pairs"]) != (first["success"], first["median_psnr"], first["pairs"]):
            raise RuntimeError(f"{first['bench']}: repeated runs differ in success or PSNR: "
                               f"{[(x['success'], x['median_psnr']) for x in rs]}")
    walls = [r["wall_s"] for r in rs]
    ratios = [r["pairs_per_s"] / a["pairs_per_s"] for r, a in zip(rs, a_runs)]
    wall = statistics.median(walls)
    return dict(first, runs=len(rs), wall_s=wall, wall_range=f"{min(walls):.1f}-{max(walls):.1f}",
                pairs_per_s=first["pairs"] / wall, ratio_to_a=statistics.median(ratios),
                ratio_range=f"{min(ratios):.2f}-{max(ratios):.2f}")


def _pairs_tensors(model, data, st, device):
    """The sweep's pairs as tensors: originals (8-bit), target classes, zero-shot weights."""
    from pyvlmx.attacks import quantize_to_budget
    from pyvlmx.systematic.pairs import build_pairs
    from pyvlmx.zeroshot import ZeroShotClassifier

    labels = [int(y) for _, y in data.samples]
    pairs = build_pairs(labels, len(data.classnames), targets=st["targets"], target_mode="text", seed=0,
                        max_images=st["max_images"])
    imgs = {i: quantize_to_budget(data[i][0]) for i in {p.image_index for p in pairs}}
    x = torch.stack([imgs[p.image_index] for p in pairs]).to(device)
    tc = torch.tensor([p.target_class for p in pairs], device=device)
    W = ZeroShotClassifier(model, list(data.classnames), "short").weights.to(device)
    return x, tc, W


def plain_pgd(model, x, tc, W, *, eps: float, checkpoints: Sequence[int], batch: int, precision: str):
    """A PGD loop as researchers write it: fixed sign steps of eps/8 on 1/2 ||f(x) - t||^2, no
    per-sample stopping, success judged once on the 8-bit rounded result.

    One run serves every step count of ``checkpoints`` (increasing): the loop has no random start,
    so its first n steps are exactly the n-step loop.  At each checkpoint n it yields
    ``(n, wall_s, success, median_psnr)``, where ``wall_s`` is the time of n steps of every batch
    plus that checkpoint's one final evaluation (what the n-step loop costs); the other
    checkpoints' evaluations are not counted."""
    from pyvlmx.attacks import quantize_to_budget, targeted_success
    from pyvlmx.attacks.precision import Precision
    from pyvlmx.ops import psnr

    device = x.device
    encode = Precision(model.encode_image, precision, device).search  # the forward in ``precision``, fp32 out
    chunks = [(x[i:i + batch], tc[i:i + batch]) for i in range(0, x.shape[0], batch)]
    zs = [x0.clone() for x0, _ in chunks]
    step_wall, done = 0.0, 0
    for n in checkpoints:
        sync(device)
        t0 = time.perf_counter()
        for b, (x0, c) in enumerate(chunks):
            t = W[c]
            z = zs[b]
            for _ in range(n - done):
                z.requires_grad_(True)
                e = encode(z)
                loss = 0.5 * (e - t).pow(2).sum()
                (g,) = torch.autograd.grad(loss, z)
                with torch.no_grad():
                    z = (x0 + (z - eps / 8 * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
            zs[b] = z.detach()
        sync(device)
        step_wall += time.perf_counter() - t0
        done = n
        t0 = time.perf_counter()
        ok, ps = [], []
        with torch.no_grad():
            for (x0, c), z in zip(chunks, zs):
                q = quantize_to_budget(z, x0, eps)
                ok.append(targeted_success(model.encode_image(q), W, c))
                ps.append(psnr(q, x0))
        sync(device)
        evaluate = time.perf_counter() - t0
        p = torch.cat(ps)
        yield n, step_wall + evaluate, float(torch.cat(ok).float().mean()), float(p[torch.isfinite(p)].median())


def _step_row(model, x, batch, device, precision) -> dict:
    """One forward+backward of the encoder at ``batch``: time and counted FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks._common import timeit
    from pyvlmx.attacks.precision import Precision

    encode = Precision(model.encode_image, precision, device).search
    xb = x[:batch]
    if xb.shape[0] < batch:
        xb = xb.repeat((batch + xb.shape[0] - 1) // xb.shape[0], 1, 1, 1)[:batch]

    def step():
        z = xb.clone().requires_grad_(True)
        torch.autograd.grad(encode(z).pow(2).sum(), z)

    with FlopCounterMode(display=False) as fc:
        step()
    flops = fc.get_total_flops()
    t = timeit(step, device=device, min_run_time=2.0 if torch.device(device).type == "cuda" else 4.0)
    tflops = flops / t["median"] / 1e12
    if torch.device(device).type == "cuda":
        peak, which = _GPU_PEAKS.get(precision, (None, "unknown"))
    else:
        peak, which = _cpu_peak()
    return {"bench": f"step-{precision}", "precision": precision, "batch": batch, "step_ms": t["median"] * 1e3,
            "step_tflops": tflops, "peak_tflops": peak, "peak": which,
            "frac_of_peak": tflops / peak if peak else None, "note": f"{flops / 1e9:.1f} GFLOP per step"}


def _warm_up(models, data, st, device) -> None:
    """What the first run would otherwise pay alone: class text embeddings (cached per model), the
    allocator, first-call dispatch; one short sweep per model."""
    from pyvlmx.systematic import run_sweep

    for m in models:
        with tempfile.TemporaryDirectory() as tmp:
            run_sweep(m, data, Path(tmp) / "w", progress=False, targets=1, batch_size=st["batch"], max_images=2,
                      eps=st["eps"], max_steps=2)
    sync(device)


def run(quick: bool, device: str):
    from pyvlmx.attacks.precision import resolve_precision
    from pyvlmx.data import load_dataset

    st = _settings(quick, device)
    best = resolve_precision("auto", device)
    common = {"device": device, "model": st["model"], "batch": st["batch"]}
    slow = _load(st["model"], device, fast=False)
    fast = _load(st["model"], device, fast=True)
    data = load_dataset("samples", fast.image_size)
    _warm_up((slow, fast), data, st, device)

    # the sweep rows, interleaved (a, b, c, a, b, c, ...): each row's median over its runs, and the
    # ratio of each run to the run of (a) beside it, so a drift of the machine's load moves both
    specs = [("a fixed-fp32", slow, "fixed", "fp32", False, 1),
             ("b continuous-fp32", fast, "continuous", "fp32", True, 1)]
    if best != "fp32":
        specs.append((f"c continuous-{best}", fast, "continuous", best, True, 1))
    if torch.device(device).type == "cuda":  # (c) reading its decisions every 4th step (slower on a CPU)
        specs.append((f"c4 continuous-{best} read-every-4", fast, "continuous", best, True, 4))
    runs: dict[str, list[dict]] = {name: [] for name, *_ in specs}
    for _ in range(st["repeats"]):
        for name, model, schedule, precision, is_fast, every in specs:
            runs[name].append(_sweep_row(name, model, data, st, device, schedule=schedule, precision=precision,
                                         fast=is_fast, read_every=every))
    a_runs = runs["a fixed-fp32"]
    rows = {name: dict(common, **_summary(rs, a_runs)) for name, rs in runs.items()}
    if best == "fp32":
        rows["c continuous-fp32"] = dict(rows["b continuous-fp32"], bench="c continuous-fp32",
                                         note="auto = fp32 here: (b)")
    yield from rows.values()
    a1 = rows["a fixed-fp32"]
    c = rows[f"c continuous-{best}"]
    base = a1["pairs_per_s"]

    # (d) the plain loop on (c)'s model, precision and batch, its step count raised to (a)'s success
    x, tc, W = _pairs_tensors(fast, data, st, device)
    want = a1["success"]
    counts = [8]
    while counts[-1] < 2 * st["steps"]:
        counts.append(min(2 * counts[-1], 2 * st["steps"]))
    for n, wall, succ, med in plain_pgd(fast, x, tc, W, eps=st["eps"], checkpoints=counts, batch=st["batch"],
                                        precision=best):
        reached = succ >= want - 1e-9
        if reached:
            break
    yield dict(common, bench="d plain-pgd", schedule="none", precision=best, fast_model=True, pairs=x.shape[0],
               pgd_steps=n, wall_s=wall, pairs_per_s=x.shape[0] / wall, ratio_to_a=x.shape[0] / wall / base,
               success=succ, median_psnr=med,
               note=("reached (a)'s success" if reached else f"did not reach (a)'s {want:.3f} by {n} steps")
               + f" (tried {', '.join(map(str, counts[:counts.index(n) + 1]))} steps)"
               + f"; (c)/(d) = {c['pairs_per_s'] / (x.shape[0] / wall):.2f}x")

    yield dict(common, **_step_row(fast, x, st["batch"], device, best), fast_model=True)
    yield dict(common, **_step_row(slow, x, st["batch"], device, "fp32"), fast_model=False)
    if best == "fp32":  # why auto is fp32 here: bf16 against fp32 at the CPU's block of rows (a bf16 step is slow)
        from pyvlmx.attacks.precision import CPU_BLOCK

        for prec in ("fp32", "bf16"):
            yield dict(common, **_step_row(fast, x, CPU_BLOCK, device, prec), fast_model=True)


if __name__ == "__main__":
    bench_main("bench_sweep", run, columns=COLUMNS)
