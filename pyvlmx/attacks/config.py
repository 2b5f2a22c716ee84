"""The alignment attack's options, declared once: types, defaults, help and checks.

Every field carries its help text in ``metadata["help"]``; the CLI builds its
options from these fields (:mod:`pyvlmx.cli`), so an option is written here
and nowhere else.  :meth:`AlignmentConfig.validate` runs before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

LOSSES = ("l2", "cosine", "margin")
OPTIMIZERS = ("sign", "gd", "adam")
NORMS = ("linf", "l2", "none")
GRADIENTS = ("exact", "fixed_jacobian")
STOPS = ("auto", "class", "cosine", "steps")
MINIMAL = ("off", "escalate", "bisect")
ERRORS = ("raise", "record")
EOT_NOISES = ("gaussian", "uniform")
from pyvlmx.attacks.precision import PRECISIONS  # noqa: E402

# Default step sizes: sign and Adam steps move each pixel by about step_size,
# so they are a fraction of the L-inf budget; plain gradient descent moves by
# step_size * gradient, whose scale depends on the model (see the benchmark).
DEFAULT_REL_STEP = 0.125
DEFAULT_GD_STEP = 1.0


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


def one_of(owner: str, name: str, value: str, options: Sequence[str]) -> None:
    """Raise ValueError unless ``value`` is one of ``options`` (the message names both)."""
    if value not in options:
        raise ValueError(f"{owner}: {name} must be one of {list(options)}, got {value!r}")


@dataclass
class AlignmentConfig:
    """Options of :class:`~pyvlmx.attacks.EmbeddingAlignment` (all JSON-able scalars).

    Each field's help text (``dataclasses.fields(AlignmentConfig)[i].metadata``)
    is the documentation; the CLI shows it with the default.
    """

    loss: str = field(default="l2", metadata=_help(
        "objective: l2 = 1/2 ||f(x) - t||^2 (paper), cosine = 1 - cos(f(x), t), margin = the best other "
        "class's cosine minus the target class's (text targets)", choices=LOSSES))
    optimizer: str = field(default="sign", metadata=_help(
        "step rule: sign = steepest descent for the budget's norm (PGD: sign(g) for L-inf, g/||g||_2 for L2), "
        "gd = plain gradient descent (paper), adam", choices=OPTIMIZERS, flags=("--optimizer", "--attack")))
    norm: str = field(default="linf", metadata=_help(
        "budget on the change d: linf, l2 or none (paper); the [0, 1] box always holds", choices=NORMS))
    eps: float = field(default=4 / 255, metadata=_help(
        "budget radius in pixels, e.g. 4/255 (ignored for --norm none)", kind="budget"))
    step_size: float | None = field(default=None, metadata=_help(
        "pixels per step; default rel-step x eps for sign/adam (rel-step/255 without a budget), 1.0 for gd",
        kind="budget"))
    rel_step: float = field(default=DEFAULT_REL_STEP, metadata=_help(
        "step as a fraction of eps when --step-size is not given"))
    max_steps: int = field(default=200, metadata=_help(
        "step limit per sample (per budget in minimal mode)", flags=("--steps", "--max-steps")))
    gradient: str = field(default="exact", metadata=_help(
        "gradient source: exact autograd, or the paper's fixed Jacobian J(x0)^T dL/df (one VJP closure at x0)",
        choices=GRADIENTS))
    stop: str = field(default="auto", metadata=_help(
        "stop rule: class (target class predicted with --margin), cosine (cos(f, t) >= --cos-threshold), "
        "steps (run every step, judge at the end), auto (class for class targets, cosine otherwise)",
        choices=STOPS))
    margin: float = field(default=0.0, metadata=_help(
        "cosine gap by which the target class must beat every other class"))
    cos_threshold: float = field(default=0.99, metadata=_help("cosine to the target that counts as aligned"))
    quantize: bool = field(default=True, metadata=_help(
        "success must hold for the 8-bit rounding of the image (the saved PNG), which is what is returned"))
    random_start: bool = field(default=False, metadata=_help(
        "start uniformly in the budget ball (per-sample seeds)"))
    seed: int = field(default=0, metadata=_help("base seed; sample i uses seed + i unless seeds are given"))
    minimal: str = field(default="off", metadata=_help(
        "minimal-budget search per pair: escalate (first budget of --eps-schedule that succeeds) or bisect "
        "(then bisect between it and the previous budget --bisect-steps times)", choices=MINIMAL))
    eps_schedule: tuple = field(default=(1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255), metadata=_help(
        "budgets tried in minimal mode, increasing, comma-separated", kind="budget_list"))
    bisect_steps: int = field(default=3, metadata=_help("bisection rounds in bisect mode"))
    adam_betas: tuple = field(default=(0.9, 0.999), metadata=_help("Adam's beta1,beta2", kind="float_list"))
    eot_samples: int = field(default=0, metadata=_help(
        "expectation over transformation: average the objective over this many noisy copies of the input "
        "per step (0: off)"))
    eot_sigma: float = field(default=4 / 255, metadata=_help(
        "noise level of the EOT copies in pixels (Gaussian std, or the half-width of uniform noise)",
        kind="budget"))
    eot_noise: str = field(default="gaussian", metadata=_help("EOT noise: gaussian or uniform",
                                                              choices=EOT_NOISES))
    eot_weight: float = field(default=1.0, metadata=_help(
        "weight of the EOT term; the clean objective keeps weight 1 (set --eot-clean 0 to drop it)"))
    eot_clean: float = field(default=1.0, metadata=_help("weight of the objective on the clean input with EOT"))
    precision: str = field(default="fp32", metadata=_help(
        "precision of the search: fp32, tf32 (CUDA), bf16 (CUDA; CPUs with AMX/AVX-512 BF16) or auto (bf16 on "
        "CUDA, fp32 on the CPU); every reported figure comes from an fp32 forward of the saved 8-bit image",
        choices=PRECISIONS))
    read_every: int = field(default=1, metadata=_help(
        "steps between the loop's reads of its decisions from the device (one transfer each): between "
        "reads the slots step on and each step is kept, so a sample leaves where it would if read every "
        "step (records do not depend on it; a finished sample's slot is refilled at the next read)"))
    errors: str = field(default="raise", metadata=_help(
        "on a non-finite embedding or gradient: raise, or record it as the sample's failure and go on",
        choices=ERRORS))

    def validate(self) -> None:
        own = "embedding-alignment"
        one_of(own, "loss", self.loss, LOSSES)
        one_of(own, "optimizer", self.optimizer, OPTIMIZERS)
        one_of(own, "norm", self.norm, NORMS)
        one_of(own, "gradient", self.gradient, GRADIENTS)
        one_of(own, "stop", self.stop, STOPS)
        one_of(own, "minimal", self.minimal, MINIMAL)
        one_of(own, "errors", self.errors, ERRORS)
        one_of(own, "eot_noise", self.eot_noise, EOT_NOISES)
        one_of(own, "precision", self.precision, PRECISIONS)
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"{own}: eps must be a finite number >= 0, got {self.eps!r}")
        if self.norm == "linf" and self.eps > 1:
            hint = f" (did you mean {self.eps:g}/255?)" if float(self.eps).is_integer() and self.eps <= 255 else ""
            raise ValueError(f"{own}: an L-inf eps above 1 is no budget on pixels in [0, 1] (it allows any "
                             f"image), got {self.eps:g}{hint}")
        if self.norm != "none" and self.eps == 0 and self.minimal == "off":
            raise ValueError(f"{own}: eps=0 with norm={self.norm!r} allows no change; "
                             f"use eps > 0 or norm='none'")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f"{own}: step_size must be > 0, got {self.step_size!r}")
        if isinstance(self.read_every, bool) or not isinstance(self.read_every, int) or self.read_every < 1:
            raise ValueError(f"{own}: read_every must be an integer >= 1, got {self.read_every!r}")
        if not (self.rel_step > 0):
            raise ValueError(f"{own}: rel_step must be > 0, got {self.rel_step!r}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 0):
            raise ValueError(f"{own}: max_steps must be an int >= 0, got {self.max_steps!r}")
        if not (-1.0 <= self.cos_threshold <= 1.0):
            raise ValueError(f"{own}: cos_threshold must be in [-1, 1], got {self.cos_threshold!r}")
        if not (self.margin >= 0):
            raise ValueError(f"{own}: margin must be >= 0, got {self.margin!r}")
        self.eps_schedule = tuple(float(e) for e in self.eps_schedule)
        if self.minimal != "off":
            if self.norm == "none":
                raise ValueError(f"{own}: minimal mode needs a budget, got norm='none'")
            s = self.eps_schedule
            if not s or any(e <= 0 for e in s) or any(b <= a for a, b in zip(s, s[1:])):
                raise ValueError(f"{own}: eps_schedule must be increasing and > 0, got {s}")
        if not (isinstance(self.bisect_steps, int) and self.bisect_steps >= 0):
            raise ValueError(f"{own}: bisect_steps must be an int >= 0, got {self.bisect_steps!r}")
        if self.random_start and self.norm == "none":
            raise ValueError(f"{own}: random_start needs a budget (norm 'linf' or 'l2')")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"{own}: adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not (isinstance(self.eot_samples, int) and self.eot_samples >= 0):
            raise ValueError(f"{own}: eot_samples must be an int >= 0, got {self.eot_samples!r}")
        if not (math.isfinite(self.eot_sigma) and self.eot_sigma > 0):
            raise ValueError(f"{own}: eot_sigma must be > 0, got {self.eot_sigma!r}")
        if not (self.eot_weight >= 0 and self.eot_clean >= 0 and self.eot_weight + self.eot_clean > 0):
            raise ValueError(f"{own}: eot_weight and eot_clean must be >= 0 and not both 0, got "
                             f"{self.eot_weight!r} and {self.eot_clean!r}")

    def default_step(self, eps: float) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        if self.optimizer == "gd":
            return DEFAULT_GD_STEP
        if self.norm == "none" or eps == 0:
            return self.rel_step / 255.0
        return self.rel_step * eps
