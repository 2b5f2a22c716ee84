"""The attacks of the detection matrix, all at one L-inf budget, all returned as 8-bit images.

Each name of :data:`ATTACKS` expands to one or more rows (:data:`VARIANTS`):

* ``alignment-image`` / ``alignment-text``: the paper's embedding alignment
  (:class:`pyvlmx.attacks.EmbeddingAlignment`, loss 1/2 ||f(x) - t||^2, sign
  steps of eps/8) onto the embedding of another class's photo, or onto the
  text embedding of a target class; as in the sweep, an image stops as soon
  as its 8-bit version is classified as the target class (the photo's
  class for image targets), at most ``align_steps`` steps.
* ``pgd``: torchattacks' ``PGD`` (Madry et al. 2018) on the zero-shot
  classifier's cross-entropy, untargeted (away from the true class) and
  targeted (``set_mode_targeted_by_label``, towards the text target class).
* ``apgd``: torchattacks' ``APGD`` (Croce and Hein 2020) untargeted with the
  CE and the DLR loss, and ``APGDT``, AutoAttack's targeted-DLR attack.
  torchattacks 3.5.1's APGD takes no targeted mode; APGDT chooses its own
  targets, the ``apgdt_targets`` most likely wrong classes in turn
  (AutoAttack's protocol), and succeeds when the image is misclassified.
  APGD runs with ``best_loss=True`` so every image carries the attack (the
  highest-loss iterate); APGDT returns the clean image where it fails.
* ``noise``: non-adversarial controls of the same L-inf size: uniform noise
  U(-eps, eps) and Gaussian noise N(0, (eps/2)^2) clipped to the ball.  A
  detector that flags these measures noise, not attacks.

Every result is :func:`pyvlmx.attacks.quantize_to_budget` of the attack's
output: 8-bit values inside [x0 - eps, x0 + eps] and [0, 1].  The attacks
return images only; success and every other metric are computed by the
matrix (:mod:`pyvlmx.detect.matrix`).  torchattacks draws its random starts
from torch's global generator: each call runs inside
``torch.random.fork_rng`` seeded with the matrix's seed, so the caller's
random state is left as it was and a run is reproducible.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import dataclass, field

import torch

from pyvlmx.attacks import create_attack, quantize_to_budget
from pyvlmx.detect.classifier import ZeroShotLogits
from pyvlmx.detect.config import MATRIX_ATTACKS, check_attacks

#: the attack names of the matrix (the CLI's ``--attacks``)
ATTACKS = MATRIX_ATTACKS

#: the rows each attack name produces
VARIANTS: dict[str, tuple[str, ...]] = {
    "alignment-image": ("alignment-image",),
    "alignment-text": ("alignment-text",),
    "pgd": ("pgd-untargeted", "pgd-targeted"),
    "apgd": ("apgd-ce", "apgd-dlr", "apgdt-dlr"),
    "noise": ("noise-gaussian", "noise-uniform"),
}

TORCHATTACKS_VERSION = "3.5.1"
_INSTALL = (f"pip install --no-deps torchattacks=={TORCHATTACKS_VERSION}  (--no-deps: its metadata pins "
            f"requests~=2.25.1, which it never imports and which conflicts with huggingface_hub's idna; it "
            f"needs only torch, numpy and scipy)")


def torchattacks_module():
    """``import torchattacks``, or an ImportError that gives the install command."""
    try:
        import torchattacks
    except ImportError as exc:
        raise ImportError(f"the pgd and apgd rows of the detection matrix need torchattacks: {_INSTALL}") from exc
    version = getattr(torchattacks, "__version__", "unknown")
    if version != TORCHATTACKS_VERSION:
        warnings.warn(f"torchattacks {version} is installed; pyvlmx is tested with {TORCHATTACKS_VERSION} "
                      f"({_INSTALL})", stacklevel=2)
    return torchattacks


@dataclass
class AttackedSet:
    """One row of the matrix: attacked versions of (some of) the clean images.

    Attributes:
        name: the row (``pgd-targeted``).
        family: the attack name it came from (``pgd``).
        images: (n, 3, H, W) 8-bit images inside the budget.
        index: the n clean-image indices they were made from.
        targets: the n target classes of a targeted row, else None (success
            is then misclassification).
        config: what the attack ran with (JSON-able).
        wall_s: seconds the attack took.
        adaptive_for: the detector an adaptive row attacks, else None.
    """

    name: str
    family: str
    images: torch.Tensor
    index: list[int]
    targets: list[int] | None
    config: dict = field(default_factory=dict)
    wall_s: float = 0.0
    adaptive_for: str | None = None


@dataclass
class AttackContext:
    """What every attack of the matrix shares.

    Attributes:
        model: the model.
        weights: (C, D) zero-shot class embeddings.
        images: (N, 3, H, W) clean 8-bit images.
        labels: (N,) true classes.
        text_targets: (N,) target class of each image (text targets, targeted PGD).
        image_targets: (N,) index of the target photo of each image (``alignment-image``).
        eps: L-inf budget.
        steps: iterations of PGD and APGD.
        align_steps: step limit of the alignment attacks.
        seed: base seed (image i uses ``seed + i`` where an attack seeds per image).
        batch_size: images per attack batch.
        apgdt_targets: target classes APGDT tries per image.
    """

    model: object
    weights: torch.Tensor
    images: torch.Tensor
    labels: list[int]
    text_targets: list[int]
    image_targets: list[int]
    eps: float
    steps: int
    align_steps: int = 30
    seed: int = 0
    batch_size: int = 8
    apgdt_targets: int = 1

    @property
    def step_size(self) -> float:
        """PGD's step: 2.5 eps / steps (Madry et al.); APGD sets its own, alignment takes eps/8."""
        return 2.5 * self.eps / max(self.steps, 1)


def _batches(n: int, size: int):
    for b0 in range(0, n, size):
        yield b0, min(n, b0 + size)


def _alignment(ctx: AttackContext, kind: str) -> list[AttackedSet]:
    atk = create_attack("embedding-alignment", ctx.model, eps=float(ctx.eps), max_steps=int(ctx.align_steps),
                        stop="class", seed=int(ctx.seed), norm="linf", quantize=True, optimizer="sign", loss="l2")
    x = ctx.images
    out = torch.empty_like(x)
    W = ctx.weights.to(x.device)
    steps_taken: list[int] = []
    t0 = time.perf_counter()
    for b0, b1 in _batches(x.shape[0], ctx.batch_size):
        seeds = list(range(ctx.seed + b0, ctx.seed + b1))
        if kind == "image":
            tgt = x[torch.tensor(ctx.image_targets[b0:b1])]
            res = atk.run(x[b0:b1], target_images=tgt, class_weights=W, seeds=seeds)
        else:
            res = atk.run(x[b0:b1], target_classes=torch.tensor(ctx.text_targets[b0:b1]), class_weights=W,
                          seeds=seeds)
        out[b0:b1] = res.images
        steps_taken += [int(r["steps"]) for r in res.records]
    wall = time.perf_counter() - t0
    if kind == "image":  # the target class of an image target is what the classifier calls the target photo
        with torch.no_grad():
            net = ZeroShotLogits(ctx.model, ctx.weights)
            tcls = net.predict(x[torch.tensor(ctx.image_targets)], ctx.batch_size).tolist()
    else:
        tcls = list(ctx.text_targets)
    cfg = {k: v for k, v in atk.config_dict().items() if k in ("attack", "loss", "optimizer", "eps", "max_steps",
                                                                 "rel_step", "stop", "margin", "norm", "quantize")}
    cfg["steps_taken"] = steps_taken
    cfg["target"] = "photo of another class" if kind == "image" else "text embedding of the target class"
    return [AttackedSet(f"alignment-{kind}", f"alignment-{kind}", quantize_to_budget(out, x, ctx.eps, "linf"),
                        list(range(x.shape[0])), tcls, cfg, wall)]


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generator seeded with ``seed`` inside, restored after (torchattacks draws from it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _make(cls, net: ZeroShotLogits, device, **kw):
    # torchattacks prints a message when the model has no parameters (it then needs set_device): keep it quiet
    with contextlib.redirect_stdout(io.StringIO()):
        atk = cls(net, **kw)
    atk.set_device(device)
    return atk


def _run_torchattack(ctx: AttackContext, make, labels: list[int], *, perturb: bool = False):
    net = ZeroShotLogits(ctx.model, ctx.weights).eval()
    x = ctx.images
    out = torch.empty_like(x)
    t0 = time.perf_counter()
    for b0, b1 in _batches(x.shape[0], ctx.batch_size):
        atk = make(net)
        y = torch.tensor(labels[b0:b1], device=x.device)
        with _seeded(ctx.seed + b0):
            if perturb:  # APGD: the best-loss iterate of every image (forward() would return failures clean)
                _, adv = atk.perturb(x[b0:b1], y, best_loss=True)
            else:
                adv = atk(x[b0:b1], y)
        out[b0:b1] = adv.detach()
    return quantize_to_budget(out, x, ctx.eps, "linf"), time.perf_counter() - t0


def _pgd(ctx: AttackContext) -> list[AttackedSet]:
    ta = torchattacks_module()
    dev = ctx.images.device
    cfg = {"attack": "torchattacks.PGD", "loss": "ce", "eps": ctx.eps, "alpha": ctx.step_size, "steps": ctx.steps,
           "random_start": True}

    def untargeted(net):
        return _make(ta.PGD, net, dev, eps=ctx.eps, alpha=ctx.step_size, steps=ctx.steps, random_start=True)

    def targeted(net):
        atk = untargeted(net)
        atk.set_mode_targeted_by_label(quiet=True)   # the labels given are the targets
        return atk

    adv_u, wall_u = _run_torchattack(ctx, untargeted, ctx.labels)
    adv_t, wall_t = _run_torchattack(ctx, targeted, ctx.text_targets)
    idx = list(range(ctx.images.shape[0]))
    return [AttackedSet("pgd-untargeted", "pgd", adv_u, idx, None, cfg, wall_u),
            AttackedSet("pgd-targeted", "pgd", adv_t, idx, list(ctx.text_targets),
                        {**cfg, "mode": "targeted(label): the text target class"}, wall_t)]


def _apgd(ctx: AttackContext) -> list[AttackedSet]:
    ta = torchattacks_module()
    dev = ctx.images.device
    C = int(ctx.weights.shape[0])
    if C < 4:
        raise ValueError(f"apgd: the DLR losses of APGD/APGDT need at least 4 classes, got {C}")
    idx = list(range(ctx.images.shape[0]))
    rows = []
    for loss in ("ce", "dlr"):
        def make(net, _loss=loss):
            return _make(ta.APGD, net, dev, norm="Linf", eps=ctx.eps, steps=ctx.steps, n_restarts=1,
                         seed=ctx.seed, loss=_loss)
        adv, wall = _run_torchattack(ctx, make, ctx.labels, perturb=True)
        rows.append(AttackedSet(f"apgd-{loss}", "apgd", adv, idx, None,
                                {"attack": "torchattacks.APGD", "loss": loss, "eps": ctx.eps, "steps": ctx.steps,
                                 "n_restarts": 1, "best_loss": True}, wall))
    n_cls = min(C, int(ctx.apgdt_targets) + 1)   # APGDT tries n_classes - 1 targets

    def make_t(net):
        return _make(ta.APGDT, net, dev, norm="Linf", eps=ctx.eps, steps=ctx.steps, n_restarts=1, seed=ctx.seed,
                     n_classes=n_cls)
    adv, wall = _run_torchattack(ctx, make_t, ctx.labels)
    rows.append(AttackedSet("apgdt-dlr", "apgd", adv, idx, None,
                            {"attack": "torchattacks.APGDT", "loss": "dlr (targeted)", "eps": ctx.eps,
                             "steps": ctx.steps, "n_restarts": 1, "target_classes": n_cls - 1,
                             "targets": "the most likely wrong classes, in turn (AutoAttack); success = "
                                        "misclassification"}, wall))
    return rows


def _noise(ctx: AttackContext) -> list[AttackedSet]:
    from pyvlmx.noise.copies import draw_noise

    x = ctx.images
    idx = list(range(x.shape[0]))
    rows = []
    for kind, scale in (("gaussian", ctx.eps / 2), ("uniform", ctx.eps)):
        t0 = time.perf_counter()
        noise = torch.stack([draw_noise(x.shape[1:], scale, kind=kind, dtype=x.dtype,
                                        generator=torch.Generator().manual_seed(ctx.seed + 7919 * (kind == "uniform")
                                                                                + i))
                             for i in idx]).to(x.device)
        adv = quantize_to_budget((x + noise).clamp(0, 1), x, ctx.eps, "linf")
        what = "N(0, (eps/2)^2) per pixel, clipped to the ball" if kind == "gaussian" else "U(-eps, eps) per pixel"
        rows.append(AttackedSet(f"noise-{kind}", "noise", adv, idx, None,
                                {"attack": "noise", "kind": kind, "scale": scale, "eps": ctx.eps, "noise": what},
                                time.perf_counter() - t0))
    return rows


_RUNNERS = {"alignment-image": lambda ctx: _alignment(ctx, "image"),
            "alignment-text": lambda ctx: _alignment(ctx, "text"),
            "pgd": _pgd, "apgd": _apgd, "noise": _noise}


def run_attack(name: str, ctx: AttackContext) -> list[AttackedSet]:
    """The rows of attack ``name`` (one of :data:`ATTACKS`) on the images of ``ctx``.

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> W = m.class_embeddings(["cat", "dog", "car", "ship"])
        >>> x = torch.round(torch.rand(2, 3, 32, 32) * 255) / 255
        >>> ctx = AttackContext(m, W, x, [0, 1], [1, 2], [1, 0], eps=4 / 255, steps=2)
        >>> rows = run_attack("noise", ctx)
        >>> [r.name for r in rows], bool((rows[0].images - x).abs().max() <= 4 / 255 + 1e-6)
        (['noise-gaussian', 'noise-uniform'], True)
    """
    check_attacks([name])
    return _RUNNERS[name](ctx)
