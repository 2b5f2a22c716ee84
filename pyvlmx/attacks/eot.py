"""The adaptive attacker of noise-based detectors: alignment in expectation over noise.

A detector that flags aligned images by how their embedding moves under
input noise (:mod:`pyvlmx.detect`) is attacked by the same alignment, with
the objective averaged over the detector's own noise (Expectation over
Transformation, Athalye et al. 2018):

    L(x) = 1/2 ||f(x) - t||^2 + 1/2 (1/K) sum_k ||f(clip(x + e_k)) - t||^2

It is :class:`~pyvlmx.attacks.EmbeddingAlignment` with other defaults (EOT
on, a fixed number of steps, sign steps of eps/8), not a second loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyvlmx.attacks.alignment import EmbeddingAlignment
from pyvlmx.attacks.base import register_attack
from pyvlmx.attacks.config import AlignmentConfig


@dataclass
class EOTConfig(AlignmentConfig):
    """:class:`~pyvlmx.attacks.AlignmentConfig` with the adaptive attacker's defaults."""

    eps: float = field(default=8 / 255, metadata={"help": "L-inf budget in pixels", "kind": "budget"})
    max_steps: int = field(default=100, metadata={"help": "steps (all are run: stop='steps')",
                                                  "flags": ("--steps", "--max-steps")})
    stop: str = field(default="steps", metadata={"help": "stop rule (see embedding-alignment)"})
    eot_samples: int = field(default=4, metadata={"help": "noisy copies per step in the EOT term"})
    eot_sigma: float = field(default=4 / 255, metadata={
        "help": "noise level of the EOT copies (the detector's sigma), pixels", "kind": "budget"})
    errors: str = field(default="record", metadata={"help": "raise or record non-finite values"})


@register_attack("eot", "adaptive")
class EOTAlignment(EmbeddingAlignment):
    """Embedding alignment in expectation over Gaussian (or uniform) input noise.

    Example:
        >>> import torch
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> atk = EOTAlignment(m, max_steps=2, eot_samples=2)
        >>> x = torch.rand(2, 3, 32, 32)
        >>> res = atk.run(x, target_images=x.flip(0))
        >>> [r["steps"] for r in res.records]
        [2, 2]
    """

    name = "eot-alignment"
    config_class = EOTConfig
