"""Streaming moments: equal to torch.cov on the whole data, mergeable, errors."""

import pytest
import torch

from conftest import needs_cuda
from pyvlmx import _reference as ref
from pyvlmx import ops
from pyvlmx.ops import StreamingMoments
from _ops_helpers import opcheck, requires


def _data(N=1000, D=17, seed=0, offset=100.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(D, D, generator=g, dtype=torch.float64)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) @ mix + offset
    return x.to(dtype)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_batches_equal_torch_cov():
    x = _data()
    m = StreamingMoments(x.shape[1])
    for chunk in torch.split(x, [1, 99, 300, 0, 600]):
        m.update(chunk)
    assert m.count == x.shape[0]
    assert _rel(m.mean, x.mean(0)) < 1e-10
    assert _rel(m.covariance(), torch.cov(x.T)) < 1e-10
    assert _rel(m.covariance(unbiased=False), torch.cov(x.T, correction=0)) < 1e-10


def test_merge_of_workers_equals_whole():
    x = _data(N=900, seed=1)
    workers = [StreamingMoments(x.shape[1]) for _ in range(3)]
    for i, chunk in enumerate(torch.split(x, 250)):
        workers[i % 3].update(chunk)
    total = StreamingMoments(x.shape[1])
    for w in workers:
        total.merge(w)
    assert total.count == 900
    assert _rel(total.covariance(), torch.cov(x.T)) < 1e-10
    assert _rel(total.mean, x.mean(0)) < 1e-10
    # merging an empty worker changes nothing
    before = total.comoment.clone()
    total.merge(StreamingMoments(x.shape[1]))
    assert torch.equal(total.comoment, before)


def test_float32_batches_into_float64_state():
    x = _data(N=500, seed=2, dtype=torch.float32)
    m = StreamingMoments(x.shape[1]).update(x[:200]).update(x[200:])
    assert m.dtype == torch.float64
    assert _rel(m.covariance(), torch.cov(x.double().T)) < 1e-10


def test_state_round_trip():
    x = _data(N=300, seed=3)
    m = StreamingMoments(x.shape[1]).update(x[:100])
    m2 = StreamingMoments.from_state(m.state())
    m.update(x[100:])
    m2.update(x[100:])
    assert m2.count == m.count and torch.equal(m2.comoment, m.comoment)
    with pytest.raises(ValueError, match=r"from_state: state lacks \['comoment'\]"):
        StreamingMoments.from_state({"count": 1, "mean": torch.zeros(3)})


@requires("moments_update")
def test_ops_match_reference():
    x = _data(N=400, D=9, seed=4)
    mean, com = ref.moments_update(x[:150], torch.zeros(9, dtype=torch.float64),
                                   torch.zeros(9, 9, dtype=torch.float64), 0)
    got = torch.ops.pyvlmx.moments_update(x[150:], mean, com, 150)
    want = ref.moments_update(x[150:], mean, com, 150)
    for k, w in zip(got, want):
        assert _rel(k, w) < 1e-12
    got = torch.ops.pyvlmx.moments_merge(mean, com, 150, want[0], want[1], 250)
    exp = ref.moments_merge(mean, com, 150, want[0], want[1], 250)
    for k, w in zip(got, exp):
        assert _rel(k, w) < 1e-12


@requires("moments_update")
def test_opcheck():
    x = _data(N=40, D=5, seed=5)
    mean, com = x[:10].mean(0), (x[:10] - x[:10].mean(0)).T @ (x[:10] - x[:10].mean(0))
    opcheck(torch.ops.pyvlmx.moments_update, (x[10:], mean, com, 10))
    opcheck(torch.ops.pyvlmx.moments_update, (x[10:].float(), mean, com, 0))
    opcheck(torch.ops.pyvlmx.moments_update, (x[10:].float(), mean.float(), com.float(), 10))
    opcheck(torch.ops.pyvlmx.moments_merge, (mean, com, 10, mean + 1, com, 7))


def test_empty_and_non_contiguous_batches():
    x = _data(N=60, D=6, seed=6)
    m = StreamingMoments(6).update(x[:0])
    assert m.count == 0 and torch.equal(m.mean, torch.zeros(6, dtype=torch.float64))
    xt = x.T.contiguous().T  # same values, column-major strides
    assert not xt.is_contiguous()
    m.update(xt)
    assert _rel(m.covariance(), torch.cov(x.T)) < 1e-10


def _errors(update, merge):
    mean = torch.zeros(4, dtype=torch.float64)
    com = torch.zeros(4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"moments_update: x must have shape \(N, 4\), got"):
        update(torch.zeros(3, 5, dtype=torch.float64), mean, com, 0)
    with pytest.raises(ValueError, match=r"moments_update: count must be >= 0, got -2"):
        update(torch.zeros(3, 4, dtype=torch.float64), mean, com, -2)
    with pytest.raises(ValueError, match=r"moments_update: comoment must have shape \(4, 4\)"):
        update(torch.zeros(3, 4, dtype=torch.float64), mean, com[:3], 0)
    with pytest.raises(TypeError, match=r"moments_update: x must be a floating-point tensor"):
        update(torch.zeros(3, 4, dtype=torch.int64), mean, com, 0)
    with pytest.raises(ValueError, match=r"moments_merge: count_b must be >= 0, got -1"):
        merge(mean, com, 1, mean, com, -1)


@requires("moments_update")
def test_errors_compiled():
    _errors(torch.ops.pyvlmx.moments_update, torch.ops.pyvlmx.moments_merge)


def test_errors_reference():
    _errors(ref.moments_update, ref.moments_merge)


def test_errors_class():
    with pytest.raises(ValueError, match=r"StreamingMoments: dim must be a positive int, got 0"):
        StreamingMoments(0)
    m = StreamingMoments(3)
    with pytest.raises(ValueError, match=r"StreamingMoments.update: x must have shape \(N, 3\), got \(2, 4\)"):
        m.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"covariance: needs at least 2 samples, got count=0"):
        m.covariance()


@needs_cuda
@requires("moments_update")
@pytest.mark.parametrize("xdtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_matches_cpu(xdtype):
    x = _data(N=5000, D=130, seed=7, dtype=xdtype)
    cpu = StreamingMoments(130)
    gpu = StreamingMoments(130, device="cuda")
    for chunk in torch.split(x, 1700):
        cpu.update(chunk.float() if xdtype == torch.float16 else chunk)
        gpu.update(chunk.cuda())
    assert _rel(gpu.mean.cpu(), cpu.mean) < 1e-12
    assert _rel(gpu.covariance().cpu(), cpu.covariance()) < 1e-10
    other = StreamingMoments(130, device="cuda").update(x[:100].cuda())
    gpu.merge(other)
    cpu.merge(StreamingMoments(130).update(x[:100].float() if xdtype == torch.float16 else x[:100]))
    assert _rel(gpu.covariance().cpu(), cpu.covariance()) < 1e-10
    opcheck(torch.ops.pyvlmx.moments_update, (x[:50].cuda(), gpu.mean, gpu.comoment, gpu.count))
    opcheck(torch.ops.pyvlmx.moments_merge, (gpu.mean, gpu.comoment, 3, other.mean, other.comoment, 4))
