"""Per-sample linearisation residuals of the image embedding under pixel noise.

The covariance test of :func:`pyvlmx.noise.noise_statistics` asks whether the
*distribution* of ``f(x0 + e)`` matches the linear prediction.  This module
asks the per-sample question: how much of each displacement
``f(x0 + e) - f(x0)`` the Jacobian misses,

    rho(e) = ||f(x0 + e) - f(x0) - J e|| / ||f(x0 + e) - f(x0)||,

for ``N`` draws ``e = sigma * eps``, ``eps ~ N(0, I)``, at each sigma.  For a
smooth ``f`` the second-order term dominates the residual, so rho grows in
proportion to sigma (``rho ~ sigma ||f''[eps, eps]|| / (2 ||J eps||)``) until
the linearisation breaks down; a linear ``f`` gives rho = 0 up to rounding.
In float32 rounding of ``f`` itself puts a floor of about
``1e-7 ||f(x0)|| / (sigma ||J eps||)`` under rho at the smallest sigmas.

``J e`` comes from batched JVPs (:meth:`JacobianOperator.matvec`); the draws
are regenerated chunk by chunk from their seed with :func:`pyvlmx.ops.omega`
(entry (i, p) of the draw matrix depends on (seed, i, p) only), so the N
draws are never held at once and the same ``eps`` serve every sigma (common
random numbers: the curve against sigma is free of draw-to-draw noise).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from pyvlmx.jacobian.operator import JacobianOperator, analysis_mode


def _bootstrap_median_ci(rho: np.ndarray, n_boot: int, level: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, rho.shape[0], size=(n_boot, rho.shape[0]))
    meds = np.median(rho[idx], axis=1)
    a = (1 - level) / 2
    return [float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))]


def linearisation_residuals(model, image: torch.Tensor, sigmas: Sequence[float], n: int, *, seed: int = 0,
                            chunk: int = 32, normalize: bool = True, clamp: bool = False,
                            device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                            n_boot: int = 1000, ci_level: float = 0.95,
                            fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                            operator: JacobianOperator | None = None, progress: bool = False) -> dict:
    """Median and 90th percentile of rho(e) over N noise draws, per sigma.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel` (or None with ``fn``).
        image: (3, H, W) in [0, 1].
        sigmas: noise standard deviations in pixel units (1/255 = one grey level).
        n: draws per sigma (the same N draws, scaled, at every sigma).
        seed: seed of the draws.
        chunk: draws per batched forward / JVP call.
        normalize: unit-norm embedding (default) or raw features.
        clamp: clamp ``x0 + e`` to [0, 1]; the residual is then taken along
            the displacement that was applied, ``clamp(x0 + e) - x0``.
        device: where to compute (None: the model's device, or the image's with ``fn``).
        dtype: compute dtype (None: the model's).
        n_boot: bootstrap resamples for the confidence interval of the median
            (0: none).
        ci_level: level of that interval.
        fn: optional (B, 3, H, W) -> (B, D) callable used instead of the model.
        operator: an existing :class:`JacobianOperator` at ``image`` (its
            normalisation, dtype and device are used).

    Returns:
        JSON-serialisable dict: ``per_sigma`` (one dict per sigma:
        ``sigma``, ``sigma_255``, ``n``, ``median``, ``p90``, ``mean``,
        ``max``, ``median_ci`` [lo, hi] or None, ``wall_time_s``),
        ``loglog_slope`` (least-squares slope of log median rho against log
        sigma; 1 where the second-order term dominates; None for one sigma),
        ``n``, ``seed``, ``embed_dim``, ``pixels``.

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> r = linearisation_residuals(m, torch.rand(3, 32, 32), [1 / 255, 4 / 255], n=64)
        >>> r["per_sigma"][1]["median"] > r["per_sigma"][0]["median"]
        True
    """
    from pyvlmx import ops

    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
        raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {sigmas}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not 0 < ci_level < 1:
        raise ValueError(f"ci_level must be in (0, 1), got {ci_level}")
    t0 = time.perf_counter()
    if operator is None:
        x = image if device is None else image.to(device)
        operator = JacobianOperator(model, x, normalize=normalize, fn=fn, chunk_size=chunk, dtype=dtype)
    op = operator
    D, P = op.shape
    x0, f0 = op.x0, op.f0.to(torch.float64)
    mode_model = op._mode_model
    rhos = [np.empty(n) for _ in sigmas]
    starts = range(0, n, chunk)
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="linearisation", unit="chunk")
    times = [0.0] * len(sigmas)
    for a in starts:
        b = min(n, a + chunk)
        eps = ops.omega(b - a, P, seed, row_offset=a, dtype=op.dtype, device=op.device)   # (b, P)
        for si, sigma in enumerate(sigmas):
            ts = time.perf_counter()
            x = x0 + (sigma * eps).view(b - a, *op.image_shape)
            if clamp:
                x = x.clamp(0.0, 1.0)
            e = (x - x0).reshape(b - a, P)
            with torch.no_grad(), analysis_mode(mode_model):
                df = op._f(x).to(torch.float64) - f0                                     # (b, D)
            je = op.matvec(e.t()).t().to(torch.float64)                                  # (b, D)
            num = torch.linalg.vector_norm(df - je, dim=1)
            den = torch.linalg.vector_norm(df, dim=1)
            rhos[si][a:b] = (num / den.clamp_min(torch.finfo(torch.float64).tiny)).cpu().numpy()
            times[si] += time.perf_counter() - ts
    per_sigma = []
    for si, sigma in enumerate(sigmas):
        rho = rhos[si]
        ci = _bootstrap_median_ci(rho, n_boot, ci_level, seed) if n_boot > 0 and n > 1 else None
        per_sigma.append({"sigma": sigma, "sigma_255": sigma * 255, "n": int(n),
                          "median": float(np.median(rho)), "p90": float(np.quantile(rho, 0.9)),
                          "mean": float(rho.mean()), "max": float(rho.max()),
                          "median_ci": ci, "ci_level": ci_level if ci is not None else None,
                          "wall_time_s": times[si]})
    slope = None
    med = np.array([r["median"] for r in per_sigma])
    if len(set(sigmas)) > 1 and bool((med > 0).all()):
        slope = float(np.polyfit(np.log(sigmas), np.log(med), 1)[0])
    return {"embed_dim": D, "pixels": P, "n": int(n), "seed": seed, "clamp": clamp,
            "normalize": op.normalize, "per_sigma": per_sigma, "loglog_slope": slope,
            "wall_time_s": time.perf_counter() - t0}
