"""Noise-sensitivity detection of aligned images, an adaptive (EOT) attacker, and the detection matrix.

:func:`run_matrix` puts attacks (alignment, torchattacks' PGD and APGD, noise
controls) against detectors (this noise detector, TTC's tau, feature
squeezing), with paired bootstrap intervals on every AUC
(:mod:`pyvlmx.detect.matrix`).

Example (random stand-ins for clean and aligned images, random class weights):
    >>> import torch
    >>> from pyvlmx.models import load_model
    >>> from pyvlmx.detect import evaluate_detector
    >>> model = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> g = torch.Generator().manual_seed(0)
    >>> clean = torch.rand(8, 3, 32, 32, generator=g)
    >>> aligned = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    >>> w = torch.nn.functional.normalize(torch.randn(5, model.embed_dim, generator=g), dim=1)
    >>> r = evaluate_detector(model, clean, aligned, class_weights=w, sigma=4/255, k=8)
    >>> sorted(r["scores"]), r["n_clean"], r["n_aligned"]
    (['combined', 'confidence_drop', 'displacement', 'flip_rate', 'kl', 'margin'], 8, 8)
"""

from pyvlmx.detect.adaptive import adaptive_attack, align  # noqa: F401
from pyvlmx.detect.baselines import squeeze_scores, ttc_tau  # noqa: F401
from pyvlmx.detect.detector import (  # noqa: F401
    NOISE_SCORES, SCORES, Calibration, NoiseSensitivityDetector, evaluate_detector, noise_scores, roc_curve,
    tpr_at_fpr,
)
from pyvlmx.detect.matrix import matrix_markdown, run_matrix  # noqa: F401
from pyvlmx.detect.plots import plot_matrix, plot_roc  # noqa: F401
