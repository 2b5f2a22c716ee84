"""Noise-sensitivity detection of aligned images.

An aligned image sits where an optimiser put it: its embedding was pushed onto
a target with a tiny pixel change.  Gaussian pixel noise probes how stable that
place is.  From K noisy copies of an image the detector computes scores

* ``flip_rate``       fraction of copies whose zero-shot class differs from the image's
* ``displacement``    mean ||f(x + noise) - f(x)|| of the unit-norm embeddings
* ``confidence_drop`` p(pred | x) - mean p(pred | x + noise)
* ``kl``              mean KL(p(. | x) || p(. | x + noise))
* ``margin``          the clean top-1 minus top-2 logit (not a noise score:
                      kept to see whether noise adds anything beyond it)

and calibrates each on clean images: the median and MAD of the clean scores
give a robust two-tailed statistic ``|s - median| / (1.4826 MAD)`` (aligned
images may be *more or less* stable than clean ones; the evaluation reports
which) and an empirical two-tailed p-value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from pyvlmx.models.analysis import analysis_mode
from pyvlmx.noise.copies import noisy_copies

NOISE_SCORES = ("flip_rate", "displacement", "confidence_drop", "kl")
SCORES = NOISE_SCORES + ("margin",)


def noise_scores(model, images: torch.Tensor, class_weights: torch.Tensor | None, *, sigma: float,
                 k: int = 32, seed: int = 0, clamp: bool = True, batch_size: int = 128,
                 logit_scale: float | None = None) -> dict[str, np.ndarray]:
    """Per-image noise-sensitivity scores from ``k`` noisy copies.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        images: (N, 3, H, W) in [0, 1].
        class_weights: (C, D) zero-shot class embeddings, or None (then only
            ``displacement`` is computed).
        sigma: pixel noise standard deviation.
        k: noisy copies per image.
        seed: noise seed; image i uses ``seed + i`` (scores do not depend on
            which other images are in the batch).
        clamp: clamp noisy images to [0, 1] (default: a valid image).
        logit_scale: softmax temperature (default ``model.logit_scale``).

    Returns:
        dict score name -> (N,) float64 array.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scale = float(logit_scale if logit_scale is not None else model.logit_scale)
    device = getattr(model, "device", images.device)
    W = class_weights.to(device) if class_weights is not None else None
    names = SCORES if W is not None else ("displacement",)
    out = {n: np.zeros(images.shape[0]) for n in names}
    with torch.no_grad(), analysis_mode(model):
        for i in range(images.shape[0]):
            x = images[i:i + 1].to(device)
            f0 = model.encode_image(x)
            f = torch.cat([model.encode_image(xn)
                           for xn in noisy_copies(x[0], sigma, k, seed=seed + i, clamp=clamp, chunk=batch_size)])
            out["displacement"][i] = float((f - f0).norm(dim=1).mean())
            if W is None:
                continue
            l0 = scale * f0 @ W.t().to(f0.dtype)
            ln = scale * f @ W.t().to(f.dtype)
            p0 = l0.softmax(-1)
            pn = ln.softmax(-1)
            pred0 = int(l0.argmax())
            out["flip_rate"][i] = float((ln.argmax(-1) != pred0).float().mean())
            out["confidence_drop"][i] = float(p0[0, pred0] - pn[:, pred0].mean())
            out["kl"][i] = float((p0 * (l0.log_softmax(-1) - ln.log_softmax(-1))).sum(-1).mean())
            top2 = l0[0].topk(min(2, l0.shape[1])).values
            out["margin"][i] = float(top2[0] - top2[-1]) if top2.numel() > 1 else 0.0
    return out


def roc_curve(neg: np.ndarray, pos: np.ndarray) -> dict:
    """ROC of "positive when score >= threshold".

    Returns:
        dict with ``fpr``, ``tpr``, ``thresholds`` (descending; the first is
        +inf), ``auc`` (Mann-Whitney: P(pos > neg) + P(pos = neg) / 2).
    """
    neg = np.asarray(neg, dtype=np.float64)
    pos = np.asarray(pos, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        raise ValueError(f"roc_curve needs negatives and positives, got {neg.size} and {pos.size}")
    thr = np.unique(np.concatenate([neg, pos]))[::-1]
    tpr = [(pos >= t).mean() for t in thr]
    fpr = [(neg >= t).mean() for t in thr]
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([neg, pos]))
    auc = (ranks[neg.size:].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size)
    return {"fpr": [0.0] + list(map(float, fpr)), "tpr": [0.0] + list(map(float, tpr)),
            "thresholds": [float("inf")] + thr.tolist(), "auc": float(auc)}


def tpr_at_fpr(roc: dict, fpr_max: float = 0.05) -> float:
    """Largest TPR on the ROC curve with FPR <= fpr_max."""
    return float(max(t for f, t in zip(roc["fpr"], roc["tpr"]) if f <= fpr_max + 1e-12))


@dataclass
class Calibration:
    """Clean-image statistics of one score: median, scaled MAD, sorted sample."""

    median: float
    scale: float
    sample: np.ndarray = field(repr=False)

    @classmethod
    def fit(cls, clean: np.ndarray) -> "Calibration":
        clean = np.sort(np.asarray(clean, dtype=np.float64))
        if clean.size < 2:
            raise ValueError(f"calibration needs at least 2 clean images, got {clean.size}")
        med = float(np.median(clean))
        mad = 1.4826 * float(np.median(np.abs(clean - med)))
        if mad <= 0:  # many ties (e.g. flip rate 0 on most clean images): fall back on the std
            mad = float(clean.std(ddof=1))
        if mad <= 0:
            mad = max(abs(med), 1.0) * 1e-12
        return cls(med, mad, clean)

    def z(self, s: np.ndarray) -> np.ndarray:
        """Signed robust z-score."""
        return (np.asarray(s, dtype=np.float64) - self.median) / self.scale

    def pvalue(self, s: np.ndarray) -> np.ndarray:
        """Two-tailed empirical p-value against the clean sample (with +1 smoothing)."""
        s = np.asarray(s, dtype=np.float64)
        n = self.sample.size
        lo = np.searchsorted(self.sample, s, side="right")   # clean <= s
        hi = n - np.searchsorted(self.sample, s, side="left")  # clean >= s
        return np.minimum(1.0, 2 * (np.minimum(lo, hi) + 1) / (n + 1))


class NoiseSensitivityDetector:
    """Two-tailed detector of aligned images from noise sensitivity.

    Args:
        model: the model.
        class_weights: (C, D) zero-shot weights (e.g. ``ZeroShotClassifier.weights``).
        sigma: noise level of the probe copies.
        k: noisy copies per image.
        scores: names used (default: all of :data:`SCORES` with weights).
        seed, clamp: noise options (see :func:`noise_scores`).

    Example:
        >>> from pyvlmx.models import load_model
        >>> model = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> g = torch.Generator().manual_seed(0)
        >>> clean = torch.rand(8, 3, 32, 32, generator=g)
        >>> weights = torch.nn.functional.normalize(torch.randn(5, model.embed_dim, generator=g), dim=1)
        >>> det = NoiseSensitivityDetector(model, weights, sigma=4/255, k=8).fit(clean)
        >>> flagged = det.predict(torch.rand(4, 3, 32, 32, generator=g), fpr=0.05)
        >>> flagged.shape, flagged.dtype
        ((4,), dtype('bool'))
    """

    def __init__(self, model, class_weights: torch.Tensor | None, *, sigma: float = 4 / 255, k: int = 32,
                 scores: Sequence[str] | None = None, seed: int = 0, clamp: bool = True):
        self.model = model
        self.class_weights = class_weights
        self.sigma = float(sigma)
        self.k = int(k)
        avail = SCORES if class_weights is not None else ("displacement",)
        self.scores = tuple(scores or avail)
        bad = [s for s in self.scores if s not in avail]
        if bad:
            raise ValueError(f"unknown or unavailable scores {bad}; available: {list(avail)}")
        self.seed = seed
        self.clamp = clamp
        self.calibration: dict[str, Calibration] = {}

    def raw_scores(self, images: torch.Tensor, seed_offset: int = 0) -> dict[str, np.ndarray]:
        s = noise_scores(self.model, images, self.class_weights, sigma=self.sigma, k=self.k,
                         seed=self.seed + seed_offset, clamp=self.clamp)
        return {n: s[n] for n in self.scores}

    def fit(self, clean: torch.Tensor | dict) -> "NoiseSensitivityDetector":
        """Calibrate on clean images (or on their precomputed raw scores)."""
        raw = clean if isinstance(clean, dict) else self.raw_scores(clean)
        self.calibration = {n: Calibration.fit(raw[n]) for n in self.scores}
        return self

    def statistic(self, raw: dict) -> dict[str, np.ndarray]:
        """|robust z| per score and ``combined`` = max over scores."""
        if not self.calibration:
            raise RuntimeError("NoiseSensitivityDetector: call fit(clean_images) first")
        st = {n: np.abs(self.calibration[n].z(raw[n])) for n in self.scores}
        st["combined"] = np.max(np.stack([st[n] for n in self.scores]), axis=0)
        return st

    def predict(self, images: torch.Tensor, fpr: float = 0.05) -> np.ndarray:
        """Flag images whose Bonferroni-combined two-tailed p-value is below ``fpr``."""
        raw = self.raw_scores(images, seed_offset=10_000_019)
        p = np.min(np.stack([self.calibration[n].pvalue(raw[n]) for n in self.scores]), axis=0)
        return p * len(self.scores) < fpr


def evaluate_detector(model, clean_images: torch.Tensor, aligned_images: torch.Tensor, *,
                      class_weights: torch.Tensor | None = None, classnames: Sequence[str] | None = None,
                      sigma: float = 4 / 255, k: int = 32, folds: int = 2, seed: int = 0, clamp: bool = True,
                      fpr_target: float = 0.05, raw: dict | None = None) -> dict:
    """ROC of the noise-sensitivity detector on clean vs aligned images.

    Calibration is cross-fitted: images are split into ``folds`` folds
    (clean i and aligned i in fold ``i % folds``); the statistic of an image in
    fold f uses the clean images outside f only, so no clean image is scored
    against itself.

    Args:
        model: the model.
        clean_images: (N, 3, H, W) in [0, 1].
        aligned_images: (M, 3, H, W) in [0, 1].
        class_weights: (C, D) zero-shot weights; built from ``classnames`` with
            :class:`pyvlmx.zeroshot.ZeroShotClassifier` if None and given.
        sigma, k, seed, clamp: noise probe (see :func:`noise_scores`).
        folds: cross-fitting folds (>= 2).
        fpr_target: FPR at which the TPR is reported.
        raw: precomputed raw scores ``{"clean": {...}, "aligned": {...}}``.

    Returns:
        JSON-serialisable dict: per score ``auc`` (two-tailed statistic),
        ``auc_raw`` (aligned > clean on the raw score) and ``direction``,
        ``tpr_at_fpr``, ``roc``, means; ``best`` score; ``raw_scores``; and
        ``statistic``, each image's cross-fitted statistic per score
        (``combined`` included), which the ROCs are drawn from.
    """
    if class_weights is None and classnames is not None:
        from pyvlmx.zeroshot import ZeroShotClassifier

        class_weights = ZeroShotClassifier(model, list(classnames)).weights
    det = NoiseSensitivityDetector(model, class_weights, sigma=sigma, k=k, seed=seed, clamp=clamp)
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if raw is None:
        raw = {"clean": det.raw_scores(clean_images),
               "aligned": det.raw_scores(aligned_images, seed_offset=1_000_003)}
    rc, ra = raw["clean"], raw["aligned"]
    nc, na = len(rc[det.scores[0]]), len(ra[det.scores[0]])
    if nc < 2 * folds:
        raise ValueError(f"need at least {2 * folds} clean images for {folds}-fold calibration, got {nc}")
    fc, fa = np.arange(nc) % folds, np.arange(na) % folds
    stat_c = {n: np.zeros(nc) for n in det.scores + ("combined",)}
    stat_a = {n: np.zeros(na) for n in det.scores + ("combined",)}
    for f in range(folds):
        det.fit({n: rc[n][fc != f] for n in det.scores})
        sc = det.statistic({n: rc[n][fc == f] for n in det.scores})
        sa = det.statistic({n: ra[n][fa == f] for n in det.scores})
        for n in stat_c:
            stat_c[n][fc == f] = sc[n]
            stat_a[n][fa == f] = sa[n]
    per_score = {}
    for n in det.scores + ("combined",):
        roc = roc_curve(stat_c[n], stat_a[n])
        entry = {"auc": roc["auc"], f"tpr_at_fpr_{fpr_target:g}": tpr_at_fpr(roc, fpr_target), "roc": roc}
        if n != "combined":
            roc_raw = roc_curve(rc[n], ra[n])
            entry.update(auc_raw=roc_raw["auc"],
                         direction="aligned higher" if roc_raw["auc"] >= 0.5 else "aligned lower",
                         mean_clean=float(np.mean(rc[n])), mean_aligned=float(np.mean(ra[n])),
                         median_clean=float(np.median(rc[n])), median_aligned=float(np.median(ra[n])))
        per_score[n] = entry
    best = max(per_score, key=lambda n: per_score[n]["auc"])
    return {"sigma": sigma, "k": k, "clamp": clamp, "folds": folds, "n_clean": nc, "n_aligned": na,
            "fpr_target": fpr_target, "scores": per_score, "best": best,
            "best_auc": per_score[best]["auc"],
            "raw_scores": {"clean": {n: rc[n].tolist() for n in det.scores},
                           "aligned": {n: ra[n].tolist() for n in det.scores}},
            "statistic": {"clean": {n: v.tolist() for n, v in stat_c.items()},
                          "aligned": {n: v.tolist() for n, v in stat_a.items()}}}
