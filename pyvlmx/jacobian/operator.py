"""The image-to-embedding Jacobian as a matrix-free linear operator.

For a model ``f`` (pixels in [0, 1] -> embedding) and one image ``x0`` the
Jacobian ``J = df/dx (x0)`` is an ``embed_dim x pixels`` matrix: 384 x 150528
for the offline default, too large to form casually and never needed in full.
:class:`JacobianOperator` gives the products every spectral method needs:

* ``matvec(V) = J V``   forward mode (``torch.func.jvp``), or reverse-over-
  reverse ("double VJP", Townsend 2017) where forward mode is unavailable;
* ``rmatvec(U) = J^T U`` reverse mode, reusing one graph (``retain_graph``),
  on a replicated batch, or through ``is_grads_batched`` (vmap);
* ``rows()`` the rows of ``J`` in blocks, and ``gram() = J J^T`` exactly.

All products are batched over many vectors and chunked to a memory budget.
While the model runs inside the operator, attention runs on the math SDPA
backend with the ``nn.MultiheadAttention`` fast path off (forward mode and
double backward need them), and the [0, 1] input check is skipped (dual
tensors and noisy inputs); everything is restored afterwards.  During JVPs the
attention goes through the fused multi-tangent op ``ops.attention_jvp``
(``jvp_backend="fused"``, :mod:`pyvlmx.jacobian.fused_attention`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from pyvlmx.jacobian.fused_attention import (
    fused_attention, fused_available, has_eager_hf_attention, warn_unavailable,
)
from pyvlmx.models.analysis import analysis_mode  # noqa: F401  (re-exported by pyvlmx.jacobian)

JVP_MODES = ("vmap", "batch", "double_vjp")
VJP_MODES = ("loop", "batch", "vmap")
JVP_BACKENDS = ("fused", "math")


def _as_image(x0: torch.Tensor) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"expected x0 as a torch.Tensor, got {type(x0).__name__}")
    if x0.dim() == 3:
        x0 = x0.unsqueeze(0)
    if x0.dim() != 4 or x0.shape[0] != 1 or x0.shape[1] != 3:
        raise ValueError(f"expected x0 of shape (3, H, W) or (1, 3, H, W), got {tuple(x0.shape)}")
    if not x0.is_floating_point():
        raise ValueError(f"expected float x0, got dtype {x0.dtype}")
    return x0.detach()


def _orth(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a, mode="reduced").Q


class JacobianOperator:
    """``J = d f / d x`` of a model's image embedding at one image.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel` (anything
            with ``encode_image(pixels, normalize=...)``), or a callable mapping
            (B, 3, H, W) to (B, D) when ``fn`` is given instead.
        x0: (3, H, W) or (1, 3, H, W) image in [0, 1].
        normalize: differentiate the unit-norm embedding (default, what zero-
            shot classification uses; one singular value is then 0, the radial
            direction) or the raw features.
        fn: optional callable (B, 3, H, W) -> (B, D) used instead of
            ``model.encode_image``.
        jvp_mode: ``"vmap"`` (``torch.func.vmap`` over ``torch.func.jvp``, the
            primal computed once), ``"batch"`` (``jvp`` on a replicated batch),
            or ``"double_vjp"`` (reverse over reverse, no forward mode).
        vjp_mode: ``"loop"`` (one graph at ``x0``, one backward per vector with
            ``retain_graph``), ``"batch"`` (a replicated batch: one forward and
            one backward per chunk), or ``"vmap"`` (``is_grads_batched``).
        chunk_size: vectors per batched call; None derives it from
            ``memory_budget_mb`` and the bytes one sample's graph saves.
        memory_budget_mb: budget for one chunk's autograd graph.
        dtype: compute dtype of the products (None: the model's dtype).
        jvp_backend: how attention is differentiated in forward mode
            (``jvp_mode`` "vmap" and "batch"): ``"fused"`` (default) sends
            every scaled-dot-product attention through
            :func:`pyvlmx.ops.attention_jvp`, all tangents of a chunk in one
            call (:mod:`pyvlmx.jacobian.fused_attention`); ``"math"`` runs
            ``torch.func`` over the math SDPA, the reference.  "fused" becomes
            "math" when the model has no attention, and, after one warning,
            when the compiled op is not built.

    Attributes:
        shape: (D, P) with P = 3 * H * W.
        f0: (D,) the embedding at ``x0``.
        counts: number of vector products done so far, by kind;
            ``"fused_attention"`` counts the attention calls that the fused
            route took during JVPs.
        jvp_backend: the backend in use (after the fallbacks above).

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> op = JacobianOperator(m, torch.rand(3, 32, 32))
        >>> op.shape
        (32, 3072)
        >>> op.rmatvec(torch.randn(32, 4)).shape
        torch.Size([3072, 4])
    """

    def __init__(self, model, x0: torch.Tensor, *, normalize: bool = True,
                 fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 jvp_mode: str = "vmap", vjp_mode: str = "loop",
                 chunk_size: int | None = None, memory_budget_mb: float = 1024.0,
                 dtype: torch.dtype | None = None, jvp_backend: str = "fused"):
        if jvp_backend not in JVP_BACKENDS:
            raise ValueError(f"jvp_backend must be one of {JVP_BACKENDS}, got {jvp_backend!r}")
        if jvp_mode not in JVP_MODES:
            raise ValueError(f"jvp_mode must be one of {JVP_MODES}, got {jvp_mode!r}")
        if vjp_mode not in VJP_MODES:
            raise ValueError(f"vjp_mode must be one of {VJP_MODES}, got {vjp_mode!r}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        if memory_budget_mb <= 0:
            raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
        self.model = model
        self.normalize = bool(normalize)
        self._fn = fn
        self.jvp_mode = jvp_mode
        self.vjp_mode = vjp_mode
        x0 = _as_image(x0)
        if dtype is None:
            dtype = getattr(model, "dtype", None) if fn is None else x0.dtype
            dtype = dtype if isinstance(dtype, torch.dtype) else x0.dtype
        device = getattr(model, "device", x0.device) if fn is None else x0.device
        self.x0 = x0.to(device=device, dtype=dtype)
        self.dtype = dtype
        self.device = self.x0.device
        self.image_shape = tuple(self.x0.shape[1:])
        self.counts = {"jvp": 0, "vjp": 0, "forward": 0, "fused_attention": 0}
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None
        # f0 through the fused route's forward (the math SDPA itself, the same bits) tells whether any
        # attention is routed
        with torch.no_grad(), analysis_mode(self._mode_model), \
                fused_attention(self._mode_model, hf_eager=False) as route:
            f0 = self._f(self.x0)
        if jvp_backend == "fused" and route.fused == 0 and not has_eager_hf_attention(self._mode_model):
            jvp_backend = "math"             # no attention to route: nothing falls back
        elif jvp_backend == "fused" and not fused_available():
            warn_unavailable()
            jvp_backend = "math"
        self.jvp_backend = jvp_backend
        self.f0 = f0[0].detach()
        self.shape = (int(f0.shape[1]), int(self.x0.numel()))
        self.memory_budget_mb = float(memory_budget_mb)
        self.chunk_size = int(chunk_size) if chunk_size is not None else self._auto_chunk()

    # --- model evaluation ----------------------------------------------------
    @property
    def _mode_model(self):
        return self.model if self._fn is None else None

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        self.counts["forward"] += x.shape[0]
        if self._fn is not None:
            return self._fn(x)
        return self.model.encode_image(x, normalize=self.normalize)

    def _auto_chunk(self) -> int:
        """Vectors per chunk: budget / bytes saved by one sample's graph."""
        saved = [0]

        def pack(t):
            saved[0] += t.numel() * t.element_size()
            return t

        x = self.x0.clone().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), analysis_mode(self._mode_model):
            self._f(x)
        self.counts["forward"] -= 1
        per_sample = max(saved[0], 1) * 3  # graph + gradients in flight + tangents
        return int(max(1, min(256, self.memory_budget_mb * 2**20 // per_sample)))

    def _chunks(self, k: int) -> Iterator[slice]:
        for i in range(0, k, self.chunk_size):
            yield slice(i, min(k, i + self.chunk_size))

    # --- products -------------------------------------------------------------
    def _check_vectors(self, v: torch.Tensor, n: int, name: str) -> tuple[torch.Tensor, bool]:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"expected {name} as a torch.Tensor, got {type(v).__name__}")
        single = v.dim() == 1
        if single:
            v = v[:, None]
        if v.dim() != 2 or v.shape[0] != n:
            raise ValueError(f"expected {name} of shape ({n},) or ({n}, k), got {tuple(v.shape)}")
        return v.to(device=self.device, dtype=self.dtype), single

    def matvec(self, V: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        """``J V``.

        Args:
            V: (P,) or (P, k) pixel-space vectors (P = 3*H*W, flattened C, H, W).
            mode: override ``jvp_mode`` for this call.

        Returns:
            (D,) or (D, k).
        """
        D, P = self.shape
        mode = mode or self.jvp_mode
        if mode not in JVP_MODES:
            raise ValueError(f"mode must be one of {JVP_MODES}, got {mode!r}")
        V, single = self._check_vectors(V, P, "V")
        out = torch.empty(D, V.shape[1], device=self.device, dtype=self.dtype)
        fused = self.jvp_backend == "fused" and mode != "double_vjp"
        route = fused_attention(self._mode_model) if fused else contextlib.nullcontext()
        with analysis_mode(self._mode_model), route as r:
            for sl in self._chunks(V.shape[1]):
                out[:, sl] = self._jvp_chunk(V[:, sl].t().reshape(-1, *self.image_shape), mode).t()
        if fused:
            self.counts["fused_attention"] += r.fused
        self.counts["jvp"] += V.shape[1]
        return out[:, 0] if single else out

    def _jvp_chunk(self, T: torch.Tensor, mode: str) -> torch.Tensor:
        c = T.shape[0]
        if mode == "vmap":
            def one(t):
                return torch.func.jvp(lambda x: self._f(x), (self.x0,), (t[None],))[1][0]
            return torch.func.vmap(one)(T).detach()
        if mode == "batch":
            xb = self.x0.expand(c, *self.image_shape).contiguous()
            return torch.func.jvp(lambda x: self._f(x), (xb,), (T,))[1].detach()
        # double_vjp: J v = d/du <J^T u, v>, reverse over reverse
        with torch.enable_grad():
            xb = self.x0.expand(c, *self.image_shape).clone().requires_grad_(True)
            y = self._f(xb)
            u = torch.zeros_like(y, requires_grad=True)
            (g,) = torch.autograd.grad(y, xb, u, create_graph=True)
            (jv,) = torch.autograd.grad(g, u, T)
        return jv.detach()

    def rmatvec(self, U: torch.Tensor) -> torch.Tensor:
        """``J^T U``.

        Args:
            U: (D,) or (D, k) embedding-space vectors.

        Returns:
            (P,) or (P, k); reshape a column to ``image_shape`` for an image.
        """
        D, P = self.shape
        U, single = self._check_vectors(U, D, "U")
        out = torch.empty(P, U.shape[1], device=self.device, dtype=self.dtype)
        with analysis_mode(self._mode_model), torch.enable_grad():
            for sl in self._chunks(U.shape[1]):
                out[:, sl] = self._vjp_chunk(U[:, sl].t()).reshape(sl.stop - sl.start, P).t()
        self.counts["vjp"] += U.shape[1]
        return out[:, 0] if single else out

    def _graph_at_x0(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._graph is None:
            x = self.x0.clone().requires_grad_(True)
            self._graph = (x, self._f(x)[0])
        return self._graph

    def _vjp_chunk(self, Ut: torch.Tensor) -> torch.Tensor:
        c = Ut.shape[0]
        if self.vjp_mode == "batch":
            xb = self.x0.expand(c, *self.image_shape).clone().requires_grad_(True)
            y = self._f(xb)
            return torch.autograd.grad(y, xb, Ut)[0].detach()
        x, y = self._graph_at_x0()
        if self.vjp_mode == "vmap":
            return torch.autograd.grad(y, x, Ut, retain_graph=True, is_grads_batched=True)[0][:, 0].detach()
        rows = [torch.autograd.grad(y, x, u, retain_graph=True)[0][0] for u in Ut]
        return torch.stack(rows).detach()

    def release(self) -> None:
        """Free the cached autograd graph at ``x0`` (``vjp_mode="loop"``/``"vmap"``)."""
        self._graph = None

    # --- rows, dense, gram -------------------------------------------------------
    def rows(self, block: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(i, J[i:i+b])`` row blocks (b x P), one VJP per row.

        The whole ``J`` is never held: each block is produced, yielded and
        dropped.  ``block`` defaults to ``chunk_size``.
        """
        D, _ = self.shape
        b = int(block or self.chunk_size)
        if b < 1:
            raise ValueError(f"block must be >= 1, got {block}")
        eye = torch.eye(D, device=self.device, dtype=self.dtype)
        for i in range(0, D, b):
            yield i, self.rmatvec(eye[:, i:i + b]).t()

    def dense(self) -> torch.Tensor:
        """The full (D, P) Jacobian from D VJPs (for small models and tests)."""
        D, P = self.shape
        J = torch.empty(D, P, device=self.device, dtype=self.dtype)
        for i, blk in self.rows():
            J[i:i + blk.shape[0]] = blk
        return J

    def gram(self, dtype: torch.dtype = torch.float64, pixel_block: int = 16384) -> torch.Tensor:
        """``J J^T`` (D, D), exactly, from D VJPs.

        The rows are held once (D x P in the compute dtype) and the product is
        accumulated over pixel blocks in ``dtype``.
        """
        J = self.dense()
        D, P = self.shape
        G = torch.zeros(D, D, device=self.device, dtype=dtype)
        for p in range(0, P, pixel_block):
            blk = J[:, p:p + pixel_block].to(dtype)
            G += blk @ blk.t()
        return G

    def __repr__(self) -> str:
        return (f"JacobianOperator(shape={self.shape}, jvp_mode={self.jvp_mode!r}, "
                f"jvp_backend={self.jvp_backend!r}, "
                f"vjp_mode={self.vjp_mode!r}, chunk_size={self.chunk_size}, normalize={self.normalize})")


def randomized_range_svd(op: JacobianOperator, k: int, *, oversample: int = 10, power_iters: int = 2,
                         seed: int = 0, variant: str = "forward") -> dict:
    """Randomized SVD of J (Halko, Martinsson, Tropp 2011, Alg. 4.4 + 5.1).

    ``variant="forward"`` runs the range finder on J with Gaussian probes in
    pixel space: ``Y = J Omega`` (JVPs), ``power_iters`` rounds of subspace
    iteration ``Y <- J (J^T Q)``, then ``B = Q^T J = (J^T Q)^T`` (VJPs).
    ``variant="vjp"`` never uses forward mode: it runs the same algorithm on
    ``J^T`` with probes in embedding space (``Y = J^T Omega`` by VJPs) and
    obtains the ``J Q`` products by reverse-over-reverse differentiation.

    Args:
        op: the operator.
        k: number of singular values wanted.
        oversample: extra probes (l = k + oversample).
        power_iters: subspace iterations (q); each costs l JVPs and l VJPs.
        seed: seed of the Gaussian test matrix.
        variant: ``"forward"`` or ``"vjp"``.

    Returns:
        dict with ``singular_values`` (k,), ``left`` (D, k), ``right`` (P, k)
        singular vectors, and ``probes`` l.
    """
    D, P = op.shape
    if k < 1 or k > min(D, P):
        raise ValueError(f"k must be in [1, {min(D, P)}], got {k}")
    if oversample < 0 or power_iters < 0:
        raise ValueError(f"oversample and power_iters must be >= 0, got {oversample}, {power_iters}")
    if variant not in ("forward", "vjp"):
        raise ValueError(f"variant must be 'forward' or 'vjp', got {variant!r}")
    l_ = min(k + oversample, min(D, P))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    work = torch.float64
    if variant == "forward":
        omega = torch.randn(P, l_, generator=gen, dtype=work).to(op.device)
        Q = _orth(op.matvec(omega).to(work))
        for _ in range(power_iters):
            Qt = _orth(op.rmatvec(Q).to(work))
            Q = _orth(op.matvec(Qt).to(work))
        Bt = op.rmatvec(Q).to(work)          # (P, l) = (Q^T J)^T
        Ub, s, Vh = torch.linalg.svd(Bt.t(), full_matrices=False)
        left, right = Q @ Ub[:, :k], Vh[:k].t()
    else:
        omega = torch.randn(D, l_, generator=gen, dtype=work).to(op.device)
        Q = _orth(op.rmatvec(omega).to(work))  # (P, l) spans the top of J's row space
        for _ in range(power_iters):
            Qd = _orth(op.matvec(Q, mode="double_vjp").to(work))
            Q = _orth(op.rmatvec(Qd).to(work))
        JQ = op.matvec(Q, mode="double_vjp").to(work)   # (D, l) = J Q
        Ub, s, Vh = torch.linalg.svd(JQ, full_matrices=False)
        left, right = Ub[:, :k], Q @ Vh[:k].t()
    return {"singular_values": s[:k], "left": left, "right": right, "probes": l_}


def block_krylov_svd(op: JacobianOperator, k: int, *, block: int | None = None, iters: int = 2,
                     seed: int = 0) -> dict:
    """Randomized block Krylov SVD of J (Musco & Musco 2015), Rayleigh-Ritz in embedding space.

    Builds an orthonormal basis of the block Krylov space
    ``[J Omega, (J J^T) J Omega, ..., (J J^T)^iters J Omega]`` in the
    D-dimensional embedding space, one block at a time with full
    re-orthogonalisation, and keeps ``W_i = J^T Q_i`` (the VJPs that the next
    block needs anyway).  The Ritz values are the eigenvalues of
    ``W^T W = Q^T J J^T Q``.  It costs ``(iters + 1) * block`` JVPs and as many
    VJPs, the same as :func:`randomized_range_svd` with ``power_iters=iters``,
    but searches a space ``iters + 1`` times larger, which matters when the
    spectrum decays slowly (subspace iteration converges at the rate
    ``(s_{l+1} / s_k)^(2q+1)``, block Krylov at a rate that depends on the
    square root of the gap).

    Args:
        op: the operator.
        k: number of singular values wanted.
        block: probes per block (default k: for a given number of products,
            a smaller block buys a higher polynomial degree, which converged
            faster than blocks of k + 10 in the spectra benchmark).
        iters: Krylov iterations q (the space has ``(q + 1) * block`` columns,
            capped at D).
        seed: seed of the Gaussian test matrix.

    Returns:
        dict with ``singular_values`` (k,), ``left`` (D, k), ``right`` (P, k)
        and ``basis_dim`` (columns of the Krylov basis).
    """
    D, P = op.shape
    if k < 1 or k > min(D, P):
        raise ValueError(f"k must be in [1, {min(D, P)}], got {k}")
    b = int(block if block is not None else k)
    if b < 1 or iters < 0:
        raise ValueError(f"block must be >= 1 and iters >= 0, got {b}, {iters}")
    work = torch.float64
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(P, min(b, D), generator=gen, dtype=work).to(op.device)
    Q = _orth(op.matvec(omega).to(work))                  # (D, b)
    basis, Ws = [Q], [op.rmatvec(Q).to(work)]           # Q_i and W_i = J^T Q_i (P, b)
    for _ in range(iters):
        m = sum(q.shape[1] for q in basis)
        if m >= D:
            break
        Z = op.matvec(Ws[-1][:, : D - m]).to(work)         # J J^T Q_{i-1}, at most D - m new columns
        Bm = torch.cat(basis, dim=1)
        for _ in range(2):                                 # twice is enough (Giraud et al.)
            Z = Z - Bm @ (Bm.t() @ Z)
        Qn = _orth(Z)
        basis.append(Qn)
        Ws.append(op.rmatvec(Qn).to(work))
    Bm, W = torch.cat(basis, dim=1), torch.cat(Ws, dim=1)  # (D, m), (P, m)
    evals, evecs = torch.linalg.eigh(W.t() @ W)           # Q^T J J^T Q
    order = torch.argsort(evals, descending=True)[:k]
    s = evals[order].clamp_min(0).sqrt()
    left = Bm @ evecs[:, order]
    right = (W @ evecs[:, order]) / s.clamp_min(torch.finfo(work).tiny)
    return {"singular_values": s, "left": left, "right": right, "basis_dim": Bm.shape[1]}


def exact_svd(op: JacobianOperator) -> dict:
    """Exact singular values of J from the eigenvalues of ``J J^T`` (D VJPs).

    Returns:
        dict with ``singular_values`` (D,) descending, ``left`` (D, D)
        eigenvectors of J J^T, and ``gram`` (D, D) float64.
    """
    G = op.gram()
    evals, evecs = torch.linalg.eigh(G)
    order = torch.argsort(evals, descending=True)
    s = evals[order].clamp_min(0).sqrt()
    return {"singular_values": s, "left": evecs[:, order], "gram": G}


def _sketch_seeds(seed: int) -> tuple[int, int, int]:
    """Seeds of the pixel-side, Upsilon and Phi test matrices; disjoint for different seeds."""
    return 3 * seed, 3 * seed + 1, 3 * seed + 2


def single_pass_svd(op: JacobianOperator, k: int, *, range_dim: int | None = None,
                    core_dim: int | None = None, seed: int = 0, kind: str = "gaussian") -> dict:
    """Single-pass randomized SVD of J from ``2r + s`` products (Tropp, Yurtsever, Udell, Cevher 2019).

    The three sketches of TYUC's fixed-rank streaming approximation are
    taken from J by matrix-free products, all independent of each other (no
    power iterations, nothing depends on an earlier product):

    * range    ``Y = J Omega``         (D x r):  r JVPs,  ``Omega``   P x r
    * co-range ``W = Upsilon J``       (r x P):  r VJPs,  ``Upsilon`` r x D
    * core     ``Z = Phi J Psi^T``     (s x s):  s JVPs,  ``Psi`` s x P, ``Phi`` s x D
      applied to ``J Psi^T`` in the embedding space.

    Then ``Q = orth(Y)``, ``Pm = orth(W^T)``,
    ``C = (Phi Q)^+ Z ((Psi Pm)^+)^T`` (r x r) and ``J ~ Q C Pm^T``; the SVD
    of the small ``C`` gives the singular values and, through ``Q`` and
    ``Pm``, the vectors.  With Gaussian test matrices and ``s >= 2r + 1``
    (TYUC Thm. 5.1, real field)

        E ||J - Q C Pm^T||_F^2 <= (s - 1) / (s - r - 1)
                                  * min_{rho < r - 1} (r + rho - 1) / (r - rho - 1) * tau_{rho+1}^2,

    ``tau_{rho+1}^2 = sum_{j > rho} sigma_j^2``: exact when rank J < r - 1,
    and as good as the tail allows otherwise.  Like HMT without power
    iterations it cannot sharpen a flat spectrum; it buys independence of
    the products (one batched pass, any order, any device split).

    No test matrix is stored whole: ``[Omega^T; Psi]`` ((r + s) x P, one seed)
    is regenerated in row blocks with :func:`pyvlmx.ops.omega` (entry (i, j)
    depends on (seed, i, j) only, Philox in the kernel) as each chunk of
    JVP tangents is needed and again, block by block, for ``Psi Pm``;
    ``Upsilon^T`` and ``Phi^T`` (D x r, D x s) are applied inside
    :func:`pyvlmx.ops.sketch_t` or made by :func:`pyvlmx.ops.omega`.

    Args:
        op: the operator.
        k: number of singular values wanted (k <= r).
        range_dim: r (default ``min(4k + 1, D, P)``, as TYUC advise for a
            given rank when storage is not the constraint).
        core_dim: s (default ``2r + 1``); must be >= r.
        seed: the test matrices use seeds ``3 seed .. 3 seed + 2``.
        kind: ``"gaussian"`` or ``"rademacher"`` test matrices.

    Returns:
        dict with ``singular_values`` (k,), ``left`` (D, k), ``right`` (P, k),
        ``range_dim`` r, ``core_dim`` s and ``products`` {"jvp": r + s,
        "vjp": r}.

    Example:
        >>> from pyvlmx.models import load_model
        >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
        >>> r = single_pass_svd(JacobianOperator(m, torch.rand(3, 32, 32)), 4)
        >>> r["products"]
        {'jvp': 52, 'vjp': 17}
    """
    from pyvlmx import ops

    D, P = op.shape
    if k < 1 or k > min(D, P):
        raise ValueError(f"k must be in [1, {min(D, P)}], got {k}")
    r = int(range_dim if range_dim is not None else min(4 * k + 1, D, P))
    if not (k <= r <= min(D, P)):
        raise ValueError(f"range_dim must be in [k={k}, {min(D, P)}], got {r}")
    s = int(core_dim if core_dim is not None else 2 * r + 1)
    if s < r:
        raise ValueError(f"core_dim must be >= range_dim={r}, got {s}")
    s_pix, s_up, s_phi = _sketch_seeds(seed)
    work = torch.float64
    before = dict(op.counts)
    dev, pdt = op.device, op.dtype

    def probes(a: int, b: int) -> torch.Tensor:
        """Columns [a, b) of [Omega | Psi^T] (P, b - a), in the products' dtype."""
        return ops.omega(b - a, P, s_pix, kind, row_offset=a, dtype=pdt, device=dev).t()

    # one pass over the r + s JVP tangents, chunk by chunk, and the r VJPs
    JV = torch.empty(D, r + s, dtype=work, device=dev)       # [J Omega | J Psi^T]
    for a in range(0, r + s, op.chunk_size):
        b = min(r + s, a + op.chunk_size)
        JV[:, a:b] = op.matvec(probes(a, b)).to(work)
    ups_t = ops.omega(D, r, s_up, kind, dtype=pdt, device=dev)  # Upsilon^T (D, r)
    Wt = op.rmatvec(ups_t).to(work)                          # (P, r) = (Upsilon J)^T
    Z = ops.sketch_t(JV[:, r:].contiguous(), s, s_phi, kind=kind)   # (s, s) = Phi (J Psi^T)
    Q = _orth(JV[:, :r])                                      # (D, r)
    Pm = _orth(Wt)                                            # (P, r)
    del JV, Wt
    phiQ = ops.sketch_t(Q.contiguous(), s, s_phi, kind=kind)  # (s, r) = Phi Q
    psiP = torch.empty(s, r, dtype=work, device=dev)          # (s, r) = Psi Pm, Psi in row blocks
    for a in range(0, s, op.chunk_size):
        b = min(s, a + op.chunk_size)
        psiP[a:b] = probes(r + a, r + b).t().to(work) @ Pm
    C = torch.linalg.lstsq(phiQ, Z).solution                  # (r, s) = (Phi Q)^+ Z
    C = torch.linalg.lstsq(psiP, C.t().contiguous()).solution.t()  # (r, r) = ... ((Psi Pm)^+)^T
    Uc, sv, Vch = torch.linalg.svd(C)
    return {"singular_values": sv[:k], "left": Q @ Uc[:, :k], "right": Pm @ Vch[:k].t(),
            "range_dim": r, "core_dim": s,
            "products": {kk: op.counts[kk] - before[kk] for kk in ("jvp", "vjp")}}


def row_streaming_svd(op: JacobianOperator, k: int, *, range_dim: int | None = None,
                      core_dim: int | None = None, row_block: int | None = None, seed: int = 0,
                      kind: str = "gaussian") -> dict:
    """TYUC sketch of J streamed row by row: D VJPs, what the exact route costs.

    Kept for matrices that arrive as rows; for J itself :func:`single_pass_svd`
    takes the same three sketches from ``2r + s`` products instead of D.
    J is consumed once, in row blocks ``J[i:i+b]`` produced by VJPs and
    dropped after use; the test matrices are never stored, they are
    regenerated inside :func:`pyvlmx.ops.sketch` / :func:`pyvlmx.ops.sketch_t`
    from (seed, row, column).  Three linear sketches are kept:

    * range    ``Y = J Omega``        (D x r),  ``Omega`` P x r
    * co-range ``X = Upsilon J``      (r x P),  ``Upsilon = Omega_u^T`` r x D
    * core     ``Z = Phi J Psi^T``    (s x s),  ``Phi`` s x D, ``Psi`` s x P

    and J is reconstructed as ``Q C Pm^T`` with ``Q = orth(Y)``,
    ``Pm = orth(X^T)``, ``C = (Phi Q)^+ Z ((Psi Pm)^+)^T``; the singular
    values of the small ``C`` are the estimates.

    Args:
        op: the operator.
        k: number of singular values wanted.
        range_dim: r (default ``min(4k + 1, D)``, TYUC's advice).
        core_dim: s (default ``2r + 1``).
        row_block: rows of J per block (default ``op.chunk_size``).
        seed: base seed; the test matrices use seeds seed .. seed + 2.
        kind: ``"gaussian"`` or ``"rademacher"`` test matrices.

    Returns:
        dict with ``singular_values`` (k,), ``range_dim``, ``core_dim``,
        ``products`` {"jvp": 0, "vjp": D}.
    """
    from pyvlmx import ops

    D, P = op.shape
    if k < 1 or k > min(D, P):
        raise ValueError(f"k must be in [1, {min(D, P)}], got {k}")
    r = int(range_dim or min(4 * k + 1, D, P))
    s = int(core_dim or 2 * r + 1)
    if not (k <= r <= min(D, P)):
        raise ValueError(f"range_dim must be in [{k}, {min(D, P)}], got {r}")
    if s < r:
        raise ValueError(f"core_dim must be >= range_dim={r}, got {s}")
    # Omega (P x r) and Psi^T (P x s) are the first r and the next s columns of
    # one in-kernel matrix (independent entries), so each row block needs one
    # pixel-space sketch; Upsilon^T (D x r) and Phi^T (D x s) have their own seeds.
    s_pix, s_up, s_phi = seed, seed + 1, seed + 2
    work = torch.float64
    Y = torch.zeros(D, r, dtype=work, device=op.device)
    X = torch.zeros(r, P, dtype=work, device=op.device)
    Z = torch.zeros(s, s, dtype=work, device=op.device)
    for i, blk in op.rows(row_block):
        blk = blk.to(work).contiguous()
        sk = ops.sketch(blk, r + s, s_pix, kind=kind)              # (b, r + s) = [J Omega | J Psi^T]
        Y[i:i + blk.shape[0]] = sk[:, :r]
        X += ops.sketch_t(blk, r, s_up, kind=kind, row_offset=i)
        Z += ops.sketch_t(sk[:, r:].contiguous(), s, s_phi, kind=kind, row_offset=i)
        del blk, sk
    Q = _orth(Y)                                                    # (D, r)
    Pm = _orth(X.t().contiguous())                                  # (P, r)
    phiQ = ops.sketch_t(Q.contiguous(), s, s_phi, kind=kind)        # (s, r) = Phi Q
    psiP = ops.sketch_t(Pm.contiguous(), r + s, s_pix, kind=kind)[r:]  # (s, r) = Psi Pm
    C = torch.linalg.lstsq(phiQ, Z).solution                        # (r, s)
    C = torch.linalg.lstsq(psiP, C.t().contiguous()).solution.t()   # (r, r)
    sv = torch.linalg.svdvals(C)
    return {"singular_values": sv[:k], "range_dim": r, "core_dim": s,
            "products": {"jvp": 0, "vjp": D}}


#: former name of :func:`row_streaming_svd` (D VJPs); kept for old imports.
streaming_svd = row_streaming_svd
