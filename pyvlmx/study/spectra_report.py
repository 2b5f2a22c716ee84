"""The spectra section of the study report: tables of the paired tests, and what they can reach.

:func:`~pyvlmx.jacobian.compare_spectra` tests original against aligned
spectra paired over pairs: a Wilcoxon signed-rank test and a sign-flip
permutation test of the mean difference, on the effective rank and on the
mean log singular value, and one Wilcoxon test per singular-value index,
Holm-corrected over the indices. On n pairs a two-sided test can only reach
so small a p (every pair moving the same way is its most extreme outcome);
:func:`smallest_p` asks each test for it.

Example:
    >>> smallest_p(12, 16)["wilcoxon_p"]       # 2 / 2^12
    0.00048828125
"""

from __future__ import annotations

import numpy as np


def smallest_p(n: int, indices: int, n_perm: int = 10000) -> dict[str, float]:
    """The smallest two-sided p each of compare_spectra's paired tests gives on ``n`` pairs.

    Computed by running the tests themselves on the most extreme sample:
    ``n`` differences of one sign and distinct sizes.

    Args:
        n: pairs.
        indices: singular-value indices the per-index tests are Holm-corrected over.
        n_perm: permutations of the sign-flip test beyond 16 pairs (as in compare_spectra).

    Returns:
        ``{"wilcoxon_p", "permutation_p", "per_index_holm_p"}``.
    """
    from scipy import stats

    from pyvlmx.jacobian.spectra import _sign_flip_pvalue

    if n < 2:
        raise ValueError(f"smallest_p: the paired tests need n >= 2 pairs, got {n}")
    d = np.arange(1.0, n + 1.0)
    w = float(stats.wilcoxon(d, np.zeros(n)).pvalue)
    return {"wilcoxon_p": w, "permutation_p": _sign_flip_pvalue(d, n_perm, 0),
            "per_index_holm_p": min(1.0, indices * w)}


def _kept_indices(spectra: dict) -> list[int]:
    """Indices whose singular value is nonzero in every pair (compare_spectra tests only those)."""
    o = np.array([p["original"] for p in spectra["pairs"]])
    a = np.array([p["aligned"] for p in spectra["pairs"]])
    return np.flatnonzero((o.min(axis=0) > 0) & (a.min(axis=0) > 0)).tolist()


TEST_COLUMNS = ["statistic", "pairs", "mean original", "mean aligned", "mean difference", "direction",
                "Wilcoxon p", "sign-flip permutation p", "smallest p possible (Wilcoxon / permutation)"]


def spectra_tables(spectra: dict) -> list[dict]:
    """Report tables of a compare_spectra result: paired tests, per index, per pair."""
    tests = spectra["tests"]
    n = int(spectra["n_pairs"])
    kept = _kept_indices(spectra)
    low = smallest_p(n, len(kept))
    floor = f"{low['wilcoxon_p']:.2g} / {low['permutation_p']:.2g}"
    rows = [[t["statistic"], n, t["mean_original"], t["mean_aligned"], t["mean_difference"], t["direction"],
             t["wilcoxon_p"], t["permutation_p"], floor]
            for t in (tests["effective_rank"], tests["mean_log_singular_value"])]
    mlog = spectra["mean_log_sv"]
    holm = tests["per_index_wilcoxon_holm_p"]
    index_rows = [[j + 1, mlog["original"][j], mlog["aligned"][j], p] for j, p in zip(kept, holm)]
    pair_rows = [[p["name"], p["erank_original"], p["erank_aligned"], p["wall_time_s"]] for p in spectra["pairs"]]
    return [
        {"columns": TEST_COLUMNS, "rows": rows, "formats": [None, None, "{:.3f}", "{:.3f}", "{:+.3f}", None,
                                                            "{:.2g}", "{:.2g}", None],
         "caption": f"paired tests over {n} original/aligned pairs (two-sided)"},
        {"columns": ["index", "mean log s, original", "mean log s, aligned", "Wilcoxon p, Holm-corrected"],
         "rows": index_rows, "formats": [None, "{:.3f}", "{:.3f}", "{:.2g}"],
         "caption": f"per singular-value index (Holm over {len(kept)} indices; smallest possible "
                    f"{low['per_index_holm_p']:.2g})"},
        {"columns": ["pair", "effective rank, original", "effective rank, aligned", "seconds"], "rows": pair_rows,
         "caption": "per pair"},
    ]


def spectra_text(spectra: dict, requested: int) -> str:
    """The section's prose: sample size, tests, and the smallest p they can reach at that size."""
    n = int(spectra["n_pairs"])
    low = smallest_p(n, len(_kept_indices(spectra)))
    size = f"{n} original/aligned pairs" + (
        f" ({requested} asked for; only {n} usable aligned images)" if requested != n else "")
    return (f"Top-{spectra['k']} singular values of the image-embedding Jacobian ({spectra['method']} route) at "
            f"{size}. Differences are tested paired over pairs: Wilcoxon signed-rank and sign-flip permutation "
            f"tests of the mean difference (aligned - original) of the effective rank and of the mean log "
            f"singular value, and one Wilcoxon test per index, Holm-corrected. At n = {n} the smallest "
            f"two-sided p these tests can give is {low['wilcoxon_p']:.2g} (Wilcoxon), "
            f"{low['permutation_p']:.2g} (permutation) and {low['per_index_holm_p']:.2g} (per index, "
            f"Holm): every pair moving the same way.")
