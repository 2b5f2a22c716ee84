"""Noisy copies of an image: the one generator used by noise statistics, detection and EOT.

``x + sigma * eps`` with ``eps ~ N(0, I)`` (``kind="gaussian"``) or
``x + u`` with ``u ~ U(-sigma, sigma)`` per pixel (``kind="uniform"``),
optionally clamped to the [0, 1] pixel box.

Reproducibility: :func:`noisy_copies` draws copy ``j`` as the ``j``-th draw of
one generator seeded with ``seed``, one copy per draw, and only then groups
copies into chunks, so copy ``j`` is the same tensor whatever ``chunk`` is
(and for the first ``m`` copies, whatever ``n >= m`` is).  On CPU, for images
whose pixel count ``3 H W`` is a multiple of 16 (every size the models use),
this is also bit-identical to one ``torch.randn((n, 3, H, W), generator=g)``
call, which is what the noise and detection loops drew before this module.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

KINDS = ("gaussian", "uniform")


def _check(sigma: float, kind: str) -> float:
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; known kinds: {list(KINDS)}")
    sigma = float(sigma)
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    return sigma


def _fill(out: torch.Tensor, sigma: float, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Fill ``out`` in place with noise of scale ``sigma`` (one draw of the generator)."""
    if kind == "gaussian":
        return out.normal_(0.0, 1.0, generator=generator).mul_(sigma)
    return out.uniform_(-sigma, sigma, generator=generator)


def draw_noise(shape: Sequence[int], sigma: float, *, kind: str = "gaussian",
               generator: torch.Generator | None = None, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel noise of scale ``sigma``: ``sigma * N(0, 1)`` or ``U(-sigma, sigma)``.

    Args:
        shape: the noise's shape, e.g. (B, 3, H, W).
        sigma: standard deviation (gaussian) or half-width (uniform), in pixel
            units (1/255 = one grey level); 0 gives zeros.
        kind: ``"gaussian"`` or ``"uniform"``.
        generator: random generator (on ``device``); the global one if None.
        device: where the noise is made (default: the generator's device, else CPU).
        dtype: floating dtype.

    Returns:
        Tensor of ``shape``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> e = draw_noise((4, 3, 8, 8), 0.5, kind="uniform", generator=g)
        >>> tuple(e.shape), bool(e.abs().max() <= 0.5)
        ((4, 3, 8, 8), True)
    """
    sigma = _check(sigma, kind)
    if device is None:
        device = generator.device if generator is not None else "cpu"
    out = torch.empty(tuple(shape), device=device, dtype=dtype)
    return _fill(out, sigma, kind, generator)


def noisy_copies(x: torch.Tensor, sigma: float, n: int, *, seed: int | torch.Generator,
                 kind: str = "gaussian", clamp: bool = True, chunk: int = 64,
                 device: torch.device | str | None = None) -> Iterator[torch.Tensor]:
    """``n`` noisy copies of one image, in chunks of at most ``chunk``.

    Copy ``j`` is ``x + noise_j`` with ``noise_j`` the ``j``-th draw of a
    generator seeded with ``seed`` (see the module doc): the copies do not
    depend on ``chunk``.

    Args:
        x: (3, H, W) float image (in [0, 1] when ``clamp``).
        sigma: noise scale (see :func:`draw_noise`).
        n: number of copies (>= 0).
        seed: an int seeds a fresh generator on ``device``; a
            ``torch.Generator`` is drawn from as it is (for callers that run
            one stream over several images).
        kind: ``"gaussian"`` or ``"uniform"``.
        clamp: clamp the noisy pixels to [0, 1].
        chunk: copies per yielded tensor (>= 1).
        device: where the copies are made (default ``x.device``).

    Yields:
        (c, 3, H, W) tensors of ``x``'s dtype, ``c <= chunk``, ``n`` copies in all.

    Example:
        >>> x = torch.full((3, 8, 8), 0.5)
        >>> a = torch.cat(list(noisy_copies(x, 0.1, 10, seed=0, chunk=3)))
        >>> b = torch.cat(list(noisy_copies(x, 0.1, 10, seed=0, chunk=64)))
        >>> tuple(a.shape), torch.equal(a, b)
        ((10, 3, 8, 8), True)
    """
    sigma = _check(sigma, kind)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"noisy_copies: expected a float image of shape (3, H, W), got {got}")
    if n < 0:
        raise ValueError(f"noisy_copies: n must be >= 0, got {n}")
    if chunk < 1:
        raise ValueError(f"noisy_copies: chunk must be >= 1, got {chunk}")
    device = torch.device(device) if device is not None else x.device
    x = x.to(device)
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator(device=device).manual_seed(int(seed))
    for start in range(0, n, chunk):
        c = min(chunk, n - start)
        noise = torch.empty((c, *x.shape), device=device, dtype=x.dtype)
        for j in range(c):
            _fill(noise[j], sigma, kind, gen)
        out = x + noise
        yield out.clamp_(0.0, 1.0) if clamp else out
