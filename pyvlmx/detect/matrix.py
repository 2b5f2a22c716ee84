"""The detection matrix: attacks against detectors, each cell an AUC with its paired bootstrap interval.

For N clean images, every attack row (:mod:`pyvlmx.detect.attacks`, plus one
adaptive attacker per detector with ``adaptive``) gives attacked versions of
them, all at one L-inf budget and rounded to 8 bits; every detector
(:mod:`pyvlmx.detect.baselines`) scores the clean and the attacked images.

Calibration on clean images only, cross-fitted: image i (clean and attacked
alike) is in fold ``i % folds``, and its statistic uses the clean images of
the other folds only (the noise detector's median and MAD; TTC's and feature
squeezing's statistics need no calibration).  The TPR at 5% FPR puts the
threshold at the clean scores' (1 - fpr) point (:func:`pyvlmx.stats.tpr_at_fpr`);
``heldout`` repeats it with each fold's threshold set on the other folds'
clean images, and reports the FPR that threshold gives on held-out clean
images.  No threshold ever sees an attacked image.

Intervals: 95% paired percentile bootstrap over images
(:func:`pyvlmx.stats.paired_bootstrap`, groups = image index: an image drawn
m times brings its clean score and its attacked score m times each);
attack success with Wilson's interval.  The clean images are the 8-bit
rounding of the inputs (what a PNG of them holds), so clean and attacked
images differ by the attack alone, not by the rounding.

Example (a tiny random model; noise controls only):
    >>> import torch
    >>> from pyvlmx.models import load_model
    >>> m = load_model("open_clip:pyvlmx-tiny-vit", seed=0)
    >>> x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> r = run_matrix(m, x, [0, 1, 2, 3, 0, 1], ["cat", "dog", "car", "ship"], attacks=["noise"],
    ...                detectors=["ttc", "squeeze"], resamples=1000)
    >>> [(c["attack"], c["detector"]) for c in r["cells"]][:2]
    [('noise-gaussian', 'ttc'), ('noise-gaussian', 'squeeze')]
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
import torch

from pyvlmx import stats
from pyvlmx.detect.attacks import VARIANTS, AttackContext, AttackedSet, run_attack
from pyvlmx.detect.baselines import Detector, NoiseDetector, SqueezeDetector, TTCDetector
from pyvlmx.detect.classifier import ZeroShotLogits
from pyvlmx.detect.config import MATRIX_ATTACKS, MATRIX_DETECTORS, MatrixConfig, check_attacks, check_detectors

#: cells' keys every consumer may rely on (the issue's schema)
CELL_KEYS = ("attack", "detector", "auc", "auc_ci", "tpr_at_5fpr", "tpr_ci", "n_clean", "n_attacked",
             "attack_success")


def text_targets(labels: Sequence[int], n_classes: int) -> list[int]:
    """Target class of image i: ``(y_i + 1 + i mod (C - 1)) mod C`` (never its own class)."""
    return [(int(y) + 1 + (i % (n_classes - 1))) % n_classes for i, y in enumerate(labels)]


def image_targets(labels: Sequence[int]) -> list[int]:
    """Target photo of image i: the next image (cyclically) whose label differs."""
    n = len(labels)
    out = []
    for i, y in enumerate(labels):
        j = next((k % n for k in range(i + 1, i + n) if labels[k % n] != y), None)
        if j is None:
            raise ValueError("alignment-image needs photos of at least 2 classes")
        out.append(j)
    return out


def make_detectors(names: Sequence[str], model, class_weights: torch.Tensor, cfg: MatrixConfig) -> dict:
    """The matrix's detectors by name, with the settings of ``cfg``."""
    dets: dict[str, Detector] = {}
    for n in names:
        if n == "noise":
            dets[n] = NoiseDetector(model, class_weights, sigma=cfg.noise_sigma, k=cfg.noise_k, seed=cfg.seed)
        elif n == "ttc":
            dets[n] = TTCDetector(model, eps=cfg.ttc_eps, draws=cfg.ttc_draws, threshold=cfg.ttc_threshold,
                                  seed=cfg.seed)
        else:
            dets[n] = SqueezeDetector(model, class_weights, bits=cfg.squeeze_bits, median=cfg.squeeze_median)
    return dets


def _rows_of(raw: dict, keep: np.ndarray) -> dict:
    return {k: np.asarray(v)[keep] for k, v in raw.items()}


def crossfit(det: Detector, clean_raw: dict, raw: dict, index: np.ndarray, folds: int) -> dict[str, np.ndarray]:
    """Statistics of ``raw`` (images of clean indices ``index``), each calibrated without its own fold.

    Image ``index[j]`` is in fold ``index[j] % folds``; its statistic uses
    the clean raw scores of the images in the other folds.
    """
    n_clean = len(next(iter(clean_raw.values())))
    clean_fold = np.arange(n_clean) % folds
    fold = np.asarray(index) % folds
    out: dict[str, np.ndarray] = {}
    for f in range(folds):
        sel = fold == f
        if not sel.any():
            continue
        st = det.statistics(_rows_of(clean_raw, clean_fold != f), _rows_of(raw, sel))
        for k, v in st.items():
            out.setdefault(k, np.zeros(len(fold)))[sel] = v
    return out


def _ci(pair) -> list[float]:
    return [float(pair[0]), float(pair[1])]


def _cell(row: AttackedSet, det: str, neg: np.ndarray, pos: np.ndarray, success: np.ndarray, cfg: MatrixConfig,
          extra: dict) -> dict:
    """One cell: AUC and TPR at ``cfg.fpr`` with paired bootstrap intervals, attack success with Wilson's."""
    n = neg.size
    ids_neg, ids_pos = np.arange(n), np.asarray(row.index)
    boot = {"neg_groups": ids_neg, "pos_groups": ids_pos, "resamples": cfg.resamples, "seed": cfg.seed}
    fpr = cfg.fpr

    def tpr(a, b):
        return stats.tpr_at_fpr(a, b, fpr)

    k = int(success.sum())
    cell = {"attack": row.name, "detector": det,
            "auc": stats.auc(neg, pos), "auc_ci": _ci(stats.paired_bootstrap(stats.auc, neg, pos, **boot)),
            "tpr_at_5fpr": tpr(neg, pos), "tpr_ci": _ci(stats.paired_bootstrap(tpr, neg, pos, **boot)),
            "n_clean": int(n), "n_attacked": int(pos.size),
            "attack_success": k / pos.size, "attack_success_ci": _ci(stats.wilson_interval(k, pos.size)),
            "n_successful": k, "fpr": fpr, "adaptive": row.adaptive_for is not None,
            "adaptive_for": row.adaptive_for}
    if k:  # the same detector on the successful attacked images only
        ok = success.astype(bool)
        cell["auc_successful"] = stats.auc(neg, pos[ok])
        cell["auc_successful_ci"] = _ci(stats.paired_bootstrap(stats.auc, neg, pos[ok], neg_groups=ids_neg,
                                                               pos_groups=ids_pos[ok], resamples=cfg.resamples,
                                                               seed=cfg.seed))
    else:
        cell["auc_successful"] = cell["auc_successful_ci"] = None
    # held-out operating point: each fold's threshold from the other folds' clean images
    fold_neg, fold_pos = ids_neg % cfg.folds, ids_pos % cfg.folds
    tp = fp = 0.0
    for f in range(cfg.folds):
        out_f = neg[fold_neg != f]
        if (fold_pos == f).any():
            tp += tpr(out_f, pos[fold_pos == f]) * int((fold_pos == f).sum())
        fp += tpr(out_f, neg[fold_neg == f]) * int((fold_neg == f).sum())
    cell["heldout"] = {"tpr": tp / pos.size, "fpr": fp / n}
    cell.update(extra)
    return cell


def _success(row: AttackedSet, pred: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    if row.targets is not None:
        return pred == np.asarray(row.targets)
    return pred != np.asarray([labels[i] for i in row.index])


def run_matrix(model, images: torch.Tensor, labels: Sequence[int], classnames: Sequence[str], *,
               attacks: Sequence[str] = MATRIX_ATTACKS, detectors: Sequence[str] = MATRIX_DETECTORS,
               adaptive: bool = False, eps: float = 4 / 255, steps: int = 5, seed: int = 0,
               resamples: int = 1000, log: Callable[[str], None] | None = None,
               config: MatrixConfig | None = None) -> dict:
    """Every attack against every detector on ``images``: the ``detect_matrix.json`` dict.

    Args:
        model: a :class:`~pyvlmx.models.base.VisionLanguageModel`.
        images: (N, 3, H, W) clean images in [0, 1] (rounded to 8 bits here).
        labels: (N,) true classes.
        classnames: the C class names (zero-shot classifier, targets).
        attacks: names from :data:`~pyvlmx.detect.config.MATRIX_ATTACKS`;
            each gives the rows of :data:`~pyvlmx.detect.attacks.VARIANTS`.
        detectors: names from :data:`~pyvlmx.detect.config.MATRIX_DETECTORS`.
        adaptive: add the adaptive attacker of each detector
            (:func:`~pyvlmx.detect.adaptive.adaptive_attack`), on the first
            ``config.adaptive_images`` images.
        eps: L-inf budget of every attack.
        steps: iterations of PGD and APGD (the alignment attacks stop at
            the target class, at most ``config.align_steps`` steps).
        seed: seed of attacks, noise and bootstrap.
        resamples: bootstrap resamples (>= 1000).
        log: called with progress lines (default: silent).
        config: the remaining options (:class:`~pyvlmx.detect.config.MatrixConfig`);
            its attacks, detectors, adaptive, eps, steps, seed and resamples
            are replaced by the arguments above.

    Returns:
        JSON-able dict: ``cells`` (one per attack row and detector: ``attack``,
        ``detector``, ``auc``, ``auc_ci``, ``tpr_at_5fpr``, ``tpr_ci``,
        ``n_clean``, ``n_attacked``, ``attack_success`` and its Wilson
        ``attack_success_ci``, ``auc_successful`` (only the successful
        attacked images), ``heldout`` TPR/FPR, ``adaptive``/``adaptive_for``,
        and detector extras: the noise detector's per-score AUCs, TTC at its
        published threshold), ``rows`` (attack rows in order), ``attacks``
        (per row: family, targeted, config, success per image, L-inf, time),
        ``detectors`` (settings, time), ``scores`` (every statistic the cells
        were computed from: ``clean[detector]``, ``attacked[row][detector]``,
        ``index[row]``), ``config``, ``timing``, ``n_images``,
        ``clean_accuracy``, ``model``.

    Raises:
        ValueError: an unknown attack or detector (listing the known ones),
            bad options or inputs, before any attack runs.
    """
    t_start = time.perf_counter()
    say = log or (lambda _msg: None)
    cfg = dataclasses.replace(config or MatrixConfig(), attacks=check_attacks(attacks),
                              detectors=check_detectors(detectors), adaptive=bool(adaptive), eps=eps, steps=steps,
                              seed=seed, resamples=resamples)
    cfg.validate()
    from pyvlmx.attacks import quantize_to_budget
    from pyvlmx.models.base import check_pixels
    from pyvlmx.zeroshot import ZeroShotClassifier

    check_pixels(images, getattr(model, "image_size", None), name="images")
    labels = [int(y) for y in labels]
    N, C = images.shape[0], len(classnames)
    if len(labels) != N:
        raise ValueError(f"run_matrix: {N} images but {len(labels)} labels")
    if N < 2 * cfg.folds:
        raise ValueError(f"run_matrix: {cfg.folds}-fold calibration needs at least {2 * cfg.folds} images, got {N}")
    bad = [y for y in labels if not 0 <= y < C]
    if bad:
        raise ValueError(f"run_matrix: labels out of range [0, {C}): {bad[:5]}")
    if "apgd" in cfg.attacks and C < 4:
        raise ValueError(f"run_matrix: apgd's DLR losses need at least 4 classes, got {C}")
    if C < 2:
        raise ValueError(f"run_matrix: need at least 2 classes, got {C}")

    device = getattr(model, "device", images.device)
    x = quantize_to_budget(images.detach().to(device=device, dtype=torch.float32))
    W = ZeroShotClassifier(model, list(classnames)).weights.to(device)
    net = ZeroShotLogits(model, W)
    clean_pred = net.predict(x, cfg.batch_size).cpu().numpy()
    tt = text_targets(labels, C)
    ctx = AttackContext(model, W, x, labels, tt, image_targets(labels) if "alignment-image" in cfg.attacks else [],
                        eps=cfg.eps, steps=cfg.steps, align_steps=cfg.align_steps, seed=cfg.seed,
                        batch_size=cfg.batch_size, apgdt_targets=cfg.apgdt_targets)
    say(f"[matrix] {N} images, {C} classes, eps={cfg.eps * 255:.3g}/255, steps={cfg.steps} "
        f"(alignment <= {cfg.align_steps}); "
        f"attacks {list(cfg.attacks)}, detectors {list(cfg.detectors)}{', adaptive' if cfg.adaptive else ''}")

    dets = make_detectors(cfg.detectors, model, W, cfg)
    det_time = {d: 0.0 for d in dets}

    shared = [d for d in dets if d in ("ttc", "squeeze")]   # both start from the features of the image

    def score_all(imgs: torch.Tensor, offset: int) -> dict:
        feats, t_feat = None, 0.0
        if shared:
            t0 = time.perf_counter()
            with torch.no_grad():
                feats = torch.cat([model.encode_image(imgs[b:b + 16], normalize=False)
                                   for b in range(0, imgs.shape[0], 16)])
            t_feat = (time.perf_counter() - t0) / len(shared)
        out = {}
        for d in dets:
            t0 = time.perf_counter()
            out[d] = dets[d].raw(imgs, seed_offset=offset, features=feats if d in shared else None)
            det_time[d] += time.perf_counter() - t0 + (t_feat if d in shared else 0.0)
        return out

    all_idx = np.arange(N)
    clean_raw = score_all(x, 0)
    clean_stat = {d: crossfit(dets[d], clean_raw[d], clean_raw[d], all_idx, cfg.folds) for d in dets}
    say(f"[matrix] clean images scored ({', '.join(f'{d} {det_time[d]:.1f} s' for d in dets)})")

    rows: list[AttackedSet] = []
    for a in cfg.attacks:
        got = run_attack(a, ctx)
        rows += got
        say(f"[matrix] {a}: {', '.join(f'{r.name} {r.wall_s:.1f} s' for r in got)}")
    if cfg.adaptive:
        from pyvlmx.detect.adaptive import adaptive_attack

        n_ad = N if cfg.adaptive_images == 0 else min(N, cfg.adaptive_images)
        for d in dets:
            keep = np.arange(n_ad)
            adv, acfg = adaptive_attack(d, model, x[:n_ad], tt[:n_ad], W, clean_raw=clean_raw[d], eps=cfg.eps,
                                        steps=cfg.adaptive_steps, eot_samples=cfg.adaptive_eot_samples,
                                        penalty_weight=cfg.penalty_weight, noise_sigma=cfg.noise_sigma,
                                        ttc_eps=cfg.ttc_eps, squeeze_bits=cfg.squeeze_bits,
                                        squeeze_median=cfg.squeeze_median, seed=cfg.seed, batch_size=cfg.batch_size,
                                        gated=cfg.penalty_gated)
            rows.append(AttackedSet(f"adaptive-{d}", "adaptive", adv, keep.tolist(), tt[:n_ad], acfg,
                                    acfg["wall_s"], adaptive_for=d))
            say(f"[matrix] adaptive attacker of {d}: {acfg['wall_s']:.1f} s on {n_ad} images")
    t_attacks = time.perf_counter()

    cells, attacked_scores, attack_info = [], {}, {}
    boot_s = 0.0
    for ri, row in enumerate(rows):
        pred = net.predict(row.images, cfg.batch_size).cpu().numpy()
        success = _success(row, pred, labels)
        ref = x[torch.as_tensor(row.index, device=x.device)]
        linf = (row.images - ref).abs().flatten(1).max(dim=1).values.cpu()
        attack_info[row.name] = {
            "family": row.family, "targeted": row.targets is not None, "adaptive_for": row.adaptive_for,
            "n": len(row.index), "config": row.config, "wall_s": row.wall_s,
            "success": success.astype(bool).tolist(), "predictions": pred.tolist(),
            "targets": row.targets, "linf_max": float(linf.max()), "perturbed": int((linf > 0).sum()),
            "success_rate": float(success.mean()),
            "success_ci": _ci(stats.wilson_interval(int(success.sum()), len(row.index)))}
        attacked_scores[row.name] = {}
        raws = score_all(row.images, 1_000_003 * (ri + 1))
        for d in dets:
            raw = raws[d]
            st = crossfit(dets[d], clean_raw[d], raw, np.asarray(row.index), cfg.folds)
            neg, pos = clean_stat[d]["score"], st["score"]
            attacked_scores[row.name][d] = pos.tolist()
            extra: dict = {}
            if d == "noise":  # today's scores, one by one: |z| statistic and the raw score's direction
                extra["scores"] = {
                    n: {"auc": stats.auc(clean_stat[d][n], st[n]),
                        "auc_raw": stats.auc(np.asarray(clean_raw[d][n]), np.asarray(raw[n]))}
                    for n in dets[d].det.scores}
            elif d == "ttc":
                fa, fc = dets[d].flagged(raw), dets[d].flagged(clean_raw[d])
                extra["at_published_threshold"] = {
                    "threshold": dets[d].threshold, "tpr": float(fa.mean()),
                    "tpr_ci": _ci(stats.wilson_interval(int(fa.sum()), fa.size)),
                    "fpr": float(fc.mean()), "fpr_ci": _ci(stats.wilson_interval(int(fc.sum()), fc.size))}
            t0 = time.perf_counter()
            cells.append(_cell(row, d, neg, pos, success, cfg, extra))
            boot_s += time.perf_counter() - t0
        best = max((c for c in cells if c["attack"] == row.name), key=lambda c: c["auc"])
        say(f"[matrix] {row.name:18s} success {success.mean():.2f}  "
            + "  ".join(f"{c['detector']} AUC {c['auc']:.2f}" for c in cells if c["attack"] == row.name)
            + f"  (best {best['detector']})")
    t_end = time.perf_counter()
    attack_time = {r.name: r.wall_s for r in rows}
    return {
        "cells": cells,
        "rows": [r.name for r in rows],
        "detectors_order": list(dets),
        "attacks": attack_info,
        "detectors": {d: {**dets[d].describe(), "wall_s": det_time[d]} for d in dets},
        "scores": {"clean": {d: clean_stat[d]["score"].tolist() for d in dets},
                   "attacked": attacked_scores, "index": {r.name: list(r.index) for r in rows}},
        "config": dataclasses.asdict(cfg) | {"variants": {a: list(VARIANTS[a]) for a in cfg.attacks}},
        "timing": {"attacks_s": attack_time, "detectors_s": det_time, "attack_total_s": sum(attack_time.values()),
                   "detector_total_s": sum(det_time.values()), "bootstrap_s": boot_s,
                   "attack_phase_s": t_attacks - t_start, "total_s": t_end - t_start},
        "n_images": N,
        "classnames": list(classnames),
        "labels": labels,
        "clean_accuracy": float((clean_pred == np.asarray(labels)).mean()),
        "clean_predictions": clean_pred.tolist(),
        "model": getattr(model, "name", type(model).__name__),
    }


def matrix_markdown(result: dict) -> str:
    """The matrix as Markdown: AUC [95% CI] per attack row and detector, attack success, then TPR at 5% FPR.

    Example:
        >>> cell = {"attack": "pgd-targeted", "detector": "ttc", "auc": 0.9, "auc_ci": [0.8, 0.97],
        ...         "tpr_at_5fpr": 0.5, "tpr_ci": [0.3, 0.7], "attack_success": 1.0,
        ...         "attack_success_ci": [0.86, 1.0], "n_clean": 23, "n_attacked": 23, "adaptive_for": None}
        >>> print(matrix_markdown({"cells": [cell], "rows": ["pgd-targeted"], "detectors_order": ["ttc"],
        ...                        "config": {"eps": 4 / 255, "resamples": 1000}}).splitlines()[4])
        | pgd-targeted | 23 | 1.00 [0.86, 1.00] | 0.90 [0.80, 0.97] |
    """
    rows = result.get("rows") or list(dict.fromkeys(c["attack"] for c in result["cells"]))
    dets = result.get("detectors_order") or list(dict.fromkeys(c["detector"] for c in result["cells"]))
    by = {(c["attack"], c["detector"]): c for c in result["cells"]}
    cfg = result.get("config", {})
    eps = cfg.get("eps")

    def iv(v, ci):
        return f"{v:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"

    def label(r):
        c = by[(r, dets[0])]
        return f"{r} (adaptive vs {c['adaptive_for']})" if c.get("adaptive_for") else r

    head = (f"Detection AUC [95% paired bootstrap CI, {cfg.get('resamples', '?')} resamples over images]"
            + (f", L-inf budget {eps * 255:.3g}/255" if eps else "") + "; attack success [Wilson 95% CI].")
    lines = [head, "", "| attack | n | attack success | " + " | ".join(f"{d} AUC" for d in dets) + " |",
             "|---|---|---|" + "---|" * len(dets)]
    for r in rows:
        c0 = by[(r, dets[0])]
        lines.append(f"| {label(r)} | {c0['n_attacked']} | {iv(c0['attack_success'], c0['attack_success_ci'])} | "
                     + " | ".join(iv(by[(r, d)]["auc"], by[(r, d)]["auc_ci"]) for d in dets) + " |")
    fpr = 100 * by[(rows[0], dets[0])].get("fpr", 0.05)
    lines += ["", f"TPR at {fpr:g}% FPR [95% CI] (threshold from the clean scores only):", "",
              "| attack | " + " | ".join(f"{d} TPR" for d in dets) + " |", "|---|" + "---|" * len(dets)]
    for r in rows:
        lines.append(f"| {label(r)} | "
                     + " | ".join(iv(by[(r, d)]["tpr_at_5fpr"], by[(r, d)]["tpr_ci"]) for d in dets) + " |")
    ttc = [by[(r, "ttc")] for r in rows if (r, "ttc") in by and "at_published_threshold" in by[(r, "ttc")]]
    if ttc:
        p = ttc[0]["at_published_threshold"]
        intro = (f"TTC at its published threshold (tau < {p['threshold']:g}): clean images flagged "
                 f"{iv(p['fpr'], p['fpr_ci'])}; attacked images flagged:")
        lines += ["", intro, "", "| attack | flagged |", "|---|---|"]
        for c in ttc:
            a = c["at_published_threshold"]
            lines.append(f"| {label(c['attack'])} | {iv(a['tpr'], a['tpr_ci'])} |")
    return "\n".join(lines) + "\n"
