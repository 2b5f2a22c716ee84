"""Cross-model transfer: align against one model (or an ensemble), evaluate on others.

``transfer_matrix(sources, evals, dataset, ...)`` -> dict of matrices;
``format_markdown(result)``; :class:`EnsembleModel` (mean alignment loss over
several models, with differentiable resizing to each member's input size).
"""

from pyvlmx.transfer.ensemble import EnsembleModel, resize_pixels
from pyvlmx.transfer.matrix import assign_targets, format_markdown, transfer_matrix

__all__ = ["EnsembleModel", "assign_targets", "format_markdown", "resize_pixels", "transfer_matrix"]
