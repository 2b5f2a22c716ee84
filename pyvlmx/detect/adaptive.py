"""Aligned images for detection experiments, and the adaptive attackers of the detection matrix.

:func:`align` runs the registered attacks of :mod:`pyvlmx.attacks` (no loop
of its own): plain alignment (``eot_samples = 0``,
:class:`~pyvlmx.attacks.EmbeddingAlignment`) or the adaptive attacker of the
noise detector, :class:`~pyvlmx.attacks.EOTAlignment`, whose objective is
the alignment loss in expectation over the detector's own noise,

    L(x) = 1/2 ||f(x) - t||^2 + 1/2 E_eps ||f(clip(x + sigma eps)) - t||^2,

so the aligned image is aligned *and* stays aligned under the noise the
detector probes with.  Every step is taken (``stop="steps"``) and the result
is the 8-bit image inside the budget (:func:`pyvlmx.attacks.quantize_to_budget`).

The detection matrix's adaptive attackers (:func:`adaptive_attack`) know one
detector each and add a penalty on its score to that objective,

    L(x) = 1/2 ||f(x) - t||^2 + 1/2 (1/K) sum_k ||f(clip(x + e_k)) - t||^2 + w P(x),

with the K noisy copies drawn from the detector's own noise and shared by the
EOT term and the penalty:

* ``noise``: e_k ~ N(0, sigma^2); P = mean over the differentiable scores
  (displacement, confidence drop, KL, margin) of relu(|z| - 1), z the
  robust z-score against the clean calibration, so the attacker keeps every
  score within one robust SD of clean images (the flip rate, a count, has
  no gradient; it moves with the confidence drop).
* ``ttc``: e_k ~ U(-eps, eps); P = relu(z - 1) with z = (median_clean(tau)
  - tau) / scale, tau from the copies on unnormalised features: the attacker
  keeps its image as noise-sensitive as clean ones.
* ``squeeze``: no noise (K = 0); P = relu(z - 1) of feature squeezing's
  score, through the squeezers by BPDA (Athalye, Carlini, Wagner 2018): the
  bit-depth rounding is straight-through (identity gradient), the median
  filter passes its gradient to the pixel it selects.

With ``gated`` the penalty acts only on images whose embedding is already
classified as their target (align first, then hide while staying aligned);
without it the penalty fights the alignment from the first step, and on
the sample photos the attacker then rarely aligns at all.

The penalty enters the engine through :class:`DetectorAwareAlignment`, an
:class:`~pyvlmx.attacks.EmbeddingAlignment` whose :meth:`parts` wraps the
objective in a :class:`PenalisedObjective`; the engine's loop, budget, step
rule and stop rule are unchanged.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pyvlmx.attacks import EmbeddingAlignment, create_attack, quantize_to_budget
from pyvlmx.attacks.objective import Objective


def align(model, images: torch.Tensor, targets: torch.Tensor, *, eps: float = 8 / 255, steps: int = 100,
          step_size: float | None = None, eot_samples: int = 0, sigma: float = 4 / 255, seed: int = 0,
          batch_size: int = 8) -> tuple[torch.Tensor, dict]:
    """Align images to target embeddings (optionally in expectation over noise).

    Args:
        model: the model.
        images: (N, 3, H, W) in [0, 1].
        targets: (N, D) target embeddings (e.g. ``model.encode_image`` of target images).
        eps: L-inf budget in pixels.
        steps: sign steps, all taken.
        step_size: pixels per sign step (default eps / 8).
        eot_samples: noisy copies per step in the EOT term (0: plain alignment).
        sigma: Gaussian noise of the EOT term (the detector's sigma); copies are clamped to [0, 1].
        seed: image i's noise and start use seed ``seed + i``.
        batch_size: images per attack batch.

    Returns:
        (aligned (N, 3, H, W) 8-bit inside the budget, info dict with the
        per-image final ``cosine`` to the target, ``linf``, and the config).

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> with torch.no_grad():
        ...     t = m.encode_image(x.flip(0))
        >>> out, info = align(m, x, t, steps=3, eot_samples=2)
        >>> float((out - x).abs().max()) <= 8 / 255 + 1e-6, len(info["cosine"])
        (True, 2)
    """
    if images.dim() != 4 or targets.dim() != 2 or images.shape[0] != targets.shape[0]:
        raise ValueError(f"expected images (N, 3, H, W) and targets (N, D), got {tuple(images.shape)} and "
                         f"{tuple(targets.shape)}")
    if eps <= 0 or steps < 0 or eot_samples < 0 or batch_size < 1:
        raise ValueError(f"need eps > 0, steps >= 0, eot_samples >= 0, batch_size >= 1; got {eps}, {steps}, "
                         f"{eot_samples}, {batch_size}")
    step = float(step_size if step_size is not None else eps / 8)
    opts = {"eps": float(eps), "max_steps": int(steps), "step_size": step, "stop": "steps", "seed": int(seed),
            "norm": "linf", "quantize": True}
    if eot_samples:
        atk = create_attack("eot-alignment", model, eot_samples=int(eot_samples), eot_sigma=float(sigma), **opts)
    else:
        atk = create_attack("embedding-alignment", model, **opts)
    device = getattr(model, "device", images.device)
    out = torch.empty_like(images)
    cos: list[float] = []
    for b0 in range(0, images.shape[0], batch_size):
        x0 = images[b0:b0 + batch_size].to(device)
        t = targets[b0:b0 + batch_size].to(device=device, dtype=torch.float32)
        res = atk.run(x0, t, seeds=list(range(seed + b0, seed + b0 + x0.shape[0])))
        out[b0:b0 + x0.shape[0]] = res.images.to(out.device)
        cos += [r["cos_target"] for r in res.records]
    linf = (out - images).abs().flatten(1).max(dim=1).values
    return out, {"eps": eps, "steps": steps, "step_size": step, "eot_samples": eot_samples, "sigma": sigma,
                 "cosine": cos, "linf": linf.tolist()}


# ---------------------------------------------------------------------------- adaptive attackers of the matrix

def _noise_seed(seed: int, step: int) -> int:
    """A 63-bit seed for (sample seed, step), distinct from the engine's EOT streams."""
    return (int(seed) * 2_000_003 + int(step) * 104_729 + 0x5DEECE66D) % (2 ** 63)


class PenalisedObjective(Objective):
    """An :class:`~pyvlmx.attacks.objective.Objective` plus ``weight * penalty``, sharing its EOT copies.

    ``penalty(z, emb, noisy_features, sample_index)`` gets the rows' images
    (R, 3, H, W), their unit-norm embeddings (R, D), the *unnormalised*
    features of their K noisy copies (R, K, D) (None without EOT) and their
    sample indices, and returns (R,) penalties.  The EOT term uses the same
    copies (their features normalised), as the base objective would.

    Args:
        base: the attack's objective (loss, targets, EOT settings, seeds).
        penalty: the detector penalty.
        weight: its weight w.
        model: the model (its ``encode_image`` gives the copies' features).
        gated: penalise only rows whose embedding is classified as their
            target class (needs the base objective's class weights and targets).
    """

    def __init__(self, base: Objective, penalty: Callable, weight: float, model, gated: bool = False):
        self.__dict__.update(base.__dict__)
        self.penalty = penalty
        self.weight = float(weight)
        self.model = model
        self.gated = bool(gated)

    def _gate(self, emb: torch.Tensor, gidx: torch.Tensor) -> torch.Tensor:
        """1 for rows whose embedding is classified as their target class, else 0 (the penalty's gate)."""
        if not self.gated or self.W is None or self.tc is None:
            return torch.ones(emb.shape[0], device=emb.device)
        return ((emb.detach() @ self.W.t()).argmax(-1) == self.tc[gidx]).float()

    # the copies' noise: streams distinct from the plain attack's EOT streams
    noise_seed = staticmethod(_noise_seed)

    def copy_embeddings(self, encode, xn):
        """The copies' unnormalised features (what the detector sees); the EOT term uses them normalised."""
        feats = self.model.encode_image(xn, normalize=False)
        return F.normalize(feats, dim=-1), feats

    def extra(self, zr, er, feats, gidx):
        """``weight * penalty`` of the rows (gated to rows in their target class when ``gated``)."""
        return self.weight * (self._gate(er, gidx) * self.penalty(zr, er, feats, gidx)).sum()


class DetectorAwareAlignment(EmbeddingAlignment):
    """Embedding alignment whose objective carries a penalty on a detector's score.

    Args:
        model: the model.
        penalty: see :class:`PenalisedObjective`.
        penalty_weight: its weight.
        gated: penalise only images already in their target class.
        **cfg: fields of :class:`~pyvlmx.attacks.AlignmentConfig` (``eot_*``
            give the detector's noise; ``gradient`` must be ``exact``).

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> W = m.class_embeddings(["cat", "dog", "car"])
        >>> atk = DetectorAwareAlignment(m, lambda z, e, f, i: e[:, 0] ** 2, max_steps=3, stop="steps")
        >>> res = atk.run(torch.rand(2, 3, 32, 32), target_classes=[1, 2], class_weights=W)
        >>> [r["steps"] for r in res.records]
        [3, 3]
    """

    name = "detector-aware-alignment"

    def __init__(self, model, penalty: Callable, *, penalty_weight: float = 1.0, gated: bool = False, **cfg):
        super().__init__(model, **cfg)
        self.gated = bool(gated)
        if self.config.gradient != "exact":
            raise ValueError(f"{self.name}: the detector penalty needs gradient='exact', got "
                             f"{self.config.gradient!r}")
        self.penalty = penalty
        self.penalty_weight = float(penalty_weight)

    def parts(self, objective, stop):
        return super().parts(PenalisedObjective(objective, self.penalty, self.penalty_weight, self.model,
                                                self.gated), stop)


def _hinge(z: torch.Tensor) -> torch.Tensor:
    return F.relu(z - 1.0)


class NoisePenalty:
    """Penalty on the noise detector's differentiable scores (mean of relu(|z| - 1) over them)."""

    SCORES = ("displacement", "confidence_drop", "kl", "margin")

    def __init__(self, calibration: dict, class_weights: torch.Tensor, logit_scale: float):
        self.cal = {n: calibration[n] for n in self.SCORES if n in calibration}
        if not self.cal:
            raise ValueError(f"NoisePenalty: the calibration holds none of {list(self.SCORES)}")
        self.W = class_weights.detach().to(torch.float32)
        self.scale = float(logit_scale)

    def __call__(self, z, emb, feats, idx):
        if feats is None:
            raise ValueError("NoisePenalty needs the detector's noisy copies (eot_samples > 0)")
        W = self.W.to(emb.device)
        en = F.normalize(feats, dim=-1)                                     # (R, K, D)
        l0 = self.scale * emb @ W.t()
        ln = self.scale * en @ W.t()
        p0, pn = l0.softmax(-1), ln.softmax(-1)
        pred = l0.argmax(-1).detach()
        s = {"displacement": (en - emb[:, None]).norm(dim=-1).mean(1),
             "confidence_drop": p0.gather(1, pred[:, None])[:, 0]
             - pn.gather(2, pred[:, None, None].expand(-1, pn.shape[1], 1))[..., 0].mean(1),
             "kl": (p0[:, None] * (l0.log_softmax(-1)[:, None] - ln.log_softmax(-1))).sum(-1).mean(1)}
        top2 = l0.topk(min(2, l0.shape[1]), dim=-1).values
        s["margin"] = top2[:, 0] - top2[:, -1]
        terms = [_hinge(((s[n] - c.median) / c.scale).abs()) for n, c in self.cal.items()]
        return torch.stack(terms).mean(0)


class TTCPenalty:
    """Penalty on TTC's tau being small (relu(z - 1), z = (median clean tau - tau) / scale)."""

    def __init__(self, model, calibration, normalized: bool = False):
        self.model = model
        self.cal = calibration
        self.normalized = normalized

    def __call__(self, z, emb, feats, idx):
        if feats is None:
            raise ValueError("TTCPenalty needs the detector's noisy copies (eot_samples > 0)")
        g0 = emb if self.normalized else self.model.encode_image(z, normalize=False)
        gn = F.normalize(feats, dim=-1) if self.normalized else feats
        tau = ((gn - g0[:, None]).norm(dim=-1) / g0.norm(dim=-1, keepdim=True)).mean(1)
        return _hinge((self.cal.median - tau) / self.cal.scale)


class SqueezePenalty:
    """Penalty on feature squeezing's score (relu(z - 1)), through the squeezers by BPDA."""

    def __init__(self, class_weights: torch.Tensor, logit_scale: float, calibration, *, bits: int = 5,
                 median: int = 2, model=None):
        from pyvlmx.detect.baselines import squeezers

        self.W = class_weights.detach().to(torch.float32)
        self.scale = float(logit_scale)
        self.cal = calibration
        self.squeezers = squeezers(bits, median, straight_through=True)
        self.model = model

    def __call__(self, z, emb, feats, idx):
        W = self.W.to(emb.device)
        p0 = (self.scale * emb @ W.t()).softmax(-1)
        d = [((self.scale * self.model.encode_image(fn(z)) @ W.t()).softmax(-1) - p0).abs().sum(-1)
             for fn in self.squeezers.values()]
        return _hinge((torch.stack(d).max(0).values - self.cal.median) / self.cal.scale)


def adaptive_attack(detector: str, model, images: torch.Tensor, target_classes, class_weights: torch.Tensor, *,
                    clean_raw: dict, eps: float, steps: int, eot_samples: int = 2, penalty_weight: float = 0.1,
                    noise_sigma: float = 4 / 255, ttc_eps: float = 4 / 255, squeeze_bits: int = 5,
                    squeeze_median: int = 2, seed: int = 0, batch_size: int = 8, loss: str = "l2",
                    gated: bool = False) -> tuple[torch.Tensor, dict]:
    """The matrix's adaptive attacker of ``detector``: text-target alignment plus a penalty on its score.

    Args:
        detector: "noise", "ttc" or "squeeze".
        model: the model.
        images: (N, 3, H, W) clean images in [0, 1].
        target_classes: (N,) target classes.
        class_weights: (C, D) zero-shot weights.
        clean_raw: the detector's raw scores of the clean images
            (:meth:`pyvlmx.detect.baselines.Detector.raw`): the attacker knows
            the detector's calibration.
        eps, steps: budget and sign steps (step 2.5 eps / steps, every step taken).
        eot_samples: copies of the detector's noise per step (noise, ttc).
        penalty_weight: weight of the penalty.
        loss: the alignment loss ("l2", the paper's; "margin" for the class gap).
        gated: apply the penalty only to images already in their target class.
        noise_sigma, ttc_eps, squeeze_bits, squeeze_median: the detectors' settings.
        seed: image i uses seed ``seed + i``.
        batch_size: images per attack batch.

    Returns:
        (attacked (N, 3, H, W) 8-bit inside the budget, the attack's config).
    """
    from pyvlmx.detect.detector import Calibration

    if detector not in ("noise", "ttc", "squeeze"):
        raise ValueError(f"adaptive_attack: unknown detector {detector!r}; detectors: ['noise', 'ttc', 'squeeze']")
    W = class_weights.to(torch.float32)
    scale = float(model.logit_scale)
    if detector == "noise":
        cal = {n: Calibration.fit(np.asarray(clean_raw[n])) for n in NoisePenalty.SCORES if n in clean_raw}
        penalty = NoisePenalty(cal, W, scale)
        eot = {"eot_samples": int(eot_samples), "eot_sigma": float(noise_sigma), "eot_noise": "gaussian"}
    elif detector == "ttc":
        penalty = TTCPenalty(model, Calibration.fit(np.asarray(clean_raw["tau"])))
        eot = {"eot_samples": int(eot_samples), "eot_sigma": float(ttc_eps), "eot_noise": "uniform"}
    else:
        penalty = SqueezePenalty(W, scale, Calibration.fit(np.asarray(clean_raw["max"])), bits=squeeze_bits,
                                 median=squeeze_median, model=model)
        eot = {"eot_samples": 0}
    atk = DetectorAwareAlignment(model, penalty, penalty_weight=penalty_weight, gated=gated, eps=float(eps),
                                 max_steps=int(steps), step_size=2.5 * float(eps) / int(steps), stop="steps",
                                 seed=int(seed), norm="linf", quantize=True, optimizer="sign", loss=loss, **eot)
    tc = torch.as_tensor(list(target_classes), dtype=torch.long)
    out = torch.empty_like(images)
    t0 = time.perf_counter()
    for b0 in range(0, images.shape[0], batch_size):
        b1 = min(images.shape[0], b0 + batch_size)
        res = atk.run(images[b0:b1], target_classes=tc[b0:b1], class_weights=W.to(images.device),
                      seeds=list(range(seed + b0, seed + b1)))
        out[b0:b1] = res.images
    cfg = {"attack": atk.name, "detector": detector, "loss": f"{loss} to the text target + penalty_weight * P",
           "penalty": type(penalty).__name__, "penalty_weight": float(penalty_weight), "gated": bool(gated),
           "eps": float(eps),
           "steps": int(steps), "step_size": 2.5 * float(eps) / int(steps), **eot,
           "gradient": "BPDA (straight-through bit depth)" if detector == "squeeze" else "exact",
           "wall_s": time.perf_counter() - t0}
    return quantize_to_budget(out, images, eps, "linf"), cfg
