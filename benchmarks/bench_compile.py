"""``torch.compile`` of the attack's step: the encoder's forward and backward, eager against compiled.

    python -m benchmarks.bench_compile [--quick] [--device cuda] [--out DIR]

The sweep keeps a way of making its step cheaper only where it is measured to
win; this is the measurement for ``torch.compile``.  Rows, in one process on
one input: the eager step (forward of ``model.encode_image`` in the search's
precision, ``--precision auto``, then the input gradient of a scalar of the
embedding), the compiled step (``torch.compile(model.encode_image)``,
default mode, static shapes: the sweep's fixed-shape blocks), and the eager
step again, which bounds how much the machine drifted.  The compiled row
gives the first call (a cold compilation: an empty Inductor cache), its median step, the ratio of
the eager median (mean of both eager rows) to it, and how far its embedding
is from the eager one.

Sizes: CPU: the offline default model at 4 rows (the CPU search's block).
CUDA: ``open_clip:ViT-B-16`` with random weights at batch 256.
``PYVLMX_BENCH_MODEL`` and ``PYVLMX_BENCH_BATCH`` override them.
``--quick``: the tiny ViT at 4 rows.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from benchmarks._common import main as bench_main
from benchmarks._common import sync, timeit

COLUMNS = ["bench", "device", "model", "precision", "batch", "first_call_s", "step_ms", "step_iqr_ms", "runs",
           "speedup", "max_abs_diff", "note"]


def _settings(quick: bool, device: str) -> dict:
    if quick:
        return {"model": "open_clip:pyvlmx-tiny-vit", "batch": 4}
    cuda = torch.device(device).type == "cuda"
    st = {"model": "open_clip:ViT-B-16" if cuda else "default", "batch": 256 if cuda else 4}
    if os.environ.get("PYVLMX_BENCH_MODEL"):
        st["model"] = os.environ["PYVLMX_BENCH_MODEL"]
    if os.environ.get("PYVLMX_BENCH_BATCH"):
        st["batch"] = int(os.environ["PYVLMX_BENCH_BATCH"])
    return st


def run(quick: bool, device: str):
    from pyvlmx.attacks.precision import Precision, resolve_precision
    from pyvlmx.models import load_model

    st = _settings(quick, device)
    spec = st["model"]
    model = load_model(spec, device=device, seed=0) if spec.startswith("open_clip:") else \
        load_model(spec, device=device)
    model.check_inputs = False
    for p in model.parameters():
        p.requires_grad_(False)
    prec = resolve_precision("auto", device)
    side = model.image_size
    x = torch.rand(st["batch"], 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
    common = {"device": device, "model": spec, "precision": prec, "batch": st["batch"]}
    min_time = 2.0 if torch.device(device).type == "cuda" else 4.0

    def make_step(encode):  # the search's forward of ``encode`` (in ``prec``, fp32 out), then its input gradient
        search = Precision(encode, prec, device).search

        def step():
            z = x.clone().requires_grad_(True)
            torch.autograd.grad(search(z).pow(2).sum(), z)
        return search, step

    eager_fwd, eager = make_step(model.encode_image)
    t1 = timeit(eager, device=device, min_run_time=min_time)
    yield dict(common, bench="eager", step_ms=t1["median"] * 1e3, step_iqr_ms=t1["iqr"] * 1e3, runs=t1["runs"])

    compiled_fwd, step = make_step(torch.compile(model.encode_image))
    with tempfile.TemporaryDirectory() as cache:  # a cold compile: no kernels cached by an earlier run
        old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            first = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old
    tc = timeit(step, device=device, min_run_time=min_time)
    with torch.no_grad():
        diff = float((compiled_fwd(x) - eager_fwd(x)).abs().max())
    t2 = timeit(eager, device=device, min_run_time=min_time)
    base = (t1["median"] + t2["median"]) / 2
    yield dict(common, bench="compiled", first_call_s=first, step_ms=tc["median"] * 1e3,
               step_iqr_ms=tc["iqr"] * 1e3, runs=tc["runs"], speedup=base / tc["median"], max_abs_diff=diff,
               note="speedup: the mean eager median over the compiled median")
    yield dict(common, bench="eager-again", step_ms=t2["median"] * 1e3, step_iqr_ms=t2["iqr"] * 1e3,
               runs=t2["runs"], note=f"eager drift {t2['median'] / t1['median']:.3f}x")


if __name__ == "__main__":
    bench_main("bench_compile", run, columns=COLUMNS)
