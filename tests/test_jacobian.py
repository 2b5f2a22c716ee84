"""Jacobian operator and spectra against a dense torch.func.jacrev Jacobian."""

import json

import numpy as np
import pytest
import torch

from _analysis_models import TanhMLP, designed_linear
from pyvlmx.jacobian import (
    JVP_MODES, VJP_MODES, JacobianOperator, analysis_mode, compare_spectra, effective_rank, exact_svd,
    block_krylov_svd, plot_compare_spectra, plot_spectra, randomized_range_svd, relative_error, spectrum, streaming_svd,
)


def _image(size, seed=0):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny_dense(tiny_clip):
    x0 = _image(32)
    with analysis_mode(tiny_clip):
        J = torch.func.jacrev(lambda x: tiny_clip.encode_image(x.view(1, 3, 32, 32))[0])(x0.reshape(-1))
    return x0, J.double()


@pytest.mark.parametrize("mode", JVP_MODES)
def test_matvec_modes_match_dense(tiny_clip, tiny_dense, mode):
    x0, J = tiny_dense
    op = JacobianOperator(tiny_clip, x0, jvp_mode=mode, chunk_size=3)
    V = torch.randn(J.shape[1], 5, generator=torch.Generator().manual_seed(1))
    got = op.matvec(V).double()
    ref = J @ V.double()
    assert torch.allclose(got, ref, rtol=0, atol=1e-5 * ref.abs().max())
    assert op.counts["jvp"] == 5
    assert op.matvec(V[:, 0]).shape == (J.shape[0],)


@pytest.mark.parametrize("mode", VJP_MODES)
def test_rmatvec_modes_match_dense(tiny_clip, tiny_dense, mode):
    x0, J = tiny_dense
    op = JacobianOperator(tiny_clip, x0, vjp_mode=mode, chunk_size=4)
    U = torch.randn(J.shape[0], 6, generator=torch.Generator().manual_seed(2))
    got = op.rmatvec(U).double()
    ref = J.t() @ U.double()
    assert torch.allclose(got, ref, rtol=0, atol=1e-5 * ref.abs().max())


def test_analysis_mode_restores_state(tiny_clip):
    before = torch.backends.mha.get_fastpath_enabled()
    tiny_clip.check_inputs = True
    with analysis_mode(tiny_clip):
        assert not torch.backends.mha.get_fastpath_enabled()
        assert tiny_clip.check_inputs is False
    assert torch.backends.mha.get_fastpath_enabled() == before
    assert tiny_clip.check_inputs is True


def test_exact_matches_svdvals(tiny_clip, tiny_dense):
    x0, J = tiny_dense
    ref = torch.linalg.svdvals(J)
    op = JacobianOperator(tiny_clip, x0)
    s = exact_svd(op)["singular_values"]
    assert torch.allclose(s, ref, rtol=0, atol=1e-5 * ref[0])
    # unit-norm embedding: the radial direction is in the kernel of J^T
    assert s[-1] < 1e-5 * s[0]


@pytest.mark.parametrize("variant", ["forward", "vjp"])
def test_randomized_full_sketch_is_exact(tiny_clip, tiny_dense, variant):
    # with as many probes as D, the range finder captures range(J) exactly
    x0, J = tiny_dense
    ref = torch.linalg.svdvals(J)[:8]
    op = JacobianOperator(tiny_clip, x0)
    r = randomized_range_svd(op, 8, oversample=J.shape[0] - 8, power_iters=0, variant=variant)
    assert relative_error(r["singular_values"], ref) < 1e-4


@pytest.mark.parametrize("variant", ["forward", "vjp"])
def test_randomized_on_decaying_spectrum(variant):
    s_true = 0.7 ** torch.arange(24, dtype=torch.float64)
    m = designed_linear(s_true)
    op = JacobianOperator(m, _image(8), normalize=False)
    r = randomized_range_svd(op, 6, oversample=6, power_iters=2, seed=3, variant=variant)
    assert relative_error(r["singular_values"], s_true) < 1e-6
    # singular vectors: J v_i = s_i u_i
    J = m.A
    Jv = J @ r["right"]
    assert torch.allclose(Jv, r["left"] * r["singular_values"], atol=1e-3)


def test_randomized_power_iterations_help(tiny_clip, tiny_dense):
    x0, J = tiny_dense
    ref = torch.linalg.svdvals(J)
    op = JacobianOperator(tiny_clip, x0)
    e0 = relative_error(randomized_range_svd(op, 4, oversample=4, power_iters=0)["singular_values"], ref)
    e3 = relative_error(randomized_range_svd(op, 4, oversample=4, power_iters=3)["singular_values"], ref)
    assert e3 < e0 / 3


def test_block_krylov_matches_svdvals(tiny_clip, tiny_dense):
    x0, J = tiny_dense
    ref = torch.linalg.svdvals(J)[:8]
    op = JacobianOperator(tiny_clip, x0)
    r = block_krylov_svd(op, 8, block=10, iters=3)
    assert relative_error(r["singular_values"], ref) < 1e-4
    # (iters + 1) * block JVPs and as many VJPs, capped at D columns
    assert op.counts["jvp"] == op.counts["vjp"] == r["basis_dim"] == min(40, J.shape[0])
    Jv = J.double() @ r["right"]
    assert torch.allclose(Jv, r["left"] * r["singular_values"], atol=1e-4 * float(ref[0]))


def test_block_krylov_beats_subspace_iteration_on_a_flat_spectrum():
    # slowly decaying spectrum: s_i = 1 / (1 + i / 8); same product budget for both
    s_true = 1 / (1 + torch.arange(64, dtype=torch.float64) / 8)
    m = designed_linear(s_true)
    op = JacobianOperator(m, _image(8), normalize=False)
    e_sub = relative_error(randomized_range_svd(op, 8, oversample=4, power_iters=3, seed=1)["singular_values"],
                           s_true)
    e_kry = relative_error(block_krylov_svd(op, 8, block=12, iters=3, seed=1)["singular_values"], s_true)
    assert e_kry < 1e-5 < e_sub
    assert e_kry < e_sub / 100


def test_streaming_full_sketch_is_exact(tiny_clip, tiny_dense):
    x0, J = tiny_dense
    ref = torch.linalg.svdvals(J)
    op = JacobianOperator(tiny_clip, x0, chunk_size=16)     # 2 row blocks of J
    r = streaming_svd(op, 8, range_dim=J.shape[0], core_dim=J.shape[0] + 1)
    assert relative_error(r["singular_values"], ref) < 1e-5
    assert op.counts["vjp"] == J.shape[0]                    # J consumed once


def test_streaming_on_decaying_spectrum():
    s_true = 0.5 ** torch.arange(30, dtype=torch.float64)
    m = designed_linear(s_true)
    op = JacobianOperator(m, _image(8), normalize=False, chunk_size=7)
    r = streaming_svd(op, 4, seed=5)            # r = 17, s = 35 < D
    assert r["range_dim"] == 17
    assert relative_error(r["singular_values"], s_true) < 1e-4


def test_effective_rank_known_values():
    assert effective_rank([1.0] * 7) == pytest.approx(7.0)
    assert effective_rank([3.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert 1.0 < effective_rank([2.0, 1.0]) < 2.0
    with pytest.raises(ValueError, match="must be >= 0"):
        effective_rank([1.0, -1.0])


def test_spectrum_dict_methods_agree_and_serialise(tmp_path):
    s_true = 0.6 ** torch.arange(20, dtype=torch.float64)
    m = designed_linear(s_true)
    img = _image(8)
    res = {meth: spectrum(m, img, k=5, method=meth, normalize=False, chunk_size=8)
           for meth in ("exact", "randomized", "krylov", "vjp", "single-pass", "row-streaming", "streaming")}
    for meth, r in res.items():
        json.dumps(r)
        assert r["k"] == 5 and r["embed_dim"] == 20
        assert relative_error(r["singular_values"], s_true) < 1e-4, meth
    assert res["exact"]["products"]["vjp"] == 20
    assert res["randomized"]["products"]["jvp"] > 0 and res["vjp"]["products"]["jvp"] > 0
    fig = plot_spectra(list(res.values()), tmp_path / "s.png")
    assert (tmp_path / "s.png").is_file()
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and ax.get_ylabel() == "singular value s_i"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(res)
    for line, r in zip(ax.get_lines(), res.values(), strict=True):
        assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
        assert np.allclose(line.get_ydata(), r["singular_values"])
    with pytest.raises(ValueError, match="needs k"):
        spectrum(m, img, method="randomized")
    with pytest.raises(ValueError, match="method must be one of"):
        spectrum(m, img, k=2, method="lanczos")


def test_operator_input_errors(tiny_clip):
    with pytest.raises(ValueError, match=r"expected x0 of shape \(3, H, W\)"):
        JacobianOperator(tiny_clip, torch.rand(2, 3, 32, 32))
    op = JacobianOperator(tiny_clip, _image(32))
    with pytest.raises(ValueError, match=r"expected V of shape \(3072,\)"):
        op.matvec(torch.rand(10, 2))
    with pytest.raises(ValueError, match="jvp_mode must be one of"):
        JacobianOperator(tiny_clip, _image(32), jvp_mode="fwd")


def test_compare_spectra_detects_saturation(tmp_path):
    # a saturating tanh network has a much smaller Jacobian on high-contrast
    # images: the paired tests must find "aligned lower" with exact p-values
    m = TanhMLP(gain=6.0).eval()
    g = torch.Generator().manual_seed(0)
    orig = 0.5 + 0.02 * torch.randn(6, 3, 8, 8, generator=g)
    sat = (torch.rand(6, 3, 8, 8, generator=g) > 0.5).double().float()
    r = compare_spectra(m, orig, sat, method="exact", normalize=False)
    json.dumps(r)
    t = r["tests"]["mean_log_singular_value"]
    assert t["direction"] == "aligned lower"
    assert t["permutation_p"] == pytest.approx(2 / 64)      # all 6 pairs agree: exact 2/2^6
    same = compare_spectra(m, orig, orig.clone(), method="exact", normalize=False)
    assert same["tests"]["effective_rank"]["permutation_p"] == 1.0
    fig = plot_compare_spectra(r, tmp_path / "c.png")
    assert (tmp_path / "c.png").is_file()
    ax, ax2 = fig.axes
    lines = ax.get_lines()
    assert len(lines) == 2 * 6 + 2                   # original and aligned per pair, then the two means
    for p, (lo, la) in zip(r["pairs"], zip(lines[0:12:2], lines[1:12:2])):
        assert np.allclose(lo.get_ydata(), [v for v in p["original"] if v > 0])
        assert np.allclose(la.get_ydata(), [v for v in p["aligned"] if v > 0])
    assert np.allclose(np.log(lines[12].get_ydata()), r["mean_log_sv"]["original"][:len(lines[12].get_ydata())])
    assert [t.get_text() for t in ax2.get_xticklabels()] == ["original", "aligned"]
    medians = [line.get_ydata()[0] for line in ax2.get_lines()[5::7]]    # boxplot: 7 lines per box, median 6th
    assert np.allclose(medians, [np.median([p["erank_original"] for p in r["pairs"]]),
                                 np.median([p["erank_aligned"] for p in r["pairs"]])])
