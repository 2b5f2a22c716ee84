"""Attacks on vision-language models: one base class, one registry.

``list_attacks()`` / ``create_attack(name, model, **cfg)``; the paper's
embedding alignment is :class:`EmbeddingAlignment` (``"embedding-alignment"``,
alias ``"align"``).
"""

from pyvlmx.attacks.alignment import AlignmentConfig, AlignmentResult, EmbeddingAlignment, quantize_8bit
from pyvlmx.attacks.base import Attack, create_attack, get_attack_class, list_attacks, register_attack

__all__ = ["AlignmentConfig", "AlignmentResult", "Attack", "EmbeddingAlignment", "create_attack",
           "get_attack_class", "list_attacks", "quantize_8bit", "register_attack"]
