"""psnr and ssim: compiled kernels vs the twin, vs scikit-image on photos, gradients, errors."""

import numpy as np
import pytest
import torch

from conftest import needs_cuda
from pyvlmx import _reference as ref
from pyvlmx import ops
from _ops_helpers import lowp_ok, opcheck, requires

skm = pytest.importorskip("skimage.metrics")


def _pair(shape=(2, 3, 24, 30), dtype=torch.float64, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = (a + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a.to(dtype), b.to(dtype)


def _ref_backward(fn, grad, a, b, data_range):
    a = a.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True)
    out = fn(a, b, data_range)
    return torch.autograd.grad(out, (a, b), grad)


# ---------------------------------------------------------------- photos ----

_PHOTOS = None


def _photos():
    """astronaut, chelsea and coffee at 224x224 as a (3, 3, 224, 224) float64 batch in [0, 1]."""
    global _PHOTOS
    if _PHOTOS is None:
        from skimage import data
        from skimage.transform import resize

        imgs = [resize(getattr(data, name)(), (224, 224), anti_aliasing=True)
                for name in ("astronaut", "chelsea", "coffee")]
        _PHOTOS = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous().clamp(0, 1)
    return _PHOTOS


def _distort(x, seed=0):
    """Noise plus a box blur: a realistic degradation with SSIM well below 1."""
    g = torch.Generator().manual_seed(seed)
    blur = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return (blur + 0.03 * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


def _skimage_scores(a, b, data_range=1.0):
    s, p = [], []
    for i in range(a.shape[0]):
        ai, bi = a[i].numpy(), b[i].numpy()
        s.append(skm.structural_similarity(ai, bi, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=data_range,
                                           channel_axis=0))
        p.append(skm.peak_signal_noise_ratio(ai, bi, data_range=data_range))
    return torch.tensor(s, dtype=torch.float64), torch.tensor(p, dtype=torch.float64)


def test_photos_match_skimage():
    a = _photos()
    b = _distort(a)
    s_sk, p_sk = _skimage_scores(a, b)
    assert float(s_sk.max()) < 0.95  # a real distortion, not a trivial case
    torch.testing.assert_close(ops.ssim(a, b), s_sk, rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.psnr(a, b), p_sk, rtol=1e-10, atol=1e-9)
    # the twin too, and another data range
    torch.testing.assert_close(ref.ssim(a, b, 1.0), s_sk, rtol=0, atol=1e-6)
    s2, p2 = _skimage_scores(255 * a, 255 * b, data_range=255.0)
    torch.testing.assert_close(ops.ssim(255 * a, 255 * b, 255.0), s2, rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.psnr(255 * a, 255 * b, 255.0), p2, rtol=1e-10, atol=1e-9)


def test_sample_set_matches_skimage():
    data = pytest.importorskip("pyvlmx.data")
    if not hasattr(data, "load_dataset"):
        pytest.skip("pyvlmx.data.load_dataset not written yet")
    ds = data.load_dataset("samples", 96)
    n = min(4, len(ds))
    a = torch.stack([ds[i][0] for i in range(n)]).double()
    b = _distort(a, seed=1)
    s_sk, p_sk = _skimage_scores(a, b)
    torch.testing.assert_close(ops.ssim(a, b), s_sk, rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.psnr(a, b), p_sk, rtol=1e-10, atol=1e-9)


def test_identical_images():
    a = _photos()[:2]
    assert ops.ssim(a, a).tolist() == [1.0, 1.0]
    assert torch.isinf(ops.psnr(a, a)).all() and (ops.psnr(a, a) > 0).all()
    assert torch.isinf(ref.psnr(a, a, 1.0)).all()


def test_float32_close_to_float64():
    a = _photos()
    b = _distort(a)
    s64, p64 = ops.ssim(a, b), ops.psnr(a, b)
    s32, p32 = ops.ssim(a.float(), b.float()), ops.psnr(a.float(), b.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=0, atol=2e-5)
    torch.testing.assert_close(p32.double(), p64, rtol=1e-6, atol=1e-5)


# ------------------------------------------------------------- vs twin ------

@requires("ssim")
@pytest.mark.parametrize("shape", [(2, 3, 24, 30), (1, 1, 11, 11), (3, 2, 17, 40)])
def test_forward_matches_reference(shape):
    a, b = _pair(shape)
    torch.testing.assert_close(torch.ops.pyvlmx.ssim(a, b, 1.0), ref.ssim(a, b, 1.0),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.ops.pyvlmx.psnr(a, b, 1.0), ref.psnr(a, b, 1.0),
                               rtol=1e-12, atol=1e-12)


@requires("ssim")
@pytest.mark.parametrize("shape", [(2, 3, 24, 30), (1, 2, 11, 13)])
def test_backward_ops_match_reference_autograd(shape):
    a, b = _pair(shape, seed=1)
    grad = torch.tensor([0.7, -1.3], dtype=torch.float64)[: shape[0]]
    for name, fn in (("ssim", ref.ssim), ("psnr", ref.psnr)):
        got = getattr(torch.ops.pyvlmx, f"_{name}_backward")(grad, a, b, 2.0)
        want = _ref_backward(fn, grad, a, b, 2.0)
        for k, w in zip(got, want):
            torch.testing.assert_close(k, w, rtol=1e-9, atol=1e-12)


@requires("ssim")
def test_gradcheck():
    a, b = _pair((2, 1, 11, 12), seed=2)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: ops.ssim(x, y), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: ops.psnr(x, y), (a, b))


def test_ssim_as_a_loss_increases_similarity():
    a, b = _pair((1, 3, 32, 32), seed=3, noise=0.3)
    b = b.clone().requires_grad_(True)
    before = ops.ssim(a, b).item()
    opt = torch.optim.SGD([b], lr=20.0)
    for _ in range(5):
        opt.zero_grad()
        (1 - ops.ssim(a, b)).sum().backward()
        opt.step()
    assert ops.ssim(a, b).item() > before + 0.05


@requires("ssim")
def test_opcheck():
    a, b = _pair((2, 3, 14, 12), seed=4)
    g = torch.tensor([1.0, -0.5], dtype=torch.float64)
    for name in ("ssim", "psnr"):
        opcheck(getattr(torch.ops.pyvlmx, name), (a, b, 1.0))
        opcheck(getattr(torch.ops.pyvlmx, name), (a.float(), b.float(), 255.0))
        opcheck(getattr(torch.ops.pyvlmx, f"_{name}_backward"), (g, a, b, 1.0))


def test_empty_and_non_contiguous():
    a, b = _pair((2, 3, 20, 16), seed=5)
    at, bt = a.transpose(2, 3), b.transpose(2, 3)
    assert not at.is_contiguous()
    torch.testing.assert_close(ops.ssim(at, bt), ref.ssim(at.contiguous(), bt.contiguous(), 1.0),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(ops.psnr(at, bt), ref.psnr(at, bt, 1.0), rtol=1e-12, atol=0)
    e = torch.empty(0, 3, 16, 16, dtype=torch.float64)
    assert ops.ssim(e, e).shape == (0,) and ops.psnr(e, e).shape == (0,)


def _errors(ssim, psnr):
    a, b = _pair((2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"ssim: images must be at least 11x11, got 10x16"):
        ssim(a[:, :, :10], b[:, :, :10], 1.0)
    with pytest.raises(ValueError, match=r"psnr: a and b must have the same shape"):
        psnr(a, b[:1], 1.0)
    with pytest.raises(ValueError, match=r"ssim: a must have shape \(B, C, H, W\), got"):
        ssim(a[0], b[0], 1.0)
    with pytest.raises(ValueError, match=r"ssim: data_range must be > 0, got -1"):
        ssim(a, b, -1.0)
    with pytest.raises(TypeError, match=r"psnr: a and b must have the same dtype"):
        psnr(a, b.float(), 1.0)


@requires("ssim")
def test_errors_compiled():
    _errors(torch.ops.pyvlmx.ssim, torch.ops.pyvlmx.psnr)


def test_errors_reference():
    _errors(ref.ssim, ref.psnr)


# ------------------------------------------------------------------ CUDA ----

@needs_cuda
@requires("ssim")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 24, 30), (1, 1, 11, 11), (2, 3, 224, 224), (1, 2, 37, 50)])
def test_cuda_matches_cpu(dtype, shape):
    a, b = _pair(shape, dtype=dtype, seed=6)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    g = torch.linspace(-1, 1, shape[0], dtype=dtype)
    for name in ("ssim", "psnr"):
        op = getattr(torch.ops.pyvlmx, name)
        torch.testing.assert_close(op(a.cuda(), b.cuda(), 1.0).cpu(), op(a, b, 1.0), rtol=tol, atol=tol)
        bw = getattr(torch.ops.pyvlmx, f"_{name}_backward")
        gc = bw(g.cuda(), a.cuda(), b.cuda(), 1.0)
        gcpu = bw(g, a, b, 1.0)
        scale = max(float(gcpu[0].abs().max()), 1e-30)
        for k, w in zip(gc, gcpu):
            torch.testing.assert_close(k.cpu(), w, rtol=tol, atol=tol * scale)


@needs_cuda
@requires("ssim")
def test_cuda_photos_skimage_gradcheck_opcheck():
    a = _photos().cuda()
    b = _distort(_photos()).cuda()
    s_sk, p_sk = _skimage_scores(a.cpu(), b.cpu())
    torch.testing.assert_close(ops.ssim(a, b).cpu(), s_sk, rtol=0, atol=1e-6)
    torch.testing.assert_close(ops.psnr(a, b).cpu(), p_sk, rtol=1e-10, atol=1e-9)
    assert ops.ssim(a, a).tolist() == [1.0, 1.0, 1.0]
    x, y = _pair((2, 2, 12, 13), seed=7)
    x, y = x.cuda().requires_grad_(True), y.cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: ops.ssim(p, q), (x, y))
    assert torch.autograd.gradcheck(lambda p, q: ops.psnr(p, q), (x, y))
    opcheck(torch.ops.pyvlmx.ssim, (x.detach(), y.detach(), 1.0))
    opcheck(torch.ops.pyvlmx._ssim_backward, (torch.ones(2, device="cuda", dtype=torch.float64),
                                              x.detach(), y.detach(), 1.0))
    opcheck(torch.ops.pyvlmx.psnr, (x.detach(), y.detach(), 1.0))


@needs_cuda
@requires("ssim")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    a, b = _pair((2, 3, 40, 40), seed=8)
    exact_s, exact_p = ref.ssim(a, b, 1.0), ref.psnr(a, b, 1.0)
    al, bl = a.to(dtype).cuda(), b.to(dtype).cuda()
    lowp_ok(torch.ops.pyvlmx.ssim(al, bl, 1.0).cpu(), ref.ssim(al, bl, 1.0).cpu(), exact_s,
            slack=float(torch.finfo(dtype).eps))
    lowp_ok(torch.ops.pyvlmx.psnr(al, bl, 1.0).cpu(), ref.psnr(al, bl, 1.0).cpu(), exact_p,
            slack=float(torch.finfo(dtype).eps) * 30)
