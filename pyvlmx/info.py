"""The environment a run happens in (versions, build, devices) and the ``auto`` device.

Used by ``pyvlmx info``, by the study's ``study.json`` and by the run metadata
of ``pyvlmx transfer``, so each records the same facts.

Example:
    >>> resolve_device("cpu")
    'cpu'
    >>> resolve_device("auto") in ("cpu", "cuda")
    True
"""

from __future__ import annotations

import platform

# The one default of every command's --device.
DEFAULT_DEVICE = "auto"


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or None) -> ``"cuda"`` when torch sees a CUDA device, else ``"cpu"``; others as given.

    Raises:
        ValueError: ``cuda...`` asked for where torch sees no CUDA device.
    """
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} requested but torch sees no CUDA device; use --device cpu "
                         f"(or auto)")
    return str(device)


def environment() -> dict:
    """Versions, build information and devices, as one JSON-able dict."""
    import torch

    import pyvlmx
    from pyvlmx._ext import build_info

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    versions = {"pyvlmx": pyvlmx.__version__, "python": platform.python_version(),
                "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for mod in ("torchvision", "open_clip", "numpy", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    return {"versions": versions, "build": build_info(), "devices": devices,
            "platform": platform.platform(), "cpu_threads": torch.get_num_threads()}
