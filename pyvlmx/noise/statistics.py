"""Gaussian-noise statistics of image embeddings vs the linear approximation.

For an image ``x0`` and isotropic pixel noise ``x = x0 + sigma * eps``,
``eps ~ N(0, I)``, linearising the embedding ``f`` at ``x0`` predicts

    E[f(x)]   = f(x0)
    Cov[f(x)] = sigma^2 J J^T          (J = df/dx at x0, D x P)

:func:`noise_statistics` checks this prediction empirically: it draws N noisy
copies per sigma, streams their embeddings through
:class:`pyvlmx.ops.StreamingMoments` (memory independent of N, two halves kept
apart to estimate the sampling error), and reports how far the empirical
moments are from the prediction next to how far they *could* be from sampling
alone.  The linear approximation "holds" at a sigma when the covariance
discrepancy is within 2x the sampling error.

Clamping: by default the noisy pixels are NOT clamped to [0, 1]: the linear
theory is about ``x0 + sigma * eps`` and clamping would truncate the noise at
saturated pixels (making it non-Gaussian and shrinking its variance there), so
a clamped run can disagree with theory for a reason that has nothing to do
with the model.  The models take any real input (normalisation is affine).
Pass ``clamp=True`` to study what a real 8-bit-valid noisy image does; the
result records which was used.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch

from pyvlmx.jacobian.operator import JacobianOperator
from pyvlmx.models.analysis import analysis_mode
from pyvlmx.noise.copies import noisy_copies

QQ_LEVELS = 99  # probability levels stored for Q-Q plots


def mardia(z: np.ndarray) -> dict:
    """Mardia's multivariate skewness and kurtosis tests (Mardia 1970).

    With ``w_i = S^{-1/2} (z_i - zbar)`` (S the ML covariance),
    ``b1 = sum_{abc} (mean_i w_ia w_ib w_ic)^2`` and ``b2 = mean_i |w_i|^4``.
    Under normality ``n b1 / 6 ~ chi2(d (d+1) (d+2) / 6)`` and
    ``(b2 - d (d+2)) / sqrt(8 d (d+2) / n) ~ N(0, 1)``.

    Args:
        z: (n, d) samples.

    Returns:
        dict with ``b1``, ``skew_p``, ``b2``, ``b2_expected``, ``kurt_z``, ``kurt_p``.
    """
    from scipy import stats

    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < z.shape[1] + 2:
        raise ValueError(f"mardia: need z of shape (n, d) with n > d + 1, got {z.shape}")
    n, d = z.shape
    zc = z - z.mean(axis=0)
    S = zc.T @ zc / n
    evals, evecs = np.linalg.eigh(S)
    if evals.min() <= 0:
        raise ValueError("mardia: the sample covariance is singular")
    w = zc @ evecs @ np.diag(evals ** -0.5) @ evecs.T
    m3 = np.einsum("ia,ib,ic->abc", w, w, w, optimize=True) / n
    b1 = float((m3 ** 2).sum())
    b2 = float(((w ** 2).sum(axis=1) ** 2).mean())
    dfree = d * (d + 1) * (d + 2) / 6
    skew_p = float(stats.chi2.sf(n * b1 / 6, dfree))
    kz = (b2 - d * (d + 2)) / math.sqrt(8 * d * (d + 2) / n)
    return {"b1": b1, "skew_stat": n * b1 / 6, "skew_df": dfree, "skew_p": skew_p,
            "b2": b2, "b2_expected": float(d * (d + 2)), "kurt_z": float(kz),
            "kurt_p": float(2 * stats.norm.sf(abs(kz)))}


def anderson_darling(z: np.ndarray) -> list[dict]:
    """Anderson-Darling normality test per column of z (n, d).

    ``scipy.stats.anderson(..., dist="norm", method="interpolate")``: mean and
    variance are estimated, so this tests the *shape*; the p-value is
    interpolated from tables and clipped to [0.01, 0.15].
    """
    from scipy import stats

    out = []
    for j in range(z.shape[1]):
        r = stats.anderson(z[:, j], dist="norm", method="interpolate")
        out.append({"statistic": float(r.statistic), "pvalue": float(r.pvalue),
                    "reject_5pct": bool(r.pvalue < 0.05)})
    return out


def _moments():
    from pyvlmx.ops import StreamingMoments

    return StreamingMoments


def noise_statistics(model, image: torch.Tensor, sigmas: Sequence[float], n: int, *,
                     batch_size: int = 256, clamp: bool = False, seed: int = 0, normalize: bool = True,
                     top_k: int = 8, n_directions: int = 4, normality_samples: int = 5000,
                     gram: torch.Tensor | None = None, fn: Callable | None = None,
                     progress: bool = False, linearisation: int = 0, linearisation_chunk: int = 32) -> dict:
    """Empirical embedding moments under pixel noise vs the linear prediction.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        image: (3, H, W) in [0, 1].
        sigmas: noise standard deviations in pixel units (1/255 = one grey level).
        n: noisy copies per sigma (split into two halves for the sampling error).
        batch_size: copies per forward pass.
        clamp: clamp noisy pixels to [0, 1] (default False, see module doc).
        seed: noise seed (sigma i uses seed + i).
        normalize: unit-norm embedding (default) or raw features.
        top_k: eigenvalues compared.
        n_directions: top predicted principal directions tested for normality.
        normality_samples: projections kept for the normality tests (the first
            ones drawn; AD on 10^5 samples rejects any tiny deviation).
        gram: precomputed ``J J^T`` (D, D) at ``image``; computed if None.
        fn: optional (B, 3, H, W) -> (B, D) callable used instead of the model.
        linearisation: draws per sigma of the per-sample residual
            ``rho = ||f(x0+e) - f(x0) - J e|| / ||f(x0+e) - f(x0)||``
            (:func:`pyvlmx.noise.linearisation.linearisation_residuals`,
            batched JVPs); 0 (default) skips it.
        linearisation_chunk: draws per batched forward / JVP call for it.

    Returns:
        JSON-serialisable dict: ``jacobian`` (top eigenvalues of J J^T, time),
        ``per_sigma`` (one dict per sigma: ``rel_fro`` discrepancy,
        ``sampling_error``, ``ratio``, ``holds``, ``mean_shift``, eigenvalues,
        ``variance_ratio`` along the predicted directions, ``anderson``,
        ``mardia``, ``qq``), ``sigma_linear_max`` (largest sigma up to which it
        holds at every smaller sigma of the grid) and ``sigma_breaks``; with
        ``linearisation > 0`` each per-sigma dict also has ``linearisation``
        (median, p90, ... of rho) and the result ``linearisation_loglog_slope``.

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> r = noise_statistics(m, x, [1e-3, 0.3], n=256)
        >>> [row["holds"] for row in r["per_sigma"]], r["sigma_breaks"]
        ([True, False], 0.3)
    """
    from scipy import stats

    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(not (s > 0 and math.isfinite(s)) for s in sigmas):
        raise ValueError(f"sigmas must be a non-empty list of positive numbers, got {sigmas}")
    if n < 8:
        raise ValueError(f"n must be >= 8 (two halves of at least 4), got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    StreamingMoments = _moments()
    t0 = time.perf_counter()
    op = JacobianOperator(model, image, normalize=normalize, fn=fn)
    D, P = op.shape
    if gram is None:
        gram = op.gram()
    op.release()
    if tuple(gram.shape) != (D, D):
        raise ValueError(f"gram must have shape ({D}, {D}), got {tuple(gram.shape)}")
    t_jac = time.perf_counter() - t0
    G = gram.to(device=op.device, dtype=torch.float64)
    lam, V = torch.linalg.eigh(G)
    order = torch.argsort(lam, descending=True)
    lam, V = lam[order].clamp_min(0), V[:, order]
    top_k = min(top_k, D)
    n_dir = min(n_directions, int((lam > lam[0] * 1e-12).sum()))
    f0 = op.f0.to(torch.float64)
    x0 = op.x0
    mode_model = model if fn is None else None
    per_sigma = []
    it = list(enumerate(sigmas))
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="sigmas", unit="sigma")
    for si, sigma in it:
        ts = time.perf_counter()
        halves = [StreamingMoments(D, dtype=torch.float64, device=x0.device) for _ in range(2)]
        proj: list[torch.Tensor] = []
        kept = 0
        done = 0
        with torch.no_grad(), analysis_mode(mode_model):
            for x in noisy_copies(x0[0], sigma, n, seed=seed + si, clamp=clamp, chunk=batch_size):
                b = x.shape[0]
                e = (fn(x) if fn is not None else model.encode_image(x, normalize=normalize))
                d = e.to(torch.float64) - f0          # centre at f(x0): no cancellation
                cut = max(0, min(b, n // 2 - done))   # first n//2 copies -> half 0
                if cut:
                    halves[0].update(d[:cut])
                if cut < b:
                    halves[1].update(d[cut:])
                if kept < normality_samples and n_dir > 0:
                    z = d[: normality_samples - kept] @ V[:, :n_dir] / (sigma * lam[:n_dir].sqrt())
                    proj.append(z.cpu())
                    kept += z.shape[0]
                done += b
        CA, CB = halves[0].covariance(), halves[1].covariance()
        pooled = StreamingMoments.from_state(halves[0].state()).merge(halves[1])   # all n copies
        mean_d, C = pooled.mean, pooled.covariance()
        Cp = sigma ** 2 * G
        norm_p = float(torch.linalg.matrix_norm(Cp))
        rel_fro = float(torch.linalg.matrix_norm(C - Cp)) / norm_p
        samp = 0.5 * float(torch.linalg.matrix_norm(CA - CB)) / norm_p
        # Gaussian theory for the same floor: E|C_hat - C|_F^2 = (tr C^2 + (tr C)^2) / (n - 1)
        samp_theory = math.sqrt((float((Cp ** 2).sum()) + float(torch.trace(Cp)) ** 2) / (n - 1)) / norm_p
        ev_emp = torch.linalg.eigvalsh(C).flip(0)[:top_k]
        ev_pred = sigma ** 2 * lam[:top_k]
        shift = float(torch.linalg.vector_norm(mean_d))
        shift_floor = math.sqrt(max(float(torch.trace(C)), 0.0) / n)
        var_ratio = [(float(V[:, j] @ C @ V[:, j]) / float(sigma ** 2 * lam[j])) for j in range(n_dir)]
        z = torch.cat(proj).numpy() if proj else np.zeros((0, 0))
        normality: dict = {}
        if z.shape[0] >= max(20, z.shape[1] + 2) and n_dir > 0:
            probs = (np.arange(1, QQ_LEVELS + 1)) / (QQ_LEVELS + 1)
            normality = {
                "samples": int(z.shape[0]),
                "anderson": anderson_darling(z),
                "mardia": mardia(z) if n_dir >= 1 else None,
                "qq": {"normal": stats.norm.ppf(probs).tolist(),
                       "standardized": [np.quantile((z[:, j] - z[:, j].mean()) / z[:, j].std(ddof=1),
                                                    probs).tolist() for j in range(n_dir)]},
            }
        per_sigma.append({
            "sigma": sigma, "sigma_255": sigma * 255, "n": int(n),
            "rel_fro": rel_fro, "sampling_error": samp, "sampling_error_gaussian": samp_theory,
            "ratio": rel_fro / samp if samp > 0 else float("inf"),
            "holds": bool(rel_fro <= 2 * samp),
            "mean_shift": shift, "mean_shift_floor": shift_floor,
            "mean_shift_ratio": shift / shift_floor if shift_floor > 0 else float("inf"),
            "mean_shift_rel": shift / (sigma * math.sqrt(float(lam.sum()))),
            "top_eigenvalues_empirical": ev_emp.tolist(), "top_eigenvalues_predicted": ev_pred.tolist(),
            "top_eigenvalue_rel_error": ((ev_emp - ev_pred).abs() / ev_pred.clamp_min(1e-300)).tolist(),
            "variance_ratio": var_ratio,
            "trace_ratio": float(torch.trace(C) / torch.trace(Cp)),
            **normality,
            "wall_time_s": time.perf_counter() - ts,
        })
    lin_slope = None
    if linearisation:
        from pyvlmx.noise.linearisation import linearisation_residuals

        lin = linearisation_residuals(model, image, sigmas, int(linearisation), seed=seed,
                                      chunk=linearisation_chunk, clamp=clamp, operator=op, progress=progress)
        for row, lr in zip(per_sigma, lin["per_sigma"]):
            row["linearisation"] = lr
        lin_slope = lin["loglog_slope"]
    holds = [r["holds"] for r in per_sigma]
    order_s = np.argsort(sigmas)
    sigma_lin = None
    sigma_break = None
    for i in order_s:
        if holds[i] and sigma_break is None:
            sigma_lin = sigmas[i]
        elif not holds[i] and sigma_break is None:
            sigma_break = sigmas[i]
    top = lam[:top_k]
    return {
        "model": getattr(model, "name", None), "embed_dim": D, "pixels": P, "normalize": normalize,
        "clamp": clamp, "n": int(n), "seed": seed, "batch_size": batch_size,
        "jacobian": {"top_eigenvalues_JJt": top.tolist(), "trace_JJt": float(lam.sum()),
                     "top_singular_values": top.sqrt().tolist(),
                     "energy_top1": float(lam[0] / lam.sum()), "wall_time_s": t_jac},
        "per_sigma": per_sigma,
        "criterion": "holds when rel_fro <= 2 * sampling_error (split-half)",
        "sigma_linear_max": sigma_lin, "sigma_breaks": sigma_break,
        **({"linearisation_loglog_slope": lin_slope} if linearisation else {}),
        "wall_time_s": time.perf_counter() - t0,
    }


def accuracy_under_noise(model, images: torch.Tensor, labels: Sequence[int], classnames: Sequence[str], *,
                         sigmas: Sequence[float], n_copies: int = 16, clamp: bool = True, seed: int = 0,
                         batch_size: int = 128, templates: Sequence[str] | None = None,
                         target_labels: Sequence[int] | None = None, classifier=None) -> dict:
    """Zero-shot accuracy of noisy copies, per sigma.

    Each image gets ``n_copies`` noisy copies per sigma (sigma 0 = the image
    itself); accuracy is the fraction of all copies classified as their label.
    Here noisy images are clamped to [0, 1] by default: this asks what a valid
    image does, not what the linear theory says.

    Args:
        model: the model.
        images: (N, 3, H, W) in [0, 1].
        labels: (N,) class indices into ``classnames``.
        classnames: readable class names.
        sigmas: noise levels (0 allowed).
        target_labels: optional (N,) alignment targets: the fraction classified
            as the target is reported too (aligned images).
        classifier: an existing :class:`pyvlmx.zeroshot.ZeroShotClassifier`.

    Returns:
        dict with ``sigmas``, ``accuracy`` (per sigma), ``target_rate`` (or
        None), ``per_image_accuracy`` (per sigma, list over images).
    """
    if classifier is None:
        from pyvlmx.zeroshot import SHORT_TEMPLATES, ZeroShotClassifier

        classifier = ZeroShotClassifier(model, list(classnames), templates=templates or SHORT_TEMPLATES)
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    if images.dim() != 4 or images.shape[0] != labels_t.shape[0]:
        raise ValueError(f"expected images (N, 3, H, W) and N labels, got {tuple(images.shape)} and "
                         f"{labels_t.shape[0]} labels")
    tgt = torch.as_tensor(list(target_labels), dtype=torch.long) if target_labels is not None else None
    gen = torch.Generator(device=images.device).manual_seed(seed)
    acc, trate, per_img = [], [], []
    with torch.no_grad(), analysis_mode(model):
        for sigma in sigmas:
            if sigma < 0:
                raise ValueError(f"sigmas must be >= 0, got {sigma}")
            copies = 1 if sigma == 0 else n_copies
            correct = torch.zeros(images.shape[0])
            hit_t = torch.zeros(images.shape[0])
            for i in range(images.shape[0]):
                # sigma 0: the image itself, and the noise stream is not advanced
                chunks = ([images[i:i + 1]] if sigma == 0 else
                          noisy_copies(images[i], sigma, copies, seed=gen, clamp=clamp, chunk=batch_size))
                pred = torch.cat([classifier.predict(x)[0].cpu() for x in chunks])
                correct[i] = (pred == labels_t[i]).float().mean()
                if tgt is not None:
                    hit_t[i] = (pred == tgt[i]).float().mean()
            acc.append(float(correct.mean()))
            per_img.append(correct.tolist())
            trate.append(float(hit_t.mean()) if tgt is not None else None)
    return {"sigmas": [float(s) for s in sigmas], "n_copies": n_copies, "clamp": clamp,
            "accuracy": acc, "target_rate": trate if tgt is not None else None,
            "per_image_accuracy": per_img}
