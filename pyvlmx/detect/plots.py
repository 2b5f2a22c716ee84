"""Detector plots (matplotlib, Agg): ROC curves and score distributions, the detection matrix's heat map.

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


def plot_roc(result: dict, path: str | Path, extra: dict | None = None) -> Figure:
    """ROC curves of every score of an :func:`~pyvlmx.detect.evaluate_detector` result.

    ``extra`` maps a label to another result (e.g. the adaptive attacker) whose
    ``combined`` ROC is drawn dashed.
    """
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, e in result["scores"].items():
        ax.plot(e["roc"]["fpr"], e["roc"]["tpr"], lw=2 if name == "combined" else 1,
                label=f"{name} AUC={e['auc']:.3f}")
    for label, r in (extra or {}).items():
        e = r["scores"]["combined"]
        ax.plot(e["roc"]["fpr"], e["roc"]["tpr"], "--", lw=2, label=f"{label}: combined AUC={e['auc']:.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.axvline(result["fpr_target"], color="0.6", lw=0.8)
    ax.set_xlabel("false positive rate (clean flagged)")
    ax.set_ylabel("true positive rate (aligned flagged)")
    ax.set_title(f"noise detector, sigma={result['sigma'] * 255:.2g}/255, K={result['k']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    # score distributions of the best raw score
    best = result["best"] if result["best"] != "combined" else next(iter(result["raw_scores"]["clean"]))
    c = np.asarray(result["raw_scores"]["clean"][best])
    a = np.asarray(result["raw_scores"]["aligned"][best])
    bins = np.linspace(min(c.min(), a.min()), max(c.max(), a.max()) + 1e-12, 25)
    ax2.hist(c, bins=bins, alpha=0.6, label=f"clean (n={c.size})")
    ax2.hist(a, bins=bins, alpha=0.6, label=f"aligned (n={a.size})")
    for label, r in (extra or {}).items():
        ax2.hist(np.asarray(r["raw_scores"]["aligned"][best]), bins=bins, histtype="step", lw=2, label=label)
    ax2.set_xlabel(f"{best} ({result['scores'][best].get('direction', '')})")
    ax2.set_ylabel("images")
    ax2.legend(fontsize=7)
    return save_figure(fig, path)


def plot_matrix(result: dict, path: str | Path) -> Figure:
    """Heat map of a :func:`~pyvlmx.detect.matrix.run_matrix` result: AUC per attack row and detector.

    Colour is the AUC (0.5 = chance, white); each cell's text is the AUC and
    its 95% interval; the row labels carry the attack's success rate.
    """
    plt = pyplot()
    rows = result.get("rows") or list(dict.fromkeys(c["attack"] for c in result["cells"]))
    dets = result.get("detectors_order") or list(dict.fromkeys(c["detector"] for c in result["cells"]))
    by = {(c["attack"], c["detector"]): c for c in result["cells"]}
    auc = np.array([[by[(r, d)]["auc"] for d in dets] for r in rows])
    fig, ax = plt.subplots(figsize=(2.2 + 1.9 * len(dets), 0.9 + 0.52 * len(rows)))
    im = ax.imshow(auc, cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
    for i, r in enumerate(rows):
        for j, d in enumerate(dets):
            c = by[(r, d)]
            dark = abs(c["auc"] - 0.5) > 0.35
            ax.text(j, i, f"{c['auc']:.2f}\n[{c['auc_ci'][0]:.2f}, {c['auc_ci'][1]:.2f}]", ha="center",
                    va="center", fontsize=7.5, color="white" if dark else "black")
    labels = []
    for r in rows:  # an adaptive row's name says which detector it attacks (adaptive-<detector>)
        c = by[(r, dets[0])]
        labels.append(f"{r}\nsuccess {c['attack_success']:.2f}, n={c['n_attacked']}")
    ax.set_xticks(range(len(dets)), dets)
    ax.set_yticks(range(len(rows)), labels, fontsize=7.5)
    ax.xaxis.tick_top()
    eps = result.get("config", {}).get("eps")
    ax.set_title("detection AUC [95% paired bootstrap CI]" + (f", eps = {eps * 255:.3g}/255" if eps else ""),
                 fontsize=9, pad=22)
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="AUC (0.5 = chance)")
    return save_figure(fig, path)
