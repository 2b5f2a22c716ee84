"""Attacks on vision-language models: one engine, one base class, one registry.

``list_attacks()`` / ``create_attack(name, model, **cfg)``; the paper's
embedding alignment is :class:`EmbeddingAlignment` (``"embedding-alignment"``,
alias ``"align"``), and its adaptive variant against noise-based detectors is
:class:`EOTAlignment` (``"eot-alignment"``).  Every attack runs the one loop
of :mod:`pyvlmx.attacks.engine` over its parts: objective
(:mod:`~pyvlmx.attacks.objective`), step rule (:mod:`~pyvlmx.attacks.steps`),
budget (:mod:`~pyvlmx.attacks.budget`), stop rule (:mod:`~pyvlmx.attacks.stop`)
and gradient source (:mod:`~pyvlmx.attacks.gradient`), under the
minimal-budget search (:mod:`~pyvlmx.attacks.search`).
"""

from pyvlmx.attacks.alignment import AlignmentResult, EmbeddingAlignment
from pyvlmx.attacks.base import (Attack, attack_options, create_attack, get_attack_class, list_attacks,
                                 register_attack)
from pyvlmx.attacks.budget import quantize_8bit, quantize_to_budget
from pyvlmx.attacks.config import AlignmentConfig
from pyvlmx.attacks.eot import EOTAlignment, EOTConfig
from pyvlmx.attacks.stop import class_gap, record_success, targeted_success

__all__ = ["AlignmentConfig", "AlignmentResult", "Attack", "EOTAlignment", "EOTConfig", "EmbeddingAlignment",
           "attack_options", "class_gap", "create_attack", "get_attack_class", "list_attacks", "quantize_8bit",
           "quantize_to_budget", "record_success", "register_attack", "targeted_success"]
