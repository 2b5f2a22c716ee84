"""Benchmark of the compiled ops of pyvlmx against what they replace.

Every figure is measured in one process, side by side with its baseline:

* projected step (64, 3, 224, 224) float32 against the eager composition that
  attack libraries write (``x + a * g.sign()``, clamp to the ball with
  torch.min/max, clamp to [0, 1]) and against a plain tensor copy: the
  fraction of copy bandwidth counts the minimum traffic of the step (read x,
  x0, g; write the result) against the copy's (read + write);
* SSIM on 32 RGB images of 224x224 against scikit-image looped over the
  images and against the pure-torch twin, forward and forward+backward;
* streaming moments on (10^5, 512) float64 against one GEMM x^T x;
* sketch A @ Omega (Omega generated in the kernel) against torch.matmul with
  a stored Omega.

Run:  python -m benchmarks.bench_kernels [--quick] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import torch

from benchmarks._common import main, sync, timeit
from pyvlmx import _reference as ref
from pyvlmx import ops

COLUMNS = ["op", "variant", "shape", "dtype", "device", "median_ms", "iqr_ms", "baseline",
           "speedup", "gbps", "copy_fraction", "goal", "verdict"]


def _ms(t: dict) -> float:
    return 1e3 * t["median"]


def _row(op, variant, shape, dtype, device, t, **kw):
    row = {"op": op, "variant": variant, "shape": str(tuple(shape)), "dtype": str(dtype).replace("torch.", ""),
           "device": device, "median_ms": _ms(t), "iqr_ms": 1e3 * t["iqr"]}
    row.update(kw)
    return row


def bench_projected_step(quick: bool, device: str, mrt: float) -> list[dict]:
    shape = (8, 3, 224, 224) if quick else (64, 3, 224, 224)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(shape, generator=g).to(device)
    x = (x0 + 0.01 * torch.randn(shape, generator=g).to(device)).clamp(0, 1)
    grad = torch.randn(shape, generator=g).to(device)
    a, eps = 2 / 255, 8 / 255

    def eager():
        return torch.min(torch.max(x + a * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)

    def fused():
        return ops.projected_step(x, x0, grad, a, eps, step="sign", norm="linf")

    def fused_l2():
        return ops.projected_step(x, x0, grad, a, eps, step="l2", norm="l2")

    def eager_l2():
        return ref.projected_step(x, x0, grad, torch.full((shape[0],), a), torch.full((shape[0],), eps),
                                  "l2", "l2", False)[0]

    dst = torch.empty_like(x)

    def copy():
        dst.copy_(x)

    torch.testing.assert_close(fused(), eager(), rtol=0, atol=1e-6)
    t_copy = timeit(copy, device=device, min_run_time=mrt)
    t_eager = timeit(eager, device=device, min_run_time=mrt)
    t_fused = timeit(fused, device=device, min_run_time=mrt)
    t_eager_l2 = timeit(eager_l2, device=device, min_run_time=mrt)
    t_fused_l2 = timeit(fused_l2, device=device, min_run_time=mrt)
    nbytes = x.numel() * x.element_size()
    copy_bw = 2 * nbytes / t_copy["median"]
    bw = 4 * nbytes / t_fused["median"]
    copy_goal = 0.8 if torch.device(device).type == "cuda" else 0.7
    sp = t_eager["median"] / t_fused["median"]
    frac = bw / copy_bw
    rows = [
        _row("projected_step", "tensor copy (read+write)", shape, x.dtype, device, t_copy,
             gbps=copy_bw / 1e9, copy_fraction=1.0),
        _row("projected_step", "eager sign/linf (x+a*g.sign(), min/max, clamp)", shape, x.dtype,
             device, t_eager, gbps=4 * nbytes / t_eager["median"] / 1e9,
             copy_fraction=4 * nbytes / t_eager["median"] / copy_bw),
        _row("projected_step", "pyvlmx sign/linf", shape, x.dtype, device, t_fused,
             baseline="eager", speedup=sp, gbps=bw / 1e9, copy_fraction=frac,
             goal=f">=3x eager, >={copy_goal:.0%} copy",
             verdict="met" if sp >= 3 and frac >= copy_goal else "NOT met"),
        _row("projected_step", "twin l2/l2 (reference)", shape, x.dtype, device, t_eager_l2),
        _row("projected_step", "pyvlmx l2/l2 (2 passes)", shape, x.dtype, device, t_fused_l2,
             baseline="twin l2/l2", speedup=t_eager_l2["median"] / t_fused_l2["median"],
             gbps=4 * nbytes / t_fused_l2["median"] / 1e9,
             copy_fraction=4 * nbytes / t_fused_l2["median"] / copy_bw),
    ]
    return rows


def bench_ssim(quick: bool, device: str, mrt: float) -> list[dict]:
    from skimage.metrics import structural_similarity

    B = 4 if quick else 32
    shape = (B, 3, 224, 224)
    g = torch.Generator().manual_seed(1)
    a64 = torch.rand(shape, generator=g, dtype=torch.float64)
    b64 = (a64 + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    an, bn = a64.numpy(), b64.numpy()

    def skimage_loop():
        return [structural_similarity(an[i], bn[i], gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=1.0, channel_axis=0)
                for i in range(B)]

    t_sk = timeit(skimage_loop, device="cpu", min_run_time=mrt)
    rows = [_row("ssim", "scikit-image loop (float64, fwd)", shape, torch.float64, "cpu", t_sk)]
    for dtype in (torch.float32, torch.float64):
        a = a64.to(device=device, dtype=dtype)
        b = b64.to(device=device, dtype=dtype)
        ar = a.clone().requires_grad_(True)

        def fwd():
            return ops.ssim(a, b)

        def twin_fwd():
            return ref.ssim(a, b, 1.0)

        def fwd_bwd():
            ar.grad = None
            ops.ssim(ar, b).sum().backward()

        def twin_fwd_bwd():
            ar.grad = None
            ref.ssim(ar, b, 1.0).sum().backward()

        t_f = timeit(fwd, device=device, min_run_time=mrt)
        t_tf = timeit(twin_fwd, device=device, min_run_time=mrt)
        t_fb = timeit(fwd_bwd, device=device, min_run_time=mrt)
        t_tfb = timeit(twin_fwd_bwd, device=device, min_run_time=mrt)
        sk_sp = t_sk["median"] / t_f["median"]
        tw_sp = t_tf["median"] / t_f["median"]
        tw_sp_b = t_tfb["median"] / t_fb["median"]
        rows += [
            _row("ssim", "twin (separable conv2d) fwd", shape, dtype, device, t_tf),
            _row("ssim", "pyvlmx fwd vs scikit-image", shape, dtype, device, t_f,
                 baseline="scikit-image loop", speedup=sk_sp, goal=">=5x",
                 verdict="met" if sk_sp >= 5 else "NOT met"),
            _row("ssim", "pyvlmx fwd vs twin", shape, dtype, device, t_f, baseline="twin fwd",
                 speedup=tw_sp, goal=">=2x", verdict="met" if tw_sp >= 2 else "NOT met"),
            _row("ssim", "twin fwd+bwd (autograd)", shape, dtype, device, t_tfb),
            _row("ssim", "pyvlmx fwd+bwd", shape, dtype, device, t_fb, baseline="twin fwd+bwd",
                 speedup=tw_sp_b, goal=">=2x", verdict="met" if tw_sp_b >= 2 else "NOT met"),
        ]
    return rows


def bench_moments(quick: bool, device: str, mrt: float) -> list[dict]:
    N, D = (20000, 256) if quick else (100000, 512)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(N, D, generator=g, dtype=torch.float64).to(device)

    def gemm():
        return x.T @ x

    def streaming():
        return ops.StreamingMoments(D, device=device).update(x).covariance()

    def twin():
        return ref.moments_update(x, torch.zeros(D, dtype=x.dtype, device=device),
                                  torch.zeros(D, D, dtype=x.dtype, device=device), 0)

    t_g = timeit(gemm, device=device, min_run_time=mrt)
    t_s = timeit(streaming, device=device, min_run_time=mrt)
    t_t = timeit(twin, device=device, min_run_time=mrt)
    ratio = t_s["median"] / t_g["median"]
    return [
        _row("moments", "one GEMM x^T x", (N, D), x.dtype, device, t_g),
        _row("moments", "twin (mean, centre, x_c^T x_c)", (N, D), x.dtype, device, t_t),
        _row("moments", "pyvlmx StreamingMoments.update", (N, D), x.dtype, device, t_s,
             baseline="GEMM", speedup=1 / ratio, goal="time <= 2x GEMM",
             verdict="met" if ratio <= 2 else "NOT met"),
    ]


def bench_sketch(quick: bool, device: str, mrt: float) -> list[dict]:
    m, n, r = (256, 4096, 64) if quick else (1024, 16384, 128)
    g = torch.Generator().manual_seed(3)
    A = torch.randn(m, n, generator=g).to(device)
    om = ops.omega(n, r, 7, dtype=A.dtype, device=device)
    At = A.T.contiguous()

    def stored():
        return A @ om

    def stored_t():
        return om.T @ At

    def sk():
        return ops.sketch(A, r, 7)

    def sk_t():
        return ops.sketch_t(At, r, 7)

    def gen_only():
        return ops.omega(n, r, 7, dtype=A.dtype, device=device)

    torch.testing.assert_close(sk(), stored(), rtol=1e-4, atol=1e-3)
    rows = []
    t_m = timeit(stored, device=device, min_run_time=mrt)
    t_s = timeit(sk, device=device, min_run_time=mrt)
    t_mt = timeit(stored_t, device=device, min_run_time=mrt)
    t_st = timeit(sk_t, device=device, min_run_time=mrt)
    t_gen = timeit(gen_only, device=device, min_run_time=mrt)
    for name, tm, ts in (("A @ Omega", t_m, t_s), ("Omega^T @ A", t_mt, t_st)):
        ratio = ts["median"] / tm["median"]
        rows += [
            _row("sketch", f"torch.matmul, stored Omega: {name}", (m, n, r), A.dtype, device, tm),
            _row("sketch", f"pyvlmx in-kernel Omega: {name}", (m, n, r), A.dtype, device, ts,
                 baseline="matmul stored", speedup=1 / ratio, goal="time <= 2x matmul",
                 verdict="met" if ratio <= 2 else "NOT met"),
        ]
    rows.append(_row("sketch", "generate Omega only (n x r)", (n, r), A.dtype, device, t_gen))
    return rows


def run(quick: bool, device: str):
    """Yield the rows of the kernel benchmark, one op at a time (see module docstring)."""
    mrt = 0.2 if quick else 1.0
    ext = "compiled" if ops.compiled("projected_step") else "reference twins (extension missing)"
    for fn in (bench_projected_step, bench_ssim, bench_moments, bench_sketch):
        rows = fn(quick, device, mrt)
        sync(device)
        for row in rows:
            row.setdefault("baseline", None)
            row["impl"] = ext
            yield row


if __name__ == "__main__":
    main("bench_kernels", run, columns=COLUMNS + ["impl"])
