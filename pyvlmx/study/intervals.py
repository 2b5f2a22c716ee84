"""95% intervals for the study's headline figures, from what the stages stored.

Each function returns ``(lo, hi)`` (or a figure and its interval) computed
with :mod:`pyvlmx.stats`:

* rates (zero-shot accuracy, systematic accuracy, targeted success): the
  Wilson interval of ``k`` successes in ``n`` trials (:func:`rate_ci`);
* medians and worst values of the sweep's per-pair metrics (PSNR, SSIM,
  cosine to the target): the percentile bootstrap over *images*, each drawn
  image bringing all of its pairs (:func:`pairs_ci`), since the pairs of
  one image share its content and are not independent;
* detection AUCs: the paired bootstrap over images of the detector's
  per-image statistic, an image's clean and attacked scores drawn together
  (:func:`detection_auc_ci`).

Example:
    >>> lo, hi = rate_ci(0.0, 69)
    >>> lo, round(hi, 3)
    (0.0, 0.053)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pyvlmx.stats import auc, bootstrap_ci, paired_bootstrap, tpr_at_fpr, wilson_interval

#: coverage of every interval in the study
CONFIDENCE = 0.95
#: bootstrap resamples of every bootstrap interval in the study
RESAMPLES = 2000

# +inf (the PSNR of an unchanged image, stored as null) as the sweep's summary
# ranks it: above every finite value; a finite stand-in keeps the bootstrap finite
_BIG = 1e300


def rate_ci(rate: float, n: int) -> tuple[float, float]:
    """Wilson interval of a stored rate ``k / n`` (``k`` is recovered exactly from the float).

    Raises:
        ValueError: ``rate * n`` is not (close to) a whole number of successes.
    """
    k = rate * n
    if abs(k - round(k)) > 1e-6 * max(1, n):
        raise ValueError(f"rate_ci: rate {rate!r} is not a count out of n = {n}")
    return wilson_interval(int(round(k)), n, CONFIDENCE)


def _metric_values(records: Sequence[dict], metric: str) -> dict[int, np.ndarray]:
    """Per image: the metric of its finished pairs, as the sweep's summary counts them."""
    by_image: dict[int, list[float]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        v = r.get(metric)
        if v is None:
            if metric != "psnr":
                continue
            v = math.inf                        # the summary's none_as for PSNR
        by_image.setdefault(int(r["image_index"]), []).append(_BIG if v == math.inf else float(v))
    return {i: np.asarray(v) for i, v in by_image.items()}


def _finite(x: float) -> float | None:
    return None if abs(x) >= _BIG / 10 else float(x)


def pairs_ci(records: Sequence[dict], metric: str, statistic: str = "median", *,
             seed: int = 0) -> tuple[float | None, float | None]:
    """Bootstrap interval over images of a sweep metric's median or worst (minimum) over pairs.

    Each resample draws the images with replacement; a drawn image brings all
    of its finished pairs. The minimum's interval starts at the observed worst
    by construction (a resample never holds a pair worse than the sample's).

    Args:
        records: the sweep's records.
        metric: a record field (``"psnr"``, ``"ssim"``, ``"cos_target"``).
        statistic: ``"median"`` or ``"worst"`` (the minimum).
        seed: resampling seed.

    Returns:
        ``(lo, hi)``; an end at +inf PSNR (unchanged images) is None, as in the summary.
    """
    stat = {"median": np.median, "worst": np.min}.get(statistic)
    if stat is None:
        raise ValueError(f"pairs_ci: statistic must be 'median' or 'worst', got {statistic!r}")
    by_image = _metric_values(records, metric)
    if not by_image:
        raise ValueError(f"pairs_ci: no finished pair has a {metric!r} value")
    groups = [by_image[i] for i in sorted(by_image)]

    def over_images(ids: np.ndarray) -> float:
        return float(stat(np.concatenate([groups[int(i)] for i in ids])))

    lo, hi = bootstrap_ci(np.arange(len(groups), dtype=np.float64), over_images, resamples=RESAMPLES,
                          confidence=CONFIDENCE, seed=seed)
    return _finite(lo), _finite(hi)


def detector_statistics(det: dict) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The cross-fitted per-image statistics behind :func:`~pyvlmx.detect.evaluate_detector`'s AUCs.

    Args:
        det: an ``evaluate_detector`` result (its ``statistic``: image i, clean
            or attacked, in fold ``i % folds``, scored as a robust ``|z|``
            against the clean images of the other folds; ``combined`` the
            maximum over scores).

    Returns:
        ``(clean, attacked)``: score name -> (n,) statistic, ``combined`` included.
    """
    stat = det["statistic"]
    return ({n: np.asarray(v, dtype=np.float64) for n, v in stat["clean"].items()},
            {n: np.asarray(v, dtype=np.float64) for n, v in stat["aligned"].items()})


def detection_auc_ci(neg, pos, neg_images: Sequence[int], pos_images: Sequence[int], *, fpr: float = 0.05,
                     seed: int = 0) -> dict:
    """AUC and TPR at ``fpr`` of a detector statistic, each with its paired bootstrap interval over images.

    Args:
        neg, pos: per-image statistic of the clean and of the attacked images.
        neg_images, pos_images: the image each score belongs to (an attacked
            image carries the index of the clean image it was made from).
        fpr: false-positive rate of the TPR.
        seed: resampling seed.

    Returns:
        ``{"auc", "auc_ci", "tpr", "tpr_ci", "fpr", "images"}``.
    """
    kw = dict(neg_groups=list(neg_images), pos_groups=list(pos_images), resamples=RESAMPLES,
              confidence=CONFIDENCE, seed=seed)
    return {"auc": auc(neg, pos), "auc_ci": list(paired_bootstrap(auc, neg, pos, **kw)),
            "tpr": tpr_at_fpr(neg, pos, fpr),
            "tpr_ci": list(paired_bootstrap(lambda a, b: tpr_at_fpr(a, b, fpr), neg, pos, **kw)),
            "fpr": fpr, "images": len(set(neg_images) | set(pos_images))}
