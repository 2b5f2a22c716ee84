"""Every compiled op under ``torch.compile(fullgraph=True)``: the registered fake kernels and autograd.

Each case compiles a small function calling one op through pyvlmx.ops (or
``torch.ops.pyvlmx`` where the public API is a stateful class) with the
``aot_eager`` backend, which traces the function with FakeTensors (so it runs
the op's ``register_fake`` kernel) and, for differentiable ops, traces the
backward through ``register_autograd``.  The backend records the ops in the
traced graphs, so a case that silently fell back to the pure-torch twin would
fail.  Results must equal eager execution.  ``torch.library.opcheck`` lives
in the per-op test files.
"""

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from pyvlmx import ops

pytestmark = pytest.mark.skipif(not ops.compiled("projected_step"), reason="compiled extension not built")

# ops that take or return no tensors: nothing for a fake kernel to do
NOT_TENSOR_OPS = {"build_info", "cuda_devices"}


def _registered_ops() -> set[str]:
    return {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("pyvlmx::")}


def _recording_aot_eager(seen: set):
    """``aot_eager`` that also records every op in the forward and backward graphs."""
    def compiler(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function":
                seen.add(str(node.target))
                if node.args and isinstance(node.args[0], torch._ops.OpOverload):   # auto_functionalized
                    seen.add(str(node.args[0]))
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler, bw_compiler=compiler)


def _compiled(fn, seen):
    return torch.compile(fn, backend=_recording_aot_eager(seen), fullgraph=True)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def _images(seed=0, B=2, size=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, 3, size, size, generator=g, dtype=dtype)
    return a, (a + 0.05 * torch.randn(a.shape, generator=g, dtype=dtype)).clamp(0, 1)


def _check_grads(fn, inputs, seen):
    """fn(*inputs) -> scalar; compiled value and gradients equal eager's."""
    eager_in = [t.detach().clone().requires_grad_() for t in inputs]
    comp_in = [t.detach().clone().requires_grad_() for t in inputs]
    ve = fn(*eager_in)
    ve.backward()
    vc = _compiled(fn, seen)(*comp_in)
    vc.backward()
    torch.testing.assert_close(vc, ve, rtol=0, atol=0)
    for c, e in zip(comp_in, eager_in):
        torch.testing.assert_close(c.grad, e.grad, rtol=0, atol=0)


# --- one case per op (and per mode where the output shapes differ) --------------------------------

@pytest.mark.parametrize("step,norm", [("sign", "linf"), ("l2", "l2"), ("raw", "none")])
@pytest.mark.parametrize("return_dist", [False, True])
def test_projected_step(step, norm, return_dist):
    x0, x = _images()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    eps = torch.tensor([4 / 255, 8 / 255])

    def fn(x, x0, g, eps):
        return ops.projected_step(x, x0, g, 1 / 255, eps, step=step, norm=norm, return_dist=return_dist)

    seen = set()
    out_c = _compiled(fn, seen)(x, x0, g, eps)
    out_e = fn(x, x0, g, eps)
    if return_dist:
        assert len(out_c) == 3 and out_c[1].shape == (2,)
    for c, e in zip(out_c if return_dist else [out_c], out_e if return_dist else [out_e]):
        assert torch.equal(c, e)
    assert "pyvlmx.projected_step.default" in seen


@pytest.mark.parametrize("name", ["psnr", "ssim"])
def test_image_quality_forward_and_backward(name):
    a, b = _images(size=16, dtype=torch.float64)
    op = getattr(ops, name)
    seen = set()
    assert torch.equal(_compiled(lambda a, b: op(a, b), seen)(a, b), op(a, b))
    _check_grads(lambda a, b: op(a, b, data_range=1.0).sum(), [a, b], seen)
    assert {f"pyvlmx.{name}.default", f"pyvlmx._{name}_backward.default"} <= seen


def test_moments_update_and_merge():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 5, generator=g, dtype=torch.float64) + 3

    def fn(x):
        zero_m, zero_c = x.new_zeros(5), x.new_zeros(5, 5)
        ma, ca = torch.ops.pyvlmx.moments_update(x[:20], zero_m, zero_c, 0)
        mb, cb = torch.ops.pyvlmx.moments_update(x[20:], zero_m, zero_c, 0)
        return torch.ops.pyvlmx.moments_merge(ma, ca, 20, mb, cb, 30)

    seen = set()
    mean_c, com_c = _compiled(fn, seen)(x)
    mean_e, com_e = fn(x)
    assert torch.equal(mean_c, mean_e) and torch.equal(com_c, com_e)
    torch.testing.assert_close(com_c / 49, torch.cov(x.T), rtol=1e-10, atol=0)
    assert {"pyvlmx.moments_update.default", "pyvlmx.moments_merge.default"} <= seen


@pytest.mark.parametrize("fn_name", ["sketch", "sketch_t"])
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_sketch_forward_and_backward(fn_name, kind):
    A = torch.randn(6, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    f = getattr(ops, fn_name)
    seen = set()
    out_c = _compiled(lambda A: f(A, 4, seed=7, kind=kind, row_offset=2), seen)(A)
    out_e = f(A, 4, seed=7, kind=kind, row_offset=2)
    assert out_c.shape == ((6, 4) if fn_name == "sketch" else (4, 9))
    assert torch.equal(out_c, out_e)
    _check_grads(lambda A: (f(A, 4, seed=7, kind=kind, row_offset=2) ** 2).sum(), [A], seen)
    assert {"pyvlmx.sketch.default", "pyvlmx._sketch_backward.default"} <= seen


def test_omega_out():
    seen = set()

    def fn(x):
        return x @ ops.omega(5, 3, seed=11, row_offset=4, dtype=x.dtype)

    x = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_compiled(fn, seen)(x), fn(x))
    assert "pyvlmx._omega_out.default" in seen


@pytest.mark.skipif(not ops.compiled("attention_jvp"), reason="compiled op pyvlmx::attention_jvp not built")
@pytest.mark.parametrize("masked", [False, True])
def test_attention_jvp(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    tq, tk, tv = (torch.randn(3, 1, 2, 5, 8, generator=g) for _ in range(3))
    mask = (torch.rand(1, 1, 5, 5, generator=g) > 0.3) if masked else None

    def fn(q, k, v, tq, tk, tv):
        return ops.attention_jvp(q, k, v, tq, tk, tv, attn_mask=mask, is_causal=masked)

    seen = set()
    out_c, tout_c = _compiled(fn, seen)(q, k, v, tq, tk, tv)
    out_e, tout_e = fn(q, k, v, tq, tk, tv)
    assert tout_c.shape == (3, 1, 2, 5, 8)
    assert torch.equal(out_c, out_e) and torch.equal(tout_c, tout_e)
    assert "pyvlmx.attention_jvp.default" in seen


# --- coverage: a new op needs a case here -----------------------------------------------------------

COVERED = {"projected_step", "psnr", "_psnr_backward", "ssim", "_ssim_backward", "moments_update",
           "moments_merge", "sketch", "_sketch_backward", "_omega_out", "attention_jvp"}


def test_every_registered_op_has_a_compile_case():
    missing = _registered_ops() - NOT_TENSOR_OPS - COVERED
    assert not missing, f"pyvlmx ops without a torch.compile case in {__file__}: {sorted(missing)}"
    # every case's op exists where the extension is current (attention_jvp: built since its kernels landed)
    assert COVERED - {"attention_jvp"} <= _registered_ops()
