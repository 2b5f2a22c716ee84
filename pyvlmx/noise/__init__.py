"""Embedding statistics under Gaussian pixel noise vs the linear (Jacobian) theory.

Example:
    >>> import torch
    >>> from pyvlmx.models import load_model
    >>> from pyvlmx.noise import noise_statistics
    >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> r = noise_statistics(m, x, [1e-3], n=256)
    >>> r["per_sigma"][0]["holds"]      # one thousandth of the pixel range: linear
    True
"""

from pyvlmx.noise.plots import plot_accuracy, plot_discrepancy, plot_qq  # noqa: F401
from pyvlmx.noise.statistics import (  # noqa: F401
    accuracy_under_noise, anderson_darling, mardia, noise_statistics,
)
