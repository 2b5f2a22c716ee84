"""Command-line options shared by ``pyvlmx align`` and ``pyvlmx systematic`` (argparse helpers)."""

from __future__ import annotations

import argparse
from fractions import Fraction


def budget(text: str) -> float:
    """Parse ``4/255``, ``0.0157`` or ``2e-2`` as a float."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 4/255 or 0.0157, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def add_attack_args(p: argparse.ArgumentParser) -> None:
    from pyvlmx.attacks.alignment import GRADIENTS, LOSSES, MINIMAL, NORMS, OPTIMIZERS, STOPS, AlignmentConfig

    d = AlignmentConfig()
    g = p.add_argument_group("alignment (pyvlmx.attacks.EmbeddingAlignment)")
    g.add_argument("--attack", "--optimizer", dest="optimizer", choices=OPTIMIZERS, default=d.optimizer,
                   help=f"optimiser: sign steps (PGD), plain gradient descent (paper) or Adam (default {d.optimizer})")
    g.add_argument("--eps", type=budget, default=d.eps, help="budget in pixels, e.g. 4/255 (default 4/255)")
    g.add_argument("--norm", choices=NORMS, default=d.norm, help=f"budget norm (default {d.norm})")
    g.add_argument("--steps", type=int, default=d.max_steps, help=f"step limit per pair (default {d.max_steps})")
    g.add_argument("--step-size", type=budget, default=None,
                   help="step size; default rel-step x eps for sign/adam, 1.0 for gd")
    g.add_argument("--rel-step", type=float, default=d.rel_step,
                   help=f"step as a fraction of eps when --step-size is not given (default {d.rel_step})")
    g.add_argument("--loss", choices=LOSSES, default=d.loss, help=f"alignment loss (default {d.loss})")
    g.add_argument("--gradient", choices=GRADIENTS, default=d.gradient,
                   help="exact autograd or the paper's fixed Jacobian J(x0)^T (default exact)")
    g.add_argument("--stop", choices=STOPS, default=d.stop,
                   help="stop rule: class reached, cosine reached, all steps, or auto (class for class "
                        "targets, cosine for image targets)")
    g.add_argument("--margin", type=float, default=d.margin, help="cosine margin for the class rule")
    g.add_argument("--cos-threshold", type=float, default=d.cos_threshold,
                   help=f"cosine to the target that counts as aligned (default {d.cos_threshold})")
    g.add_argument("--minimal", choices=MINIMAL, default=d.minimal,
                   help="per pair, the smallest budget that succeeds: escalate through --eps-schedule, "
                        "or bisect after escalating")
    g.add_argument("--eps-schedule", type=lambda s: tuple(budget(v) for v in s.split(",")),
                   default=d.eps_schedule, help="budgets for --minimal, comma-separated (1/255,2/255,...)")
    g.add_argument("--no-quantize", dest="quantize", action="store_false",
                   help="do not require success to survive 8-bit rounding (the saved PNG)")
    g.add_argument("--random-start", action="store_true", help="start at a random point of the budget ball")
    g.add_argument("--seed", type=int, default=0)


def attack_options(args) -> dict:
    return {"optimizer": args.optimizer, "eps": args.eps, "norm": args.norm, "max_steps": args.steps,
            "step_size": args.step_size, "rel_step": args.rel_step, "loss": args.loss, "gradient": args.gradient,
            "stop": args.stop, "margin": args.margin, "cos_threshold": args.cos_threshold,
            "minimal": args.minimal, "eps_schedule": args.eps_schedule, "quantize": args.quantize,
            "random_start": args.random_start, "seed": args.seed}


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help="model name (pyvlmx list-models); default: the offline model")
    p.add_argument("--pretrained", default=None, help="weights: tag, checkpoint file or folder (family-specific)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--templates", default="short", help="prompt set for the class text embeddings (default short)")
