"""Pure-torch twins of every compiled op in ``pyvlmx._C``.

Each function here computes exactly what the op of the same name in
``torch.ops.pyvlmx`` computes, written with plain (differentiable) torch
operations.  They serve two purposes:

* the fallback when the compiled extension is missing (``pyvlmx.ops`` warns
  once and dispatches here);
* the oracle that the tests compare the C++ and CUDA kernels against.

The functions take the same arguments as the ops (tensors for per-sample
scalars, strings for modes) and do the same validation, so that a test can
call either with identical inputs.  Speed is not a goal here; clarity is.

Reference: Salman et al., "Intriguing Differences Between Zero-Shot and
Systematic Evaluations of Vision-Language Transformer Models",
arXiv 2402.08473 (the alignment attack, noise statistics and spectra that
these ops serve).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "STEP_MODES", "NORM_MODES", "SKETCH_KINDS",
    "projected_step", "psnr", "ssim", "gaussian_window",
    "moments_update", "moments_merge",
    "philox4x32", "omega", "sketch", "sketch_t", "sketch_backward",
    "check_attention_jvp", "attention_jvp",
]

STEP_MODES = ("raw", "sign", "l2")
NORM_MODES = ("linf", "l2", "none")
SKETCH_KINDS = ("gaussian", "rademacher")

# SSIM constants (Wang et al. 2004; scikit-image defaults for gaussian_weights=True).
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5          # int(3.5 * 1.5 + 0.5), scipy.ndimage's truncate=3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# ----------------------------------------------------------------------------
# shared validation
# ----------------------------------------------------------------------------

def _check_float(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def _check_same(op: str, name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{op}: {name_a} and {name_b} must have the same shape, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"{op}: {name_a} and {name_b} must have the same dtype, "
                        f"got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"{op}: {name_a} and {name_b} must be on the same device, "
                         f"got {a.device} and {b.device}")


def _check_per_sample(op: str, name: str, v: torch.Tensor, batch: int, device) -> None:
    _check_float(op, name, v)
    if v.dim() != 1 or v.shape[0] != batch:
        raise ValueError(f"{op}: {name} must have shape ({batch},) (one value per sample), "
                         f"got {tuple(v.shape)}")
    if v.device != device and v.device.type != "cpu":
        raise ValueError(f"{op}: {name} must be on the CPU or on the device of x ({device}), "
                         f"got {v.device}")
    if v.numel() and bool((v < 0).any()):
        raise ValueError(f"{op}: {name} must be >= 0, got min {float(v.min())}")


# ----------------------------------------------------------------------------
# 1. projected step
# ----------------------------------------------------------------------------

def projected_step(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor,
                   step_size: torch.Tensor, eps: torch.Tensor,
                   step: str = "sign", norm: str = "linf", return_dist: bool = False):
    """One projected (sign-)gradient step; twin of ``torch.ops.pyvlmx.projected_step``.

    Math, per sample b (all sums over the sample's elements)::

        d     = sign(g) | g | g / ||g||_2        (step = sign | raw | l2; d = 0 if g = 0)
        z     = x + a_b d - x0
        z     = clamp(z, -e_b, e_b)              (norm = linf)
        z     = z * min(1, e_b / ||z||_2)        (norm = l2)
        x_new = clamp(x0 + z, 0, 1)

    Clamping to the box after the ball keeps the point inside the ball when
    x0 lies in [0, 1]: every coordinate moves towards x0.

    Args:
        x, x0, grad: (B, ...) floating tensors of one shape, dtype and device.
        step_size, eps: (B,) tensors, >= 0.
        step: "raw", "sign" or "l2".  norm: "linf", "l2" or "none".
        return_dist: also return per-sample L-inf and L2 distances of x_new to x0.

    Returns:
        (x_new, linf, l2); linf and l2 have shape (B,) when return_dist, else (0,).
    """
    op = "projected_step"
    _check_float(op, "x", x)
    _check_same(op, "x", x, "x0", x0)
    _check_same(op, "x", x, "grad", grad)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have a batch dimension, got shape {tuple(x.shape)}")
    if step not in STEP_MODES:
        raise ValueError(f"{op}: step must be one of {STEP_MODES}, got {step!r}")
    if norm not in NORM_MODES:
        raise ValueError(f"{op}: norm must be one of {NORM_MODES}, got {norm!r}")
    B = x.shape[0]
    n = math.prod(x.shape[1:])
    _check_per_sample(op, "step_size", step_size, B, x.device)
    _check_per_sample(op, "eps", eps, B, x.device)

    shape = (B,) + (1,) * (x.dim() - 1)
    a = step_size.to(device=x.device, dtype=x.dtype).reshape(shape)
    e = eps.to(device=x.device, dtype=x.dtype).reshape(shape)
    if step == "sign":
        d = grad.sign()
    elif step == "raw":
        d = grad
    else:
        gn = grad.reshape(B, n).norm(dim=1).reshape(shape)
        d = torch.where(gn > 0, grad / torch.where(gn > 0, gn, torch.ones_like(gn)),
                        torch.zeros_like(grad))
    z = x + a * d - x0
    if norm == "linf":
        z = torch.minimum(torch.maximum(z, -e), e)
    elif norm == "l2":
        zn = z.reshape(B, n).norm(dim=1).reshape(shape)
        factor = torch.where(zn > e, e / torch.where(zn > 0, zn, torch.ones_like(zn)),
                             torch.ones_like(zn))
        z = z * factor
    out = (x0 + z).clamp(0.0, 1.0)
    if return_dist:
        diff = (out - x0).reshape(B, n)
        if n == 0:
            zero = out.new_zeros(B)
            return out, zero, zero.clone()
        return out, diff.abs().amax(dim=1), diff.norm(dim=1)
    empty = out.new_empty(0)
    return out, empty, empty.clone()


# ----------------------------------------------------------------------------
# 2. image quality
# ----------------------------------------------------------------------------

def _check_images(op: str, a: torch.Tensor, b: torch.Tensor, data_range: float) -> None:
    _check_float(op, "a", a)
    _check_same(op, "a", a, "b", b)
    if a.dim() != 4:
        raise ValueError(f"{op}: a must have shape (B, C, H, W), got {tuple(a.shape)}")
    if not data_range > 0:
        raise ValueError(f"{op}: data_range must be > 0, got {data_range}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(R^2 / mse); +inf when a == b.

    Args:
        a, b: (B, C, H, W) images in [0, data_range].
        data_range: R, the span of pixel values.

    Returns:
        (B,) tensor, same dtype as a.  Matches
        ``skimage.metrics.peak_signal_noise_ratio(b_i, a_i, data_range=R)``.
    """
    _check_images("psnr", a, b, data_range)
    mse = (a - b).pow(2).reshape(a.shape[0], math.prod(a.shape[1:])).mean(dim=1)
    return 10.0 * torch.log10(data_range * data_range / mse)


def gaussian_window(dtype=torch.float64, device=None, sigma: float = SSIM_SIGMA,
                    radius: int = SSIM_RADIUS) -> torch.Tensor:
    """The normalised 11-tap Gaussian of scipy.ndimage.gaussian_filter (sigma 1.5)."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * x * x / (sigma * sigma))
    return (w / w.sum()).to(dtype=dtype, device=device)


def _valid_filter(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' correlation of (P, H, W) planes with window w."""
    k = w.numel()
    p = t.unsqueeze(1)
    p = torch.nn.functional.conv2d(p, w.reshape(1, 1, 1, k))
    p = torch.nn.functional.conv2d(p, w.reshape(1, 1, k, 1))
    return p.squeeze(1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image (Gaussian window, sigma 1.5, 11 taps).

    Matches ``skimage.metrics.structural_similarity(a_i, b_i, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=R, channel_axis=0)``:
    the SSIM map is averaged over the valid region, i.e. the image minus a
    border of 5 pixels, where scikit-image's 'reflect' padding never enters,
    so only valid correlations are computed.  H and W must be >= 11.

    Args:
        a, b: (B, C, H, W) images in [0, data_range].

    Returns:
        (B,) tensor; 1 for identical images.
    """
    _check_images("ssim", a, b, data_range)
    B, C, H, W = a.shape
    k = 2 * SSIM_RADIUS + 1
    if H < k or W < k:
        raise ValueError(f"ssim: images must be at least {k}x{k}, got {H}x{W}")
    if B == 0 or C == 0:
        return a.new_zeros(B)
    w = gaussian_window(a.dtype, a.device)
    x = a.reshape(B * C, H, W)
    y = b.reshape(B * C, H, W)
    ux, uy = _valid_filter(x, w), _valid_filter(y, w)
    uxx, uyy, uxy = _valid_filter(x * x, w), _valid_filter(y * y, w), _valid_filter(x * y, w)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    a1 = 2 * ux * uy + c1
    a2 = 2 * (uxy - ux * uy) + c2
    b1 = ux * ux + uy * uy + c1
    b2 = (uxx - ux * ux) + (uyy - uy * uy) + c2
    s = (a1 * a2) / (b1 * b2)
    return s.reshape(B, -1).mean(dim=1)


# ----------------------------------------------------------------------------
# 3. streaming moments
# ----------------------------------------------------------------------------

def _check_state(op: str, mean: torch.Tensor, comoment: torch.Tensor, count: int,
                 suffix: str = "") -> None:
    _check_float(op, "mean" + suffix, mean)
    if mean.dim() != 1:
        raise ValueError(f"{op}: mean{suffix} must have shape (D,), got {tuple(mean.shape)}")
    D = mean.shape[0]
    if comoment.shape != (D, D):
        raise ValueError(f"{op}: comoment{suffix} must have shape ({D}, {D}), "
                         f"got {tuple(comoment.shape)}")
    if comoment.dtype != mean.dtype or comoment.device != mean.device:
        raise TypeError(f"{op}: comoment{suffix} must match mean{suffix} in dtype and device, "
                        f"got {comoment.dtype}/{comoment.device} and {mean.dtype}/{mean.device}")
    if count < 0:
        raise ValueError(f"{op}: count{suffix} must be >= 0, got {count}")


def moments_merge(mean_a: torch.Tensor, comoment_a: torch.Tensor, count_a: int,
                  mean_b: torch.Tensor, comoment_b: torch.Tensor, count_b: int):
    """Chan et al.'s parallel merge of two (count, mean, co-moment) states.

    With n = n_a + n_b and delta = mean_b - mean_a::

        mean = mean_a + delta n_b / n
        M    = M_a + M_b + delta delta^T n_a n_b / n

    Returns:
        (mean (D,), comoment (D, D)); count is n_a + n_b.
    """
    op = "moments_merge"
    _check_state(op, mean_a, comoment_a, count_a, "_a")
    _check_state(op, mean_b, comoment_b, count_b, "_b")
    if mean_a.shape != mean_b.shape or mean_a.dtype != mean_b.dtype:
        raise ValueError(f"{op}: states must have the same D and dtype, got "
                         f"{tuple(mean_a.shape)}/{mean_a.dtype} and {tuple(mean_b.shape)}/{mean_b.dtype}")
    n = count_a + count_b
    if count_b == 0:
        return mean_a.clone(), comoment_a.clone()
    if count_a == 0:
        return mean_b.clone(), comoment_b.clone()
    delta = mean_b - mean_a
    mean = mean_a + delta * (count_b / n)
    com = comoment_a + comoment_b + torch.outer(delta, delta) * (count_a * count_b / n)
    return mean, com


def moments_update(x: torch.Tensor, mean: torch.Tensor, comoment: torch.Tensor, count: int):
    """Fold a batch x (N, D) into the state (count, mean, comoment).

    The batch's own mean m_b and co-moment (x - m_b)^T (x - m_b) are computed
    in the state's dtype and merged with :func:`moments_merge`.

    Returns:
        (mean (D,), comoment (D, D)); the new count is count + N.
    """
    op = "moments_update"
    _check_state(op, mean, comoment, count)
    _check_float(op, "x", x)
    if x.dim() != 2 or x.shape[1] != mean.shape[0]:
        raise ValueError(f"{op}: x must have shape (N, {mean.shape[0]}), got {tuple(x.shape)}")
    if x.device != mean.device:
        raise ValueError(f"{op}: x and mean must be on the same device, got {x.device} and {mean.device}")
    N = x.shape[0]
    if N == 0:
        return mean.clone(), comoment.clone()
    xs = x.to(mean.dtype)
    mb = xs.mean(dim=0)
    xc = xs - mb
    mcom = xc.T @ xc
    return moments_merge(mean, comoment, count, mb, mcom, N)


# ----------------------------------------------------------------------------
# 4. Philox4x32-10 and random sketches
# ----------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor):
    """hi and lo 32 bits of a * b for a < 2^32 (python int) and int64 b < 2^32.

    Split so that no intermediate reaches 2^63 (int64 overflow is avoided,
    not relied upon).
    """
    bl = b & 0xFFFF
    bh = b >> 16
    t1 = bl * a                       # < 2^48
    t2 = bh * a                       # < 2^48
    mid = t1 + ((t2 & 0xFFFF) << 16)  # < 2^49
    lo = mid & _MASK32
    hi = (t2 >> 16) + (mid >> 32)
    return hi & _MASK32, lo


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 (Salmon et al., SC'11) on int64 tensors holding uint32 values.

    Returns the four output words as int64 tensors in [0, 2^32).
    """
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


# Constants shared bit-for-bit with csrc/common/philox.h.
_SQRT_HALF = 0.70710678118654752440
_LN2_HI = 6.93147180369123816490e-01   # upper bits of ln 2 (fdlibm)
_LN2_LO = 1.90821492927058770002e-10
_HALF_PI = 1.57079632679489661923
_LOG_COEF = [1.0 / (2 * k + 1) for k in range(1, 12)]         # 1/3 .. 1/23
_SIN_COEF = [(-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 10)]
_COS_COEF = [(-1.0) ** k / math.factorial(2 * k) for k in range(1, 10)]
_TWO_M32 = 2.0 ** -32


def _log_unit(u: torch.Tensor) -> torch.Tensor:
    """ln(u) for u in (0, 1], float64, with only +, -, *, / (same sequence as C++)."""
    m, e = torch.frexp(u)                       # u = m 2^e, m in [0.5, 1)
    small = m < _SQRT_HALF
    m = torch.where(small, m * 2.0, m)
    e = torch.where(small, e - 1, e).to(torch.float64)
    f = m - 1.0
    s = f / (f + 2.0)
    s2 = s * s
    p = torch.full_like(s, _LOG_COEF[-1])
    for c in reversed(_LOG_COEF[:-1]):
        p = p * s2 + c
    logm = (s + s) + (s + s) * (s2 * p)
    return e * _LN2_HI + (e * _LN2_LO + logm)


def _sincos_turns(t: torch.Tensor):
    """(cos 2 pi t, sin 2 pi t) for t in [0, 1), float64, same sequence as C++."""
    q4 = t * 4.0
    q = torch.floor(q4)
    f = q4 - q
    up = f > 0.5
    f = torch.where(up, f - 1.0, f)
    q = torch.where(up, q + 1.0, q)
    r = f * _HALF_PI
    r2 = r * r
    ps = torch.full_like(r, _SIN_COEF[-1])
    for c in reversed(_SIN_COEF[:-1]):
        ps = ps * r2 + c
    s = r + r * (r2 * ps)
    pc = torch.full_like(r, _COS_COEF[-1])
    for c in reversed(_COS_COEF[:-1]):
        pc = pc * r2 + c
    cth = 1.0 + r2 * pc
    qi = q.to(torch.int64) & 3
    cos = torch.where(qi == 0, cth, torch.where(qi == 1, -s, torch.where(qi == 2, -cth, s)))
    sin = torch.where(qi == 0, s, torch.where(qi == 1, cth, torch.where(qi == 2, -s, -cth)))
    return cos, sin


def _sqrt_rn(t: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float64 square root (IEEE 754), as the kernels use.

    torch.sqrt on CPU may be one ulp off for float64 (it is not guaranteed to
    round correctly), which would break the bit-for-bit agreement with the
    kernels; numpy's sqrt is the hardware instruction, correctly rounded.
    """
    import numpy as np

    return torch.from_numpy(np.sqrt(t.detach().cpu().numpy())).to(t.device)


def _split_seed(seed: int):
    if not isinstance(seed, int):
        raise TypeError(f"omega: seed must be an int, got {type(seed).__name__}")
    s = seed & 0xFFFFFFFFFFFFFFFF
    return s & _MASK32, s >> 32


def omega(n: int, r: int, seed: int, kind: str = "gaussian", row_offset: int = 0,
          dtype=torch.float64, device=None) -> torch.Tensor:
    """Rows [row_offset, row_offset + n) of the random matrix Omega (.. x r).

    Entry (i, j) depends on (seed, i, j) only, so any block of rows is the
    same block of the same infinite matrix, on CPU and CUDA alike.

    * kind="gaussian": counter (j // 4, i) through Philox4x32-10 keyed by the
      64-bit seed gives words w0..w3; entry j uses the pair (w_{2p}, w_{2p+1}),
      p = (j % 4) // 2, as u1 = (w + 0.5) 2^-32, u2 = w 2^-32 and Box-Muller:
      sqrt(-2 ln u1) cos(2 pi u2) for even j, ... sin(2 pi u2) for odd j.
      ln, cos and sin are evaluated with a fixed sequence of IEEE +, -, *, /
      and sqrt (no libm), so the bits agree everywhere.  Computed in float64,
      then rounded to dtype (float -> half/bfloat16 through float32).
    * kind="rademacher": counter (j // 128, i); entry j is +1 if bit j % 128
      of the 128 output bits is set, else -1.

    Returns:
        (n, r) tensor of dtype on device.
    """
    if kind not in SKETCH_KINDS:
        raise ValueError(f"omega: kind must be one of {SKETCH_KINDS}, got {kind!r}")
    if n < 0 or r < 0 or row_offset < 0:
        raise ValueError(f"omega: n, r and row_offset must be >= 0, got n={n}, r={r}, "
                         f"row_offset={row_offset}")
    k0, k1 = _split_seed(seed)
    rows = torch.arange(row_offset, row_offset + n, dtype=torch.int64, device=device)[:, None]
    cols = torch.arange(r, dtype=torch.int64, device=device)[None, :]
    rows, cols = torch.broadcast_tensors(rows, cols)
    group = cols // (4 if kind == "gaussian" else 128)
    words = philox4x32(group & _MASK32, group >> 32, rows & _MASK32, rows >> 32, k0, k1)
    if kind == "gaussian":
        p = (cols % 4) // 2
        wa = torch.where(p == 0, words[0], words[2]).to(torch.float64)
        wb = torch.where(p == 0, words[1], words[3]).to(torch.float64)
        u1 = (wa + 0.5) * _TWO_M32
        u2 = wb * _TWO_M32
        rad = _sqrt_rn(_log_unit(u1) * -2.0)
        cos, sin = _sincos_turns(u2)
        val = torch.where(cols % 2 == 0, rad * cos, rad * sin)
    else:
        bit = cols % 128
        wi = bit // 32
        w = torch.where(wi == 0, words[0], torch.where(wi == 1, words[1],
                        torch.where(wi == 2, words[2], words[3])))
        val = torch.where(((w >> (bit % 32)) & 1) == 1, 1.0, -1.0).to(torch.float64)
    if dtype in (torch.float16, torch.bfloat16):
        return val.to(torch.float32).to(dtype)
    return val.to(dtype)


def _check_sketch(op: str, A: torch.Tensor, r: int, kind: str, row_offset: int) -> None:
    _check_float(op, "A", A)
    if A.dim() != 2:
        raise ValueError(f"{op}: A must be a matrix (2-D), got shape {tuple(A.shape)}")
    if r < 0:
        raise ValueError(f"{op}: r must be >= 0, got {r}")
    if row_offset < 0:
        raise ValueError(f"{op}: row_offset must be >= 0, got {row_offset}")
    if kind not in SKETCH_KINDS:
        raise ValueError(f"{op}: kind must be one of {SKETCH_KINDS}, got {kind!r}")


def sketch(A: torch.Tensor, r: int, seed: int, kind: str = "gaussian",
           row_offset: int = 0) -> torch.Tensor:
    """A @ Omega[row_offset : row_offset + n] for A (m, n); returns (m, r)."""
    _check_sketch("sketch", A, r, kind, row_offset)
    om = omega(A.shape[1], r, seed, kind, row_offset, dtype=A.dtype, device=A.device)
    return A @ om


def sketch_t(A: torch.Tensor, r: int, seed: int, kind: str = "gaussian",
             row_offset: int = 0) -> torch.Tensor:
    """Omega[row_offset : row_offset + m]^T @ A for A (m, n); returns (r, n)."""
    _check_sketch("sketch_t", A, r, kind, row_offset)
    om = omega(A.shape[0], r, seed, kind, row_offset, dtype=A.dtype, device=A.device)
    return om.T @ A


def sketch_backward(grad: torch.Tensor, size: int, seed: int, kind: str, row_offset: int,
                    transpose: bool) -> torch.Tensor:
    """Gradient of sketch (transpose=False) or sketch_t (transpose=True) w.r.t. A.

    * sketch:   grad (m, r) -> grad @ Omega[ro : ro + size]^T, shape (m, size)
    * sketch_t: grad (r, n) -> Omega[ro : ro + size] @ grad,   shape (size, n)
    """
    r = grad.shape[1] if not transpose else grad.shape[0]
    om = omega(size, r, seed, kind, row_offset, dtype=grad.dtype, device=grad.device)
    return grad @ om.T if not transpose else om @ grad


# ----------------------------------------------------------------------------
# 5. attention JVP (many tangents, one primal)
# ----------------------------------------------------------------------------

def _shape_or_type(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def check_attention_jvp(q, k, v, tq, tk, tv, attn_mask=None, scale: float = 1.0) -> None:
    """The argument checks of ``pyvlmx::attention_jvp`` (same conditions and wording as C++)."""
    op = "attention_jvp"
    for name, t in (("q", q), ("k", k), ("v", v), ("tq", tq), ("tk", tk), ("tv", tv)):
        _check_float(op, name, t)
    for name, t, d in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("tq", tq, 5)):
        if t.dim() != d:
            raise ValueError(f"{op}: {name} must have {d} dimensions, got shape {tuple(t.shape)}")
    B, H, N, E = q.shape
    M = k.shape[2]
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != E:
        raise ValueError(f"{op}: k must have shape (B, H, M, E) = ({B}, {H}, M, {E}) to match q "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape[0] != B or v.shape[1] != H or v.shape[2] != M:
        raise ValueError(f"{op}: v must have shape (B, H, M, Ev) = ({B}, {H}, {M}, Ev) to match "
                         f"q and k, got {tuple(v.shape)}")
    if M < 1:
        raise ValueError(f"{op}: k must have at least one key (M >= 1), got shape {tuple(k.shape)}")
    if E < 1:
        raise ValueError(f"{op}: q must have head dim E >= 1, got shape {tuple(q.shape)}")
    T = tq.shape[0]
    for name, t, p, pname in (("tq", tq, q, "q"), ("tk", tk, k, "k"), ("tv", tv, v, "v")):
        if t.dim() != 5 or t.shape[0] != T or t.shape[1:] != p.shape:
            raise ValueError(f"{op}: {name} must have shape ({T}, {', '.join(map(str, p.shape))}) "
                             f"(T = tq.shape[0], {pname}.shape), got {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v), ("tq", tq), ("tk", tk), ("tv", tv)):
        _check_same_dtype_device(op, name, t, q)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale):
        raise ValueError(f"{op}: scale must be a finite float, got {scale!r}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor):
            raise TypeError(f"{op}: attn_mask must be a tensor or None, got "
                            f"{type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            raise TypeError(f"{op}: attn_mask must be bool or have q's dtype {q.dtype}, "
                            f"got {attn_mask.dtype}")
        if attn_mask.device != q.device:
            raise ValueError(f"{op}: attn_mask must be on {q.device}, got {attn_mask.device}")
        target = (B, H, N, M)
        shape = tuple(attn_mask.shape)
        if len(shape) > 4 or any(s not in (1, w) for s, w in zip(reversed(shape), reversed(target))):
            raise ValueError(f"{op}: attn_mask must be broadcastable to (B, H, N, M) = {target}, "
                             f"got shape {shape}")


def _check_same_dtype_device(op: str, name: str, t: torch.Tensor, q: torch.Tensor) -> None:
    if t.dtype != q.dtype:
        raise TypeError(f"{op}: q and {name} must have the same dtype, got {q.dtype} and {t.dtype}")
    if t.device != q.device:
        raise ValueError(f"{op}: q and {name} must be on the same device, "
                         f"got {q.device} and {t.device}")


def attention_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  tq: torch.Tensor, tk: torch.Tensor, tv: torch.Tensor,
                  attn_mask: torch.Tensor | None = None, scale: float | None = None,
                  is_causal: bool = False):
    """Attention and its JVP along T tangents; twin of ``torch.ops.pyvlmx.attention_jvp``.

    Dense formulas, one head, tangent t (see csrc/ops/attention_jvp.cpp)::

        S  = scale q k^T + mask          P = softmax(S)        O  = P v
        S' = scale (q'_t k^T + q k'_t^T)  mu = rowsum(P * S')
        O' = (P * S') v - mu O + P v'_t

    A bool mask keeps True entries; is_causal masks key j > query i (top-left,
    as torch's SDPA); a row with every key masked gives O = O' = 0.

    Args:
        q (B, H, N, E), k (B, H, M, E), v (B, H, M, Ev): primals.
        tq (T, B, H, N, E), tk (T, B, H, M, E), tv (T, B, H, M, Ev): tangents.
        attn_mask: None, bool or additive float, broadcastable to (B, H, N, M).
        scale: factor of q k^T; None means 1/sqrt(E).
        is_causal: top-left causal mask.

    Returns:
        (out (B, H, N, Ev), tout (T, B, H, N, Ev)) in q's dtype.
    """
    if scale is None and isinstance(q, torch.Tensor) and q.dim() == 4:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    check_attention_jvp(q, k, v, tq, tk, tv, attn_mask, scale)
    N, M = q.shape[2], k.shape[2]
    s = scale * (q @ k.transpose(-1, -2))
    keep = torch.ones(N, M, dtype=torch.bool, device=q.device)
    if is_causal:
        keep = keep.tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = keep & attn_mask
        else:
            s = s + attn_mask
    s = s.masked_fill(~keep, float("-inf"))
    dead = (s == float("-inf")).all(dim=-1, keepdim=True)  # rows with every key masked
    p = torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    out = p @ v
    sp = scale * (tq @ k.transpose(-1, -2) + q @ tk.transpose(-1, -2))  # (T, B, H, N, M)
    w = torch.where(s == float("-inf"), 0.0, p * sp)  # S' is zero where masked
    mu = w.sum(dim=-1, keepdim=True)
    tout = w @ v - mu * out + p @ tv
    return out, tout
