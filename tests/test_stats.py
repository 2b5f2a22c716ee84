"""pyvlmx.stats against exact answers, scipy, and coverage on synthetic scores with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from pyvlmx.stats import auc, auc_ci, bootstrap_ci, paired_bootstrap, tpr_at_fpr, wilson_interval


@pytest.mark.parametrize("k,n,lo,hi", [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
                                       (23, 23, 0.8569, 1.0)])
def test_wilson_matches_the_published_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_covers_the_rate_at_the_nominal_level():
    rng = np.random.default_rng(0)
    p, n = 0.9, 30
    ks = rng.binomial(n, p, size=400)
    cover = np.mean([lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in ks)])
    assert cover >= 0.92


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(1)
    neg = rng.integers(0, 6, 40).astype(float)
    pos = rng.integers(2, 9, 25).astype(float)
    u = sps.mannwhitneyu(pos, neg, alternative="two-sided").statistic
    assert auc(neg, pos) == pytest.approx(u / (neg.size * pos.size), abs=1e-12)
    assert auc([1.0, 2.0], [3.0, 4.0]) == 1.0 and auc([3.0, 4.0], [1.0, 2.0]) == 0.0
    assert auc([1.0], [1.0]) == 0.5


def test_tpr_at_fpr_keeps_the_clean_rate():
    rng = np.random.default_rng(2)
    neg = rng.normal(size=100)
    pos = rng.normal(2.0, 1.0, size=50)
    t = tpr_at_fpr(neg, pos, 0.05)
    thr = np.sort(neg)[100 - 1 - 5]
    assert np.mean(neg > thr) <= 0.05
    assert t == pytest.approx(np.mean(pos > thr))


def test_paired_auc_interval_covers_the_truth():
    # neg ~ N(0, 1), pos ~ N(d, 1): AUC = Phi(d / sqrt 2); 40 images each with one clean and one attacked score
    d = 1.0
    truth = 0.5 * (1 + math.erf(d / 2))
    covered = 0
    for rep in range(200):
        rng = np.random.default_rng(100 + rep)
        shared = rng.normal(size=40) * 0.5  # an image effect both scores share (what pairing keeps)
        neg = shared + rng.normal(size=40)
        pos = shared + d * math.sqrt(1.25) + rng.normal(size=40)  # marginals N(0, 1.25), N(d sqrt 1.25, 1.25)
        _, (lo, hi) = auc_ci(neg, pos, resamples=1000, seed=rep)
        covered += lo <= truth <= hi
    assert covered >= 180, covered


def test_median_interval_covers_the_truth():
    covered = 0
    for rep in range(200):
        x = np.random.default_rng(rep).normal(40.0, 2.0, size=30)
        lo, hi = bootstrap_ci(x, resamples=1000, seed=rep)
        covered += lo <= 40.0 <= hi
    assert covered >= 180, covered


def test_paired_bootstrap_groups_resample_images_together():
    # image 0 has a clean score and three attacked ones; every resample keeps them together, so a statistic
    # that counts attacked per clean score only takes the values the image mix allows
    neg = [0.0, 1.0]
    pos = [5.0, 5.0, 5.0, 6.0]
    lo, hi = paired_bootstrap(lambda a, b: b.size / a.size, neg, pos, neg_groups=[0, 1], pos_groups=[0, 0, 0, 1],
                              resamples=300, seed=0)
    assert {lo, hi} <= {1.0, 2.0, 3.0}


def test_bad_input_is_refused_with_the_value():
    with pytest.raises(ValueError, match="successes must be an integer in \\[0, 5\\], got 6"):
        wilson_interval(6, 5)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="auc: pos is empty"):
        auc([1.0], [])
    with pytest.raises(ValueError, match="NaN or Inf"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="equal lengths, got 2 and 3"):
        paired_bootstrap(auc, [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="confidence must be in \\(0, 1\\), got 1.5"):
        bootstrap_ci([1.0], confidence=1.5)
