"""BatchNorm folding (pyvlmx.models.fuse) against the unfolded network."""

import warnings

import pytest
import torch
from torch import nn

from pyvlmx.models.fuse import fold_batchnorm


def _randomise(bn: nn.BatchNorm2d, g: torch.Generator) -> None:
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


class _Branchy(nn.Module):
    """The conv output feeds the BatchNorm *and* a skip: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_folded_network_computes_the_same_values_and_input_gradients():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)).eval()
    _randomise(net[1], g)
    _randomise(net[4], g)
    x = torch.rand(3, 3, 10, 10, generator=g, dtype=torch.float32)
    xr = x.clone().requires_grad_(True)
    ref = net(xr)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), xr)
    assert fold_batchnorm(net, x) == 2
    assert [type(m).__name__ for m in net] == ["Conv2d", "Identity", "ReLU", "Conv2d", "Identity"]
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    (g_out,) = torch.autograd.grad(out.square().sum(), xr)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_out, g_ref, rtol=1e-4, atol=1e-4)


def test_a_conv_output_used_elsewhere_is_refused_and_left_unfolded():
    g = torch.Generator().manual_seed(1)
    net = _Branchy().eval()
    _randomise(net.bn, g)
    x = torch.rand(2, 3, 6, 6, generator=g)
    before = net(x)
    with pytest.raises(RuntimeError, match="fold_batchnorm: the folded network's output differs by .*left unfolded"):
        fold_batchnorm(net, x)
    assert isinstance(net.bn, nn.BatchNorm2d)
    assert torch.equal(net(x), before)


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="must be in eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)), torch.rand(1, 1, 2, 2))


def test_the_default_model_folded_and_channels_last_matches_timm_as_loaded():
    from pyvlmx.models import load_model

    fast = load_model("conse-efficientnet-lite0")
    plain = load_model("conse-efficientnet-lite0", fast=False)
    assert fast.channels_last and not plain.channels_last
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.classifier.modules())
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ea, eb = fast.encode_image(xa), plain.encode_image(xb)
    torch.testing.assert_close(ea, eb, rtol=0, atol=1e-5)
    (ga,) = torch.autograd.grad(ea[:, 0].sum(), xa)
    (gb,) = torch.autograd.grad(eb[:, 0].sum(), xb)
    torch.testing.assert_close(ga, gb, rtol=1e-3, atol=1e-6)


def test_the_fast_default_model_runs_under_vmap_of_jvp_as_the_noise_and_spectra_stages_do():
    from pyvlmx.models import load_model

    fast = load_model("conse-efficientnet-lite0")
    plain = load_model("conse-efficientnet-lite0", fast=False)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 224, 224, generator=g)
    v = torch.randn(2, 1, 3, 224, 224, generator=g)

    def jv(m):
        return torch.vmap(lambda t: torch.func.jvp(m.encode_image, (x,), (t,))[1])(v)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = jv(fast)
    b = jv(plain)
    assert float((a - b).abs().max()) <= 2e-3 * float(b.abs().max())
    # the global pool gets contiguous features: no per-sample vmap fallback (it warns about as_strided_)
    assert not [w for w in caught if "fallback" in str(w.message) or "as_strided" in str(w.message)]
