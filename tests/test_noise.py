"""Noise statistics validated where the answer is known."""

import json

import numpy as np
import pytest
import torch

from _analysis_models import LinearVLM, TanhMLP
from pyvlmx.noise import (
    accuracy_under_noise, anderson_darling, mardia, noise_statistics, plot_accuracy, plot_discrepancy, plot_qq,
)


def _image(size=8, seed=0):
    return 0.25 + 0.5 * torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_linear_model_discrepancy_is_sampling_error(tmp_path):
    g = torch.Generator().manual_seed(123)   # not the noise seed: A must be independent of the noise
    A = torch.randn(10, 192, generator=g) / 192 ** 0.5
    m = LinearVLM(A, image_size=8).eval()
    r = noise_statistics(m, _image(), [1e-3, 0.1, 3.0], n=4000, normalize=False, batch_size=512)
    json.dumps(r)
    for row in r["per_sigma"]:
        # a linear map: the empirical covariance differs from sigma^2 A A^T by sampling alone
        assert row["holds"], row
        assert row["rel_fro"] < 2 * row["sampling_error"]
        # the split-half floor agrees with Gaussian theory
        assert 0.5 < row["sampling_error"] / row["sampling_error_gaussian"] < 2
        assert row["mean_shift_ratio"] < 3
        assert row["mardia"]["skew_p"] > 1e-3 and row["mardia"]["kurt_p"] > 1e-3
    assert r["sigma_linear_max"] == 3.0 and r["sigma_breaks"] is None
    # J J^T of a linear model is A A^T (normalisation: mean 0, std 1)
    ev = torch.linalg.eigvalsh((A @ A.t()).double()).flip(0)[:8]
    assert np.allclose(r["jacobian"]["top_eigenvalues_JJt"], ev.numpy(), rtol=1e-5)
    assert plot_discrepancy(r, tmp_path / "d.png").stat().st_size > 1000
    assert plot_qq(r, tmp_path / "q.png").stat().st_size > 1000


def test_nonlinear_discrepancy_shrinks_with_sigma():
    m = TanhMLP(gain=4.0).eval()
    r = noise_statistics(m, _image(), [0.3, 0.03, 0.003], n=3000, normalize=False, batch_size=500)
    by = {row["sigma"]: row for row in r["per_sigma"]}
    assert by[0.3]["rel_fro"] > 3 * by[0.03]["rel_fro"]
    assert not by[0.3]["holds"]          # strongly nonlinear at sigma=0.3
    assert by[0.003]["holds"]            # linear enough at the smallest sigma
    expected_break = 0.03 if not by[0.03]["holds"] else 0.3
    assert r["sigma_breaks"] == expected_break
    assert r["sigma_linear_max"] == (0.003 if expected_break == 0.03 else 0.03)
    # the covariance shrinks (tanh saturates) rather than merely rotating
    assert by[0.3]["trace_ratio"] < 0.9


def test_normalized_embedding_curvature_shifts_the_mean():
    # unit-norm embeddings live on a sphere: the mean moves inward by O(sigma^2)
    g = torch.Generator().manual_seed(321)
    m = LinearVLM(torch.randn(6, 192, generator=g), image_size=8, bias=torch.full((6,), 3.0)).eval()
    r = noise_statistics(m, _image(), [0.2], n=4000, normalize=True)
    row = r["per_sigma"][0]
    assert row["mean_shift_ratio"] > 3


def test_mardia_and_anderson_on_known_distributions():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3000, 3))
    m = mardia(z)
    assert m["skew_p"] > 0.01 and m["kurt_p"] > 0.01
    assert m["b2"] == pytest.approx(15.0, rel=0.05)          # d (d + 2)
    e = rng.exponential(size=(3000, 3))
    assert mardia(e)["skew_p"] < 1e-6
    assert anderson_darling(e)[0]["reject_5pct"]
    assert not anderson_darling(z[:, :1])[0]["reject_5pct"]
    with pytest.raises(ValueError, match="need z of shape"):
        mardia(z[:2])


def test_noise_statistics_input_errors():
    m = TanhMLP().eval()
    with pytest.raises(ValueError, match="sigmas must be"):
        noise_statistics(m, _image(), [0.0], n=100)
    with pytest.raises(ValueError, match="n must be >= 8"):
        noise_statistics(m, _image(), [0.1], n=4)


def test_accuracy_under_noise(tiny_clip, tmp_path):
    from pyvlmx.zeroshot import ZeroShotClassifier

    names = ["cat", "dog", "car"]
    clf = ZeroShotClassifier(tiny_clip, names)
    imgs = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = clf.predict(imgs)[0]
    r = accuracy_under_noise(tiny_clip, imgs, pred.tolist(), names, sigmas=[0.0, 1e-4, 0.5], n_copies=8,
                             classifier=clf, target_labels=((pred + 1) % 3).tolist())
    json.dumps(r)
    assert r["accuracy"][0] == 1.0          # sigma 0: the images themselves, labelled by prediction
    assert r["accuracy"][1] == 1.0          # 1e-4 changes nothing on this model
    assert r["target_rate"][0] == 0.0
    assert plot_accuracy({"clean": r}, tmp_path / "a.png").stat().st_size > 1000


def test_sweep_subsets_spread_over_images():
    from pyvlmx.noise._cli_common import spread_over_images

    recs = [{"pair_id": p, "image_index": i} for p, i in [(5, 1), (0, 0), (1, 0), (2, 0), (3, 1), (4, 2)]]
    order = [r["pair_id"] for r in spread_over_images(recs)]
    assert order == [0, 3, 4, 1, 5, 2]
