"""Loading of the compiled core ``pyvlmx._C``.

Every compiled op is registered with the torch dispatcher under the
``pyvlmx`` namespace (``torch.ops.pyvlmx.<op>``).  When the extension is
missing (not built, or built for another torch), pyvlmx keeps working on the
pure-torch twins in :mod:`pyvlmx._reference` and says so once.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache

import torch

REBUILD_HINT = "pip install --no-build-isolation --no-deps -e ."

_LOAD_ERROR: str | None = None
_LOADED = False

try:  # pragma: no branch - which side runs depends on the install
    from pyvlmx import _C  # noqa: F401  (import runs the op registrations)

    _LOADED = True
except (ImportError, OSError) as exc:  # missing .so, or ABI mismatch with torch
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_ops() -> bool:
    """True when ``pyvlmx._C`` loaded and its ops are registered."""
    return _LOADED


def load_error() -> str | None:
    """Why the compiled extension did not load, or None."""
    return _LOAD_ERROR


def require_ops(what: str = "this operation") -> None:
    """Raise a RuntimeError that says how to build the extension."""
    if not _LOADED:
        raise RuntimeError(
            f"{what} needs the compiled extension pyvlmx._C, which did not load "
            f"({_LOAD_ERROR}). Rebuild it from the source tree with: {REBUILD_HINT}")


@lru_cache(maxsize=1)
def build_info() -> dict:
    """How ``pyvlmx._C`` was built.

    Returns:
        dict with ``with_cuda`` (bool), ``cuda_version`` (torch's CUDA version
        at build time or None), ``cuda_runtime`` (CUDART_VERSION compiled in or
        None), ``torch_version`` (torch the extension was built against),
        ``compiler``, ``openmp``; plus ``loaded`` (bool) and ``error``.
    """
    if not _LOADED:
        return {"loaded": False, "error": _LOAD_ERROR, "with_cuda": False,
                "cuda_version": None, "cuda_runtime": None, "torch_version": None}
    info = json.loads(torch.ops.pyvlmx.build_info())
    info["loaded"] = True
    info["error"] = None
    return info


def _base_version(v: str | None) -> str | None:
    return None if v is None else v.split("+")[0]


_WARNED = False


def warn_if_unusable() -> None:
    """Warn once: extension missing, or built against another torch."""
    global _WARNED
    if _WARNED or os.environ.get("PYVLMX_QUIET_EXT") == "1":
        return
    _WARNED = True
    if not _LOADED:
        warnings.warn(
            f"pyvlmx: compiled extension pyvlmx._C not loaded ({_LOAD_ERROR}); using the "
            f"pure-torch reference ops, which are slower. Build it with: {REBUILD_HINT}",
            RuntimeWarning, stacklevel=3)
        return
    built = build_info().get("torch_version")
    if _base_version(built) != _base_version(torch.__version__):
        warnings.warn(
            f"pyvlmx: pyvlmx._C was built against torch {built} but torch "
            f"{torch.__version__} is running; rebuild with: {REBUILD_HINT}",
            RuntimeWarning, stacklevel=3)
