"""Public wrappers of the compiled ops of ``pyvlmx._C`` (``torch.ops.pyvlmx.*``).

Five families of inner operations of the evaluation (Salman et al.,
arXiv 2402.08473) run as compiled C++ (CPU, OpenMP-parallel) and CUDA kernels:

* :func:`projected_step` - the fused step of the embedding-alignment attack;
* :func:`psnr`, :func:`ssim` - batched image quality, SSIM differentiable;
* :class:`StreamingMoments` - running mean and covariance of embeddings;
* :func:`sketch`, :func:`sketch_t`, :func:`omega` - products with a random
  Gaussian/Rademacher matrix generated inside the kernel (never stored);
* :func:`attention_jvp` - attention and its forward-mode derivative along T
  tangents that share one primal softmax (with a vmap rule over tangents).

Every op has a pure-torch twin in :mod:`pyvlmx._reference`.  When the compiled
extension did not load, these wrappers use the twins after one warning (see
:func:`pyvlmx._ext.warn_if_unusable`).  Fake kernels (shape propagation for
FakeTensor / torch.compile) and autograd formulas are registered here.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from pyvlmx import _reference as ref
from pyvlmx._ext import has_ops, warn_if_unusable

__all__ = [
    "projected_step", "psnr", "ssim", "StreamingMoments",
    "sketch", "sketch_t", "omega", "attention_jvp", "compiled",
]

Number = Union[float, int]


def compiled(name: str) -> bool:
    """True when ``torch.ops.pyvlmx.<name>`` is registered (extension loaded)."""
    if not has_ops():
        return False
    return hasattr(torch.ops.pyvlmx, name)


def _op(name: str):
    """The compiled op, or None after the one-time warning that the twin serves."""
    if compiled(name):
        return getattr(torch.ops.pyvlmx, name)
    warn_if_unusable()
    return None


# ----------------------------------------------------------------------------
# projected step
# ----------------------------------------------------------------------------

def _per_sample(name: str, v, x: torch.Tensor) -> torch.Tensor:
    """A float or (B,) tensor as a (B,) tensor (opmath dtype).

    Floats become CPU tensors: the op checks them on the host for free and
    copies them to the device asynchronously (no synchronisation per step).
    """
    B = x.shape[0]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            v = v.reshape(1).expand(B)
        if v.dim() != 1 or v.shape[0] != B:
            raise ValueError(f"projected_step: {name} must be a float or a tensor of shape "
                             f"({B},), got shape {tuple(v.shape)}")
        if not v.is_floating_point():
            v = v.to(dtype)
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"projected_step: {name} must be a float or a (B,) tensor, "
                        f"got {type(v).__name__}")
    if not v >= 0:
        raise ValueError(f"projected_step: {name} must be >= 0, got {v}")
    return torch.full((B,), float(v), dtype=dtype)


def projected_step(x: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor,
                   step_size: Union[Number, torch.Tensor], eps: Union[Number, torch.Tensor],
                   *, step: str = "sign", norm: str = "linf", return_dist: bool = False):
    """One fused projected-gradient step: step along grad, project, clamp to [0, 1].

    Math, per sample b, with a = step_size[b], e = eps[b]::

        d     = sign(g)  (step="sign", PGD) | g  ("raw") | g / ||g||_2  ("l2"; 0 if g = 0)
        z     = x + a d - x0
        z     = clamp(z, -e, e)                 (norm="linf")
        z     = z min(1, e / ||z||_2)           (norm="l2")
        x_new = clamp(x0 + z, 0, 1)

    The compiled kernel reads x, x0 and grad once and writes x_new once; the
    L2 modes need a per-sample norm first, computed by one extra reading pass
    (see csrc/ops/projected_step.cpp).  Not differentiable (an attack update).

    Args:
        x: (B, ...) current pixels in [0, 1].
        x0: (B, ...) original pixels in [0, 1] (centre of the budget ball).
        grad: (B, ...) gradient of the objective w.r.t. x.
        step_size: float or (B,) tensor, >= 0.
        eps: float or (B,) tensor, >= 0: the budget (ignored for norm="none").
        step: "sign", "raw" or "l2".
        norm: "linf", "l2" or "none".
        return_dist: also return per-sample distances of x_new to x0.

    Returns:
        x_new (B, ...), or (x_new, linf (B,), l2 (B,)) when return_dist.

    Example:
        >>> x0 = torch.rand(2, 3, 8, 8); g = torch.randn_like(x0)
        >>> x1, linf, l2 = projected_step(x0, x0, g, 2 / 255, 8 / 255, return_dist=True)
        >>> bool((linf <= 8 / 255 + 1e-7).all())
        True
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"projected_step: x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError(f"projected_step: x must have a batch dimension, got shape {tuple(x.shape)}")
    a = _per_sample("step_size", step_size, x)
    e = _per_sample("eps", eps, x)
    op = _op("projected_step")
    fn = op if op is not None else ref.projected_step
    out, linf, l2 = fn(x, x0, grad, a, e, step, norm, return_dist)
    if return_dist:
        return out, linf, l2
    return out


# ----------------------------------------------------------------------------
# image quality
# ----------------------------------------------------------------------------

def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image: 10 log10(R^2 / mse), in dB.

    Identical images have mse = 0 and PSNR = +inf (as scikit-image reports).
    Differentiable; at mse = 0 the compiled backward returns a zero gradient.

    Args:
        a, b: (B, C, H, W) images in [0, data_range].
        data_range: R, 1.0 for pixels in [0, 1].

    Returns:
        (B,) tensor of a's dtype.

    Example:
        >>> a = torch.rand(2, 3, 16, 16)
        >>> psnr(a, a).isinf().all().item()
        True
    """
    op = _op("psnr")
    if op is None:
        return ref.psnr(a, b, float(data_range))
    return op(a, b, float(data_range))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean structural similarity per image (Wang et al. 2004), differentiable.

    Gaussian window sigma 1.5 with 11 taps, K1 = 0.01, K2 = 0.03, population
    covariances; the SSIM map is averaged over the image minus a 5-pixel
    border and over channels.  Agrees with
    ``skimage.metrics.structural_similarity(a_i, b_i, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=R, channel_axis=0)``
    to 1e-6 in float64.  Identical images give exactly 1.

    Args:
        a, b: (B, C, H, W) images in [0, data_range], H and W >= 11.
        data_range: R.

    Returns:
        (B,) tensor of a's dtype.

    Example:
        >>> a = torch.rand(2, 3, 32, 32)
        >>> ssim(a, a).tolist()
        [1.0, 1.0]
    """
    op = _op("ssim")
    if op is None:
        return ref.ssim(a, b, float(data_range))
    return op(a, b, float(data_range))


# ----------------------------------------------------------------------------
# streaming moments
# ----------------------------------------------------------------------------

class StreamingMoments:
    """Running count, mean and co-moment matrix of (N, D) samples.

    ``update`` folds in a batch (its mean and centred co-moment, then Chan's
    merge), ``merge`` joins the state of another worker.  Memory is O(D^2)
    whatever the number of samples; the result equals ``torch.cov`` on all
    the data (float64: within 1e-10 relative).

    Args:
        dim: D, the number of features.
        dtype: state dtype (float64 recommended; batches are converted).
        device: where the state lives; batches must be there too.

    Example:
        >>> m = StreamingMoments(3)
        >>> x = torch.randn(100, 3, dtype=torch.float64)
        >>> m.update(x[:40]).update(x[40:])
        StreamingMoments(dim=3, count=100, dtype=torch.float64, device=cpu)
        >>> torch.allclose(m.covariance(), torch.cov(x.T))
        True
    """

    def __init__(self, dim: int, dtype: torch.dtype = torch.float64,
                 device: Union[str, torch.device, None] = None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"StreamingMoments: dim must be a positive int, got {dim!r}")
        if not dtype.is_floating_point:
            raise TypeError(f"StreamingMoments: dtype must be floating point, got {dtype}")
        self.dim = dim
        self.count = 0
        self.mean = torch.zeros(dim, dtype=dtype, device=device)
        self.comoment = torch.zeros(dim, dim, dtype=dtype, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def __repr__(self) -> str:
        return (f"StreamingMoments(dim={self.dim}, count={self.count}, dtype={self.dtype}, "
                f"device={self.device})")

    def update(self, x: torch.Tensor) -> "StreamingMoments":
        """Fold in a batch x of shape (N, D); returns self."""
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"StreamingMoments.update: x must have shape (N, {self.dim}), got {shape}")
        op = _op("moments_update")
        fn = op if op is not None else ref.moments_update
        self.mean, self.comoment = fn(x, self.mean, self.comoment, self.count)
        self.count += x.shape[0]
        return self

    def merge(self, other: "StreamingMoments") -> "StreamingMoments":
        """Join another worker's state into this one (Chan et al.); returns self."""
        if not isinstance(other, StreamingMoments):
            raise TypeError(f"StreamingMoments.merge: other must be a StreamingMoments, "
                            f"got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"StreamingMoments.merge: other has dim {other.dim}, expected {self.dim}")
        mean_b = other.mean.to(device=self.device, dtype=self.dtype)
        com_b = other.comoment.to(device=self.device, dtype=self.dtype)
        op = _op("moments_merge")
        fn = op if op is not None else ref.moments_merge
        self.mean, self.comoment = fn(self.mean, self.comoment, self.count,
                                      mean_b, com_b, other.count)
        self.count += other.count
        return self

    def covariance(self, unbiased: bool = True) -> torch.Tensor:
        """(D, D) covariance: comoment / (count - 1) (unbiased) or / count."""
        denom = self.count - 1 if unbiased else self.count
        if denom < 1:
            raise ValueError(f"StreamingMoments.covariance: needs at least "
                             f"{2 if unbiased else 1} samples, got count={self.count}")
        return self.comoment / denom

    def state(self) -> dict:
        """A dict {count, mean, comoment} (tensors cloned) for saving or sending."""
        return {"count": int(self.count), "mean": self.mean.clone(),
                "comoment": self.comoment.clone()}

    @classmethod
    def from_state(cls, state: dict, device: Union[str, torch.device, None] = None
                   ) -> "StreamingMoments":
        """Rebuild from :meth:`state` output."""
        missing = {"count", "mean", "comoment"} - set(state)
        if missing:
            raise ValueError(f"StreamingMoments.from_state: state lacks {sorted(missing)}")
        mean = state["mean"]
        m = cls(int(mean.shape[0]), dtype=mean.dtype, device=device or mean.device)
        if tuple(state["comoment"].shape) != (m.dim, m.dim):
            raise ValueError(f"StreamingMoments.from_state: comoment must have shape "
                             f"({m.dim}, {m.dim}), got {tuple(state['comoment'].shape)}")
        m.count = int(state["count"])
        if m.count < 0:
            raise ValueError(f"StreamingMoments.from_state: count must be >= 0, got {m.count}")
        m.mean = mean.to(m.device).clone()
        m.comoment = state["comoment"].to(device=m.device, dtype=m.dtype).clone()
        return m


# ----------------------------------------------------------------------------
# random sketches
# ----------------------------------------------------------------------------

def _seed64(seed: int) -> int:
    """Any python int as the signed int64 with the same low 64 bits."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"sketch: seed must be an int, got {type(seed).__name__}")
    s = seed & 0xFFFFFFFFFFFFFFFF
    return s - (1 << 64) if s >= (1 << 63) else s


def sketch(A: torch.Tensor, r: int, seed: int, kind: str = "gaussian",
           row_offset: int = 0) -> torch.Tensor:
    """A @ Omega with Omega (n, r) generated in the kernel, never stored.

    Omega's entry (i, j) is a function of (seed, row_offset + i, j) only
    (Philox4x32-10, see :func:`omega`), so it is bit-identical on CPU and
    CUDA and ``row_offset`` selects a block of rows for streaming.
    Differentiable in A.

    Args:
        A: (m, n) floating matrix.
        r: number of columns of Omega (sketch size).
        seed: any int (its low 64 bits key the generator).
        kind: "gaussian" (N(0, 1) entries) or "rademacher" (+-1).
        row_offset: first row of Omega to use.

    Returns:
        (m, r) tensor of A's dtype.

    Example:
        >>> A = torch.randn(5, 7, dtype=torch.float64)
        >>> torch.allclose(sketch(A, 3, seed=1), A @ omega(7, 3, seed=1))
        True
    """
    op = _op("sketch")
    if op is None:
        return ref.sketch(A, r, _seed64(seed), kind, row_offset)
    return op(A, r, _seed64(seed), kind, row_offset, False)


def sketch_t(A: torch.Tensor, r: int, seed: int, kind: str = "gaussian",
             row_offset: int = 0) -> torch.Tensor:
    """Omega[row_offset : row_offset + m]^T @ A for A (m, n); returns (r, n).

    Streaming over row blocks of a tall matrix: the sum over blocks of
    ``sketch_t(A_block, r, seed, row_offset=start)`` equals ``sketch_t`` of
    the whole.  Differentiable in A.
    """
    op = _op("sketch")
    if op is None:
        return ref.sketch_t(A, r, _seed64(seed), kind, row_offset)
    return op(A, r, _seed64(seed), kind, row_offset, True)


def omega(n: int, r: int, seed: int, kind: str = "gaussian", row_offset: int = 0, *,
          dtype: torch.dtype = torch.float64,
          device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Materialise rows [row_offset, row_offset + n) of Omega (for tests and checks).

    Gaussian entries come from Box-Muller on two 32-bit Philox words with a
    libm-free log/sin/cos (identical bits on CPU and CUDA); Rademacher
    entries from single Philox bits.  See :func:`pyvlmx._reference.omega`.

    Returns:
        (n, r) tensor of dtype on device.
    """
    if n < 0 or r < 0 or row_offset < 0:
        raise ValueError(f"omega: n, r and row_offset must be >= 0, got n={n}, r={r}, "
                         f"row_offset={row_offset}")
    op = _op("_omega_out")
    if op is None:
        return ref.omega(n, r, _seed64(seed), kind, row_offset, dtype=dtype, device=device)
    out = torch.empty(n, r, dtype=dtype, device=device)
    op(out, _seed64(seed), kind, row_offset)
    return out


# ----------------------------------------------------------------------------
# attention JVP
# ----------------------------------------------------------------------------

def attention_jvp(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  tq: torch.Tensor, tk: torch.Tensor, tv: torch.Tensor, *,
                  scale: Optional[float] = None, attn_mask: Optional[torch.Tensor] = None,
                  is_causal: bool = False):
    """Scaled dot-product attention and its JVP along T tangents, in one call.

    The T tangents share the primal's scores, softmax, row maxima and
    denominators; the (T, B, H, N, M) tensor of tangent scores that
    ``torch.func.jvp`` over SDPA builds is never formed.  Math, one head,
    tangent t::

        S  = scale q k^T (+ mask)          P = softmax(S)       O = P v
        S' = scale (q'_t k^T + q k'_t^T)   (zero where masked)
        mu = rowsum(P * S')
        O' = (P * S') v - mu O + P v'_t

    ``torch.vmap`` over the tangents (primals unbatched) runs as one call with
    the vmapped dimension merged into T (see the vmap rule below), so
    ``vmap(jvp)``-style code reaches the fused kernel.  Not differentiable
    (it is itself derivative code): backward through it raises.

    Args:
        q: (B, H, N, E) queries.  k: (B, H, M, E) keys.  v: (B, H, M, Ev) values.
        tq, tk, tv: tangents (T, B, H, N, E), (T, B, H, M, E), (T, B, H, M, Ev);
            T may be 0.
        scale: factor of q k^T; None means 1/sqrt(E) (torch's SDPA default).
        attn_mask: bool (True = keep) or additive float of q's dtype,
            broadcastable to (B, H, N, M), as in
            ``torch.nn.functional.scaled_dot_product_attention``.
        is_causal: mask key j > query i (top-left aligned, as SDPA).  May be
            combined with attn_mask.

    Returns:
        (out (B, H, N, Ev), tout (T, B, H, N, Ev)).  A row whose keys are all
        masked gives 0 in both (torch's safe softmax).  CPU: float32/float64;
        CUDA: float32/float16/bfloat16 with float32 accumulation, E, Ev <= 128.

    Example:
        >>> q, k, v = (torch.randn(1, 2, 5, 8) for _ in range(3))
        >>> tq, tk, tv = (torch.randn(3, 1, 2, 5, 8) for _ in range(3))
        >>> out, tout = attention_jvp(q, k, v, tq, tk, tv)
        >>> tuple(tout.shape)
        (3, 1, 2, 5, 8)

    Reference: the forward-mode rule of softmax attention; online softmax as
    in Dao et al., "FlashAttention" (NeurIPS 2022).
    """
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"attention_jvp: q must have shape (B, H, N, E), got "
                         f"{ref._shape_or_type(q)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] > 0 else 1.0
    if not isinstance(is_causal, bool):
        raise TypeError(f"attention_jvp: is_causal must be a bool, got {type(is_causal).__name__}")
    if isinstance(scale, torch.Tensor) or isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"attention_jvp: scale must be a float or None, got {type(scale).__name__}")
    ref.check_attention_jvp(q, k, v, tq, tk, tv, attn_mask, float(scale))
    op = _op("attention_jvp")
    if op is None:
        return ref.attention_jvp(q, k, v, tq, tk, tv, attn_mask, float(scale), is_causal)
    return op(q, k, v, tq, tk, tv, attn_mask, float(scale), is_causal)


def _attention_jvp_vmap(info, in_dims, q, k, v, tq, tk, tv, attn_mask, scale, is_causal):
    """vmap rule of pyvlmx::attention_jvp.

    Tangents batched, primals and mask not: the vmapped dimension moves to the
    front of each tangent and merges with T, so the whole vmap is one call with
    T' = batch_size * T; tout comes back as (batch, T, B, H, N, Ev).  When a
    primal or the mask is batched, the op runs once per batch entry.
    """
    qd, kd, vd, tqd, tkd, tvd, md = in_dims[:7]
    n = info.batch_size
    op = torch.ops.pyvlmx.attention_jvp
    if qd is None and kd is None and vd is None and md is None:
        def merged(t, d):
            t = t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(n, *t.shape)
            return t.reshape(n * t.shape[1], *t.shape[2:])

        T = tq.shape[1 if tqd == 0 else 0]  # the op's own T (logical dim 0 of tq)
        mq, mk, mv = merged(tq, tqd), merged(tk, tkd), merged(tv, tvd)
        out, tout = op(q, k, v, mq, mk, mv, attn_mask, scale, is_causal)
        return (out, tout.reshape(n, T, *tout.shape[1:])), (None, 0)

    def pick(t, d, i):
        return t if d is None or t is None else t.select(d, i)

    outs, touts = [], []
    for i in range(n):
        o, to = op(pick(q, qd, i), pick(k, kd, i), pick(v, vd, i), pick(tq, tqd, i),
                   pick(tk, tkd, i), pick(tv, tvd, i), pick(attn_mask, md, i), scale, is_causal)
        outs.append(o)
        touts.append(to)
    return (torch.stack(outs), torch.stack(touts)), (0, 0)


# ----------------------------------------------------------------------------
# fake kernels and autograd (only when the compiled ops exist)
# ----------------------------------------------------------------------------

def _register() -> None:
    if compiled("projected_step"):
        @torch.library.register_fake("pyvlmx::projected_step")
        def _(x, x0, grad, step_size, eps, step, norm, return_dist):
            B = x.shape[0] if return_dist else 0
            return (torch.empty_like(x, memory_format=torch.contiguous_format),
                    x.new_empty(B), x.new_empty(B))

    for name in ("psnr", "ssim"):
        if not compiled(name):
            continue
        backward_op = getattr(torch.ops.pyvlmx, f"_{name}_backward")

        @torch.library.register_fake(f"pyvlmx::{name}")
        def _(a, b, data_range):
            return a.new_empty(a.shape[0])

        @torch.library.register_fake(f"pyvlmx::_{name}_backward")
        def _(grad, a, b, data_range):
            return (torch.empty_like(a, memory_format=torch.contiguous_format),
                    torch.empty_like(b, memory_format=torch.contiguous_format))

        def setup_context(ctx, inputs, output):
            a, b, data_range = inputs
            ctx.save_for_backward(a, b)
            ctx.data_range = data_range

        def backward(ctx, grad, _bw=backward_op):
            a, b = ctx.saved_tensors
            ga, gb = _bw(grad.contiguous(), a, b, ctx.data_range)
            return (ga if ctx.needs_input_grad[0] else None,
                    gb if ctx.needs_input_grad[1] else None, None)

        torch.library.register_autograd(f"pyvlmx::{name}", backward, setup_context=setup_context)

    if compiled("moments_update"):
        @torch.library.register_fake("pyvlmx::moments_update")
        def _(x, mean, comoment, count):
            return torch.empty_like(mean), torch.empty_like(comoment)

        @torch.library.register_fake("pyvlmx::moments_merge")
        def _(mean_a, comoment_a, count_a, mean_b, comoment_b, count_b):
            return torch.empty_like(mean_a), torch.empty_like(comoment_a)

    if compiled("sketch"):
        @torch.library.register_fake("pyvlmx::sketch")
        def _(A, r, seed, kind, row_offset, transpose):
            if transpose:
                return A.new_empty(r, A.shape[1])
            return A.new_empty(A.shape[0], r)

        @torch.library.register_fake("pyvlmx::_sketch_backward")
        def _(grad, size, seed, kind, row_offset, transpose):
            if transpose:
                return grad.new_empty(size, grad.shape[1])
            return grad.new_empty(grad.shape[0], size)

        def sk_setup(ctx, inputs, output):
            A, r, seed, kind, row_offset, transpose = inputs
            ctx.size = A.shape[0] if transpose else A.shape[1]
            ctx.args = (seed, kind, row_offset, transpose)

        def sk_backward(ctx, grad):
            seed, kind, row_offset, transpose = ctx.args
            gA = torch.ops.pyvlmx._sketch_backward(grad.contiguous(), ctx.size, seed, kind,
                                                   row_offset, transpose)
            return gA, None, None, None, None, None

        torch.library.register_autograd("pyvlmx::sketch", sk_backward, setup_context=sk_setup)

        @torch.library.register_fake("pyvlmx::_omega_out")
        def _(out, seed, kind, row_offset):
            return None

    if compiled("attention_jvp"):
        @torch.library.register_fake("pyvlmx::attention_jvp")
        def _(q, k, v, tq, tk, tv, attn_mask, scale, is_causal):
            B, H, N, _ = q.shape
            Ev = v.shape[-1]
            return q.new_empty(B, H, N, Ev), q.new_empty(tq.shape[0], B, H, N, Ev)

        torch.library.register_vmap("pyvlmx::attention_jvp", _attention_jvp_vmap)

        def ajvp_setup(ctx, inputs, output):
            pass

        def ajvp_backward(ctx, grad_out, grad_tout):
            raise NotImplementedError(
                "attention_jvp: backward is not implemented (the op is forward-mode "
                "derivative code); differentiate torch.nn.functional.scaled_dot_product_attention "
                "or pyvlmx._reference.attention_jvp instead")

        torch.library.register_autograd("pyvlmx::attention_jvp", ajvp_backward,
                                        setup_context=ajvp_setup)


_register()
