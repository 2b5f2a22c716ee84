"""Random sketches: Philox known answers, bit-identical Omega, statistics, products, errors."""

import numpy as np
import pytest
import torch

from conftest import needs_cuda
from pyvlmx import _reference as ref
from pyvlmx import ops
from _ops_helpers import opcheck, requires

scipy_stats = pytest.importorskip("scipy.stats")


def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    T = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for ctr, key, want in cases:
        got = ref.philox4x32(*[T(c) for c in ctr], *key)
        assert tuple(int(w) for w in got) == want


@requires("_omega_out")
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_compiled_omega_bit_identical_to_twin(kind, dtype):
    for seed, n, r, off in ((0, 37, 13, 0), (12345, 20, 257, 1000), (2**64 - 1, 5, 3, 2**40)):
        got = ops.omega(n, r, seed, kind, off, dtype=dtype)
        want = ref.omega(n, r, ops._seed64(seed), kind, off, dtype=dtype)
        assert torch.equal(got, want), (seed, n, r, off)


def test_row_blocks_and_seeds():
    full = ops.omega(50, 9, seed=7)
    assert torch.equal(ops.omega(20, 9, seed=7, row_offset=30), full[30:])
    assert torch.equal(ops.omega(50, 5, seed=7), full[:, :5])  # columns do not depend on r
    assert torch.equal(ops.omega(50, 9, seed=7), full)  # same seed, same bits
    assert not torch.equal(ops.omega(50, 9, seed=8), full)
    assert torch.equal(ops.omega(50, 9, seed=-1), ops.omega(50, 9, seed=2**64 - 1))


def test_gaussian_statistics():
    w = ops.omega(400, 250, seed=2024).flatten().numpy()  # 10^5 entries
    assert abs(w.mean()) < 4 / np.sqrt(w.size)
    assert abs(w.var() - 1) < 4 * np.sqrt(2 / w.size)
    assert abs(scipy_stats.skew(w)) < 4 * np.sqrt(6 / w.size)
    assert abs(scipy_stats.kurtosis(w)) < 4 * np.sqrt(24 / w.size)
    assert scipy_stats.kstest(w, "norm").pvalue > 1e-3
    # neighbouring entries (same Box-Muller pair) are uncorrelated
    m = ops.omega(20000, 2, seed=5).numpy()
    assert abs(np.corrcoef(m[:, 0], m[:, 1])[0, 1]) < 4 / np.sqrt(m.shape[0])


def test_rademacher_statistics():
    w = ops.omega(300, 333, seed=99, kind="rademacher").numpy()
    assert set(np.unique(w).tolist()) == {-1.0, 1.0}
    pos = int((w > 0).sum())
    assert scipy_stats.chisquare([pos, w.size - pos]).pvalue > 1e-3
    # pairs of neighbours: the four patterns equally likely
    pairs = (w[:, :-1:2] > 0) * 2 + (w[:, 1::2] > 0)
    counts = np.bincount(pairs.astype(np.int64).ravel(), minlength=4)
    assert scipy_stats.chisquare(counts).pvalue > 1e-3


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_sketch_products(kind):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(30, 700, generator=g, dtype=torch.float64)
    om = ops.omega(700, 12, 3, kind)
    torch.testing.assert_close(ops.sketch(A, 12, 3, kind), A @ om, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ops.sketch(A, 12, 3, kind, row_offset=5),
                               A @ ops.omega(700, 12, 3, kind, 5), rtol=1e-12, atol=1e-12)
    B = A.T.contiguous()  # (700, 30)
    torch.testing.assert_close(ops.sketch_t(B, 12, 3, kind), om.T @ B, rtol=1e-12, atol=1e-12)
    # streaming: row blocks with offsets add up to the whole
    parts = sum(ops.sketch_t(B[i:i + 250], 12, 3, kind, row_offset=i) for i in range(0, 700, 250))
    torch.testing.assert_close(parts, ops.sketch_t(B, 12, 3, kind), rtol=1e-12, atol=1e-12)


@requires("sketch")
def test_sketch_matches_twin_large_r():
    """Several Omega tiles (r large -> few rows per tile) and float32."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(8, 300, generator=g)
    got = ops.sketch(A, 3000, 11)
    want = ref.sketch(A, 3000, 11)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@requires("sketch")
def test_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ops.sketch(a, 3, 9), (A,))
    assert torch.autograd.gradcheck(lambda a: ops.sketch_t(a, 3, 9, "rademacher", 4), (A,))
    Ad = A.detach()
    for transpose in (False, True):
        for kind in ("gaussian", "rademacher"):
            opcheck(torch.ops.pyvlmx.sketch, (Ad, 3, 9, kind, 2, transpose))
    opcheck(torch.ops.pyvlmx._sketch_backward, (torch.randn(4, 3, dtype=torch.float64), 6, 9, "gaussian", 0, False))
    opcheck(torch.ops.pyvlmx._sketch_backward, (torch.randn(3, 6, dtype=torch.float64), 4, 9, "gaussian", 0, True))
    opcheck(torch.ops.pyvlmx._omega_out, (torch.empty(5, 7, dtype=torch.float64), 1, "gaussian", 0))


def test_empty_and_non_contiguous():
    A = torch.randn(0, 10, dtype=torch.float64)
    assert ops.sketch(A, 4, 1).shape == (0, 4)
    assert torch.equal(ops.sketch_t(A, 4, 1), torch.zeros(4, 10, dtype=torch.float64))
    assert ops.sketch(torch.randn(3, 5, dtype=torch.float64), 0, 1).shape == (3, 0)
    B = torch.randn(40, 9, dtype=torch.float64).T  # (9, 40), not contiguous
    torch.testing.assert_close(ops.sketch(B, 6, 4), B.contiguous() @ ops.omega(40, 6, 4),
                               rtol=1e-12, atol=1e-12)
    out = torch.empty(6, 5, dtype=torch.float64).T  # non-contiguous output of omega
    if ops.compiled("_omega_out"):
        torch.ops.pyvlmx._omega_out(out, 4, "gaussian", 0)
        assert torch.equal(out, ops.omega(5, 6, 4))


def _errors(sketch):
    A = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"sketch: r must be >= 0, got -1"):
        sketch(A, -1, 0, "gaussian", 0)
    with pytest.raises(ValueError, match=r"sketch: A must be a matrix \(2-D\), got shape"):
        sketch(A[0], 2, 0, "gaussian", 0)
    with pytest.raises(ValueError, match=r"sketch: kind must be one of .*got 'uniform'"):
        sketch(A, 2, 0, "uniform", 0)
    with pytest.raises(ValueError, match=r"sketch: row_offset must be >= 0, got -3"):
        sketch(A, 2, 0, "gaussian", -3)
    with pytest.raises(TypeError, match=r"sketch: A must be a floating-point tensor"):
        sketch(A.to(torch.int64), 2, 0, "gaussian", 0)


@requires("sketch")
def test_errors_compiled():
    _errors(lambda A, r, s, k, o: torch.ops.pyvlmx.sketch(A, r, s, k, o, False))


def test_errors_reference():
    _errors(ref.sketch)
    with pytest.raises(TypeError, match=r"sketch: seed must be an int, got float"):
        ops.sketch(torch.zeros(2, 2), 2, 1.5)


@needs_cuda
@requires("sketch")
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_cuda_omega_bit_identical(kind):
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for seed, n, r, off in ((0, 300, 77, 0), (2**63 + 5, 64, 513, 2**33)):
            cpu = ops.omega(n, r, seed, kind, off, dtype=dtype)
            gpu = ops.omega(n, r, seed, kind, off, dtype=dtype, device="cuda")
            assert torch.equal(gpu.cpu(), cpu), (dtype, seed)
    # the twin on the GPU gives the same bits as well
    twin = ref.omega(50, 9, 3, kind, 7, dtype=torch.float64, device="cuda")
    assert torch.equal(twin.cpu(), ops.omega(50, 9, 3, kind, 7))


@needs_cuda
@requires("sketch")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_sketch_matches_cpu(dtype):
    g = torch.Generator().manual_seed(3)
    A = torch.randn(64, 5000, generator=g).to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 2e-3
    for kind in ("gaussian", "rademacher"):
        torch.testing.assert_close(ops.sketch(A.cuda(), 40, 5, kind).cpu(), ops.sketch(A, 40, 5, kind),
                                   rtol=tol, atol=tol)
        torch.testing.assert_close(ops.sketch_t(A.T.cuda(), 40, 5, kind, 9).cpu(),
                                   ops.sketch_t(A.T.contiguous(), 40, 5, kind, 9), rtol=tol, atol=tol)
    Ad = A[:4, :6].double().cuda().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: ops.sketch(a, 3, 9), (Ad,))
    assert torch.autograd.gradcheck(lambda a: ops.sketch_t(a, 3, 9), (Ad,))
    opcheck(torch.ops.pyvlmx.sketch, (Ad.detach(), 3, 9, "gaussian", 2, False))
