"""The precision an attack searches in, and the fp32 forward that certifies its results.

An attack may search in a cheaper precision than the one its results are
reported in:

    fp32   the encoder in float32 (no autocast; TF32 off on CUDA)
    tf32   float32 tensors, TF32 tensor-core matmuls and convolutions (CUDA, compute capability >= 8.0)
    bf16   the encoder under bfloat16 autocast (CUDA; CPUs with AMX or AVX-512 BF16)
    auto   bf16 on CUDA devices that support it (else tf32 from compute capability 8.0, else fp32);
           fp32 on the CPU

Whatever the search precision, every reported success, cosine, prediction,
PSNR and SSIM comes from an fp32 forward of the saved 8-bit image
(:meth:`Precision.certify`), so a record means the same thing whichever
precision found it.

Why ``auto`` is fp32 on the CPU: on this project's CPU (AMD EPYC, AVX2, no
AVX-512 BF16), one forward+backward of the default model at batch 16 took
4.3x longer under bf16 autocast than in fp32 (236 against 54 ms a sample,
``benchmarks/bench_sweep.py`` measures it each run); bf16 pays on CPUs whose
flags show ``amx_bf16`` or ``avx512_bf16``, where it is asked for explicitly.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16")
#: rows per forward with fixed shapes on the CPU, where a row costs the same at any batch size
#: (on CUDA the block is the slot count: one shape for every step, what CUDA graphs need)
CPU_BLOCK = 4


@functools.lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's bf16 instruction-set flags (Linux ``/proc/cpuinfo``): e.g. ``("amx_bf16", "avx512_bf16")``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return tuple(sorted(f for f in ("amx_bf16", "avx512_bf16") if f in flags))
    return ()


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The concrete precision (``fp32``, ``tf32`` or ``bf16``) for ``precision`` on ``device``.

    Raises ValueError when the device cannot run it, naming the device.

    Example:
        >>> resolve_precision("auto", "cpu")
        'fp32'
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if device.type == "cuda":
        major = torch.cuda.get_device_capability(device)[0]
        if precision == "auto":
            return "bf16" if torch.cuda.is_bf16_supported() else ("tf32" if major >= 8 else "fp32")
        if precision == "tf32" and major < 8:
            raise ValueError(f"precision 'tf32' needs compute capability >= 8.0, {device} has {major}.x")
        if precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision 'bf16' is not supported on {device}")
        return precision
    if precision == "auto":
        return "fp32"
    if precision == "tf32":
        raise ValueError(f"precision 'tf32' is a CUDA tensor-core mode; the images are on {device} "
                         f"(use fp32 or bf16)")
    if precision == "bf16" and device.type != "cpu":
        raise ValueError(f"precision 'bf16' runs on CUDA or the CPU, got {device}")
    return precision


def encode_blocks(encode: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, block: int) -> torch.Tensor:
    """``encode(x)`` computed in forwards of exactly ``block`` rows (the last one padded with zeros).

    The encoder's rows do not interact, but float rounding in its matmuls
    depends on the batch shape; at one shape a row's embedding is the same
    bit for bit whatever the other rows hold.  Differentiable (the padding
    rows get no gradient).
    """
    n = x.shape[0]
    if n == 0 or n == block:
        return encode(x)
    outs = []
    for i in range(0, n, block):
        part = x[i:i + block]
        if part.shape[0] < block:
            part = torch.cat([part, part.new_zeros((block - part.shape[0], *part.shape[1:]))])
        outs.append(encode(part))
    return torch.cat(outs)[:n]


class Precision:
    """The search forward and the certifying fp32 forward of one encoder.

    Args:
        encode: ``(B, 3, H, W) -> (B, D)`` float32 encoder.
        precision: a concrete precision (:func:`resolve_precision`).
        device: where the images are.
        search_encode: the encoder the search runs (default ``encode``);
            results are certified with ``encode``.
        block: run every forward in blocks of exactly this many rows
            (:func:`encode_blocks`), so a sample's numbers do not depend on
            how many samples share its batch; None: as given.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], precision: str, device,
                 search_encode: Callable[[torch.Tensor], torch.Tensor] | None = None, block: int | None = None):
        self.encode = encode
        self.name = precision
        self.device = torch.device(device)
        self.search_encode = search_encode if search_encode is not None else encode
        self.block = block

    @property
    def exact(self) -> bool:
        """True when the search itself is the certifying forward (fp32, same encoder)."""
        return self.name == "fp32" and self.search_encode is self.encode

    def _context(self):
        if self.name == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.name == "tf32":
            return _allow_tf32(True)
        return contextlib.nullcontext()

    def _blocks(self, fn, x):
        return fn(x) if self.block is None else encode_blocks(fn, x, self.block)

    def search(self, x: torch.Tensor) -> torch.Tensor:
        """The search's embeddings of ``x`` (float32 out, whatever the precision inside)."""
        with self._context():
            return self._blocks(self.search_encode, x).float()

    def certify(self, x: torch.Tensor) -> torch.Tensor:
        """The fp32 embeddings every reported figure comes from (no autocast, TF32 off)."""
        with _fp32():
            return self._blocks(self.encode, x)


@contextlib.contextmanager
def _allow_tf32(flag: bool):
    """TF32 matmuls and convolutions on (or off) inside the block, the previous settings restored after."""
    m, c = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = flag
    torch.backends.cudnn.allow_tf32 = flag
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = m, c


@contextlib.contextmanager
def _fp32():
    with _allow_tf32(False), torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield
