"""Benchmark of batched JVPs: the fused multi-tangent attention JVP against vmap(jvp).

Each row pushes T tangents through one primal and measures, side by side in
this process:

* fused: ``pyvlmx.ops.attention_jvp`` (T tangents in one call, the primal
  softmax shared);
* baseline: ``torch.vmap(torch.func.jvp)`` over
  ``torch.nn.functional.scaled_dot_product_attention`` with the math backend
  (what pyvlmx's JVPs run through without the op).

Figures: median time (``Timer.blocked_autorange``), tangents per second, the
ratio fused / baseline, peak memory allocated by one call above its inputs
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: the running sum of the
allocator's events under ``torch.profiler`` with ``profile_memory=True``), and
the largest difference of the two results (a sanity check, not a test).

Rows are functions in :data:`ROWS`, each yielding one dict per T; a new
workload (a whole encoder, say) is one more function appended there.

Run:  python -m benchmarks.bench_jvp [--quick] [--device cuda] [--out DIR]
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from benchmarks._common import main, sync, timeit
from pyvlmx import ops

COLUMNS = ["workload", "shape", "T", "dtype", "device", "fused_ms", "fused_iqr_ms", "base_ms",
           "base_iqr_ms", "fused_tangents_per_s", "base_tangents_per_s", "speedup",
           "fused_peak_mb", "base_peak_mb", "memory_ratio", "max_abs_diff", "goal", "verdict",
           "impl", "fused_route"]

LAYER = {"B": 4, "H": 12, "N": 197, "E": 64}  # one ViT-B/16 attention layer at 224 px
T_VALUES = (1, 16, 64)


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak bytes allocated by one call of fn above what was allocated before it."""
    dev = torch.device(device)
    if dev.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        sync(device)
        return int(torch.cuda.max_memory_allocated(dev) - base)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
    events.sort()
    cur = peak = 0
    for _, size in events:
        cur += size
        peak = max(peak, cur)
    return int(peak)


def sdpa_vmap_jvp(q, k, v, tq, tk, tv, attn_mask=None, is_causal=False):
    """The baseline: vmap over T of torch.func.jvp through math SDPA."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def f(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, attn_mask=attn_mask, is_causal=is_causal)

    with sdpa_kernel(SDPBackend.MATH):
        return torch.vmap(lambda a, b, c: torch.func.jvp(f, (q, k, v), (a, b, c)))(tq, tk, tv)


def compare(workload: str, shape, T: int, device: str, dtype: torch.dtype,
            fused: Callable[[], tuple], base: Callable[[], tuple], mrt: float,
            goal: str | None = None, goal_speedup: float | None = None) -> dict:
    """Time, peak memory and agreement of fused() against base(); both return (out, tout)."""
    got, want = fused(), base()
    diff = max((got[0] - want[0]).abs().max().item(), (got[1] - want[1]).abs().max().item())
    sync(device)
    t_f = timeit(fused, device=device, min_run_time=mrt)
    t_b = timeit(base, device=device, min_run_time=mrt)
    m_f, m_b = peak_bytes(fused, device), peak_bytes(base, device)
    sp = t_b["median"] / t_f["median"]
    row = {
        "workload": workload, "shape": str(tuple(shape)), "T": T,
        "dtype": str(dtype).replace("torch.", ""), "device": device,
        "fused_ms": 1e3 * t_f["median"], "fused_iqr_ms": 1e3 * t_f["iqr"],
        "base_ms": 1e3 * t_b["median"], "base_iqr_ms": 1e3 * t_b["iqr"],
        "fused_tangents_per_s": T / t_f["median"], "base_tangents_per_s": T / t_b["median"],
        "speedup": sp, "fused_peak_mb": m_f / 2**20, "base_peak_mb": m_b / 2**20,
        "memory_ratio": m_b / m_f if m_f > 0 else None, "max_abs_diff": diff,
    }
    if goal is not None:
        row["goal"] = goal
        row["verdict"] = "met" if goal_speedup is not None and sp >= goal_speedup else "NOT met"
    return row


def one_layer(quick: bool, device: str) -> Iterable[dict]:
    """One attention layer (B=4, H=12, N=197, E=64), float32, T = 1, 16, 64."""
    B, H, N, E = (1, 4, 50, 64) if quick else (LAYER["B"], LAYER["H"], LAYER["N"], LAYER["E"])
    mrt = 0.2 if quick else 1.0
    dtype = torch.float32
    cpu = torch.device(device).type == "cpu"
    for T in ((1, 4) if quick else T_VALUES):
        g = torch.Generator().manual_seed(T)

        def r(*s):
            return torch.randn(*s, generator=g).to(device=device, dtype=dtype)

        q, k, v = r(B, H, N, E), r(B, H, N, E), r(B, H, N, E)
        tq, tk, tv = r(T, B, H, N, E), r(T, B, H, N, E), r(T, B, H, N, E)

        def fused():
            return ops.attention_jvp(q, k, v, tq, tk, tv)

        def base():
            return sdpa_vmap_jvp(q, k, v, tq, tk, tv)

        goal = ">=2x tangents/s" if (cpu and T == 16 and not quick) else None
        yield compare("attention layer", (B, H, N, E), T, device, dtype, fused, base, mrt,
                      goal=goal, goal_speedup=2.0 if goal else None)
        del q, k, v, tq, tk, tv


ENCODERS = ("ViT-B-16", "ViT-L-14")   # open_clip, random weights (pretrained=None)


def encoders(quick: bool, device: str) -> Iterable[dict]:
    """Whole image towers: J V for T tangents through JacobianOperator.matvec, fused vs math.

    One image (batch 1), ``jvp_mode="vmap"``, chunk = T (all T tangents in one
    vmapped call).  fused: ``jvp_backend="fused"`` (every attention layer one
    ``ops.attention_jvp`` call with the T tangents); baseline: ``"math"``
    (torch.func over math SDPA).  ``PYVLMX_BENCH_JVP_ENCODERS`` (comma-separated
    open_clip architectures) replaces the two towers and ``PYVLMX_BENCH_JVP_ENCODER_T``
    (comma-separated) the T values; quick: the tiny ViT.
    """
    import os

    from pyvlmx.jacobian import JacobianOperator
    from pyvlmx.models import load_model

    names = ["pyvlmx-tiny-vit-64"] if quick else \
        os.environ.get("PYVLMX_BENCH_JVP_ENCODERS", ",".join(ENCODERS)).split(",")
    mrt = 0.2 if quick else 1.0
    cpu = torch.device(device).type == "cpu"
    for arch in names:
        model = load_model(f"open_clip:{arch}", pretrained=None, seed=0, device=device)
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(3, model.image_size, model.image_size, generator=g).to(device)
        t_env = os.environ.get("PYVLMX_BENCH_JVP_ENCODER_T")
        for T in ((1, 4) if quick else tuple(int(t) for t in t_env.split(",")) if t_env else T_VALUES):
            fused_op = JacobianOperator(model, x0, jvp_mode="vmap", chunk_size=T, jvp_backend="fused")
            math_op = JacobianOperator(model, x0, jvp_mode="vmap", chunk_size=T, jvp_backend="math")
            V = torch.randn(fused_op.shape[1], T, generator=g).to(device)

            def fused(op=fused_op, V=V):
                return op.f0, op.matvec(V)

            def base(op=math_op, V=V):
                return op.f0, op.matvec(V)

            goal = ">=1.3x tangents/s" if (cpu and arch == "ViT-B-16" and T == 16) else None
            row = compare(f"open_clip {arch} image tower", (1, 3, model.image_size, model.image_size), T,
                          device, fused_op.dtype, fused, base, mrt, goal=goal,
                          goal_speedup=1.3 if goal else None)
            row["fused_route"] = fused_op.jvp_backend
            yield row
            del fused_op, math_op, V
        del model


# Workloads, in the order they run.  Each takes (quick, device) and yields rows.
ROWS: list[Callable[[bool, str], Iterable[dict]]] = [one_layer, encoders]


def run(quick: bool, device: str):
    """Yield every row of every workload in ROWS.

    ``PYVLMX_BENCH_JVP_ROWS`` (comma-separated function names, e.g. ``one_layer``)
    runs only those workloads.
    """
    import os

    impl = "compiled" if ops.compiled("attention_jvp") else "reference twin (extension missing)"
    only = [s for s in os.environ.get("PYVLMX_BENCH_JVP_ROWS", "").split(",") if s]
    names = [w.__name__ for w in ROWS]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"PYVLMX_BENCH_JVP_ROWS: unknown workloads {unknown}; known: {names}")
    for workload in ROWS:
        if only and workload.__name__ not in only:
            continue
        for row in workload(quick, device):
            row["impl"] = impl
            yield row


if __name__ == "__main__":
    main("bench_jvp", run, columns=COLUMNS)
