"""Plots of noise statistics (matplotlib, Agg): PNG next to the JSON results.

Each function saves the PNG at ``path`` and returns the closed Figure (see
:mod:`pyvlmx.plotting`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pyvlmx.plotting import pyplot, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_discrepancy(result: dict, path: str | Path) -> Figure:
    """Covariance discrepancy vs sigma with the split-half sampling floor (log-log)."""
    plt = pyplot()
    rows = sorted(result["per_sigma"], key=lambda r: r["sigma"])
    s = np.array([r["sigma"] for r in rows])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax.loglog(s, [r["rel_fro"] for r in rows], "o-", label="|C_emp - s^2 JJ^T|_F / |s^2 JJ^T|_F")
    floor = np.array([r["sampling_error"] for r in rows])
    ax.loglog(s, floor, "k--", label=f"sampling error (split halves, N={result['n']})")
    ax.fill_between(s, floor * 1e-3, 2 * floor, color="0.85", label="holds (<= 2x sampling error)")
    ax.loglog(s, [r["sampling_error_gaussian"] for r in rows], ":", color="0.4", label="Gaussian-theory floor")
    for x in (1 / 255,):
        ax.axvline(x, color="tab:red", lw=0.8, alpha=0.6)
    ax.set_xlabel("sigma (pixels in [0,1]; red line = 1/255)")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title(f"covariance vs linear theory ({result.get('model')})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax2.loglog(s, [r["mean_shift"] for r in rows], "o-", label="|mean - f(x0)|")
    ax2.loglog(s, [r["mean_shift_floor"] for r in rows], "k--", label="sampling floor sqrt(tr C / N)")
    ax2.set_xlabel("sigma")
    ax2.set_ylabel("mean shift")
    ax2.legend(fontsize=7)
    ax2.grid(True, which="both", alpha=0.3)
    return save_figure(fig, path)


def plot_qq(result: dict, path: str | Path, max_sigmas: int = 4) -> Figure:
    """Normal Q-Q plots of the projections on the top predicted principal directions.

    With too few copies for the normality tests (no sigma has Q-Q data), the
    figure holds one note saying so, and no axes.
    """
    plt = pyplot()
    rows = [r for r in sorted(result["per_sigma"], key=lambda r: r["sigma"]) if "qq" in r]
    if len(rows) > max_sigmas:
        idx = np.linspace(0, len(rows) - 1, max_sigmas).round().astype(int)
        rows = [rows[i] for i in idx]
    if not rows:
        # too few copies for the normality tests (see pyvlmx.noise.config.MIN_NORMALITY_COPIES): say so in
        # the figure rather than fail after the analysis has run
        from pyvlmx.noise.config import MIN_NORMALITY_COPIES

        fig, ax = plt.subplots(figsize=(4.8, 3.2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no Q-Q plot: not enough samples\n(n = {result.get('n')} noisy copies per sigma; "
                          f"the normality tests need n >= {MIN_NORMALITY_COPIES})",
                ha="center", va="center", fontsize=9, transform=ax.transAxes)
        return save_figure(fig, path)
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rows):
        q = np.asarray(r["qq"]["normal"])
        for j, emp in enumerate(r["qq"]["standardized"]):
            ad = r["anderson"][j]["statistic"]
            ax.plot(q, emp, ".", ms=3, label=f"dir {j + 1} (AD {ad:.2f})")
        ax.plot(q, q, "k-", lw=0.8)
        m = r.get("mardia") or {}
        ax.set_title(f"sigma={r['sigma']:.3g}\nMardia skew p={m.get('skew_p', float('nan')):.2g}, "
                     f"kurt p={m.get('kurt_p', float('nan')):.2g}", fontsize=8)
        ax.set_xlabel("normal quantile")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("standardized projection quantile")
    return save_figure(fig, path)


def plot_accuracy(results: dict, path: str | Path) -> Figure:
    """Zero-shot accuracy vs sigma; ``results`` maps a label ("clean", "aligned") to
    an :func:`~pyvlmx.noise.accuracy_under_noise` result."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, r in results.items():
        s = np.asarray(r["sigmas"]) * 255
        ax.plot(s, r["accuracy"], "o-", label=f"{label}: accuracy (true class)")
        if r.get("target_rate") is not None:
            ax.plot(s, r["target_rate"], "s--", label=f"{label}: classified as target")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("sigma x 255 (grey levels)")
    ax.set_ylabel("fraction of noisy copies")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
