"""Evaluation of attacked images, in one place.

:func:`pair_metrics` computes, per (original, attacked) pair, everything the
sweep, the CLI, transfer and detection report: PSNR and SSIM (compiled ops),
L-inf and L2 distances, cosines to the target and to the original
embedding, zero-shot predictions and confidences before and after, the
target class's margin, and whether the result survives 8-bit rounding.
Attacks return images and their own bookkeeping; they never compute these.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from pyvlmx.attacks.stop import class_gap


@torch.no_grad()
def pair_metrics(originals: torch.Tensor, images: torch.Tensor, embeddings: torch.Tensor, *,
                 original_embeddings: torch.Tensor, targets: torch.Tensor | None = None,
                 class_weights: torch.Tensor | None = None, logit_scale: float = 100.0,
                 target_classes: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 survives: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor | None = None) -> list[dict]:
    """Metrics of k attacked images against their originals.

    Args:
        originals: (k, 3, H, W) in [0, 1].
        images: (k, 3, H, W) attacked images in [0, 1].
        embeddings: (k, D) embeddings of ``images``.
        original_embeddings: (k, D) embeddings of ``originals``.
        targets: (k, D) target embeddings (for ``cos_target``), or None.
        class_weights: (C, D) zero-shot weights (predictions), or None.
        logit_scale: the model's logit scale (softmax confidences).
        target_classes: (k,) target classes (``margin_after``), or None.
        labels: (k,) true classes (``label``), or None.
        survives: (k,) bool already known, or a function of the rounded
            images (k, 3, H, W) -> (k,) bool that judges them, or None.

    Returns:
        k dicts with ``psnr`` (None when identical), ``ssim``, ``linf``,
        ``l2``, ``cos_target``, ``cos_original``, ``pred_before``,
        ``conf_before``, ``pred_after``, ``conf_after``, ``target_class``,
        ``margin_after``, ``label`` and ``survives_rounding``.

    Example:
        >>> x = torch.rand(2, 3, 16, 16); e = F.normalize(torch.randn(2, 8), dim=1)
        >>> m = pair_metrics(x, x, e, original_embeddings=e)
        >>> m[0]["psnr"] is None, m[0]["linf"], round(m[0]["cos_original"], 4)
        (True, 0.0, 1.0)
    """
    from pyvlmx import ops

    k = images.shape[0]
    d = (images - originals).flatten(1)
    linf = d.abs().amax(dim=1) if d.shape[1] else torch.zeros(k)
    l2 = d.norm(dim=1)
    psnr = ops.psnr(images, originals)
    ssim = ops.ssim(images, originals)
    cos_t = F.cosine_similarity(embeddings, targets, dim=1) if targets is not None else None
    cos_o = F.cosine_similarity(embeddings, original_embeddings, dim=1)
    W = class_weights
    if W is not None:
        pb = (logit_scale * original_embeddings @ W.t()).softmax(dim=1)
        pa = (logit_scale * embeddings @ W.t()).softmax(dim=1)
        cb, ib = pb.max(dim=1)
        ca, ia = pa.max(dim=1)
        gap = class_gap(embeddings, W, target_classes) if target_classes is not None else None
    if callable(survives):
        survives = survives(images)
    surv = [None] * k if survives is None else [bool(s) for s in survives.tolist()]
    recs = []
    for j in range(k):
        p = float(psnr[j])
        recs.append({
            "psnr": p if math.isfinite(p) else None,
            "ssim": float(ssim[j]),
            "linf": float(linf[j]),
            "l2": float(l2[j]),
            "cos_target": float(cos_t[j]) if cos_t is not None else None,
            "cos_original": float(cos_o[j]),
            "pred_before": int(ib[j]) if W is not None else None,
            "conf_before": float(cb[j]) if W is not None else None,
            "pred_after": int(ia[j]) if W is not None else None,
            "conf_after": float(ca[j]) if W is not None else None,
            "target_class": int(target_classes[j]) if target_classes is not None else None,
            "margin_after": float(gap[j]) if (W is not None and gap is not None) else None,
            "label": int(labels[j]) if labels is not None else None,
            "survives_rounding": surv[j],
        })
    return recs

