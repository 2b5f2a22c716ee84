"""projected_step: compiled kernel vs the pure-torch twin, invariants, errors."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import needs_cuda
from pyvlmx import _reference as ref
from pyvlmx import ops
from _ops_helpers import lowp_ok, opcheck, requires

MODES = list(itertools.product(ref.STEP_MODES, ref.NORM_MODES))


def _inputs(shape=(3, 2, 5, 7), dtype=torch.float64, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64)
    x = (x0 + 0.05 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=g, dtype=torch.float64)
    B = shape[0]
    a = torch.linspace(0.01, 0.2, B, dtype=torch.float64)
    e = torch.linspace(0.03, 0.5, B, dtype=torch.float64)
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(x0), cast(grad), a, e


@requires("projected_step")
@pytest.mark.parametrize("step,norm", MODES)
def test_forward_matches_reference_float64(step, norm):
    x, x0, g, a, e = _inputs()
    got = torch.ops.pyvlmx.projected_step(x, x0, g, a, e, step, norm, True)
    want = ref.projected_step(x, x0, g, a, e, step, norm, True)
    for k, w in zip(got, want):
        torch.testing.assert_close(k, w, rtol=1e-12, atol=1e-12)


@requires("projected_step")
@pytest.mark.parametrize("step,norm", MODES)
def test_forward_float32_close_to_reference(step, norm):
    x, x0, g, a, e = _inputs(dtype=torch.float32, seed=1)
    got = torch.ops.pyvlmx.projected_step(x, x0, g, a, e, step, norm, True)
    want = ref.projected_step(x, x0, g, a, e, step, norm, True)
    for k, w in zip(got, want):
        torch.testing.assert_close(k, w, rtol=2e-6, atol=2e-6)


def test_sign_linf_equals_eager_attack_composition():
    """The update as attack libraries write it: x + a sign(g), clamp to the ball, clamp to the box."""
    x, x0, g, _, _ = _inputs(shape=(4, 3, 16, 16), seed=2)
    a, e = 2 / 255, 8 / 255
    eager = torch.min(torch.max(x + a * g.sign(), x0 - e), x0 + e).clamp(0, 1)
    got = ops.projected_step(x, x0, g, a, e, step="sign", norm="linf")
    torch.testing.assert_close(got, eager, rtol=0, atol=1e-15)


def test_scalar_and_tensor_budgets_agree():
    x, x0, g, _, _ = _inputs(seed=3)
    B = x.shape[0]
    s1 = ops.projected_step(x, x0, g, 0.1, 0.05, step="raw", norm="l2")
    s2 = ops.projected_step(x, x0, g, torch.full((B,), 0.1), torch.full((B,), 0.05),
                            step="raw", norm="l2")
    torch.testing.assert_close(s1, s2, rtol=1e-7, atol=1e-7)


@requires("projected_step")
def test_opcheck_all_modes():
    for i, (step, norm) in enumerate(MODES):
        x, x0, g, a, e = _inputs(shape=(2, 3, 4), seed=10 + i)
        for dist in (False, True):
            opcheck(torch.ops.pyvlmx.projected_step, (x, x0, g, a, e, step, norm, dist))
    x, x0, g, a, e = _inputs(shape=(2, 3, 4), dtype=torch.float32, seed=30)
    opcheck(torch.ops.pyvlmx.projected_step, (x, x0, g, a, e, "sign", "linf", True))


def test_empty_inputs():
    x = torch.empty(0, 3, 4, 4)
    out, linf, l2 = ops.projected_step(x, x, x, 0.1, 0.1, return_dist=True)
    assert out.shape == x.shape and linf.shape == (0,) and l2.shape == (0,)
    y = torch.empty(2, 0)
    out, linf, l2 = ops.projected_step(y, y, y, 0.1, 0.1, return_dist=True)
    assert out.shape == (2, 0)
    assert linf.tolist() == [0.0, 0.0] and l2.tolist() == [0.0, 0.0]


def test_non_contiguous_inputs():
    x, x0, g, a, e = _inputs(shape=(3, 5, 6, 2), seed=4)
    xt, x0t, gt = (t.permute(0, 3, 1, 2) for t in (x, x0, g))  # (3, 2, 5, 6), not contiguous
    assert not xt.is_contiguous()
    for step, norm in MODES:
        got = ops.projected_step(xt, x0t, gt, a, e, step=step, norm=norm, return_dist=True)
        want = ref.projected_step(xt.contiguous(), x0t.contiguous(), gt.contiguous(), a, e,
                                  step, norm, True)
        for k, w in zip(got, want):
            torch.testing.assert_close(k, w, rtol=1e-12, atol=1e-12)


def test_zero_gradient_l2_step_keeps_point():
    x, x0, _, _, _ = _inputs(seed=5)
    out = ops.projected_step(x, x0, torch.zeros_like(x), 0.3, 10.0, step="l2", norm="none")
    torch.testing.assert_close(out, x0 + (x - x0), rtol=0, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), n=st.integers(1, 300), step=st.sampled_from(ref.STEP_MODES),
       norm=st.sampled_from(["linf", "l2"]), eps=st.floats(0.0, 2.0), a=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_projection_invariants(B, n, step, norm, eps, a, seed, dtype):
    """Inside the box [0, 1] and inside the ball around x0; distances as reported."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, n, generator=g, dtype=torch.float64).to(dtype)
    x = torch.rand(B, n, generator=g, dtype=torch.float64).to(dtype)
    grad = torch.randn(B, n, generator=g, dtype=torch.float64).to(dtype)
    out, linf, l2 = ops.projected_step(x, x0, grad, a, eps, step=step, norm=norm, return_dist=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    d = (out - x0).double()
    if norm == "linf":
        assert float(d.abs().max()) <= eps * (1 + tol) + tol
    else:
        assert float(d.norm(dim=1).max()) <= eps * (1 + tol) + tol
    torch.testing.assert_close(linf.double(), d.abs().amax(dim=1), rtol=tol, atol=tol)
    torch.testing.assert_close(l2.double(), d.norm(dim=1), rtol=tol, atol=tol)


def _errors(fn):
    x, x0, g, a, e = _inputs(shape=(2, 3, 4), seed=6)
    with pytest.raises(ValueError, match=r"projected_step: x and x0 must have the same shape"):
        fn(x, x0[:, :2], g, a, e)
    with pytest.raises(TypeError, match=r"projected_step: x and grad must have the same dtype, got .*(Float|float32)"):
        fn(x, x0, g.float(), a, e)
    with pytest.raises(ValueError, match=r"projected_step: eps must be >= 0, got min -0\.5"):
        fn(x, x0, g, a, torch.tensor([0.1, -0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"projected_step: step_size must have shape \(2,\).*got (\(3,\)|\[3\])"):
        fn(x, x0, g, torch.ones(3, dtype=torch.float64), e)
    with pytest.raises(ValueError, match=r"projected_step: step must be one of .*got 'sgn'"):
        fn(x, x0, g, a, e, step="sgn")
    with pytest.raises(ValueError, match=r"projected_step: norm must be one of .*got 'l1'"):
        fn(x, x0, g, a, e, norm="l1")
    with pytest.raises(TypeError, match=r"projected_step: x must be a floating-point tensor"):
        xi = x.to(torch.int64)
        fn(xi, xi, xi, a, e)


@requires("projected_step")
def test_errors_compiled():
    def fn(x, x0, g, a, e, step="sign", norm="linf"):
        return torch.ops.pyvlmx.projected_step(x, x0, g, a, e, step, norm, False)
    _errors(fn)


def test_errors_reference():
    def fn(x, x0, g, a, e, step="sign", norm="linf"):
        return ref.projected_step(x, x0, g, a, e, step, norm, False)
    _errors(fn)


def test_errors_public_wrapper():
    x, x0, g, _, _ = _inputs(shape=(2, 3, 4), seed=7)
    with pytest.raises(ValueError, match=r"projected_step: eps must be >= 0, got -0\.1"):
        ops.projected_step(x, x0, g, 0.1, -0.1)
    with pytest.raises(TypeError, match=r"projected_step: step_size must be a float or a \(B,\) tensor, got str"):
        ops.projected_step(x, x0, g, "0.1", 0.1)


@needs_cuda
@requires("projected_step")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (4, 3, 64, 64), (2, 1001)])
def test_cuda_matches_cpu(dtype, shape):
    x, x0, g, a, e = _inputs(shape=shape, dtype=dtype, seed=8)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for step, norm in MODES:
        for dist in (False, True):
            cpu = torch.ops.pyvlmx.projected_step(x, x0, g, a, e, step, norm, dist)
            # per-sample scalars on the device as well as on the CPU
            for ad, ed in ((a, e), (a.cuda(), e.cuda())):
                gpu = torch.ops.pyvlmx.projected_step(x.cuda(), x0.cuda(), g.cuda(), ad, ed,
                                                      step, norm, dist)
                for c, d in zip(cpu, gpu):
                    torch.testing.assert_close(d.cpu(), c, rtol=tol, atol=tol)
            # uniform floats take the by-value path of the CUDA kernel
            cpu = ops.projected_step(x, x0, g, 0.05, 0.1, step=step, norm=norm, return_dist=True)
            gpu = ops.projected_step(x.cuda(), x0.cuda(), g.cuda(), 0.05, 0.1, step=step, norm=norm,
                                     return_dist=True)
            for c, d in zip(cpu, gpu):
                torch.testing.assert_close(d.cpu(), c, rtol=tol, atol=tol)


@needs_cuda
@requires("projected_step")
def test_cuda_non_contiguous_misaligned_and_opcheck():
    x, x0, g, a, e = _inputs(shape=(3, 2, 9, 7), dtype=torch.float32, seed=9)
    xc, x0c, gc = (t.cuda() for t in (x, x0, g))
    # a storage offset of one element defeats the 16-byte vector path
    xs, x0s, gs = (torch.cat([t.flatten(), t.flatten()[:1]])[1:].view_as(t) for t in (xc, x0c, gc))
    for step, norm in MODES:
        got = torch.ops.pyvlmx.projected_step(xs, x0s, gs, a, e, step, norm, True)
        want = torch.ops.pyvlmx.projected_step(xs.cpu(), x0s.cpu(), gs.cpu(), a, e, step, norm, True)
        for k, w in zip(got, want):
            torch.testing.assert_close(k.cpu(), w, rtol=2e-6, atol=2e-6)
    xt = xc.transpose(2, 3)
    got = ops.projected_step(xt, x0c.transpose(2, 3), gc.transpose(2, 3), 0.1, 0.05)
    want = ops.projected_step(xt.cpu(), x0.transpose(2, 3), g.transpose(2, 3), 0.1, 0.05)
    torch.testing.assert_close(got.cpu(), want, rtol=2e-6, atol=2e-6)
    opcheck(torch.ops.pyvlmx.projected_step, (xc, x0c, gc, a.cuda(), e.cuda(), "l2", "l2", True))


@needs_cuda
@requires("projected_step")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    x, x0, g, a, e = _inputs(shape=(4, 3, 32, 32), seed=11)
    for step, norm in MODES:
        exact = ref.projected_step(x, x0, g, a, e, step, norm, True)
        lowp = [t.to(dtype) for t in (x, x0, g)]
        ref_lp = ref.projected_step(*[t.cuda() for t in lowp], a, e, step, norm, True)
        got = torch.ops.pyvlmx.projected_step(*[t.cuda() for t in lowp], a, e, step, norm, True)
        for k, r, ex in zip(got, ref_lp, exact):
            # one rounding of the output dtype is allowed on top (the ops round once, the
            # reference rounds after every operation)
            lowp_ok(k.cpu(), r.cpu(), ex, slack=float(torch.finfo(dtype).eps))
