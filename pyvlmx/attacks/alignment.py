"""Embedding alignment: move an image, invisibly, onto another embedding.

The paper's core operation (Salman, Shams, Liu, Zhu, "Intriguing Differences
Between Zero-Shot and Systematic Evaluations of Vision-Language Transformer
Models", arXiv 2402.08473): for an image x0 and a target embedding t, find a
small pixel change d such that the image embedding f(x0 + d) equals t,

    minimise  L(d) = 1/2 || f(x0 + d) - t ||^2      (paper; ``loss="l2"``)
         or   L(d) = 1 - cos(f(x0 + d), t)          (``loss="cosine"``)
    subject to x0 + d in [0, 1]^n and, optionally, ||d||_inf <= eps or ||d||_2 <= eps.

The target t is the embedding of a target image (the paper's setting), the
text embedding of a target class (zero-shot classifier weights), or any
vector.  Gradients are exact (autograd through the encoder at the current
iterate) or the paper's fixed-Jacobian variant J(x0)^T dL/df(x), where one
VJP closure built at x0 with ``torch.func.vjp`` is reused at every step.

The attack is a combination of the engine's parts (:mod:`pyvlmx.attacks.engine`):
objective, step rule, budget, stop rule and gradient source, run by one loop
under the minimal-budget search (:mod:`pyvlmx.attacks.search`); its records
add the metrics of :func:`pyvlmx.metrics.pair_metrics`. Many (image, target)
pairs run as one batch; each sample stops on its own
rule and leaves the batch, so converged samples cost nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from pyvlmx.attacks.base import Attack, register_attack
from pyvlmx.attacks.budget import quantize_8bit, quantize_to_budget
from pyvlmx.attacks.config import (DEFAULT_GD_STEP, DEFAULT_REL_STEP, ERRORS, GRADIENTS, LOSSES,  # noqa: F401
                                   MINIMAL, NORMS, OPTIMIZERS, STOPS, AlignmentConfig)
from pyvlmx.attacks.engine import Parts
from pyvlmx.attacks.gradient import ExactGradient, FixedJacobianGradient
from pyvlmx.attacks.objective import Objective
from pyvlmx.attacks.search import BudgetSearch, Outcome
from pyvlmx.attacks.steps import make_step_rule
from pyvlmx.attacks.stop import StopRule
from pyvlmx.models.base import check_pixels

__all__ = ["AlignmentConfig", "AlignmentResult", "EmbeddingAlignment", "quantize_8bit", "quantize_to_budget"]


@dataclass
class AlignmentResult:
    """What :meth:`EmbeddingAlignment.run` returns.

    Attributes:
        images: (B, 3, H, W) aligned images in [0, 1] (8-bit values when
            ``quantize``); a failed sample holds its last iterate.
        success: (B,) bool, the stop rule held (on the rounded image when
            ``quantize``).
        embeddings: (B, D) embeddings of ``images``.
        records: one dict per sample (see :meth:`EmbeddingAlignment.run`).
    """

    images: torch.Tensor
    success: torch.Tensor
    embeddings: torch.Tensor
    records: list[dict] = field(default_factory=list)


@register_attack("align", "alignment")
class EmbeddingAlignment(Attack):
    """Batched embedding alignment with per-sample stopping (paper's core attack).

    Math: see the module docstring. Every step computes g = dL/dx (exact or
    fixed-Jacobian), moves x along -g (raw for ``gd``, sign for ``sign``,
    Adam's normalised moment for ``adam``) with :func:`pyvlmx.ops.projected_step`,
    which projects onto the budget ball around x0 and the [0, 1] box.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        **cfg: fields of :class:`AlignmentConfig`.

    Example:
        >>> import torch
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> W = m.class_embeddings(["cat", "dog", "car"])
        >>> atk = EmbeddingAlignment(m, optimizer="sign", eps=8 / 255, max_steps=10)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> res = atk.run(x, target_classes=torch.tensor([1, 2]), class_weights=W)
        >>> res.images.shape, bool((res.images - x).abs().max() <= 8 / 255 + 1e-6)
        (torch.Size([2, 3, 32, 32]), True)
        >>> all(r["steps"] <= 10 for r in res.records)
        True
    """

    name = "embedding-alignment"
    config_class = AlignmentConfig

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """The fp32 embeddings every reported figure comes from."""
        return self._precision.certify(x) if getattr(self, "_precision", None) is not None \
            else self.model.encode_image(x)

    def _check_targets(self, B, images, targets, target_images, target_classes, class_weights):
        D = self.model.embed_dim
        given = [n for n, v in (("targets", targets), ("target_images", target_images)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"embedding-alignment: give one of targets / target_images, got {given}")
        if class_weights is not None:
            if class_weights.dim() != 2 or class_weights.shape[1] != D:
                raise ValueError(f"embedding-alignment: expected class_weights of shape (C, {D}), "
                                 f"got {tuple(class_weights.shape)}")
            if not torch.isfinite(class_weights).all():
                raise ValueError("embedding-alignment: class_weights contain NaN or Inf")
        if target_classes is not None:
            target_classes = torch.as_tensor(target_classes, dtype=torch.long).reshape(-1).cpu()
            if target_classes.numel() != B:
                raise ValueError(f"embedding-alignment: expected {B} target_classes, got {target_classes.numel()}")
            if class_weights is None:
                raise ValueError("embedding-alignment: target_classes need class_weights (C, D) "
                                 "(e.g. model.class_embeddings(classnames))")
            C = class_weights.shape[0]
            bad = [int(c) for c in target_classes if not (0 <= int(c) < C)]
            if bad:
                raise ValueError(f"embedding-alignment: target class index out of range [0, {C}): {bad[:5]}")
        if targets is not None:
            targets = torch.as_tensor(targets)
            if targets.dim() != 2 or targets.shape != (B, D):
                raise ValueError(f"embedding-alignment: expected targets of shape ({B}, {D}), "
                                 f"got {tuple(targets.shape)}")
            if not torch.isfinite(targets).all():
                raise ValueError("embedding-alignment: targets contain NaN or Inf")
        if target_images is not None:
            check_pixels(target_images, self.model.image_size, name="target_images")
            if target_images.shape[0] != B:
                raise ValueError(f"embedding-alignment: expected {B} target_images, got {target_images.shape[0]}")
        if targets is None and target_images is None and target_classes is None:
            raise ValueError("embedding-alignment: no target; give targets (B, D), target_images "
                             "(B, 3, H, W) or target_classes with class_weights")
        return targets, target_classes

    def _budgets(self, B: int, eps, device) -> torch.Tensor:
        if eps is None:
            return torch.full((B,), float(self.config.eps), dtype=torch.float32, device=device)
        eps = torch.as_tensor(eps, dtype=torch.float32, device=device).reshape(-1)
        if eps.numel() == 1:
            eps = eps.expand(B).clone()
        if eps.numel() != B or not torch.isfinite(eps).all() or (eps < 0).any():
            raise ValueError(f"embedding-alignment: eps must be a number or {B} finite values >= 0, "
                             f"got {eps.tolist()[:5]}")
        return eps

    # -------------------------------------------------------------- public API
    def run(self, images: torch.Tensor, targets: torch.Tensor | None = None, *,
            target_images: torch.Tensor | None = None,
            target_classes: torch.Tensor | Sequence[int] | None = None,
            class_weights: torch.Tensor | None = None,
            labels: torch.Tensor | Sequence[int] | None = None,
            seeds: Sequence[int] | None = None,
            eps: float | torch.Tensor | None = None,
            on_done: Callable[[list[int], list[dict], torch.Tensor], None] | None = None,
            batch_size: int | None = None, schedule: str = "fixed", order: Sequence[int] | None = None,
            pad: bool = True) -> AlignmentResult:
        """Align every image to its target.

        Args:
            images: (B, 3, H, W) float in [0, 1].
            targets: (B, D) target embeddings (any vectors), or
            target_images: (B, 3, H, W) images whose embeddings are the targets, or
            target_classes: (B,) class indices; without targets/target_images
                the target is ``class_weights[target_class]`` (text embedding).
            class_weights: (C, D) zero-shot weights; needed for the class stop
                rule and for the predicted class and confidence in records.
            labels: (B,) true classes, copied into the records.
            seeds: per-sample seeds for the random start and the EOT noise
                (default ``seed + i``), so a sample's result does not depend
                on its batch.
            eps: budget override, a number or (B,) per-sample values.
            on_done: called as samples become final with (indices, records,
                images (k, 3, H, W)), e.g. to stream records to disk.
            batch_size: samples stepped together (default: all B).
            schedule: "fixed": the samples run as one batch that shrinks as
                they finish (the next rounds of a minimal-budget search start
                together once the batch has drained); "continuous": ``batch_size`` slots are kept busy,
                a finished sample's slot taken by the next pending one
                (:class:`~pyvlmx.attacks.engine.SlotLoop`).  A sample's
                record does not depend on the schedule or its companions
                beyond float rounding of the encoder at another batch shape.
            order: the order samples enter the slots (continuous; default 0..B-1).
            pad: continuous only: run every forward at one batch shape
                (blocks of the slot count on CUDA, of 4 rows on the CPU,
                padded), so a sample's record is the same bit for bit
                whichever samples share its batch; False: at whatever shape
                the occupied slots make (records equal up to float rounding).

        Returns:
            :class:`AlignmentResult`. Each record holds the attack's
            bookkeeping (``success``, ``reason`` (``class reached`` /
            ``cosine reached`` / ``step limit`` / error), ``steps``,
            ``total_steps``, ``rounds``, ``eps``, ``loss``, ``quantized``,
            ``wall_s``) and the metrics of :func:`pyvlmx.metrics.pair_metrics`
            (``cos_target``, ``cos_original``, ``pred_before``/``conf_before``,
            ``pred_after``/``conf_after``, ``target_class``, ``margin_after``,
            ``label``, ``psnr`` (None when identical), ``ssim``, ``linf``,
            ``l2``, ``survives_rounding``).
        """
        cfg = self.config
        model = self.model
        check_pixels(images, model.image_size, name="images")
        B = images.shape[0]
        device = images.device
        if schedule not in ("fixed", "continuous"):
            raise ValueError(f"embedding-alignment: schedule must be 'fixed' or 'continuous', got {schedule!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"embedding-alignment: batch_size must be an integer >= 1, got {batch_size!r}")
        if schedule == "fixed" and batch_size is not None and batch_size < B:
            raise ValueError(f"embedding-alignment: the fixed schedule runs the {B} images as one batch; "
                             f"give schedule='continuous' for {batch_size} slots")
        if order is not None and sorted(int(i) for i in order) != list(range(B)):
            raise ValueError(f"embedding-alignment: order must be a permutation of 0..{B - 1}")
        self._precision = self.make_precision(device)
        if schedule == "continuous" and pad:
            from pyvlmx.attacks.precision import CPU_BLOCK

            # from the configured slot count, not from how many samples this call has: a resumed run
            # with 2 pairs left uses the blocks the full run used
            slots = batch_size or B
            self._precision.block = slots if device.type == "cuda" else min(slots, CPU_BLOCK)
        targets, target_classes = self._check_targets(B, images, targets, target_images, target_classes,
                                                      class_weights)
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
            if labels.numel() != B:
                raise ValueError(f"embedding-alignment: expected {B} labels, got {labels.numel()}")
        seeds = list(range(cfg.seed, cfg.seed + B)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != B:
            raise ValueError(f"embedding-alignment: expected {B} seeds, got {len(seeds)}")
        eps_t = self._budgets(B, eps, device)
        W = None if class_weights is None else class_weights.to(device=device, dtype=torch.float32)

        checking = model.check_inputs
        model.check_inputs = False
        try:
            fixed_shape = self._precision.block is not None  # every forward at one batch shape
            enc = self._encode
            with torch.no_grad():
                x0 = images.detach().to(torch.float32)
                emb0 = enc(x0)
                if target_images is not None:
                    t = enc(target_images.detach().to(torch.float32))
                elif targets is not None:
                    t = targets.detach().to(device=device, dtype=torch.float32)
                else:
                    t = W[target_classes.to(device)]
                if target_classes is None and W is not None and target_images is not None:
                    target_classes = (t @ W.t()).argmax(dim=1).cpu()
            tc = None if target_classes is None else target_classes.to(device)
            stop = self._stop_rule(t, W, tc, class_target=targets is None and target_images is None)
            objective = Objective(cfg.loss, t, class_weights=W, target_classes=tc, eot_samples=cfg.eot_samples,
                                  eot_sigma=cfg.eot_sigma, eot_noise=cfg.eot_noise, eot_weight=cfg.eot_weight,
                                  eot_clean=cfg.eot_clean, seeds=seeds)
            parts = self.parts(objective, stop)
            out = Outcome(B, x0.shape[1:], t.shape[1], device, eps_t)
            records: list[dict | None] = [None] * B

            def on_final(gidx: torch.Tensor) -> None:
                if fixed_shape:  # one sample at a time: its metrics do not depend on who finished with it
                    recs = [r for i in gidx.tolist() for r in
                            self._records(out, torch.tensor([i]), x0, emb0, t, W, tc, labels, objective, stop)]
                else:
                    recs = self._records(out, gidx, x0, emb0, t, W, tc, labels, objective, stop)
                for i, r in zip(gidx.tolist(), recs):
                    records[i] = r
                if on_done is not None:
                    on_done(gidx.tolist(), recs, out.images[gidx.to(device)])

            if schedule == "fixed":  # the batch runs its rounds together, shrinking as samples leave
                slots, refill = B, "drain"
            else:
                slots, refill = min(batch_size or B, B), "half" if cfg.gradient == "fixed_jacobian" else "eager"
            search = BudgetSearch(
                parts, cfg.default_step, norm=cfg.norm, step_kind=make_step_rule(cfg.optimizer).step_kind(cfg.norm),
                minimal=cfg.minimal, eps_schedule=cfg.eps_schedule, bisect_steps=cfg.bisect_steps,
                random_start=cfg.random_start, batch_size=slots, refill=refill, read_every=cfg.read_every)
            search.run(x0, eps_t.cpu(), seeds, out, on_final, order=order)
        finally:
            model.check_inputs = checking
        missing = [i for i, r in enumerate(records) if r is None]
        if missing:  # cannot happen: every sample becomes final once; guard the invariant
            raise RuntimeError(f"embedding-alignment: internal error, no record for samples {missing[:8]}")
        return AlignmentResult(images=out.images, success=out.success.clone(), embeddings=out.emb,
                               records=list(records))

    # ------------------------------------------------------------ the parts
    def make_precision(self, device) -> "Precision":
        """The search's precision on ``device`` and its certifying fp32 forward (raises if the device
        cannot run the configured precision)."""
        from pyvlmx.attacks.precision import Precision, resolve_precision

        return Precision(self.model.encode_image, resolve_precision(self.config.precision, device), device)

    def _stop_rule(self, t, W, tc, *, class_target: bool) -> StopRule:
        cfg = self.config
        rule = cfg.stop
        if rule == "auto":  # a class target: reach the class; an image or a vector: reach the cosine
            rule = "class" if (class_target and W is not None and tc is not None) else "cosine"
        if rule == "class" and (W is None or tc is None):
            raise ValueError("embedding-alignment: stop='class' needs class_weights and a target class "
                             "(target_classes, or target_images to classify)")
        return StopRule(rule, t, W, tc, cfg.margin, cfg.cos_threshold)

    def parts(self, objective: Objective, stop: StopRule) -> Parts:
        """This attack's parts for one run (what the engine loop combines)."""
        cfg = self.config
        source = ExactGradient if cfg.gradient == "exact" else FixedJacobianGradient
        prec = self._precision
        return Parts(encode=prec.search, objective=objective, stop=stop,
                     gradient=source(prec.search, objective),
                     make_step_rule=lambda: make_step_rule(cfg.optimizer, cfg.adam_betas),
                     quantize=cfg.quantize, max_steps=cfg.max_steps, errors=cfg.errors, precision=prec)

    def _records(self, out: Outcome, gidx, x0, emb0, t, W, tc, labels, objective: Objective,
                 stop: StopRule) -> list[dict]:
        from pyvlmx.metrics import pair_metrics

        cfg = self.config
        gidx = gidx.to(x0.device)
        imgs = out.images[gidx]
        emb = out.emb[gidx]
        if cfg.quantize:  # the image is its own rounding: success is on the saved image
            survives = out.success[gidx.cpu()]
        else:
            def survives(images, _x0=x0[gidx], _eps=out.eps[gidx]):
                return stop.ok(self._encode(quantize_to_budget(images, _x0, _eps, cfg.norm)), gidx, stop.final)
        with torch.no_grad():
            loss = objective.rows(emb, gidx)
            metrics = pair_metrics(x0[gidx], imgs, emb, original_embeddings=emb0[gidx], targets=t[gidx],
                                   class_weights=W, logit_scale=self.model.logit_scale,
                                   target_classes=None if tc is None else tc[gidx],
                                   labels=None if labels is None else labels[gidx.cpu()], survives=survives)
        recs = []
        for j, i in enumerate(gidx.tolist()):
            rec = out.bookkeeping(i)
            # certified: the success was judged by an fp32 forward (of the saved 8-bit image when quantizing)
            rec.update(loss=float(loss[j]), quantized=bool(cfg.quantize), search_precision=self._precision.name,
                       certified=bool(rec["success"]))
            rec.update(metrics[j])
            recs.append(rec)
        return recs
