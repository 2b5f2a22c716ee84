"""Jacobian of the image embedding: operator (fused attention JVPs), exact / randomized / Krylov / single-pass spectra.

Example:
    >>> import torch
    >>> from pyvlmx.models import load_model
    >>> from pyvlmx.jacobian import spectrum
    >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> r = spectrum(m, torch.rand(3, 32, 32), k=8, method="randomized")
    >>> len(r["singular_values"]), r["embed_dim"], r["pixels"]
    (8, 32, 3072)
"""

from pyvlmx.jacobian.operator import (  # noqa: F401
    JVP_BACKENDS, JVP_MODES, VJP_MODES, JacobianOperator, analysis_mode, block_krylov_svd, exact_svd,
    randomized_range_svd, row_streaming_svd, single_pass_svd, streaming_svd,
)
from pyvlmx.jacobian.plots import plot_compare_spectra, plot_spectra  # noqa: F401
from pyvlmx.jacobian.spectra import (  # noqa: F401
    METHODS, compare_spectra, effective_rank, relative_error, spectrum, stable_rank,
)
