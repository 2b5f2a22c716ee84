"""Figures of the study that no single stage draws: example grid, confusion, quality."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from pyvlmx.plotting import pyplot, save_figure


def _hwc(x) -> np.ndarray:
    return np.clip(x.detach().cpu().permute(1, 2, 0).numpy(), 0, 1)


def plot_examples(rows: Sequence[dict], path: str | Path):
    """Grid of original | aligned | amplified difference, one row per pair; returns the (closed) Figure.

    Args:
        rows: dicts with ``original`` and ``aligned`` ((3, H, W) tensors in
            [0, 1]), ``true_name``, ``pred_before``, ``pred_after`` (names),
            ``target_name``, ``psnr`` (dB or None), ``linf``.
        path: PNG to write.
    """
    plt = pyplot()
    n = len(rows)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3.1 * n), squeeze=False)
    for i, r in enumerate(rows):
        a, b = _hwc(r["original"]), _hwc(r["aligned"])
        d = b - a
        scale = np.abs(d).max()
        amp = 0.5 + 0.5 * d / scale if scale > 0 else np.full_like(d, 0.5)
        psnr = r.get("psnr")
        psnr_s = "inf" if psnr is None or (isinstance(psnr, float) and math.isinf(psnr)) else f"{psnr:.1f} dB"
        titles = [f"original: {r['true_name']}\npredicted {r['pred_before']}",
                  f"aligned to {r['target_name']}\npredicted {r['pred_after']}, PSNR {psnr_s}",
                  f"difference x{0.5 / scale if scale > 0 else 0:.0f}\nL-inf {r['linf'] * 255:.1f}/255"]
        for j, (img, title) in enumerate(zip((a, b, amp), titles)):
            axes[i, j].imshow(img)
            axes[i, j].set_title(title, fontsize=8)
            axes[i, j].axis("off")
    return save_figure(fig, path, dpi=80)


def plot_confusion(matrix: Sequence[Sequence[int]], classnames: Sequence[str], path: str | Path,
                   xlabel: str = "predicted after alignment", ylabel: str = "target class"):
    """Row-normalised confusion matrix as a heat map; returns the (closed) Figure."""
    plt = pyplot()
    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    C = len(classnames)
    fig, ax = plt.subplots(figsize=(max(5, 0.32 * C + 2), max(4, 0.32 * C + 1.5)))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(C))
    ax.set_yticks(range(C))
    ax.set_xticklabels(classnames, rotation=90, fontsize=6)
    ax.set_yticklabels(classnames, fontsize=6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of row")
    return save_figure(fig, path, dpi=90)


def plot_quality(records: Sequence[dict], path: str | Path):
    """Histograms of PSNR, SSIM and cosine to target over the sweep's pairs; returns the (closed) Figure."""
    plt = pyplot()
    ok = [r for r in records if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(axes, ("psnr", "ssim", "cos_target"),
                              ("PSNR (dB)", "SSIM", "cosine to target")):
        vals = np.array([r[key] for r in ok if r.get(key) is not None], dtype=float)
        vals = vals[np.isfinite(vals)]
        ax.hist(vals, bins=30, color="#4062bb")
        ax.set_xlabel(label)
        ax.set_ylabel("pairs")
    return save_figure(fig, path, dpi=90)
