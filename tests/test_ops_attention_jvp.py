"""attention_jvp: against float64 formulas and torch.func.jvp over math SDPA, vmap rule, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from conftest import needs_cuda
from pyvlmx import _reference as ref
from pyvlmx import ops
from _ops_helpers import lowp_ok, opcheck, requires

pytestmark = pytest.mark.usefixtures("one_thread")


def make(B, H, N, M, E, Ev, T, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    return (r(B, H, N, E), r(B, H, M, E), r(B, H, M, Ev),
            r(T, B, H, N, E), r(T, B, H, M, E), r(T, B, H, M, Ev))


def make_mask(kind, B, H, N, M, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "bool":
        m = torch.rand(B, H, N, M, generator=g) > 0.3
        m[..., 0] = True  # SDPA's own fp32 path gives NaN rows otherwise; see the dead-row test
        return m.to(device)
    if kind == "bool_bcast":  # (N, M): one pattern for every batch and head
        m = torch.rand(N, M, generator=g) > 0.5
        m[:, -1] = True
        return m.to(device)
    if kind == "float":
        return torch.randn(B, H, N, M, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    if kind == "float_bcast":  # (B, 1, 1, M): a key padding mask
        m = torch.zeros(B, 1, 1, M, dtype=torch.float64)
        m[..., M // 2:] = float("-inf") if M > 1 else 0.0
        return m.to(device=device, dtype=dtype)
    raise ValueError(kind)


def sdpa_jvp(q, k, v, tq, tk, tv, attn_mask=None, scale=None, is_causal=False):
    """torch.func.jvp over math SDPA, vmapped over the T tangents."""
    def f(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, attn_mask=attn_mask, is_causal=is_causal,
                                              scale=scale)

    with sdpa_kernel(SDPBackend.MATH):
        out = f(q, k, v)
        tout = torch.vmap(lambda a, b, c: torch.func.jvp(f, (q, k, v), (a, b, c))[1])(tq, tk, tv)
    return out, tout


SHAPES = [  # (B, H, N, M, E, Ev, T)
    (1, 1, 1, 1, 4, 4, 1),
    (2, 3, 7, 7, 8, 8, 2),
    (1, 2, 50, 50, 16, 24, 3),
    (2, 1, 77, 77, 32, 32, 1),
    (1, 2, 197, 197, 64, 64, 2),
    (2, 2, 7, 50, 16, 8, 3),     # M != N
    (1, 3, 77, 5, 8, 16, 2),     # N > M
    (1, 1, 1, 13, 16, 16, 4),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_matches_formulas_and_sdpa_jvp(shape):
    B, H, N, M, E, Ev, T = shape
    args = make(B, H, N, M, E, Ev, T)
    out, tout = ops.attention_jvp(*args)
    r_out, r_tout = ref.attention_jvp(*args)
    s_out, s_tout = sdpa_jvp(*args)
    assert out.shape == (B, H, N, Ev) and tout.shape == (T, B, H, N, Ev)
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tout, r_tout, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out, s_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tout, s_tout, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["bool", "bool_bcast", "float", "float_bcast"])
@pytest.mark.parametrize("shape", [(2, 2, 7, 7, 8, 8, 2), (1, 2, 50, 77, 16, 8, 3),
                                   (1, 1, 197, 197, 64, 64, 2)], ids=lambda s: "x".join(map(str, s)))
def test_masks_match_sdpa_jvp(kind, shape):
    B, H, N, M, E, Ev, T = shape
    args = make(B, H, N, M, E, Ev, T)
    mask = make_mask(kind, B, H, N, M)
    out, tout = ops.attention_jvp(*args, attn_mask=mask)
    s_out, s_tout = sdpa_jvp(*args, attn_mask=mask)
    torch.testing.assert_close(out, s_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tout, s_tout, rtol=1e-10, atol=1e-10)
    r_out, r_tout = ref.attention_jvp(*args, attn_mask=mask)
    torch.testing.assert_close(tout, r_tout, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 2, 7, 7, 8, 8, 2), (1, 1, 50, 77, 16, 8, 2),
                                   (2, 1, 77, 50, 8, 8, 1), (1, 2, 197, 197, 32, 32, 2)],
                         ids=lambda s: "x".join(map(str, s)))
def test_causal_and_scale_match_sdpa_jvp(shape):
    B, H, N, M, E, Ev, T = shape
    args = make(B, H, N, M, E, Ev, T)
    out, tout = ops.attention_jvp(*args, is_causal=True)
    s_out, s_tout = sdpa_jvp(*args, is_causal=True)
    torch.testing.assert_close(out, s_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tout, s_tout, rtol=1e-10, atol=1e-10)
    out, tout = ops.attention_jvp(*args, scale=0.3)
    s_out, s_tout = sdpa_jvp(*args, scale=0.3)
    torch.testing.assert_close(tout, s_tout, rtol=1e-10, atol=1e-10)


def test_causal_with_mask_and_dead_rows_give_zero():
    B, H, N, M, E, Ev, T = 1, 2, 9, 9, 8, 8, 2
    args = make(B, H, N, M, E, Ev, T)
    mask = torch.ones(N, M, dtype=torch.bool)
    mask[3] = False          # row 3 sees no key
    mask[:, 0] = False       # with is_causal, row 0 sees no key either
    out, tout = ops.attention_jvp(*args, attn_mask=mask, is_causal=True)
    r_out, r_tout = ref.attention_jvp(*args, attn_mask=mask, is_causal=True)
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tout, r_tout, rtol=1e-10, atol=1e-10)
    for row in (0, 3):
        assert torch.equal(out[:, :, row], torch.zeros_like(out[:, :, row]))
        assert torch.equal(tout[:, :, :, row], torch.zeros_like(tout[:, :, :, row]))
    # same rows through SDPA (safe softmax gives 0 too) without the causal part
    m2 = mask.clone()
    m2[:, 0] = True
    s_out, s_tout = sdpa_jvp(*args, attn_mask=m2)
    o2, t2 = ops.attention_jvp(*args, attn_mask=m2)
    torch.testing.assert_close(t2, s_tout, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["plain", "bool", "float_bcast", "causal"])
@pytest.mark.parametrize("shape", [(1, 2, 50, 50, 16, 24, 3), (1, 2, 197, 197, 64, 64, 2),
                                   (2, 1, 77, 77, 32, 32, 1)], ids=lambda s: "x".join(map(str, s)))
def test_float32_within_2x_of_math_path_error(case, shape):
    B, H, N, M, E, Ev, T = shape
    a64 = make(B, H, N, M, E, Ev, T)
    a32 = tuple(t.float() for t in a64)
    kw64, kw32 = {}, {}
    if case == "causal":
        kw64 = kw32 = {"is_causal": True}
    elif case != "plain":
        m64 = make_mask(case, B, H, N, M)
        kw64 = {"attn_mask": m64}
        kw32 = {"attn_mask": m64 if m64.dtype == torch.bool else m64.float()}
    e_out, e_tout = sdpa_jvp(*a64, **kw64)
    s_out, s_tout = sdpa_jvp(*a32, **kw32)
    k_out, k_tout = ops.attention_jvp(*a32, **kw32)
    assert k_out.dtype == torch.float32 and k_tout.dtype == torch.float32
    lowp_ok(k_out, s_out, e_out)
    lowp_ok(k_tout, s_tout, e_tout)


def test_non_contiguous_inputs():
    B, H, N, M, E, Ev, T = 2, 3, 50, 77, 16, 8, 2
    args = make(B, H, N, M, E, Ev, T)
    # (B, N, H, E) memory seen as (B, H, N, E), as a projection's output is
    nc = [t.transpose(-2, -3).contiguous().transpose(-2, -3) for t in args]
    nc[3] = args[3].transpose(0, 1).contiguous().transpose(0, 1)  # tangent: T not outermost
    nc[5] = torch.cat([args[5], args[5]], dim=-1)[..., ::2]         # strided last dim
    nc[5].copy_(args[5])
    assert not any(t.is_contiguous() for t in nc)
    mask = make_mask("float", B, H, N, M).transpose(-1, -2).contiguous().transpose(-1, -2)
    out, tout = ops.attention_jvp(*nc, attn_mask=mask)
    r_out, r_tout = ref.attention_jvp(*args, attn_mask=mask.contiguous())
    torch.testing.assert_close(out, r_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(tout, r_tout, rtol=1e-10, atol=1e-10)


def test_tangent_count_zero_and_one():
    args = make(2, 2, 7, 9, 8, 4, 3)
    out, tout = ops.attention_jvp(*args)
    empty = [t[:0] if i >= 3 else t for i, t in enumerate(args)]
    out0, tout0 = ops.attention_jvp(*empty)
    assert tout0.shape == (0, 2, 2, 7, 4)
    torch.testing.assert_close(out0, out, rtol=0, atol=0)
    one = [t[1:2] if i >= 3 else t for i, t in enumerate(args)]
    out1, tout1 = ops.attention_jvp(*one)
    torch.testing.assert_close(tout1[0], tout[1], rtol=1e-12, atol=1e-12)


def test_empty_batch_and_queries():
    for B, N in ((0, 5), (2, 0)):
        args = make(B, 2, N, 6, 8, 4, 2)
        out, tout = ops.attention_jvp(*args)
        assert out.shape == (B, 2, N, 4) and tout.shape == (2, B, 2, N, 4)


def test_threads_give_the_same_result():
    args = make(2, 3, 77, 50, 16, 8, 3)
    mask = make_mask("float_bcast", 2, 3, 77, 50)
    want = ops.attention_jvp(*args, attn_mask=mask, is_causal=True)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = ops.attention_jvp(*args, attn_mask=mask, is_causal=True)
    finally:
        torch.set_num_threads(n)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tangents_are_linear():
    args = make(1, 2, 13, 11, 8, 8, 2)
    q, k, v, tq, tk, tv = args
    _, tout = ops.attention_jvp(q, k, v, tq, tk, tv)
    _, tsum = ops.attention_jvp(q, k, v, (tq[0] + 2 * tq[1])[None], (tk[0] + 2 * tk[1])[None],
                                (tv[0] + 2 * tv[1])[None])
    torch.testing.assert_close(tsum[0], tout[0] + 2 * tout[1], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------
# vmap rule, opcheck, autograd
# ----------------------------------------------------------------------------

@requires("attention_jvp")
def test_vmap_over_tangents_is_one_batched_call():
    B, H, N, M, E, Ev, T, V = 1, 2, 9, 11, 8, 8, 2, 5
    q, k, v, *_ = make(B, H, N, M, E, Ev, 1)
    g = torch.Generator().manual_seed(3)
    tq = torch.randn(V, T, B, H, N, E, generator=g, dtype=torch.float64)
    tk = torch.randn(V, T, B, H, M, E, generator=g, dtype=torch.float64)
    tv = torch.randn(T, B, H, M, Ev, V, generator=g, dtype=torch.float64)  # vmapped at dim -1

    def fn(a, b, c):
        return ops.attention_jvp(q, k, v, a, b, c)[1]

    got = torch.vmap(fn, in_dims=(0, 0, -1))(tq, tk, tv)
    assert got.shape == (V, T, B, H, N, Ev)
    want = ops.attention_jvp(q, k, v, tq.reshape(V * T, B, H, N, E), tk.reshape(V * T, B, H, M, E),
                             tv.movedim(-1, 0).reshape(V * T, B, H, M, Ev))[1]
    torch.testing.assert_close(got, want.reshape(V, T, B, H, N, Ev), rtol=1e-12, atol=1e-12)
    # one unbatched tangent is shared by every vmapped entry
    got2 = torch.vmap(lambda a: ops.attention_jvp(q, k, v, a, tk[0], tv[..., 0])[1])(tq)
    for i in range(V):
        torch.testing.assert_close(got2[i], ops.attention_jvp(q, k, v, tq[i], tk[0], tv[..., 0])[1],
                                   rtol=1e-12, atol=1e-12)
    # the rule calls the op once for the whole vmap, with T' = V * T
    from torch.utils._python_dispatch import TorchDispatchMode

    calls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "attention_jvp" in str(func):
                calls.append(args[3].shape[0])
            return func(*args, **(kwargs or {}))

    with Count():
        torch.vmap(fn, in_dims=(0, 0, -1))(tq, tk, tv)
    assert calls == [V * T]


def test_reference_twin_serves_under_vmap_when_the_op_is_missing(monkeypatch):
    q, k, v, tq, tk, tv = make(1, 2, 9, 11, 8, 8, 4)
    mask = make_mask("bool", 1, 2, 9, 11)
    want = ops.attention_jvp(q, k, v, tq, tk, tv, attn_mask=mask)[1]
    monkeypatch.setattr(ops, "_op", lambda name: None)
    got = torch.vmap(lambda a, b, c: ops.attention_jvp(q, k, v, a[None], b[None], c[None],
                                                       attn_mask=mask)[1][0])(tq, tk, tv)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@requires("attention_jvp")
def test_vmap_with_batched_primals_loops():
    B, H, N, M, E, Ev, T, V = 1, 1, 5, 6, 4, 4, 2, 3
    g = torch.Generator().manual_seed(4)
    qs = torch.randn(V, B, H, N, E, generator=g, dtype=torch.float64)
    _, k, v, tq, tk, tv = make(B, H, N, M, E, Ev, T)
    out, tout = torch.vmap(lambda a: ops.attention_jvp(a, k, v, tq, tk, tv))(qs)
    for i in range(V):
        o, t = ref.attention_jvp(qs[i], k, v, tq, tk, tv)
        torch.testing.assert_close(out[i], o, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(tout[i], t, rtol=1e-10, atol=1e-10)


@requires("attention_jvp")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    op = torch.ops.pyvlmx.attention_jvp
    for shape, kind, causal in (((1, 2, 7, 9, 8, 4, 2), None, False),
                                ((2, 1, 5, 5, 4, 4, 1), "bool_bcast", True),
                                ((1, 1, 3, 6, 8, 8, 3), "float", False),
                                ((1, 1, 4, 4, 4, 4, 0), None, False)):
        B, H, N, M, E, Ev, T = shape
        args = make(B, H, N, M, E, Ev, T, dtype=dtype)
        mask = make_mask(kind, B, H, N, M, dtype=dtype)
        opcheck(op, (*args, mask, 1 / math.sqrt(E), causal))


@requires("attention_jvp")
def test_backward_raises_instead_of_wrong_gradients():
    q, k, v, tq, tk, tv = make(1, 1, 4, 4, 4, 4, 1)
    q.requires_grad_(True)
    _, tout = ops.attention_jvp(q, k, v, tq, tk, tv)
    with pytest.raises(NotImplementedError, match="attention_jvp: backward is not implemented"):
        tout.sum().backward()


# ----------------------------------------------------------------------------
# errors (before any work)
# ----------------------------------------------------------------------------

def test_errors_name_the_argument_and_value():
    q, k, v, tq, tk, tv = make(1, 2, 5, 6, 8, 4, 2)
    with pytest.raises(ValueError, match=r"attention_jvp: q must have shape \(B, H, N, E\), got \(5, 8\)"):
        ops.attention_jvp(q[0, 0], k, v, tq, tk, tv)
    with pytest.raises(ValueError, match=r"attention_jvp: k must have shape \(B, H, M, E\) = \(1, 2, M, 8\)"):
        ops.attention_jvp(q, k[..., :4], v, tq, tk, tv)
    with pytest.raises(ValueError, match=r"attention_jvp: v must have shape .* got \(1, 2, 5, 4\)"):
        ops.attention_jvp(q, k, v[:, :, :5], tq, tk, tv)
    with pytest.raises(ValueError, match=r"attention_jvp: tk must have shape \(2, 1, 2, 6, 8\)"):
        ops.attention_jvp(q, k, v, tq, tk[:1], tv)
    with pytest.raises(ValueError, match=r"attention_jvp: tq must have 5 dimensions, got shape \(1, 2, 5, 8\)"):
        ops.attention_jvp(q, k, v, tq[0], tk, tv)
    with pytest.raises(TypeError, match="attention_jvp: q and tv must have the same dtype, got torch.float64 and torch.float32"):
        ops.attention_jvp(q, k, v, tq, tk, tv.float())
    with pytest.raises(TypeError, match="attention_jvp: q must be a floating-point tensor, got torch.int64"):
        ops.attention_jvp(q.long(), k, v, tq, tk, tv)
    with pytest.raises(ValueError, match=r"attention_jvp: k must have at least one key \(M >= 1\)"):
        ops.attention_jvp(q, k[:, :, :0], v[:, :, :0], tq, tk[:, :, :, :0], tv[:, :, :, :0])
    with pytest.raises(ValueError, match=r"attention_jvp: attn_mask must be broadcastable to \(B, H, N, M\) = \(1, 2, 5, 6\), got shape \(5, 5\)"):
        ops.attention_jvp(q, k, v, tq, tk, tv, attn_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="attention_jvp: attn_mask must be bool or have q's dtype torch.float64, got torch.float32"):
        ops.attention_jvp(q, k, v, tq, tk, tv, attn_mask=torch.zeros(5, 6))
    with pytest.raises(ValueError, match="attention_jvp: scale must be a finite float, got inf"):
        ops.attention_jvp(q, k, v, tq, tk, tv, scale=float("inf"))
    with pytest.raises(TypeError, match="attention_jvp: is_causal must be a bool, got int"):
        ops.attention_jvp(q, k, v, tq, tk, tv, is_causal=1)


@requires("attention_jvp")
def test_compiled_op_errors_match():
    op = torch.ops.pyvlmx.attention_jvp
    q, k, v, tq, tk, tv = make(1, 2, 5, 6, 8, 4, 2)
    with pytest.raises(ValueError, match=r"attention_jvp: tv must have shape \(2, \[1, 2, 6, 4\]\)"):
        op(q, k, v, tq, tk, tv[:, :, :, :3], None, 0.5, False)
    with pytest.raises(ValueError, match=r"attention_jvp: attn_mask must be broadcastable to \(B, H, N, M\) = \(1, 2, 5, 6\), got shape \[3, 6\]"):
        op(q, k, v, tq, tk, tv, torch.zeros(3, 6, dtype=torch.float64), 0.5, False)
    with pytest.raises(TypeError, match="attention_jvp: q must be float32 or float64 on CPU, got Half"):
        op(*(t.half() for t in (q, k, v, tq, tk, tv)), None, 0.5, False)
    with pytest.raises(ValueError, match="attention_jvp: scale must be finite, got nan"):
        op(q, k, v, tq, tk, tv, None, float("nan"), False)


# ----------------------------------------------------------------------------
# CUDA against CPU
# ----------------------------------------------------------------------------

@needs_cuda
@requires("attention_jvp")
@pytest.mark.parametrize("shape", [(2, 3, 197, 197, 64, 64, 5), (1, 2, 77, 77, 80, 80, 3),
                                   (1, 2, 50, 257, 128, 128, 6), (2, 1, 1, 13, 16, 24, 1),
                                   (1, 1, 7, 1, 8, 8, 2), (1, 2, 33, 65, 128, 64, 0)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", ["plain", "bool", "float_bcast", "causal"])
def test_cuda_float32_matches_cpu(shape, case):
    B, H, N, M, E, Ev, T = shape
    a32 = make(B, H, N, M, E, Ev, T, dtype=torch.float32)
    kw = {}
    if case == "causal":
        kw = {"is_causal": True}
    elif case != "plain":
        m = make_mask(case, B, H, N, M, dtype=torch.float32)
        kw = {"attn_mask": m}
    c_out, c_tout = ops.attention_jvp(*a32, **kw)
    kwc = {k_: (v_.cuda() if isinstance(v_, torch.Tensor) else v_) for k_, v_ in kw.items()}
    g_out, g_tout = ops.attention_jvp(*(t.cuda() for t in a32), **kwc)
    torch.cuda.synchronize()
    kw64 = {k_: (v_.double() if isinstance(v_, torch.Tensor) and v_.is_floating_point() else v_)
            for k_, v_ in kw.items()}
    e_out, e_tout = ref.attention_jvp(*(t.double() for t in a32), **kw64)
    assert g_out.dtype == torch.float32 and g_tout.shape == (T, B, H, N, Ev)
    torch.testing.assert_close(g_out.cpu(), c_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_out.cpu().double(), e_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_tout.cpu(), c_tout, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(g_tout.cpu().double(), e_tout, rtol=1e-3, atol=1e-4)


@needs_cuda
@requires("attention_jvp")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("E", [64, 80, 128])
@pytest.mark.parametrize("case", ["plain", "bool", "causal"])
def test_cuda_low_precision_within_2x_of_math_path(dtype, E, case):
    B, H, N, M, Ev, T = 2, 3, 197, 197, E, 4
    a64 = make(B, H, N, M, E, Ev, T)
    lp = tuple(t.to(device="cuda", dtype=dtype) for t in a64)
    exact_in = tuple(t.double().cpu() for t in lp)  # the rounded inputs, exactly
    kw, kw64 = {}, {}
    if case == "causal":
        kw = kw64 = {"is_causal": True}
    elif case == "bool":
        m = make_mask("bool", B, H, N, M)
        kw, kw64 = {"attn_mask": m.cuda()}, {"attn_mask": m}
    e_out, e_tout = ref.attention_jvp(*exact_in, **kw64)
    s_out, s_tout = sdpa_jvp(*lp, **kw)
    k_out, k_tout = ops.attention_jvp(*lp, **kw)
    assert k_tout.dtype == dtype
    lowp_ok(k_out.cpu(), s_out.cpu(), e_out)
    lowp_ok(k_tout.cpu(), s_tout.cpu(), e_tout)


@needs_cuda
@requires("attention_jvp")
def test_cuda_opcheck_and_vmap():
    args = make(1, 2, 40, 45, 80, 80, 3, dtype=torch.float32, device="cuda")
    opcheck(torch.ops.pyvlmx.attention_jvp, (*args, None, 0.125, False))
    q, k, v, tq, tk, tv = args
    got = torch.vmap(lambda a, b, c: ops.attention_jvp(q, k, v, a[None], b[None], c[None])[1][0])(tq, tk, tv)
    want = ops.attention_jvp(q, k, v, tq, tk, tv)[1]
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
