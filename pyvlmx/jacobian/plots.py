"""Plots of Jacobian spectra (matplotlib, Agg backend): PNG next to the JSON.

Each function saves the PNG at ``path`` and returns the closed Figure (see
:mod:`pyvlmx.plotting`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from pyvlmx.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_spectra(results: Sequence[dict], path: str | Path, labels: Sequence[str] | None = None,
                 title: str = "Jacobian singular values") -> Figure:
    """Singular values (log scale) of one or more :func:`~pyvlmx.jacobian.spectrum` results."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, r in enumerate(results):
        s = np.asarray(r["singular_values"])
        s = s[s > 0]
        ax.semilogy(np.arange(1, len(s) + 1), s, label=labels[i] if labels else r.get("method"))
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value s_i")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_compare_spectra(result: dict, path: str | Path) -> Figure:
    """Paper Fig. 3: per-pair spectra of original (blue) vs aligned (red), means bold."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for p in result["pairs"]:
        for key, c in (("original", "tab:blue"), ("aligned", "tab:red")):
            s = np.asarray(p[key])
            s = s[s > 0]
            ax.semilogy(np.arange(1, len(s) + 1), s, color=c, alpha=0.15, lw=0.8)
    for key, c in (("original", "tab:blue"), ("aligned", "tab:red")):
        m = np.exp(np.asarray(result["mean_log_sv"][key]))
        m = m[m > 1e-250]
        ax.semilogy(np.arange(1, len(m) + 1), m, color=c, lw=2, label=f"{key} (geometric mean)")
    ax.set_xlabel("index i")
    ax.set_ylabel("singular value")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    t = result["tests"]["effective_rank"]
    ax.set_title(f"spectra, {result['n_pairs']} pairs")
    eo = [p["erank_original"] for p in result["pairs"]]
    ea = [p["erank_aligned"] for p in result["pairs"]]
    ax2.boxplot([eo, ea])
    ax2.set_xticks([1, 2], ["original", "aligned"])
    ax2.set_ylabel("effective rank")
    ax2.set_title(f"Wilcoxon p={t['wilcoxon_p']:.3g}, perm p={t['permutation_p']:.3g}")
    return save_figure(fig, path)
