"""The noisy-copies generator: distribution, reproducibility, independence of the chunk size."""

import math

import pytest
import torch

from pyvlmx.noise.copies import draw_noise, noisy_copies


def _image(size=8, seed=0):
    return 0.25 + 0.5 * torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
@pytest.mark.parametrize("size", [8, 7])          # 3*7*7 = 147 pixels: not a multiple of 16
def test_copies_do_not_depend_on_chunk(kind, size):
    x = _image(size)
    ref = torch.cat(list(noisy_copies(x, 0.1, 23, seed=3, kind=kind, chunk=23)))
    for chunk in (1, 4, 10, 64):
        parts = list(noisy_copies(x, 0.1, 23, seed=3, kind=kind, chunk=chunk))
        assert [p.shape[0] for p in parts] == [min(chunk, 23 - s) for s in range(0, 23, chunk)]
        assert torch.equal(torch.cat(parts), ref)
    # the first m copies do not depend on n either
    assert torch.equal(torch.cat(list(noisy_copies(x, 0.1, 5, seed=3, kind=kind, chunk=2))), ref[:5])
    # another seed gives other copies
    assert not torch.equal(torch.cat(list(noisy_copies(x, 0.1, 23, seed=4, kind=kind))), ref)


def test_copies_match_one_batched_draw():
    # what the noise and detection loops drew before: one randn per batch from a seeded generator
    x = _image(8)
    g = torch.Generator().manual_seed(11)
    old = torch.cat([x + 0.05 * torch.randn((b, 3, 8, 8), generator=g) for b in (7, 7, 2)])
    new = torch.cat(list(noisy_copies(x, 0.05, 16, seed=11, clamp=False, chunk=5)))
    assert torch.equal(new, old)


def test_generator_continues_one_stream():
    x = _image(8)
    g = torch.Generator().manual_seed(2)
    a = torch.cat(list(noisy_copies(x, 0.1, 3, seed=g)) + list(noisy_copies(x, 0.1, 4, seed=g)))
    b = torch.cat(list(noisy_copies(x, 0.1, 7, seed=2)))
    assert torch.equal(a, b)


def test_gaussian_moments_and_clamp():
    x = _image(8)
    sigma = 0.02
    c = torch.cat(list(noisy_copies(x, sigma, 2000, seed=0, clamp=False, chunk=256)))
    d = (c - x).double()
    n = d.numel()
    assert abs(float(d.mean())) < 5 * sigma / math.sqrt(n)
    assert float(d.std()) == pytest.approx(sigma, rel=5 * math.sqrt(2 / n))
    # fourth moment of a normal: 3 sigma^4
    assert float((d ** 4).mean()) / sigma ** 4 == pytest.approx(3.0, rel=0.03)
    big = torch.cat(list(noisy_copies(x, 1.0, 50, seed=0, clamp=True)))
    assert float(big.min()) == 0.0 and float(big.max()) == 1.0
    unclamped = torch.cat(list(noisy_copies(x, 1.0, 50, seed=0, clamp=False)))
    assert float(unclamped.min()) < 0 and float(unclamped.max()) > 1
    assert torch.equal(big, unclamped.clamp(0, 1))


def test_uniform_noise_range_and_variance():
    g = torch.Generator().manual_seed(0)
    e = draw_noise((20000, 3), 0.3, kind="uniform", generator=g, dtype=torch.float64)
    assert e.dtype == torch.float64 and tuple(e.shape) == (20000, 3)
    assert float(e.min()) >= -0.3 and float(e.max()) <= 0.3
    assert float(e.min()) < -0.29 and float(e.max()) > 0.29
    assert float(e.var()) == pytest.approx(0.3 ** 2 / 3, rel=0.03)
    gz = draw_noise((5, 5), 0.0, generator=g)
    assert torch.equal(gz, torch.zeros(5, 5))


def test_draw_noise_is_sigma_times_standard_normal():
    e = draw_noise((4, 3, 8, 8), 0.25, generator=torch.Generator().manual_seed(9))
    z = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(9))
    assert torch.equal(e, 0.25 * z)


def test_copies_keep_dtype_and_device():
    x = _image(8).double()
    (c,) = list(noisy_copies(x, 0.1, 3, seed=0, device="cpu"))
    assert c.dtype == torch.float64 and c.device.type == "cpu" and tuple(c.shape) == (3, 3, 8, 8)
    assert list(noisy_copies(x, 0.1, 0, seed=0)) == []


def test_errors():
    x = _image(8)
    with pytest.raises(ValueError, match="unknown noise kind 'laplace'.*gaussian"):
        list(noisy_copies(x, 0.1, 3, seed=0, kind="laplace"))
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got -0.1"):
        draw_noise((2,), -0.1)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got nan"):
        draw_noise((2,), float("nan"))
    with pytest.raises(ValueError, match=r"shape \(3, H, W\), got \(1, 3, 8, 8\)"):
        list(noisy_copies(x[None], 0.1, 3, seed=0))
    with pytest.raises(ValueError, match="chunk must be >= 1, got 0"):
        list(noisy_copies(x, 0.1, 3, seed=0, chunk=0))
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        list(noisy_copies(x, 0.1, -1, seed=0))


@pytest.mark.needs_cuda
def test_cuda_copies_do_not_depend_on_chunk():
    x = _image(8).cuda()
    ref = torch.cat(list(noisy_copies(x, 0.1, 9, seed=1, chunk=9)))
    assert ref.device.type == "cuda"
    assert torch.equal(torch.cat(list(noisy_copies(x, 0.1, 9, seed=1, chunk=2))), ref)
