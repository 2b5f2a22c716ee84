"""The systematic sweep's throughput: today's path, continuous batching, precision, a plain PGD loop.

    python -m benchmarks.bench_sweep [--quick] [--device cuda] [--out DIR]

Every row runs the same pairs (the sample photos, K target classes each, text
targets, L-inf 4/255, sign steps) in this one process:

a. ``fixed-fp32``: the path before continuous batching: fixed chunks of
   ``batch`` pairs, fp32, the model as loaded before its fast path
   (``load_model(..., fast=False)``: no BatchNorm folding, no channels-last).
   Run first and again last (``a-again``): the two bound how much the
   machine's load moved during the run.
b. ``continuous-fp32``: continuous batching (fixed shapes), fp32, the model's
   default (fast) load.
c. ``continuous-<best>``: continuous, the best precision the device runs
   (``--precision auto``: bf16 on CUDA, fp32 on the CPU); on the CPU a
   ``step-bf16`` row times one bf16 step against fp32 to show why.
d. ``plain-pgd``: a batched PyTorch PGD loop as researchers write it (fixed
   step count, no per-sample stopping, as in AttackVLM's MF-ii), on the
   same pairs, batch and model as (c); the step count is raised (8, 16, 32,
   ...; at most twice the attack's step cap) until its success reaches (a)'s, and that count's
   time is reported.

Columns: pairs/s, success, median PSNR (of the saved 8-bit images), the
ratio to (a) (mean of its two runs) and, for the step, achieved TFLOP/s
counted by ``torch.utils.flop_counter`` on one forward+backward of the
encoder at the batch size, with the fraction of the device's peak (which
peak is named in the row).

Sizes: CPU: the offline default model, 3 targets per photo (the study's 69
pairs), batch 32, at most 100 steps (the study's attack).  CUDA: the model of
``PYVLMX_BENCH_MODEL`` (default ``open_clip:ViT-B-16``, random weights),
every other class per photo (483 pairs), batch 256, at most 50 steps.
``PYVLMX_BENCH_TARGETS``, ``PYVLMX_BENCH_BATCH``, ``PYVLMX_BENCH_STEPS``
override them.  ``--quick``: the tiny ViT on a few pairs (a smoke run).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import main as bench_main
from benchmarks._common import sync

COLUMNS = ["bench", "device", "model", "schedule", "precision", "fast_model", "batch", "pairs", "steps_cap",
           "wall_s", "pairs_per_s", "ratio_to_a", "success", "median_psnr", "pgd_steps", "step_ms",
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
                "max_images": 6}
    elif cuda:
        base = {"model": os.environ.get("PYVLMX_BENCH_MODEL", "open_clip:ViT-B-16"), "targets": "all",
                "batch": 256, "steps": 50, "eps": 4 / 255, "max_images": None}
    else:
        base = {"model": "default", "targets": 3, "batch": 32, "steps": 100, "eps": 4 / 255, "max_images": None}
    env = {"targets": "PYVLMX_BENCH_TARGETS", "batch": "PYVLMX_BENCH_BATCH", "steps": "PYVLMX_BENCH_STEPS"}
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


def _sweep_row(name, model, data, st, device, *, schedule, precision, fast) -> dict:
    from pyvlmx.systematic import load_records, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        t0 = time.perf_counter()
        run_sweep(model, data, Path(tmp) / "s", progress=False, targets=st["targets"], batch_size=st["batch"],
                  max_images=st["max_images"], eps=st["eps"], max_steps=st["steps"], schedule=schedule,
                  precision=precision)
        sync(device)
        wall = time.perf_counter() - t0
        recs = load_records(Path(tmp) / "s")
    from pyvlmx.attacks import record_success

    psnr = [r["psnr"] for r in recs if r.get("psnr") is not None]
    return {"bench": name, "schedule": schedule, "precision": recs[0].get("search_precision", precision),
            "fast_model": fast, "pairs": len(recs), "steps_cap": st["steps"], "wall_s": wall,
            "pairs_per_s": len(recs) / wall, "success": sum(map(record_success, recs)) / len(recs),
            "median_psnr": statistics.median(psnr) if psnr else None}


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


def plain_pgd(model, x, tc, W, *, eps: float, steps: int, batch: int, precision: str) -> tuple[float, float, float]:
    """A PGD loop as researchers write it: fixed ``steps`` sign steps of eps/8 on 1/2 ||f(x) - t||^2, no
    per-sample stopping; success of the 8-bit rounded result. Returns (wall s, success rate, median PSNR)."""
    from pyvlmx.attacks import quantize_to_budget, targeted_success
    from pyvlmx.ops import psnr

    device = x.device
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else None
    ok, ps = [], []
    sync(device)
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch):
        x0, c = x[i:i + batch], tc[i:i + batch]
        t = W[c]
        z = x0.clone()
        for _ in range(steps):
            z.requires_grad_(True)
            if ctx is None:
                e = model.encode_image(z)
            else:
                with ctx():
                    e = model.encode_image(z).float()
            loss = 0.5 * (e - t).pow(2).sum()
            (g,) = torch.autograd.grad(loss, z)
            with torch.no_grad():
                z = (x0 + (z - eps / 8 * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
        with torch.no_grad():
            q = quantize_to_budget(z, x0, eps)
            ok.append(targeted_success(model.encode_image(q), W, c))
            ps.append(psnr(q, x0))
    sync(device)
    wall = time.perf_counter() - t0
    ok_all = torch.cat(ok).float()
    p = torch.cat(ps)
    return wall, float(ok_all.mean()), float(p[torch.isfinite(p)].median())


def _step_row(model, x, batch, device, precision) -> dict:
    """One forward+backward of the encoder at ``batch``: time and counted FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks._common import timeit

    xb = x[:batch]
    if xb.shape[0] < batch:
        xb = xb.repeat((batch + xb.shape[0] - 1) // xb.shape[0], 1, 1, 1)[:batch]

    def step():
        z = xb.clone().requires_grad_(True)
        if precision == "bf16":
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                e = model.encode_image(z).float()
        else:
            e = model.encode_image(z)
        torch.autograd.grad(e.pow(2).sum(), z)

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

    a1 = dict(common, **_sweep_row("a fixed-fp32", slow, data, st, device, schedule="fixed", precision="fp32",
                                   fast=False))
    yield a1
    b = dict(common, **_sweep_row("b continuous-fp32", fast, data, st, device, schedule="continuous",
                                  precision="fp32", fast=True))
    yield b
    c = dict(common, **_sweep_row(f"c continuous-{best}", fast, data, st, device, schedule="continuous",
                                  precision=best, fast=True)) if best != "fp32" else dict(b, bench="c continuous-fp32",
                                                                                         note="auto = fp32 here: (b)")
    if best != "fp32":
        yield c
    a2 = dict(common, **_sweep_row("a-again fixed-fp32", slow, data, st, device, schedule="fixed",
                                   precision="fp32", fast=False))
    base = (a1["pairs_per_s"] + a2["pairs_per_s"]) / 2
    a2["ratio_to_a"] = a2["pairs_per_s"] / base
    a1["ratio_to_a"] = a1["pairs_per_s"] / base
    yield a2
    for row in (b, c):
        row["ratio_to_a"] = row["pairs_per_s"] / base
    if best == "fp32":
        yield c

    # (d) the plain loop on (c)'s model, precision and batch, its step count raised to (a)'s success
    x, tc, W = _pairs_tensors(fast, data, st, device)
    want = min(a1["success"], a2["success"])
    n = 8
    while True:
        wall, succ, med = plain_pgd(fast, x, tc, W, eps=st["eps"], steps=n, batch=st["batch"], precision=best)
        reached = succ >= want - 1e-9
        if reached or n >= 2 * st["steps"]:
            break
        n *= 2
    yield dict(common, bench="d plain-pgd", schedule="none", precision=best, fast_model=True, pairs=x.shape[0],
               pgd_steps=n, wall_s=wall, pairs_per_s=x.shape[0] / wall, ratio_to_a=x.shape[0] / wall / base,
               success=succ, median_psnr=med,
               note=("reached (a)'s success" if reached else f"did not reach (a)'s {want:.3f} by {n} steps")
               + f"; (c)/(d) = {c['pairs_per_s'] / (x.shape[0] / wall):.2f}x")

    for prec in ([best] + (["bf16"] if best == "fp32" else [])):
        yield dict(common, **_step_row(fast, x, st["batch"], device, prec))
    yield dict(common, **_step_row(slow, x, st["batch"], device, "fp32"), fast_model=False)


if __name__ == "__main__":
    bench_main("bench_sweep", run, columns=COLUMNS)
