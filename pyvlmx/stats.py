"""Intervals for the figures pyvlmx reports: Wilson for rates, bootstrap for medians and AUCs.

Every headline number of a study comes from a small sample (23 photos, 69
pairs), so it is reported with a 95% interval:

* a rate k / n (accuracy, attack success): the Wilson score interval
  (Wilson 1927; Brown, Cai, DasGupta 2001 recommend it over the normal
  interval for small n and rates near 0 or 1);
* a median (PSNR, SSIM, cosine): the percentile bootstrap;
* an AUC or a TPR at fixed FPR of a detector: the *paired* percentile
  bootstrap over images: each resample draws image ids with replacement and
  keeps, for each drawn image, its clean score and all of its attacked
  scores together, so the dependence between an image and its attacked
  versions is kept.

Everything takes NumPy-compatible arrays (lists, NumPy, CPU tensors) and
returns plain floats; resampling is seeded so a report is reproducible.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

__all__ = ["auc", "auc_ci", "bootstrap_ci", "paired_bootstrap", "tpr_at_fpr", "wilson_interval"]


def _check_confidence(confidence: float) -> None:
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _check_resamples(resamples: int) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1, got {resamples!r}")


def _array(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds NaN or Inf (first at index {int(np.argmin(np.isfinite(a)))})")
    return a


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial rate ``successes / n``.

    Math: with p = k/n and z the normal quantile,
    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).

    Example:
        >>> lo, hi = wilson_interval(69, 69)
        >>> round(lo, 3), hi
        (0.947, 1.0)
    """
    from statistics import NormalDist

    _check_confidence(confidence)
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"wilson_interval: n must be an integer >= 1, got {n!r}")
    if int(successes) != successes or not (0 <= successes <= n):
        raise ValueError(f"wilson_interval: successes must be an integer in [0, {n}], got {successes!r}")
    k, n = int(successes), int(n)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return lo, hi


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1 - confidence) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ci(values, statistic: Callable[[np.ndarray], float] = np.median, *, resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)``.

    Args:
        values: (n,) finite numbers.
        statistic: a function of a 1-D array (default the median).
        resamples: bootstrap resamples.
        confidence: coverage of the interval.
        seed: seed of the resampling.

    Example:
        >>> lo, hi = bootstrap_ci([40.0, 41.0, 42.0, 43.0, 44.0])
        >>> 40.0 <= lo <= 42.0 <= hi <= 44.0
        True
    """
    _check_confidence(confidence)
    _check_resamples(resamples)
    x = _array(values, "bootstrap_ci: values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    if statistic is np.median:
        draws = np.median(x[idx], axis=1)
    else:
        draws = np.array([float(statistic(x[i])) for i in idx])
    return _percentiles(draws, confidence)


def auc(neg, pos) -> float:
    """Area under the ROC curve: P(pos > neg) + P(pos = neg) / 2 (Mann-Whitney).

    ``pos`` are the scores of attacked images, ``neg`` of clean ones; higher
    means more suspicious.

    Example:
        >>> auc([0.1, 0.2, 0.3], [0.25, 0.4])
        0.8333333333333334
    """
    n = np.sort(_array(neg, "auc: neg"))
    p = _array(pos, "auc: pos")
    below = np.searchsorted(n, p, side="left")   # clean scores strictly under each attacked score
    upto = np.searchsorted(n, p, side="right")   # ... and those equal to it
    return float((below.sum() + 0.5 * (upto - below).sum()) / (n.size * p.size))


def tpr_at_fpr(neg, pos, fpr: float = 0.05) -> float:
    """Share of ``pos`` above the threshold that flags at most ``fpr`` of ``neg``.

    The threshold is the smallest value t with mean(neg > t) <= fpr (a score
    equal to t is not flagged), so the clean false-positive rate never
    exceeds ``fpr`` on the sample.

    Example:
        >>> tpr_at_fpr(list(range(20)), [18.5, 19.5, 10.0], fpr=0.05)
        0.6666666666666666
    """
    if not (isinstance(fpr, (int, float)) and 0 <= fpr < 1):
        raise ValueError(f"tpr_at_fpr: fpr must be in [0, 1), got {fpr!r}")
    n = np.sort(_array(neg, "tpr_at_fpr: neg"))
    p = _array(pos, "tpr_at_fpr: pos")
    allowed = int(math.floor(fpr * n.size + 1e-9))  # clean scores that may lie above the threshold
    t = n[n.size - 1 - allowed]
    return float(np.mean(p > t))


def _groups(g, size: int, name: str) -> np.ndarray:
    a = np.asarray(g).reshape(-1)
    if a.size != size:
        raise ValueError(f"paired_bootstrap: {name} has {a.size} entries for {size} scores")
    return a


def paired_bootstrap(statistic: Callable[[np.ndarray, np.ndarray], float], neg, pos, *,
                     neg_groups: Sequence | None = None, pos_groups: Sequence | None = None,
                     resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Paired percentile bootstrap of ``statistic(neg, pos)`` over images.

    Each resample draws the image ids (the union of both group lists) with
    replacement; an image drawn m times contributes its clean scores and all
    of its attacked scores m times. Resamples in which one side is empty are
    redrawn.

    Args:
        statistic: ``(neg (a,), pos (b,)) -> float``, e.g. :func:`auc`.
        neg, pos: clean and attacked scores.
        neg_groups, pos_groups: image id of each score; both None pairs
            ``neg[i]`` with ``pos[i]`` (equal lengths needed).
        resamples, confidence, seed: as in :func:`bootstrap_ci`.

    Example:
        >>> lo, hi = paired_bootstrap(auc, [0.1, 0.2, 0.3, 0.4], [0.5, 0.15, 0.6, 0.7])
        >>> 0.0 <= lo <= auc([0.1, 0.2, 0.3, 0.4], [0.5, 0.15, 0.6, 0.7]) <= hi <= 1.0
        True
    """
    _check_confidence(confidence)
    _check_resamples(resamples)
    n = _array(neg, "paired_bootstrap: neg")
    p = _array(pos, "paired_bootstrap: pos")
    if (neg_groups is None) != (pos_groups is None):
        raise ValueError("paired_bootstrap: give both neg_groups and pos_groups, or neither")
    if neg_groups is None:
        if n.size != p.size:
            raise ValueError(f"paired_bootstrap: without groups neg and pos are paired by index and need "
                             f"equal lengths, got {n.size} and {p.size}")
        gn = gp = np.arange(n.size)
    else:
        gn = _groups(neg_groups, n.size, "neg_groups")
        gp = _groups(pos_groups, p.size, "pos_groups")
    ids, inv = np.unique(np.concatenate([gn, gp]), return_inverse=True)
    inv_n, inv_p = inv[:n.size], inv[n.size:]
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    r = 0
    tries = 0
    while r < resamples:
        tries += 1
        if tries > 50 * resamples:
            raise ValueError("paired_bootstrap: resamples keep missing one side; too few images hold both "
                             "clean and attacked scores")
        times = np.bincount(rng.integers(0, ids.size, size=ids.size), minlength=ids.size)
        sn = np.repeat(n, times[inv_n])  # each score as often as its image was drawn
        sp = np.repeat(p, times[inv_p])
        if sn.size == 0 or sp.size == 0:
            continue
        draws[r] = float(statistic(sn, sp))
        r += 1
    return _percentiles(draws, confidence)


def auc_ci(neg, pos, **kwargs) -> tuple[float, tuple[float, float]]:
    """:func:`auc` and its paired bootstrap interval (keywords of :func:`paired_bootstrap`).

    Example:
        >>> a, (lo, hi) = auc_ci([0.1, 0.2, 0.3, 0.4], [0.5, 0.15, 0.6, 0.7], resamples=500)
        >>> a, lo <= a <= hi
        (0.8125, True)
    """
    return auc(neg, pos), paired_bootstrap(auc, neg, pos, **kwargs)
