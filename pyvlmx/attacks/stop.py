"""When a sample is done: the one definition of targeted success, and the stop rules.

*Targeted success* is one fact, defined once (:func:`targeted_success`): the
target class's zero-shot score beats every other class's by more than a
margin.  The attack's class stop rule, the sweep's progress bar and the
study's condition all call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_gap(emb: torch.Tensor, class_weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the target class's score minus the best other class's (scores: ``emb @ W^T``).

    Args:
        emb: (B, D) embeddings (unit norm for cosine scores).
        class_weights: (C, D) zero-shot weights.
        target: (B,) target class indices.

    Returns:
        (B,) gaps; > 0 where the target class is the prediction.
    """
    cos = emb @ class_weights.t()
    tcol = target.to(cos.device)[:, None]
    own = cos.gather(1, tcol).squeeze(1)
    other = cos.scatter(1, tcol, float("-inf")).amax(dim=1)
    return own - other


def targeted_success(emb: torch.Tensor, class_weights: torch.Tensor, target: torch.Tensor,
                     margin: float = 0.0) -> torch.Tensor:
    """Whether each embedding is classified as its target class with a margin: ``class_gap > margin``.

    Example:
        >>> W = torch.eye(3)
        >>> targeted_success(torch.tensor([[0.1, 0.9, 0.0]]), W, torch.tensor([1])).tolist()
        [True]
    """
    return class_gap(emb, class_weights, target) > margin


def record_success(record: dict) -> bool:
    """Targeted success of a pair's record: computed without error, and the attacked image's
    zero-shot prediction is the target class (:func:`targeted_success` at margin 0, as recorded).

    Example:
        >>> record_success({"status": "ok", "pred_after": 3, "target_class": 3})
        True
    """
    return record.get("status", "ok") == "ok" and record.get("target_class") is not None and \
        record.get("pred_after") == record["target_class"]


class StopRule:
    """Judge samples done: ``"class"`` (targeted success), ``"cosine"`` (cos(f, t) >= threshold) or ``"steps"``.

    Args:
        rule: "class", "cosine" or "steps" (run every step; ``final`` is the
            rule that judges the result then).
        targets: (B, D) target embeddings.
        class_weights, target_classes: (C, D) and (B,) for the class rule.
        margin, cos_threshold: the rules' thresholds.
    """

    def __init__(self, rule: str, targets: torch.Tensor, class_weights: torch.Tensor | None,
                 target_classes: torch.Tensor | None, margin: float, cos_threshold: float):
        self.rule = rule
        self.t_unit = F.normalize(targets, dim=1)
        self.W = class_weights
        self.tc = target_classes
        self.margin = margin
        self.cos_threshold = cos_threshold
        has_class = class_weights is not None and target_classes is not None
        self.final = rule if rule != "steps" else ("class" if has_class else "cosine")

    def ok(self, emb: torch.Tensor, idx: torch.Tensor, rule: str | None = None) -> torch.Tensor:
        """(len(idx),) bool: samples ``idx`` (global indices) meet ``rule`` (default: this rule)."""
        rule = self.rule if rule is None else rule
        if rule == "class":
            return targeted_success(emb, self.W, self.tc[idx], self.margin)
        if rule == "cosine":
            return (emb * self.t_unit[idx]).sum(1) >= self.cos_threshold
        return torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)

    @property
    def reason(self) -> str:
        return "class reached" if self.rule == "class" else "cosine reached"
