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

Many (image, target) pairs run as one batch; each sample stops on its own
rule and leaves the batch, so converged samples cost nothing more.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from pyvlmx.attacks.base import Attack, register_attack
from pyvlmx.models.base import check_pixels

LOSSES = ("l2", "cosine")
OPTIMIZERS = ("sign", "gd", "adam")
NORMS = ("linf", "l2", "none")
GRADIENTS = ("exact", "fixed_jacobian")
STOPS = ("auto", "class", "cosine", "steps")
MINIMAL = ("off", "escalate", "bisect")
ERRORS = ("raise", "record")

# Default step sizes: sign and Adam steps move each pixel by about step_size,
# so they are a fraction of the L-inf budget; plain gradient descent moves by
# step_size * gradient, whose scale depends on the model (see the benchmark).
DEFAULT_REL_STEP = 0.125
DEFAULT_GD_STEP = 1.0


def quantize_8bit(x: torch.Tensor, x0: torch.Tensor | None = None,
                  eps: float | torch.Tensor | None = None) -> torch.Tensor:
    """Round pixels to the 8-bit grid (what a PNG stores), inside an L-inf budget if given.

    Plain rounding is ``round(255 x) / 255``.  With ``x0`` and ``eps`` the
    rounding is clamped, per pixel, to the grid values inside
    [x0 - eps, x0 + eps] (where the interval holds one), so that the saved
    image keeps the L-inf budget the attack promised.

    Args:
        x: (B, ...) pixels in [0, 1].
        x0: (B, ...) centres of the budget ball, or None.
        eps: number or (B,) budgets (with ``x0``).

    Returns:
        (B, ...) values k / 255, k integer in [0, 255].
    """
    k = torch.round(x.clamp(0, 1) * 255.0)
    if x0 is not None and eps is not None:
        e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if e.dim() == 1:
            e = e.view(-1, *([1] * (x.dim() - 1)))
        lo = torch.ceil((x0 - e) * 255.0 - 1e-4).clamp_(0, 255)
        hi = torch.floor((x0 + e) * 255.0 + 1e-4).clamp_(0, 255)
        inside = lo <= hi
        k = torch.where(inside, torch.minimum(torch.maximum(k, lo), hi), k)
    return k / 255.0


def _one_of(name: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ValueError(f"embedding-alignment: {name} must be one of {list(options)}, got {value!r}")


@dataclass
class AlignmentConfig:
    """Options of :class:`EmbeddingAlignment` (all JSON-able scalars).

    Attributes:
        loss: ``"l2"`` = 1/2 ||f - t||^2 (paper) or ``"cosine"`` = 1 - cos(f, t).
        optimizer: ``"sign"`` (PGD: steepest descent for the budget's norm,
            sign(g) for L-inf and no budget, g / ||g||_2 for L2), ``"gd"``
            (plain gradient descent, paper) or ``"adam"``.
        norm: budget on d: ``"linf"``, ``"l2"`` or ``"none"`` (paper); the
            [0, 1] box always holds.
        eps: budget radius in pixel units (ignored for ``norm="none"``).
        step_size: pixels per step; None = ``rel_step * eps`` for sign/Adam
            (``rel_step / 255`` without a budget) and 1.0 for gd.
        rel_step: step as a fraction of eps when ``step_size`` is None.
        max_steps: step limit per sample (per budget in minimal mode).
        gradient: ``"exact"`` autograd or ``"fixed_jacobian"`` J(x0)^T dL/df.
        stop: ``"class"`` (target class predicted with ``margin``),
            ``"cosine"`` (cos(f, t) >= ``cos_threshold``), ``"steps"`` (run
            all steps) or ``"auto"`` (class when the target is a class, given
            by target_classes and class weights; cosine when it is an image
            or a vector).
        margin: cosine gap by which the target class must beat every other class.
        cos_threshold: cosine to the target that counts as aligned.
        quantize: success must hold for the 8-bit rounding of the image (the
            saved PNG); the returned image is then that rounding.
        random_start: start uniformly in the budget ball (per-sample seeds).
        seed: base seed; sample i uses ``seed + i`` unless seeds are passed.
        minimal: ``"off"``, ``"escalate"`` (per pair, the first budget of
            ``eps_schedule`` that succeeds) or ``"bisect"`` (then bisect
            between it and the previous budget ``bisect_steps`` times).
        eps_schedule: budgets tried in minimal mode, increasing.
        bisect_steps: bisection rounds in ``"bisect"`` mode.
        adam_betas: Adam's (beta1, beta2).
        bf16: run the encoder under bf16 autocast (CUDA only).
        errors: ``"raise"`` on a non-finite embedding/gradient, or
            ``"record"`` it as the sample's failure reason and go on.
    """

    loss: str = "l2"
    optimizer: str = "sign"
    norm: str = "linf"
    eps: float = 4 / 255
    step_size: float | None = None
    rel_step: float = DEFAULT_REL_STEP
    max_steps: int = 200
    gradient: str = "exact"
    stop: str = "auto"
    margin: float = 0.0
    cos_threshold: float = 0.99
    quantize: bool = True
    random_start: bool = False
    seed: int = 0
    minimal: str = "off"
    eps_schedule: tuple = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
    bisect_steps: int = 3
    adam_betas: tuple = (0.9, 0.999)
    bf16: bool = False
    errors: str = "raise"

    def validate(self) -> None:
        _one_of("loss", self.loss, LOSSES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("norm", self.norm, NORMS)
        _one_of("gradient", self.gradient, GRADIENTS)
        _one_of("stop", self.stop, STOPS)
        _one_of("minimal", self.minimal, MINIMAL)
        _one_of("errors", self.errors, ERRORS)
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"embedding-alignment: eps must be a finite number >= 0, got {self.eps!r}")
        if self.norm != "none" and self.eps == 0 and self.minimal == "off":
            raise ValueError(f"embedding-alignment: eps=0 with norm={self.norm!r} allows no change; "
                             f"use eps > 0 or norm='none'")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"embedding-alignment: step_size must be > 0, got {self.step_size!r}")
        if not (self.rel_step > 0):
            raise ValueError(f"embedding-alignment: rel_step must be > 0, got {self.rel_step!r}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 0):
            raise ValueError(f"embedding-alignment: max_steps must be an int >= 0, got {self.max_steps!r}")
        if not (-1.0 <= self.cos_threshold <= 1.0):
            raise ValueError(f"embedding-alignment: cos_threshold must be in [-1, 1], got {self.cos_threshold!r}")
        if not (self.margin >= 0):
            raise ValueError(f"embedding-alignment: margin must be >= 0, got {self.margin!r}")
        self.eps_schedule = tuple(float(e) for e in self.eps_schedule)
        if self.minimal != "off":
            if self.norm == "none":
                raise ValueError("embedding-alignment: minimal mode needs a budget, got norm='none'")
            s = self.eps_schedule
            if not s or any(e <= 0 for e in s) or any(b <= a for a, b in zip(s, s[1:])):
                raise ValueError(f"embedding-alignment: eps_schedule must be increasing and > 0, got {s}")
        if not (isinstance(self.bisect_steps, int) and self.bisect_steps >= 0):
            raise ValueError(f"embedding-alignment: bisect_steps must be an int >= 0, got {self.bisect_steps!r}")
        if self.random_start and self.norm == "none":
            raise ValueError("embedding-alignment: random_start needs a budget (norm 'linf' or 'l2')")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"embedding-alignment: adam_betas must be two numbers in [0, 1), got {self.adam_betas}")

    def default_step(self, eps: float) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        if self.optimizer == "gd":
            return DEFAULT_GD_STEP
        if self.norm == "none" or eps == 0:
            return self.rel_step / 255.0
        return self.rel_step * eps


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


class _Outcome:
    """Per-sample results of one inner run, filled as samples leave the batch."""

    def __init__(self, B: int, shape, D: int, device):
        self.images = torch.zeros((B, *shape), device=device)
        self.emb = torch.zeros(B, D, device=device)
        self.steps = torch.zeros(B, dtype=torch.long)
        self.success = torch.zeros(B, dtype=torch.bool)
        self.wall = torch.zeros(B, dtype=torch.float64)
        self.reason = [""] * B
        self.eps = torch.zeros(B, device=device)
        self.rounds = torch.zeros(B, dtype=torch.long)
        self.total_steps = torch.zeros(B, dtype=torch.long)


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
        >>> atk = EmbeddingAlignment(m, optimizer="sign", eps=8 / 255)
        >>> res = atk.run(torch.rand(2, 3, 32, 32), target_classes=torch.tensor([1, 2]), class_weights=W)
        >>> res.images.shape, res.success.dtype
        (torch.Size([2, 3, 32, 32]), torch.bool)
    """

    name = "embedding-alignment"
    config_class = AlignmentConfig

    # ------------------------------------------------------------------ helpers
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.bf16:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.model.encode_image(x).float()
        return self.model.encode_image(x)

    def _loss_rows(self, emb: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "l2":
            return 0.5 * (emb - t).pow(2).sum(dim=1)
        return 1.0 - F.cosine_similarity(emb, t, dim=1)

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
            on_done: Callable[[list[int], list[dict], torch.Tensor], None] | None = None) -> AlignmentResult:
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
            seeds: per-sample seeds for the random start (default ``seed + i``),
                so a sample's result does not depend on its batch.
            eps: budget override, a number or (B,) per-sample values.
            on_done: called as samples become final with (indices, records,
                images (k, 3, H, W)), e.g. to stream records to disk.

        Returns:
            :class:`AlignmentResult`. Each record holds ``success``, ``reason``
            (``class reached`` / ``cosine reached`` / ``step limit`` / error),
            ``steps``, ``loss``, ``cos_target``, ``cos_original``,
            ``pred_before``/``conf_before``, ``pred_after``/``conf_after``,
            ``target_class``, ``margin_after``, ``psnr`` (None when identical),
            ``ssim``, ``linf``, ``l2``, ``eps``, ``survives_rounding``,
            ``quantized``, ``rounds`` and ``wall_s``.
        """
        from pyvlmx import ops

        cfg = self.config
        model = self.model
        check_pixels(images, model.image_size, name="images")
        B = images.shape[0]
        device = images.device
        if cfg.bf16 and device.type != "cuda":
            raise ValueError(f"embedding-alignment: bf16 autocast is for CUDA devices, images are on {device}")
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

        t_start = time.perf_counter()
        checking = model.check_inputs
        model.check_inputs = False
        try:
            with torch.no_grad():
                x0 = images.detach().to(torch.float32)
                emb0 = self._encode(x0)
                if target_images is not None:
                    t = self._encode(target_images.detach().to(torch.float32))
                elif targets is not None:
                    t = targets.detach().to(device=device, dtype=torch.float32)
                else:
                    t = W[target_classes.to(device)]
                if target_classes is None and W is not None and target_images is not None:
                    target_classes = (t @ W.t()).argmax(dim=1).cpu()
            stop = cfg.stop
            if stop == "auto":  # a class target: reach the class; an image or a vector: reach the cosine
                class_target = targets is None and target_images is None
                stop = "class" if (class_target and W is not None and target_classes is not None) else "cosine"
            if stop == "class" and (W is None or target_classes is None):
                raise ValueError("embedding-alignment: stop='class' needs class_weights and a target class "
                                 "(target_classes, or target_images to classify)")
            tc = None if target_classes is None else target_classes.to(device)
            ctx = _RunContext(self, ops, x0, t, tc, W, stop, seeds, t_start, on_done, labels, emb0)
            out = ctx.run_all(eps_t)
        finally:
            model.check_inputs = checking
        return out


class _RunContext:
    """State of one :meth:`EmbeddingAlignment.run` call (keeps ``run`` readable)."""

    def __init__(self, attack, ops, x0, t, tc, W, stop, seeds, t_start, on_done, labels, emb0):
        self.a = attack
        self.cfg = attack.config
        self.ops = ops
        self.x0, self.t, self.tc, self.W = x0, t, tc, W
        self.stop = stop
        self.seeds = seeds
        self.t_start = t_start
        self.on_done = on_done
        self.labels = labels
        self.emb0 = emb0
        self.t_unit = F.normalize(t, dim=1)
        # what counts as success when stop="steps" (run every step, then judge)
        self.rule = stop if stop != "steps" else ("class" if (W is not None and tc is not None) else "cosine")

    # ------------------------------------------------------------ stop rules
    def _class_gap(self, emb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        cos = emb @ self.W.t()
        tcol = self.tc[idx]
        own = cos.gather(1, tcol[:, None]).squeeze(1)
        other = cos.scatter(1, tcol[:, None], float("-inf")).amax(dim=1)
        return own - other

    def _stop_ok(self, emb: torch.Tensor, idx: torch.Tensor, rule: str | None = None) -> torch.Tensor:
        rule = self.stop if rule is None else rule
        if rule == "class":
            return self._class_gap(emb, idx) > self.cfg.margin
        if rule == "cosine":
            return (emb * self.t_unit[idx]).sum(1) >= self.cfg.cos_threshold
        return torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)

    # ----------------------------------------------------------- inner run
    def _q(self, z: torch.Tensor, positions: torch.Tensor, idx: torch.Tensor, eps: torch.Tensor):
        """8-bit rounding of rows ``z`` (at ``positions`` of ``idx``), kept in their L-inf ball."""
        if self.cfg.norm != "linf":
            return quantize_8bit(z)
        return quantize_8bit(z, self.x0[idx[positions]], eps[positions])

    def _start_points(self, idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x0 = self.x0[idx]
        if not self.cfg.random_start:
            return x0.clone()
        noise = torch.empty_like(x0)
        for j, i in enumerate(idx.tolist()):
            g = torch.Generator().manual_seed(self.seeds[i])
            if self.cfg.norm == "linf":
                n = torch.rand(x0.shape[1:], generator=g) * 2 - 1
                noise[j] = (n * float(eps[j])).to(x0.device)
            else:  # l2: uniform in the ball
                n = torch.randn(x0.shape[1:], generator=g)
                r = float(torch.rand((), generator=g)) ** (1.0 / n.numel())
                noise[j] = (n / n.norm() * r * float(eps[j])).to(x0.device)
        return (x0 + noise).clamp(0, 1)

    def _fail_nonfinite(self, what: str, rows: list[int], step: int) -> None:
        if self.cfg.errors == "raise":
            raise RuntimeError(f"embedding-alignment: non-finite {what} (NaN/Inf) from the model at step "
                               f"{step} for sample(s) {rows[:8]}; check the model and its inputs "
                               f"(errors='record' marks such samples failed instead)")

    def align(self, idx: torch.Tensor, eps: torch.Tensor, finish: Callable) -> None:
        """Run the step loop for samples ``idx`` with budgets ``eps``; ``finish`` gets each leaving group."""
        cfg, ops, a = self.cfg, self.ops, self.a
        device = self.x0.device
        alpha = torch.tensor([cfg.default_step(float(e)) for e in eps.tolist()], device=device)
        # "sign" is steepest descent for the budget's norm: sign(g) for L-inf
        # (and no budget), the unit-L2 gradient for an L2 ball (PGD-L2)
        sign_kind = "l2" if cfg.norm == "l2" else "sign"
        step_kind = {"sign": sign_kind, "gd": "raw", "adam": "raw"}[cfg.optimizer]
        z = self._start_points(idx, eps)
        act = torch.arange(idx.numel(), device=device)  # positions into idx / eps / alpha
        m = v = None
        if cfg.optimizer == "adam":
            m = torch.zeros_like(z)
            v = torch.zeros_like(z)
        b1, b2 = cfg.adam_betas
        exact = cfg.gradient == "exact"
        closure = None  # (positions covered, vjp_fn)

        for k in range(cfg.max_steps + 1):
            gidx = idx[act]
            if exact:
                z.requires_grad_(True)
                emb = a._encode(z)
            else:
                with torch.no_grad():
                    emb = a._encode(z)
            with torch.no_grad():
                e = emb.detach()
                finite = torch.isfinite(e).all(dim=1)
                if not bool(finite.all()):
                    rows = gidx[~finite].tolist()
                    self._fail_nonfinite("embedding", rows, k)
                ok = self._stop_ok(e, gidx) & finite
                done = torch.zeros_like(ok)
                final_img = z.detach()
                final_emb = e
                if self.stop != "steps" and bool(ok.any()):
                    if cfg.quantize:
                        cand = ok.nonzero().squeeze(1)
                        q = self._q(z.detach()[cand], act[cand], idx, eps)
                        eq = a._encode(q)
                        okq = self._stop_ok(eq, gidx[cand]) & torch.isfinite(eq).all(dim=1)
                        sel = cand[okq]
                        done[sel] = True
                        final_img = z.detach().clone()
                        final_img[sel] = q[okq]
                        final_emb = e.clone()
                        final_emb[sel] = eq[okq]
                    else:
                        done = ok
                bad = ~finite
                last = k == cfg.max_steps
                leaving = done | bad | (torch.ones_like(done) if last else torch.zeros_like(done))
                if bool(leaving.any()):
                    pos = leaving.nonzero().squeeze(1)
                    reasons = []
                    for p in pos.tolist():
                        if bool(done[p]):
                            reasons.append("class reached" if self.stop == "class" else "cosine reached")
                        elif bool(bad[p]):
                            reasons.append(f"non-finite embedding at step {k}")
                        else:
                            reasons.append("step limit")
                    imgs = final_img[pos]
                    embs = final_emb[pos]
                    if cfg.quantize:
                        # failed samples too are returned as their 8-bit rounding
                        nq = (~done[pos]) & (~bad[pos])
                        if bool(nq.any()):
                            sub = nq.nonzero().squeeze(1)
                            imgs = imgs.clone()
                            embs = embs.clone()
                            imgs[sub] = self._q(imgs[sub], act[pos[sub]], idx, eps)
                            embs[sub] = a._encode(imgs[sub])
                    succ = done[pos]
                    if self.stop == "steps":  # judged once, on the final (rounded) image
                        succ = self._stop_ok(embs, gidx[pos], self.rule) & ~bad[pos]
                        reasons = [r if r != "step limit" else f"ran {k} steps" for r in reasons]
                    finish(gidx[pos], imgs, embs, succ, [k] * pos.numel(), reasons)
                if last:
                    break
                keep = ~leaving
                if not bool(keep.any()):
                    return
                kpos = keep.nonzero().squeeze(1)

            # gradient for the samples that stay
            if exact:
                loss = a._loss_rows(emb[kpos], self.t[gidx[kpos]]).sum()
                (g,) = torch.autograd.grad(loss, z)
                g = g[kpos]
                z = z.detach()
            else:
                ekeep = e[kpos].clone().requires_grad_(True)
                with torch.enable_grad():
                    lk = a._loss_rows(ekeep, self.t[gidx[kpos]]).sum()
                    (cot,) = torch.autograd.grad(lk, ekeep)
                cover = act[kpos]
                if closure is None or cover.numel() * 2 <= closure[0].numel():
                    closure = self._build_closure(idx, cover)
                full = torch.zeros(closure[0].numel(), cot.shape[1], device=device)
                where = torch.searchsorted(closure[0], cover)
                full[where] = cot
                with torch.no_grad():
                    (g,) = closure[1](full)
                g = g[where]
            with torch.no_grad():
                gfin = torch.isfinite(g.flatten(1)).all(dim=1)
                if not bool(gfin.all()):
                    rows = gidx[kpos][~gfin].tolist()
                    self._fail_nonfinite("gradient", rows, k)
                    pos = kpos[~gfin]
                    finish(gidx[pos], z.detach()[pos], e[pos], torch.zeros(pos.numel(), dtype=torch.bool),
                           [k] * pos.numel(), [f"non-finite gradient at step {k}"] * pos.numel())
                    kpos = kpos[gfin]
                    g = g[gfin]
                    if kpos.numel() == 0:
                        return
                zk = z.detach()[kpos]
                ak = act[kpos]
                if cfg.optimizer == "adam":
                    mk = b1 * m[kpos] + (1 - b1) * g
                    vk = b2 * v[kpos] + (1 - b2) * g * g
                    mhat = mk / (1 - b1 ** (k + 1))
                    vhat = vk / (1 - b2 ** (k + 1))
                    direction = mhat / (vhat.sqrt() + 1e-12)
                    m, v = mk, vk
                else:
                    direction = g
                # projected_step moves along +direction: descend with -direction
                z = ops.projected_step(zk, self.x0[idx[ak]], -direction, alpha[ak], eps[ak],
                                       step=step_kind, norm=cfg.norm)
                act = ak

    def _build_closure(self, idx: torch.Tensor, cover: torch.Tensor):
        """One VJP closure of the encoder at x0 for the samples at positions ``cover`` (sorted)."""
        x0c = self.x0[idx[cover]]
        _, vjp_fn = torch.func.vjp(self.a._encode, x0c)
        return cover, vjp_fn

    # ------------------------------------------------------------ records
    def run_all(self, eps_t: torch.Tensor) -> AlignmentResult:
        cfg = self.cfg
        B = self.x0.shape[0]
        device = self.x0.device
        D = self.t.shape[1]
        out = _Outcome(B, self.x0.shape[1:], D, device)
        out.eps = eps_t.clone()
        self.records: list[dict | None] = [None] * B
        all_idx = torch.arange(B, device=device)

        def store(gidx, imgs, embs, succ, steps, reasons, eps_now):
            gl = gidx.tolist()
            out.images[gidx] = imgs.to(out.images.dtype)
            out.emb[gidx] = embs
            for j, i in enumerate(gl):
                out.success[i] = bool(succ[j])
                out.steps[i] = int(steps[j])
                out.total_steps[i] += int(steps[j])
                out.reason[i] = reasons[j]
                out.rounds[i] += 1
                out.eps[i] = float(eps_now[j])
                out.wall[i] = time.perf_counter() - self.t_start

        if cfg.minimal == "off":
            def finish(gidx, imgs, embs, succ, steps, reasons):
                store(gidx, imgs, embs, succ, steps, reasons, eps_t[gidx].tolist())
                self._emit(out, gidx)
            self.align(all_idx, eps_t, finish)
            return self._result(out)

        # minimal-perturbation mode: escalate the budget for the failures only
        schedule = list(cfg.eps_schedule)
        lo = torch.zeros(B, dtype=torch.float32, device=device)
        hi = torch.full((B,), float("nan"), dtype=torch.float32, device=device)
        pending = all_idx
        for r, e in enumerate(schedule):
            if pending.numel() == 0:
                break
            last_round = r == len(schedule) - 1
            eps_now = torch.full((pending.numel(),), e, dtype=torch.float32, device=device)
            succeeded: list[int] = []

            def finish(gidx, imgs, embs, succ, steps, reasons, _e=e, _last=last_round):
                store(gidx, imgs, embs, succ, steps, reasons, [_e] * gidx.numel())
                gl = gidx.tolist()
                for j, i in enumerate(gl):
                    if bool(succ[j]):
                        hi[i] = _e
                        succeeded.append(i)
                    else:
                        lo[i] = _e
                final = [i for j, i in enumerate(gl)
                         if (bool(succ[j]) and cfg.minimal == "escalate") or (not bool(succ[j]) and _last)
                         or reasons[j].startswith("non-finite")]
                if final:
                    self._emit(out, torch.tensor(final, device=device))

            self.align(pending, eps_now, finish)
            done_set = set(succeeded) | {i for i in pending.tolist() if out.reason[i].startswith("non-finite")}
            pending = torch.tensor([i for i in pending.tolist() if i not in done_set], dtype=torch.long,
                                   device=device)
        if cfg.minimal == "bisect":
            cand = torch.tensor([i for i in range(B) if bool(out.success[i])], dtype=torch.long, device=device)
            best = {i: (out.images[i].clone(), out.emb[i].clone(), int(out.steps[i]), out.reason[i])
                    for i in cand.tolist()}
            for _ in range(cfg.bisect_steps):
                if cand.numel() == 0:
                    break
                mid = (lo[cand] + hi[cand]) / 2

                def finish(gidx, imgs, embs, succ, steps, reasons, _mid=mid, _cand=cand):
                    pos = torch.searchsorted(_cand, gidx)
                    for j, i in enumerate(gidx.tolist()):
                        me = float(_mid[pos[j]])
                        out.total_steps[i] += int(steps[j])
                        out.rounds[i] += 1
                        if bool(succ[j]):
                            hi[i] = me
                            best[i] = (imgs[j].clone(), embs[j].clone(), int(steps[j]), reasons[j])
                        else:
                            lo[i] = me

                self.align(cand, mid, finish)
            for i, (img, emb, steps, reason) in best.items():
                out.images[i] = img
                out.emb[i] = emb
                out.steps[i] = steps
                out.reason[i] = reason
                out.success[i] = True
                out.eps[i] = float(hi[i])
                out.wall[i] = time.perf_counter() - self.t_start
            if best:
                self._emit(out, torch.tensor(sorted(best), device=device))
        return self._result(out)

    def _emit(self, out: _Outcome, gidx: torch.Tensor) -> None:
        """Build the records of samples ``gidx`` (now final) and pass them to ``on_done``."""
        ops = self.ops
        cfg = self.cfg
        a = self.a
        gidx = gidx.to(self.x0.device)
        gl = gidx.tolist()
        imgs = out.images[gidx]
        x0 = self.x0[gidx]
        emb = out.emb[gidx]
        with torch.no_grad():
            d = (imgs - x0).flatten(1)
            linf = d.abs().amax(dim=1) if d.shape[1] else torch.zeros(len(gl))
            l2 = d.norm(dim=1)
            psnr = ops.psnr(imgs, x0)
            ssim = ops.ssim(imgs, x0)
            cos_t = F.cosine_similarity(emb, self.t[gidx], dim=1)
            cos_o = F.cosine_similarity(emb, self.emb0[gidx], dim=1)
            loss = a._loss_rows(emb, self.t[gidx])
            if cfg.quantize:  # the image is its own rounding
                survives = out.success[gidx.cpu()].tolist()
            else:
                qi = quantize_8bit(imgs, x0, out.eps[gidx]) if cfg.norm == "linf" else quantize_8bit(imgs)
                eq = a._encode(qi)
                survives = self._stop_ok(eq, gidx, self.rule).tolist()
            if self.W is not None:
                scale = a.model.logit_scale
                pb = (scale * self.emb0[gidx] @ self.W.t()).softmax(dim=1)
                pa = (scale * emb @ self.W.t()).softmax(dim=1)
                cb, ib = pb.max(dim=1)
                ca, ia = pa.max(dim=1)
                gap = self._class_gap(emb, gidx) if self.tc is not None else None
        recs = []
        for j, i in enumerate(gl):
            p = float(psnr[j])
            rec = {
                "success": bool(out.success[i]),
                "reason": out.reason[i],
                "steps": int(out.steps[i]),
                "total_steps": int(out.total_steps[i]),
                "rounds": int(out.rounds[i]),
                "eps": float(out.eps[i]),
                "loss": float(loss[j]),
                "cos_target": float(cos_t[j]),
                "cos_original": float(cos_o[j]),
                "pred_before": int(ib[j]) if self.W is not None else None,
                "conf_before": float(cb[j]) if self.W is not None else None,
                "pred_after": int(ia[j]) if self.W is not None else None,
                "conf_after": float(ca[j]) if self.W is not None else None,
                "target_class": int(self.tc[i]) if self.tc is not None else None,
                "margin_after": float(gap[j]) if (self.W is not None and gap is not None) else None,
                "label": int(self.labels[i]) if self.labels is not None else None,
                "psnr": p if math.isfinite(p) else None,
                "ssim": float(ssim[j]),
                "linf": float(linf[j]),
                "l2": float(l2[j]),
                "quantized": bool(cfg.quantize),
                "survives_rounding": survives[j] if survives[j] is None else bool(survives[j]),
                "wall_s": float(out.wall[i]),
            }
            self.records[i] = rec
            recs.append(rec)
        if self.on_done is not None:
            self.on_done(gl, recs, imgs)

    def _result(self, out: _Outcome) -> AlignmentResult:
        missing = [i for i, r in enumerate(self.records) if r is None]
        if missing:  # cannot happen: every sample leaves through finish(); guard the invariant
            raise RuntimeError(f"embedding-alignment: internal error, no record for samples {missing[:8]}")
        return AlignmentResult(images=out.images, success=out.success.clone(), embeddings=out.emb,
                               records=list(self.records))
