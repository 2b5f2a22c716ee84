"""The detectors of the detection matrix: pyvlmx's noise detector and two published baselines.

Every detector maps images to per-image *raw* scores (:meth:`Detector.raw`)
and raw scores to *statistics* (:meth:`Detector.statistics`), oriented so
that higher means "more likely attacked"; ``"score"`` is the one the matrix
reports.  A statistic may depend on a calibration sample of clean raw scores
(the noise detector's median and MAD); the matrix passes only clean images
that are not being scored (cross-fitting), and never an attacked one.

* ``noise``: :class:`~pyvlmx.detect.NoiseSensitivityDetector`: flip rate,
  embedding displacement, confidence drop and KL under Gaussian pixel noise,
  plus the clean margin, each as a two-tailed robust z against the clean
  calibration; ``score`` is the pre-declared ``combined`` (max |z|).
* ``ttc``: the tau of test-time counterattacks (Xing, Zhao, Sebe, "CLIP is
  Strong Enough to Fight Back: Test-time Counterattacks towards Zero-shot
  Adversarial Robustness of CLIP", CVPR 2025, arXiv 2503.03613; code
  github.com/Sxing2/CLIP-Test-time-Counterattacks, ``compute_tau`` and the
  first step of ``tau_thres_weighted_counterattacks``):

      tau(x) = ||g(x + d) - g(x)||_2 / ||g(x)||_2,   d ~ U(-eps, eps) per pixel, x + d clamped to [0, 1]

  with g the image encoder's *unnormalised* features (CLIP's
  ``encode_image``; here ``model.encode_image(x, normalize=False)``), one
  draw of d, eps = 4/255.  Adversarial images of loss-maximising attacks are
  "falsely stable": their tau is *small*, and TTC counterattacks an image
  when tau < 0.2 (``sign(tau_thres - tau) > 0``).  So ``score = -tau``
  (higher = attacked), and the published operating point flags tau < 0.2.
* ``squeeze``: feature squeezing (Xu, Evans, Qi, "Feature Squeezing:
  Detecting Adversarial Examples in Deep Neural Networks", NDSS 2018; code
  github.com/mzweilin/EvadeML-Zoo): the L1 distance between the zero-shot
  classifier's softmax on x and on a squeezed x, maximum over the squeezers
  of the paper's ImageNet setting: 5-bit depth (round(x (2^b - 1)) / (2^b - 1))
  and a 2x2 median filter (per channel, scipy's ``median_filter`` with
  ``mode="reflect"``: for an even window the upper median, the window
  reaching one pixel up and left).  The paper's third ImageNet squeezer,
  OpenCV's non-local means (11-3-4), has no torch implementation and is left
  out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pyvlmx.detect.config import MATRIX_DETECTORS, check_detectors  # noqa: F401  (re-exported)

#: the detector names of the matrix (the CLI's ``--detectors``)
DETECTORS = MATRIX_DETECTORS


def _check_images(images: torch.Tensor, who: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{who}: expected images of shape (N, 3, H, W) in [0, 1], got {got}")


# ---------------------------------------------------------------------------- TTC's tau

def ttc_tau(model, images: torch.Tensor, *, eps: float = 4 / 255, draws: int = 1, seed: int = 0,
            normalized: bool = False, batch_size: int = 16, features: torch.Tensor | None = None) -> np.ndarray:
    """Per-image tau of test-time counterattacks (mean over ``draws`` noise draws).

    Math: tau(x) = ||g(x + d) - g(x)|| / ||g(x)|| with d ~ U(-eps, eps) per
    pixel and x + d clamped to [0, 1] (see the module doc).

    Args:
        model: the model.
        images: (N, 3, H, W) in [0, 1].
        eps: half-width of the uniform noise (TTC: 4/255).
        draws: noise draws averaged per image (TTC: 1).
        seed: image i's draws are those of :func:`pyvlmx.noise.noisy_copies`
            with seed ``seed + i`` and ``kind="uniform"``.
        normalized: use unit-norm embeddings for g (TTC: False, raw features).
        batch_size: images per forward pass.
        features: (N, D) ``model.encode_image(images, normalize=False)``
            if the caller has them (saves one forward pass).

    Returns:
        (N,) float64 taus.

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> tau = ttc_tau(m, torch.rand(3, 3, 32, 32), draws=2)
        >>> tau.shape, bool((tau > 0).all())
        ((3,), True)
    """
    from pyvlmx.noise.copies import noisy_copies

    _check_images(images, "ttc_tau")
    if not eps > 0 or draws < 1:
        raise ValueError(f"ttc_tau: need eps > 0 and draws >= 1, got eps={eps}, draws={draws}")
    device = getattr(model, "device", images.device)
    out = np.zeros(images.shape[0])
    with torch.no_grad():
        for b0 in range(0, images.shape[0], batch_size):
            x = images[b0:b0 + batch_size].to(device)
            if features is None:
                g0 = model.encode_image(x, normalize=normalized)
            else:
                g0 = features[b0:b0 + batch_size].to(device)
                g0 = F.normalize(g0, dim=-1) if normalized else g0
            noisy = torch.cat([torch.cat(list(noisy_copies(x[j], eps, draws, seed=seed + b0 + j, kind="uniform",
                                                           clamp=True)))
                               for j in range(x.shape[0])])
            gn = model.encode_image(noisy, normalize=normalized).view(x.shape[0], draws, -1)
            tau = (gn - g0[:, None]).norm(dim=-1) / g0.norm(dim=-1, keepdim=True)
            out[b0:b0 + x.shape[0]] = tau.mean(dim=1).double().cpu().numpy()
    return out


# ---------------------------------------------------------------------------- feature squeezing

def bit_depth(x: torch.Tensor, bits: int, *, straight_through: bool = False) -> torch.Tensor:
    """Reduce pixels in [0, 1] to ``bits`` bits: round(x (2^b - 1)) / (2^b - 1).

    ``straight_through``: the rounding's gradient is taken as the identity
    (BPDA, Athalye, Carlini, Wagner 2018), for attacks through the squeezer.

    Example:
        >>> bit_depth(torch.tensor([0.0, 0.49, 0.51, 1.0]), 1)
        tensor([0., 0., 1., 1.])
    """
    if not (isinstance(bits, int) and 1 <= bits <= 8):
        raise ValueError(f"bit_depth: bits must be an integer in [1, 8], got {bits!r}")
    levels = 2 ** bits - 1
    q = torch.round(x * levels) / levels
    return x + (q - x).detach() if straight_through else q


def _pad_symmetric(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    parts = []
    if before:
        parts.append(x.narrow(dim, 0, before).flip(dim))
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
    return torch.cat(parts, dim=dim)


def median_filter(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Per-channel ``size`` x ``size`` median filter, as ``scipy.ndimage.median_filter(mode="reflect")``.

    The window of pixel (i, j) covers rows i - size + 1 + (size - 1) // 2 ...
    i + (size - 1) // 2 (likewise columns), the border is extended by mirror
    images including the edge pixel, and an even window takes the upper of
    its two middle values (element ``size^2 // 2`` of the sorted window).
    Differentiable almost everywhere (the gradient reaches the selected pixel).

    Args:
        x: (B, C, H, W), H and W at least ``size``.
        size: window side (>= 1).

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> median_filter(x, 2)[0, 0, 1:, 1:]
        tensor([[ 4.,  5.,  6.],
                [ 8.,  9., 10.],
                [12., 13., 14.]])
    """
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"median_filter: size must be an integer >= 1, got {size!r}")
    if x.dim() != 4 or x.shape[-1] < size or x.shape[-2] < size:
        raise ValueError(f"median_filter: expected (B, C, H, W) with H, W >= {size}, got {tuple(x.shape)}")
    if size == 1:
        return x
    after = (size - 1) // 2
    before = size - 1 - after
    xp = _pad_symmetric(_pad_symmetric(x, before, after, 2), before, after, 3)
    if size == 2:  # the upper median of a, b, c, d is max(min(max(a, b), max(c, d)), max(min(a, b), min(c, d)))
        a, b, c, d = xp[..., :-1, :-1], xp[..., :-1, 1:], xp[..., 1:, :-1], xp[..., 1:, 1:]
        return torch.maximum(torch.minimum(torch.maximum(a, b), torch.maximum(c, d)),
                             torch.maximum(torch.minimum(a, b), torch.minimum(c, d)))
    win = xp.unfold(2, size, 1).unfold(3, size, 1).flatten(-2)        # (B, C, H, W, size^2)
    return win.sort(dim=-1).values[..., (size * size) // 2]


def squeezers(bits: int = 5, median: int = 2, *, straight_through: bool = False) -> dict:
    """The squeezers of feature squeezing's ImageNet setting: name -> function of (B, 3, H, W)."""
    out = {}
    if bits:
        out[f"bit_depth_{bits}"] = lambda x: bit_depth(x, bits, straight_through=straight_through)
    if median:
        out[f"median_{median}x{median}"] = lambda x: median_filter(x, median)
    if not out:
        raise ValueError("feature squeezing needs at least one squeezer (bits or median)")
    return out


def squeeze_scores(model, images: torch.Tensor, class_weights: torch.Tensor, *, bits: int = 5, median: int = 2,
                   logit_scale: float | None = None, batch_size: int = 16,
                   features: torch.Tensor | None = None) -> dict[str, np.ndarray]:
    """Feature squeezing's L1 distances: ||softmax(l(x)) - softmax(l(s(x)))||_1 per squeezer s, and their max.

    Args:
        model: the model.
        images: (N, 3, H, W) in [0, 1].
        class_weights: (C, D) zero-shot weights.
        bits: bit depth of the first squeezer (0: none).
        median: median window of the second (0: none).
        logit_scale: softmax temperature (default ``model.logit_scale``).
        batch_size: images per forward pass.
        features: (N, D) image features of ``images`` (normalised or not)
            if the caller has them (saves one forward pass).

    Returns:
        dict ``{<squeezer>: (N,), "max": (N,)}`` of float64 distances in [0, 2].

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> W = m.class_embeddings(["cat", "dog", "car"])
        >>> s = squeeze_scores(m, torch.full((1, 3, 32, 32), 3 / 31), W)   # a 5-bit constant image
        >>> sorted(s), float(s["max"][0])
        (['bit_depth_5', 'max', 'median_2x2'], 0.0)
    """
    from pyvlmx.detect.classifier import ZeroShotLogits

    _check_images(images, "squeeze_scores")
    sq = squeezers(bits, median)
    device = getattr(model, "device", images.device)
    net = ZeroShotLogits(model, class_weights.to(device), logit_scale)
    out = {n: np.zeros(images.shape[0]) for n in sq}
    with torch.no_grad():
        for b0 in range(0, images.shape[0], batch_size):
            x = images[b0:b0 + batch_size].to(device)
            if features is None:
                p0 = net(x).softmax(dim=-1)
            else:
                f0 = F.normalize(features[b0:b0 + batch_size].to(device=device, dtype=torch.float32), dim=-1)
                p0 = (net.logit_scale * f0 @ net.weights.t()).softmax(dim=-1)
            for n, fn in sq.items():
                d = (net(fn(x)).softmax(dim=-1) - p0).abs().sum(dim=-1)
                out[n][b0:b0 + x.shape[0]] = d.double().cpu().numpy()
    out["max"] = np.max(np.stack([out[n] for n in sq]), axis=0)
    return out


# ---------------------------------------------------------------------------- the detectors

class Detector:
    """Base class: raw scores of images, and statistics (higher = attacked) from them.

    Subclasses set ``name`` and implement :meth:`raw` and :meth:`statistics`.
    """

    name = "detector"
    #: what ``statistics(...)["score"]`` is, for the report
    score_doc = ""

    def raw(self, images: torch.Tensor, seed_offset: int = 0,
            features: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Per-image raw scores ``{name: (N,)}``.

        ``seed_offset`` shifts the seeds of any noise drawn; ``features`` are
        ``model.encode_image(images, normalize=False)`` when the caller has
        them (a detector that needs them then skips that forward pass).
        """
        raise NotImplementedError

    def statistics(self, calibration: dict[str, np.ndarray], raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"score": (N,), ...}`` oriented higher = attacked, given clean raw scores ``calibration``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The detector's settings (JSON-able)."""
        return {"detector": self.name, "score": self.score_doc}


class NoiseDetector(Detector):
    """pyvlmx's noise-sensitivity detector; ``score`` = the pre-declared combined max |z|."""

    name = "noise"
    score_doc = "combined: max over the noise scores and the margin of |robust z| against clean images"

    def __init__(self, model, class_weights: torch.Tensor, *, sigma: float = 4 / 255, k: int = 16, seed: int = 0):
        from pyvlmx.detect.detector import NoiseSensitivityDetector

        self.det = NoiseSensitivityDetector(model, class_weights, sigma=sigma, k=k, seed=seed)

    def raw(self, images, seed_offset=0, features=None):
        return self.det.raw_scores(images, seed_offset=seed_offset)

    def statistics(self, calibration, raw):
        self.det.fit({n: np.asarray(calibration[n]) for n in self.det.scores})
        st = self.det.statistic({n: np.asarray(raw[n]) for n in self.det.scores})
        return {"score": st.pop("combined"), **st}

    def describe(self):
        return {**super().describe(), "sigma": self.det.sigma, "k": self.det.k, "scores": list(self.det.scores),
                "calibration": "median and MAD of the clean images outside the scored fold"}


class TTCDetector(Detector):
    """The tau of test-time counterattacks; ``score = -tau`` (adversarial images are falsely stable)."""

    name = "ttc"
    score_doc = "-tau, tau = ||g(x + d) - g(x)|| / ||g(x)||, d ~ U(-eps, eps) (small tau = attacked)"

    def __init__(self, model, *, eps: float = 4 / 255, draws: int = 1, threshold: float = 0.2, seed: int = 0,
                 normalized: bool = False):
        self.model = model
        self.eps, self.draws, self.threshold, self.seed, self.normalized = (float(eps), int(draws), float(threshold),
                                                                            int(seed), bool(normalized))

    def raw(self, images, seed_offset=0, features=None):
        return {"tau": ttc_tau(self.model, images, eps=self.eps, draws=self.draws, seed=self.seed + seed_offset,
                               normalized=self.normalized, features=features)}

    def statistics(self, calibration, raw):
        tau = np.asarray(raw["tau"], dtype=np.float64)
        return {"score": -tau, "tau": tau}

    def flagged(self, raw: dict[str, np.ndarray]) -> np.ndarray:
        """TTC's own decision: tau below the published threshold."""
        return np.asarray(raw["tau"]) < self.threshold

    def describe(self):
        return {**super().describe(), "eps": self.eps, "draws": self.draws, "published_threshold": self.threshold,
                "features": "unit-norm" if self.normalized else "unnormalised (as TTC)",
                "source": "Xing, Zhao, Sebe, CVPR 2025 (arXiv 2503.03613)"}


class SqueezeDetector(Detector):
    """Feature squeezing; ``score`` = the max over squeezers of the softmax L1 distance."""

    name = "squeeze"
    score_doc = "max over squeezers of ||softmax(x) - softmax(squeeze(x))||_1"

    def __init__(self, model, class_weights: torch.Tensor, *, bits: int = 5, median: int = 2):
        self.model = model
        self.class_weights = class_weights
        self.bits, self.median = int(bits), int(median)
        squeezers(self.bits, self.median)  # validates

    def raw(self, images, seed_offset=0, features=None):
        return squeeze_scores(self.model, images, self.class_weights, bits=self.bits, median=self.median,
                              features=features)

    def statistics(self, calibration, raw):
        return {"score": np.asarray(raw["max"], dtype=np.float64),
                **{n: np.asarray(v, dtype=np.float64) for n, v in raw.items() if n != "max"}}

    def describe(self):
        return {**super().describe(), "squeezers": list(squeezers(self.bits, self.median)),
                "left_out": "non-local means (OpenCV, no torch implementation)",
                "source": "Xu, Evans, Qi, NDSS 2018"}
