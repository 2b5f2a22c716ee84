"""pyvlmx: systematic evaluation of vision-language models.

Zero-shot accuracy, embedding alignment (Salman et al., arXiv 2402.08473),
Gaussian-noise statistics against the linearisation, Jacobian spectra and
noise-based detection, on any model behind one interface.
"""

from pyvlmx._ext import build_info, has_ops, warn_if_unusable

__version__ = "0.1.0"

warn_if_unusable()

__all__ = ["__version__", "build_info", "has_ops"]
