"""Per-sample linearisation residuals rho(e) on models whose residual is known."""

import json

import numpy as np
import pytest
import torch

from _analysis_models import designed_linear
from pyvlmx import ops
from pyvlmx.models.base import VisionLanguageModel
from pyvlmx.noise import noise_statistics
from pyvlmx.noise.linearisation import linearisation_residuals


class QuadraticVLM(VisionLanguageModel):
    """``x -> A x + 0.5 [x^T B_d x]_d`` (B_d symmetric): f(x0 + e) - f(x0) = J e + 0.5 [e^T B_d e]_d exactly."""

    name = "test-quadratic"
    family = "test"

    def __init__(self, image_size: int = 4, embed_dim: int = 6, curvature: float = 1.0, seed: int = 0):
        super().__init__(image_size=image_size, embed_dim=embed_dim, logit_scale=100.0, mean=(0, 0, 0),
                         std=(1, 1, 1))
        P = 3 * image_size * image_size
        g = torch.Generator().manual_seed(seed)
        B = torch.randn(embed_dim, P, P, generator=g, dtype=torch.float64) / P
        self.register_buffer("A", torch.randn(embed_dim, P, generator=g, dtype=torch.float64) / P ** 0.5)
        self.register_buffer("B", curvature * (B + B.transpose(1, 2)) / 2)

    def _encode_image(self, normalized):
        x = normalized.flatten(1).to(torch.float64)
        return x @ self.A.t() + 0.5 * torch.einsum("dpq,bp,bq->bd", self.B, x, x)

    def _encode_text(self, texts):
        return torch.zeros(len(texts), self.embed_dim, dtype=torch.float64)


def _image(size, seed=0):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_model_rho_is_rounding():
    m = designed_linear(torch.linspace(3.0, 0.1, 12, dtype=torch.float64))
    r = linearisation_residuals(m, _image(8), [1e-4, 1e-2, 1.0], n=40, chunk=16, normalize=False,
                                dtype=torch.float64)
    json.dumps(r)
    for row in r["per_sigma"]:
        assert row["n"] == 40
        assert row["max"] < 1e-12 * max(1.0, 1e-2 / row["sigma"])


def test_quadratic_rho_proportional_to_sigma():
    m = QuadraticVLM()
    x0 = _image(4)
    sigmas = [1e-4, 2e-4, 4e-4, 8e-4]
    r = linearisation_residuals(m, x0, sigmas, n=200, chunk=64, normalize=False, dtype=torch.float64, seed=3)
    med = [row["median"] for row in r["per_sigma"]]
    p90 = [row["p90"] for row in r["per_sigma"]]
    assert 1e-5 < med[0] < 1e-2                      # in the second-order regime, above rounding
    # tolerance fixed in advance: the ratio is 2 (1 + O(rho)), rho <= 1e-2 here
    for i in range(len(sigmas) - 1):
        assert med[i + 1] / med[i] == pytest.approx(2.0, abs=0.02)
        assert p90[i + 1] / p90[i] == pytest.approx(2.0, abs=0.02)
    assert r["loglog_slope"] == pytest.approx(1.0, abs=0.01)
    lo, hi = r["per_sigma"][0]["median_ci"]
    assert lo <= med[0] <= hi


def test_quadratic_rho_matches_closed_form():
    # the same draws, regenerated from the seed, through the exact second-order residual
    m = QuadraticVLM(curvature=3.0)
    x0 = _image(4)
    sigma, n, P = 5e-3, 50, 48
    r = linearisation_residuals(m, x0, [sigma], n=n, chunk=7, normalize=False, dtype=torch.float64, seed=11)
    e = sigma * ops.omega(n, P, 11, dtype=torch.float64)
    x = x0.flatten()
    J = m.A + torch.einsum("dpq,q->dp", m.B, x)
    quad = 0.5 * torch.einsum("dpq,np,nq->nd", m.B, e, e)
    rho = (quad.norm(dim=1) / (e @ J.t() + quad).norm(dim=1)).numpy()
    row = r["per_sigma"][0]
    assert row["median"] == pytest.approx(float(np.median(rho)), rel=1e-9)
    assert row["p90"] == pytest.approx(float(np.quantile(rho, 0.9)), rel=1e-9)
    assert row["max"] == pytest.approx(float(rho.max()), rel=1e-9)


def test_chunking_and_seed():
    m = QuadraticVLM()
    a = linearisation_residuals(m, _image(4), [1e-3], n=30, chunk=4, normalize=False, dtype=torch.float64)
    b = linearisation_residuals(m, _image(4), [1e-3], n=30, chunk=30, normalize=False, dtype=torch.float64)
    c = linearisation_residuals(m, _image(4), [1e-3], n=30, chunk=30, normalize=False, dtype=torch.float64,
                                seed=1)
    assert a["per_sigma"][0]["median"] == pytest.approx(b["per_sigma"][0]["median"], rel=1e-12)
    assert a["per_sigma"][0]["median"] != c["per_sigma"][0]["median"]
    with pytest.raises(ValueError, match="sigmas must be a non-empty list of positive numbers"):
        linearisation_residuals(m, _image(4), [0.0], n=4)
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        linearisation_residuals(m, _image(4), [1e-3], n=0)


def test_tiny_vit_rho_grows(tiny_clip):
    x0 = _image(32).float()
    r = linearisation_residuals(tiny_clip, x0, [1 / 255, 8 / 255], n=32, chunk=16, n_boot=200)
    lo, hi = (row["median"] for row in r["per_sigma"])
    assert hi > 2 * lo
    assert all(row["p90"] >= row["median"] for row in r["per_sigma"])


def test_noise_statistics_reports_linearisation():
    m = QuadraticVLM()
    res = noise_statistics(m, _image(4).float(), [1e-3, 2e-3], n=16, normalize=False, linearisation=24)
    json.dumps(res)
    rows = [s["linearisation"] for s in res["per_sigma"]]
    assert [row["n"] for row in rows] == [24, 24]
    assert rows[1]["median"] / rows[0]["median"] == pytest.approx(2.0, abs=0.05)
    off = noise_statistics(m, _image(4).float(), [1e-3], n=16, normalize=False)
    assert "linearisation" not in off["per_sigma"][0]
