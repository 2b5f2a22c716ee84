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
    _check_discrepancy_plot(plot_discrepancy(r, tmp_path / "d.png"), r)
    assert (tmp_path / "d.png").is_file()
    fig = plot_qq(r, tmp_path / "q.png")
    assert (tmp_path / "q.png").is_file()
    assert len(fig.axes) == 3                                  # one panel per sigma (<= 4)
    for ax, row in zip(fig.axes, r["per_sigma"]):              # sigmas were given in increasing order
        assert ax.get_title().startswith(f"sigma={row['sigma']:.3g}")
        lines = ax.get_lines()
        assert len(lines) == 4 + 1                             # 4 directions + the diagonal
        for line, emp in zip(lines, row["qq"]["standardized"]):
            assert np.allclose(line.get_xdata(), row["qq"]["normal"])
            assert np.allclose(line.get_ydata(), emp)
        assert np.allclose(lines[-1].get_xdata(), lines[-1].get_ydata())
        # standardised Gaussian projections lie on the diagonal (within sampling noise)
        q = np.asarray(row["qq"]["normal"])
        mid = np.abs(q) < 1.5
        assert all(np.max(np.abs(np.asarray(e)[mid] - q[mid])) < 0.15 for e in row["qq"]["standardized"])


def _check_discrepancy_plot(fig, r):
    ax, ax2 = fig.axes
    rows = sorted(r["per_sigma"], key=lambda row: row["sigma"])
    sig = [row["sigma"] for row in rows]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_ylabel() == "relative Frobenius error" and ax.get_xlabel().startswith("sigma")
    fro, floor, gauss, red = ax.get_lines()
    for line, key in ((fro, "rel_fro"), (floor, "sampling_error"), (gauss, "sampling_error_gaussian")):
        assert np.allclose(line.get_xdata(), sig)
        assert np.allclose(line.get_ydata(), [row[key] for row in rows])
    assert list(red.get_xdata()) == [1 / 255, 1 / 255]       # the one-grey-level marker
    assert [t.get_text() for t in ax.get_legend().get_texts()][1].endswith(f"N={r['n']})")
    shift, shift_floor = ax2.get_lines()
    assert np.allclose(shift.get_ydata(), [row["mean_shift"] for row in rows])
    assert np.allclose(shift_floor.get_ydata(), [row["mean_shift_floor"] for row in rows])


def test_nonlinear_discrepancy_shrinks_with_sigma():
    # gain 4 saturates the tanh: the covariance is off by 90% of its norm at sigma 0.3,
    # 60% at 0.1, 20% at 0.03 (3-4x the split-half sampling error of n=3000 for noise
    # seeds 0, 1, 2) and within sampling error at 0.003, so the linear theory breaks
    # at 0.03 and holds up to 0.003
    m = TanhMLP(gain=4.0).eval()
    r = noise_statistics(m, _image(), [0.3, 0.1, 0.03, 0.003], n=3000, normalize=False, batch_size=500)
    by = {row["sigma"]: row for row in r["per_sigma"]}
    assert [by[s]["holds"] for s in (0.3, 0.1, 0.03, 0.003)] == [False, False, False, True]
    assert r["sigma_breaks"] == 0.03
    assert r["sigma_linear_max"] == 0.003
    assert by[0.3]["rel_fro"] > by[0.1]["rel_fro"] > by[0.03]["rel_fro"] > by[0.003]["rel_fro"]
    assert by[0.3]["rel_fro"] > 3 * by[0.03]["rel_fro"]
    assert by[0.3]["ratio"] > 20 and by[0.03]["ratio"] > 2
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
    fig = plot_accuracy({"clean": r}, tmp_path / "a.png")
    assert (tmp_path / "a.png").is_file()
    (ax,) = fig.axes
    acc, target = ax.get_lines()
    assert np.allclose(acc.get_xdata(), [0.0, 1e-4 * 255, 0.5 * 255])
    assert list(acc.get_ydata()) == r["accuracy"] and list(target.get_ydata()) == r["target_rate"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "clean: accuracy (true class)", "clean: classified as target"]
    assert ax.get_xscale() == "symlog" and ax.get_ylabel() == "fraction of noisy copies"


def test_sweep_subsets_spread_over_images():
    from pyvlmx.systematic.aligned import spread_over_images

    recs = [{"pair_id": p, "image_index": i} for p, i in [(5, 1), (0, 0), (1, 0), (2, 0), (3, 1), (4, 2)]]
    order = [r["pair_id"] for r in spread_over_images(recs)]
    assert order == [0, 3, 4, 1, 5, 2]
