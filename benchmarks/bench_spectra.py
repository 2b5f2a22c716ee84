"""Jacobian spectra: exact vs randomized vs VJP-only vs streaming, and noise throughput.

Same run, same image, per model:

* exact ``J J^T`` from D VJPs (each VJP mode: one graph + ``retain_graph``
  loop, replicated batch, ``is_grads_batched``), the baseline;
* randomized SVD (HMT, k = 16, oversample 10, q power iterations) with
  forward-mode JVPs, and its VJP-only variant, both with the VJP mode that
  was fastest for the exact route;
* randomized block Krylov (block k, q iterations: (q + 1) k JVPs and as
  many VJPs, all of them spanning the search space);
* the TYUC 2019 sketch streamed over J's rows (r = 4k + 1, s = 2r + 1: D VJPs);
* the matrix-free single-pass TYUC sketch (2r + s independent products, no
  power iterations) for r = k + 10, 2k + 1, 3k, 4k + 1 and s = 2r + 1;

relative error of the top 16 singular values against the exact ones, the
products (JVPs + VJPs) each route used, wall time, and the speed-up over the
exact route.  Plus the noise-statistics
throughput (noisy copies embedded and folded into StreamingMoments per second).
Goal: a randomized route with <= 1e-3 error and >= 2x faster than exact on
open_clip ViT-B-32 (random weights, 512-d).  ``PYVLMX_BENCH_SPECTRA_MODELS``
(comma-separated registry names) replaces the full run's two models;
``PYVLMX_BENCH_SPECTRA_ROUTES`` (comma-separated: randomized, krylov, vjp,
row-streaming, single-pass, noise) keeps only those routes after the exact
one, and ``PYVLMX_BENCH_SPECTRA_VJP_MODES`` (``mode`` or ``model=mode``,
comma-separated) the exact route's VJP modes.

Run:  python -m benchmarks.bench_spectra [--quick] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import os
import time

import torch

from benchmarks._common import main, sync, timeit

COLUMNS = ["model", "route", "mode", "k", "products", "median_s", "iqr_s", "speedup_vs_exact", "rel_err_top16",
           "goal", "verdict", "samples_per_s"]
ROUTES = ("randomized", "krylov", "vjp", "row-streaming", "single-pass", "noise")


def _routes() -> tuple[str, ...]:
    names = os.environ.get("PYVLMX_BENCH_SPECTRA_ROUTES")
    if not names:
        return ROUTES
    keep = tuple(n.strip() for n in names.split(",") if n.strip())
    bad = [n for n in keep if n not in ROUTES]
    if bad:
        raise ValueError(f"PYVLMX_BENCH_SPECTRA_ROUTES: unknown routes {bad}; routes are {ROUTES}")
    return keep


def _vjp_modes(model: str, modes: tuple[str, ...]) -> tuple[str, ...]:
    spec = os.environ.get("PYVLMX_BENCH_SPECTRA_VJP_MODES")
    if not spec:
        return modes
    picked = []
    for item in (i.strip() for i in spec.split(",") if i.strip()):
        who, _, mode = item.rpartition("=")
        if who in ("", model):
            picked.append(mode)
    bad = [m for m in picked if m not in ("loop", "batch", "vmap")]
    if bad:
        raise ValueError(f"PYVLMX_BENCH_SPECTRA_VJP_MODES: unknown VJP modes {bad}; modes are loop, batch, vmap")
    return tuple(picked) or modes


def _models(quick: bool) -> list[tuple[str, dict]]:
    if quick:
        return [("open_clip:pyvlmx-tiny-vit-64", {"seed": 0})]
    names = os.environ.get("PYVLMX_BENCH_SPECTRA_MODELS")
    if names:
        return [(n, {"pretrained": None, "seed": 0} if n.startswith("open_clip:") else {}) for n in names.split(",")]
    return [("default", {}), ("open_clip:ViT-B-32", {"pretrained": None, "seed": 0})]


def run(quick: bool, device: str):
    """Yield rows as they are measured (the exact rows once all exact modes ran)."""
    from pyvlmx.jacobian import (
        JacobianOperator, block_krylov_svd, exact_svd, randomized_range_svd, relative_error,
    )
    from pyvlmx.jacobian.operator import row_streaming_svd, single_pass_svd
    from pyvlmx.models import load_model
    from pyvlmx.ops import StreamingMoments

    k = 8 if quick else 16
    min_time = 0.0 if quick else 1.0
    for name, kw in _models(quick):
        model = load_model(name, device=device, **kw)
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(3, model.image_size, model.image_size, generator=g).to(device)
        D = model.embed_dim
        ref = None
        exact_rows = []
        # one-time costs (allocator, forward-mode and vmap set-up) before any route is timed
        warm = JacobianOperator(model, x0, vjp_mode="loop", chunk_size=4)
        warm.matvec(torch.randn(warm.shape[1], 4, device=device))
        warm.rmatvec(torch.randn(warm.shape[0], 4, device=device))
        warm.release()
        routes = _routes()
        for vmode in _vjp_modes(name, ("loop", "batch") if quick else ("loop", "batch", "vmap")):
            op = JacobianOperator(model, x0, vjp_mode=vmode, chunk_size=32)
            box = {}

            def f(op=op, box=box):
                op.release()
                before = op.counts["jvp"] + op.counts["vjp"]
                box["s"] = exact_svd(op)["singular_values"]
                box["products"] = op.counts["jvp"] + op.counts["vjp"] - before
            t = timeit(f, device=device, min_run_time=min_time, warmup=0)
            ref = box["s"] if ref is None else ref
            exact_rows.append({"model": name, "route": "exact", "mode": f"vjp={vmode}", "k": D,
                               "products": box["products"], "median_s": t["median"], "iqr_s": t["iqr"],
                               "rel_err_top16": relative_error(box["s"][:k], ref[:k])})
        fastest = min(exact_rows, key=lambda r: r["median_s"])
        base = fastest["median_s"]
        for r in exact_rows:
            r["speedup_vs_exact"] = base / r["median_s"]
            yield r
        # the other routes use the VJP mode that made the exact route fastest on this model
        best_vmode = fastest["mode"].removeprefix("vjp=")
        op = JacobianOperator(model, x0, vjp_mode=best_vmode, jvp_mode="vmap", chunk_size=32)
        qs = (1, 2) if quick else (0, 1, 2, 3)   # q = 0: the single pass's nearest HMT relative
        # Krylov: block k (a higher polynomial degree per product than block k + 10)
        kq = (2, 4) if quick else (4, 5, 6, 7)
        # single-pass: r = k + 10, 2k + 1, 3k, 4k + 1 (2r + s = 4r + 1 products with s = 2r + 1)
        sp_r = (k + 10, 4 * k + 1) if quick else (k + 10, 2 * k + 1, 3 * k, 4 * k + 1)
        variants = [("single-pass", None, r) for r in sp_r] + [("randomized", "forward", q) for q in qs] + \
                   [("krylov", None, q) for q in kq] + [("vjp", "vjp", 2), ("row-streaming", None, 0)]
        variants = [v for v in variants if v[0] in routes]
        solvers = {
            "row-streaming": lambda variant, q: row_streaming_svd(op, k),
            "single-pass": lambda variant, r: single_pass_svd(op, k, range_dim=r),
            "krylov": lambda variant, q: block_krylov_svd(op, k, block=k, iters=q),
            "randomized": lambda variant, q: randomized_range_svd(op, k, oversample=10, power_iters=q,
                                                                  variant=variant),
        }
        solvers["vjp"] = solvers["randomized"]
        for route, variant, q in variants:
            box = {}

            def f(box=box, solve=solvers[route], variant=variant, q=q):
                op.release()  # every call starts without a cached graph, as the exact route's do
                before = op.counts["jvp"] + op.counts["vjp"]
                box["s"] = solve(variant, q)["singular_values"]
                box["products"] = op.counts["jvp"] + op.counts["vjp"] - before
            t = timeit(f, device=device, min_run_time=min_time, warmup=0)
            err = relative_error(box["s"], ref[:k])
            mode = {"row-streaming": "r=4k+1", "krylov": f"block={k}, q={q}",
                    "single-pass": f"r={q}, s={2 * q + 1}"}.get(route, f"q={q}")
            row = {"model": name, "route": route, "mode": f"{mode}, vjp={best_vmode}, jvp={op.jvp_backend}",
                   "k": k, "products": box["products"], "median_s": t["median"], "iqr_s": t["iqr"], "speedup_vs_exact": base / t["median"],
                   "rel_err_top16": err}
            if route in ("randomized", "krylov") and "ViT-B-32" in name:
                row["goal"] = "err<=1e-3, >=2x"
                row["verdict"] = "met" if (err <= 1e-3 and base / t["median"] >= 2) else "missed"
            yield row
        if "noise" not in routes:
            continue
        # noise throughput: embed noisy copies and fold them into the moments
        bs = 32 if quick else 128
        mom = StreamingMoments(D, device=device)
        f0 = op.f0.double()

        def noise_step():
            with torch.no_grad():
                x = x0[None] + (1 / 255) * torch.randn(bs, *x0.shape, device=device)
                mom.update(model.encode_image(x, normalize=True).double() - f0)
        model.check_inputs = False
        t = timeit(noise_step, device=device, min_run_time=min_time or 0.2)
        model.check_inputs = True
        sync(device)
        yield {"model": name, "route": "noise", "mode": f"batch={bs}", "k": None, "median_s": t["median"],
               "iqr_s": t["iqr"], "samples_per_s": bs / t["median"]}


if __name__ == "__main__":
    main("bench_spectra", run, columns=COLUMNS)
