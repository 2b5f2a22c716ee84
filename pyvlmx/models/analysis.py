"""Running a model for analysis: forward mode, double backward and noisy inputs.

The Jacobian operator (forward mode, reverse-over-reverse), the noise
statistics and detection (inputs outside [0, 1]) and the attacks all run the
model inside :func:`analysis_mode`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def analysis_mode(model: torch.nn.Module | None = None) -> Iterator[None]:
    """Run a model so that forward mode and double backward work.

    Turns off ``torch.backends.mha`` fast paths, forces the math
    scaled-dot-product-attention backend, and sets ``model.check_inputs``
    False; restores all three on exit.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel` (or None:
            only the attention settings change).

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> with analysis_mode(m):
        ...     inside = m.check_inputs, torch.backends.mha.get_fastpath_enabled()
        >>> inside, m.check_inputs
        ((False, False), True)
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    had_check = model is not None and hasattr(model, "check_inputs")
    check = getattr(model, "check_inputs", None) if had_check else None
    torch.backends.mha.set_fastpath_enabled(False)
    if had_check:
        model.check_inputs = False
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if had_check:
            model.check_inputs = check
