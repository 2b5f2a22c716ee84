"""Single-pass TYUC sketch of J from 2r + s products, against known spectra."""

import math

import pytest
import torch

from _analysis_models import designed_linear
from pyvlmx.jacobian import JacobianOperator, relative_error, spectrum
from pyvlmx.jacobian.operator import row_streaming_svd, single_pass_svd


def _image(size, seed=0):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def _tyuc_bound(s_true: torch.Tensor, r: int, s: int) -> float:
    """TYUC 2019 Thm. 5.1 (real field): bound on E ||J - J_hat||_F^2."""
    tau2 = (s_true ** 2).flip(0).cumsum(0).flip(0)          # tau2[rho] = sum_{j >= rho} sigma_j^2
    best = min((r + rho - 1) / (r - rho - 1) * float(tau2[rho]) for rho in range(0, r - 1))
    return (s - 1) / (s - r - 1) * best


def test_exact_on_rank_r_operator():
    # J of rank 6 (other singular values exactly 0): any r >= 6 recovers it to rounding
    s_true = torch.cat([torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.25], dtype=torch.float64),
                        torch.zeros(18, dtype=torch.float64)])
    m = designed_linear(s_true)
    op = JacobianOperator(m, _image(8), normalize=False, chunk_size=5, dtype=torch.float64)
    r = single_pass_svd(op, 6, range_dim=8, core_dim=17, seed=3)
    assert relative_error(r["singular_values"], s_true[:6]) < 1e-10
    J = m.A
    J_hat = r["left"] * r["singular_values"] @ r["right"].t()
    assert torch.linalg.matrix_norm(J - J_hat) < 1e-10 * torch.linalg.matrix_norm(J)


def test_product_count_and_seed():
    s_true = 0.7 ** torch.arange(24, dtype=torch.float64)
    m = designed_linear(s_true)
    op = JacobianOperator(m, _image(8), normalize=False, chunk_size=7, dtype=torch.float64)
    res = single_pass_svd(op, 3, range_dim=9, seed=1)
    r, s = res["range_dim"], res["core_dim"]
    assert (r, s) == (9, 19)
    assert res["products"] == {"jvp": r + s, "vjp": r}
    assert op.counts["jvp"] + op.counts["vjp"] == 2 * r + s
    same = single_pass_svd(JacobianOperator(m, _image(8), normalize=False, chunk_size=7, dtype=torch.float64), 3,
                           range_dim=9, seed=1)
    assert torch.equal(res["singular_values"], same["singular_values"])
    # the test matrices do not depend on the chunking (only the rounding of the GEMMs does)
    rechunked = single_pass_svd(JacobianOperator(m, _image(8), normalize=False, chunk_size=4, dtype=torch.float64),
                                3, range_dim=9, seed=1)
    assert torch.allclose(res["singular_values"], rechunked["singular_values"], rtol=1e-12, atol=0)
    other = single_pass_svd(op, 3, range_dim=9, seed=2)
    assert not torch.equal(res["singular_values"], other["singular_values"])
    with pytest.raises(ValueError, match="core_dim must be >= range_dim=9"):
        single_pass_svd(op, 3, range_dim=9, core_dim=8)
    with pytest.raises(ValueError, match=r"range_dim must be in \[k=3, 24\]"):
        single_pass_svd(op, 3, range_dim=2)


def test_decaying_spectrum_top_k_and_tyuc_bound():
    # low rank plus decay: 4 large values, then a geometric tail
    s_true = torch.cat([torch.tensor([10.0, 8.0, 6.0, 4.0], dtype=torch.float64),
                        0.6 ** torch.arange(1, 37, dtype=torch.float64)])
    m = designed_linear(s_true)
    op = JacobianOperator(m, _image(8), normalize=False, chunk_size=16, dtype=torch.float64)
    k = 4
    res = single_pass_svd(op, k, seed=0)                     # r = 17, s = 35 (< D = 40)
    assert (res["range_dim"], res["core_dim"]) == (17, 35)
    err = relative_error(res["singular_values"], s_true)
    assert err < 1e-3
    # the Frobenius error of the rank-r reconstruction, averaged over seeds, stays under
    # TYUC's bound on its expectation, and the bound is not vacuous (smaller than ||J||_F^2)
    r, s = 8, 17
    bound = _tyuc_bound(s_true, r, s)
    assert bound < 0.01 * float((s_true ** 2).sum())
    errs = []
    for seed in range(8):
        fit = single_pass_svd(op, r, range_dim=r, core_dim=s, seed=seed)
        J_hat = fit["left"] * fit["singular_values"] @ fit["right"].t()
        errs.append(float(torch.linalg.matrix_norm(m.A - J_hat) ** 2))
    assert sum(errs) / len(errs) < bound
    # and it is no better than the best rank-r approximation (Eckart-Young)
    assert min(errs) >= float((s_true[r:] ** 2).sum()) * (1 - 1e-9)


def test_single_pass_beats_row_streaming_cost_on_tiny_vit(tiny_clip):
    x0 = _image(32)
    op = JacobianOperator(tiny_clip, x0, chunk_size=16)
    D = op.shape[0]
    ref = torch.linalg.svdvals(op.dense().double())
    full = single_pass_svd(op, 8, range_dim=D, core_dim=2 * D + 1)   # r = D: the whole range
    assert relative_error(full["singular_values"], ref) < 1e-4
    row = row_streaming_svd(op, 8, range_dim=D, core_dim=D + 1)
    assert row["products"]["vjp"] == D
    assert relative_error(row["singular_values"], ref) < 1e-4


def test_spectrum_method_single_pass():
    s_true = 0.5 ** torch.arange(30, dtype=torch.float64)
    m = designed_linear(s_true)
    res = spectrum(m, _image(8), k=4, method="single-pass", normalize=False, chunk_size=8, seed=5)
    assert res["method"] == "single-pass"
    assert res["products"] == {"jvp": 17 + 35, "vjp": 17}
    assert relative_error(res["singular_values"], s_true) < 1e-4
    assert math.isfinite(res["effective_rank"])
    old = spectrum(m, _image(8), k=4, method="row-streaming", normalize=False, chunk_size=8)
    assert old["products"] == {"jvp": 0, "vjp": 30}
