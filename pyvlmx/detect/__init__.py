"""Noise-sensitivity detection of aligned images, and an adaptive (EOT) attacker.

Example:
    >>> from pyvlmx.detect import evaluate_detector
    >>> r = evaluate_detector(model, clean, aligned, class_weights=w, sigma=4/255)  # doctest: +SKIP
    >>> r["scores"]["combined"]["auc"]                                             # doctest: +SKIP
"""

from pyvlmx.detect.adaptive import align  # noqa: F401
from pyvlmx.detect.detector import (  # noqa: F401
    NOISE_SCORES, SCORES, Calibration, NoiseSensitivityDetector, evaluate_detector, noise_scores, roc_curve,
    tpr_at_fpr,
)
from pyvlmx.detect.plots import plot_roc  # noqa: F401
