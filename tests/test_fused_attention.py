"""JVPs with attention routed through ops.attention_jvp against the math route."""

import warnings

import pytest
import torch

from _analysis_models import designed_linear
from pyvlmx.jacobian import JacobianOperator
from pyvlmx.jacobian import fused_attention as fa
from pyvlmx.models import analysis_mode, load_model

needs_op = pytest.mark.skipif(not fa.fused_available(), reason="the compiled op pyvlmx::attention_jvp is not built")


def _image(size, seed=0, dtype=torch.float64):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def tiny_vit64():
    return load_model("open_clip:pyvlmx-tiny-vit", seed=0).double()


def _n_mha(model):
    return sum(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def test_route_counts_every_attention_call_and_keeps_the_forward(tiny_clip):
    x = _image(32, dtype=torch.float32)[None]
    with torch.no_grad(), analysis_mode(tiny_clip):
        ref = tiny_clip.encode_image(x)
        with fa.fused_attention(tiny_clip) as route:
            got = tiny_clip.encode_image(x)
    assert torch.equal(got, ref)
    assert route.fused > 0 and route.math == 0
    assert route.fused == _n_mha(tiny_clip.clip.visual)
    assert torch.nn.functional.scaled_dot_product_attention is fa._MATH_SDPA   # restored


@needs_op
@pytest.mark.parametrize("mode", ["vmap", "batch"])
def test_fused_equals_math_on_tiny_open_clip_float64(tiny_vit64, mode):
    x0 = _image(32)
    V = torch.randn(3 * 32 * 32, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fused = JacobianOperator(tiny_vit64, x0, jvp_mode=mode, chunk_size=4, dtype=torch.float64)
    math = JacobianOperator(tiny_vit64, x0, jvp_mode=mode, chunk_size=4, dtype=torch.float64, jvp_backend="math")
    assert fused.jvp_backend == "fused" and math.jvp_backend == "math"
    a, b = fused.matvec(V), math.matvec(V)
    assert torch.allclose(a, b, rtol=0, atol=1e-10 * b.abs().max())
    assert not torch.equal(a, torch.zeros_like(a))
    # one routed call per attention layer and chunk (7 tangents in chunks of 4: 2 chunks)
    assert fused.counts["fused_attention"] == 2 * _n_mha(tiny_vit64.clip.visual)
    assert math.counts["fused_attention"] == 0


@needs_op
def test_fused_equals_math_on_hf_clip_and_imagebind(tmp_path):
    from test_models_hf import make_tiny_hf

    models = [load_model(f"hf:{make_tiny_hf(tmp_path / 'clip', 'clip')}"),
              load_model(f"hf:{make_tiny_hf(tmp_path / 'siglip', 'siglip')}"),
              load_model("imagebind:pyvlmx-tiny", seed=0)]
    for m in models:
        m = m.double()
        x0 = _image(m.image_size)
        V = torch.randn(x0.numel(), 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        fused = JacobianOperator(m, x0, chunk_size=3, dtype=torch.float64)
        math = JacobianOperator(m, x0, chunk_size=3, dtype=torch.float64, jvp_backend="math")
        a, b = fused.matvec(V), math.matvec(V)
        assert fused.counts["fused_attention"] > 0, m.name
        assert torch.allclose(a, b, rtol=0, atol=1e-10 * b.abs().max()), m.name


def test_hf_eager_attention_is_routed_and_restored(tmp_path, monkeypatch):
    import pyvlmx.jacobian.operator as operator
    from test_models_hf import make_tiny_hf

    m = load_model(f"hf:{make_tiny_hf(tmp_path / 'clip', 'clip')}")
    cfgs = [mod.config for mod in m.modules() if hasattr(getattr(mod, "config", None), "_attn_implementation")]
    for c in cfgs:
        c._attn_implementation = "eager"
    x = _image(m.image_size, dtype=torch.float32)[None]
    with torch.no_grad(), analysis_mode(m), fa.fused_attention(m) as route:
        m.encode_image(x)
    assert route.fused == 2                                    # two vision layers
    assert all(c._attn_implementation == "eager" for c in cfgs)
    # the operator routes it too, and its f0 is the eager forward's, bit for bit
    monkeypatch.setattr(operator, "fused_available", lambda: True)
    op = JacobianOperator(m, x[0])
    assert op.jvp_backend == "fused"
    with torch.no_grad(), analysis_mode(m):
        assert torch.equal(op.f0, m.encode_image(x, normalize=True)[0])


def test_missing_op_falls_back_to_math_with_one_warning(tiny_clip, monkeypatch):
    import pyvlmx.jacobian.operator as operator

    monkeypatch.setattr(operator, "fused_available", lambda: False)
    monkeypatch.setattr(fa, "_WARNED", False)
    with pytest.warns(RuntimeWarning, match="pyvlmx::attention_jvp is not built"):
        op = JacobianOperator(tiny_clip, _image(32, dtype=torch.float32))
    assert op.jvp_backend == "math"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = JacobianOperator(tiny_clip, _image(32, dtype=torch.float32))
    assert again.jvp_backend == "math"
    again.matvec(torch.randn(3 * 32 * 32, 2))
    assert again.counts["fused_attention"] == 0


def test_model_without_attention_uses_math_silently():
    m = designed_linear(torch.linspace(2.0, 1.0, 6, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op = JacobianOperator(m, _image(8), normalize=False)
    assert op.jvp_backend == "math"
    with pytest.raises(ValueError, match=r"jvp_backend must be one of \('fused', 'math'\), got 'flash'"):
        JacobianOperator(m, _image(8), jvp_backend="flash")


def test_fused_route_has_no_backward(tiny_clip):
    x = _image(32, dtype=torch.float32)[None].requires_grad_(True)
    with analysis_mode(tiny_clip), fa.fused_attention(tiny_clip):
        y = tiny_clip.encode_image(x)
    with pytest.raises(RuntimeError, match="forward-mode only"):
        y.sum().backward()
