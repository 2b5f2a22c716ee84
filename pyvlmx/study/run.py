"""``pyvlmx study``: the whole paper on one model and one image folder.

Stages, each writing ``<stage>.json`` into the output folder as it ends (a
rerun on the same folder loads finished stages instead of recomputing them,
and the sweep resumes pair by pair):

1. ``zeroshot``: zero-shot accuracy of the clean images;
2. ``systematic``: every image aligned to every other class (the sweep);
3. ``noise``: embedding statistics under Gaussian noise vs the linearisation
   ``f(x0) + J e``, and zero-shot accuracy vs sigma for clean and aligned images;
4. ``spectra``: Jacobian singular values of original vs aligned images;
5. ``detect``: the noise-sensitivity detector on clean vs aligned images,
   and against an adaptive (EOT) attacker;
6. ``detect_matrix``: every attack against every detector on the clean
   images (:func:`pyvlmx.detect.matrix.run_matrix`), at the study's budget,
   with ``detect_matrix.md`` and the heat map ``detect_matrix.png``
   (``--no-detect-matrix`` skips it);
7. the report (``report.html``, ``report.md``) from ``study.json``.

Every headline figure of ``study.json`` carries a 95% interval ``ci``
(:mod:`pyvlmx.study.intervals`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from pyvlmx.io import dumps, read_json, write_json
from pyvlmx.study.config import StudyConfig
from pyvlmx.study.intervals import (
    CONFIDENCE, RESAMPLES, detection_auc_ci, detector_statistics, pairs_ci, rate_ci,
)
from pyvlmx.study.spectra_report import spectra_tables, spectra_text


def _digest(cfg: dict) -> str:
    return hashlib.sha256(dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


class _Stages:
    """Runs stages, or loads them when a finished result with the same settings exists."""

    def __init__(self, out: Path, log):
        self.out = out
        self.log = log
        self.timing: dict[str, float] = {}

    def __call__(self, name: str, cfg: dict, fn):
        path = self.out / f"{name}.json"
        key = _digest(cfg)
        if path.is_file():
            done = read_json(path)
            if done.get("_stage", {}).get("config_digest") == key:
                self.log(f"[{name}] already done ({path}), loaded")
                self.timing[name] = done["_stage"]["seconds"]
                return done
            self.log(f"[{name}] settings changed since the last run: recomputing")
        self.log(f"[{name}] running")
        t0 = time.perf_counter()
        result = fn()
        secs = time.perf_counter() - t0
        result["_stage"] = {"config": cfg, "config_digest": key, "seconds": secs}
        write_json(path, result)
        self.timing[name] = secs
        self.log(f"[{name}] done in {secs:.1f} s")
        # what is used from here on is what a rerun loads: the JSON form (non-finite -> None)
        return read_json(path)


def _stage_configs(cfg: StudyConfig) -> dict[str, dict]:
    """Each stage's settings, for its digest: what it and the stages it reads depend on."""
    base = {"model": cfg.model, "pretrained": cfg.pretrained, "data": cfg.data, "seed": cfg.seed}
    sweep = {k: v for k, v in dataclasses.asdict(cfg.stage_sweep()).items() if k not in ("progress", "wait")}
    swept = base | {"sweep": sweep, "attack": dataclasses.asdict(cfg.stage_attack())}
    return {"zeroshot": base, "systematic": swept,
            "noise": swept | {"noise": dataclasses.asdict(cfg.noise)},
            "spectra": swept | {"spectra": dataclasses.asdict(cfg.spectra)},
            # format 2: detect.json carries each image's cross-fitted statistic (an older one is recomputed)
            "detect": swept | {"detect": dataclasses.asdict(cfg.detect), "format": 2},
            # the matrix attacks the clean images itself: it needs no sweep
            "detect_matrix": base | {"matrix": dataclasses.asdict(cfg.stage_matrix())}}


def _aligned_choice(records: list[dict]) -> dict[int, dict]:
    """One successful aligned image per clean image: its lowest-numbered pair."""
    chosen: dict[int, dict] = {}
    for r in sorted(records, key=lambda r: r["pair_id"]):
        if (r.get("status") == "ok" and r.get("png") and r["pred_after"] == r["target_class"]
                and r["pred_before"] != r["target_class"]):  # not already the target: a real change
            chosen.setdefault(int(r["image_index"]), r)
    return chosen


def run_study(cfg: StudyConfig, out: str | os.PathLike, progress: bool = True, log=print) -> dict:
    """Run (or resume) a study and write its report.

    Args:
        cfg: :class:`~pyvlmx.study.config.StudyConfig` (validated here,
            before the model loads).
        out: output folder (created; an existing one is resumed).
        progress: show progress bars.
        log: where stage messages go.

    Returns:
        the ``study.json`` dict (headline, sections, settings, environment).
    """
    from pyvlmx.data import load_dataset, load_image
    from pyvlmx.detect import align as eot_align
    from pyvlmx.detect import evaluate_detector
    from pyvlmx.detect.matrix import matrix_markdown, run_matrix
    from pyvlmx.detect.plots import plot_matrix, plot_roc
    from pyvlmx.info import environment, resolve_device
    from pyvlmx.jacobian import compare_spectra
    from pyvlmx.jacobian.plots import plot_compare_spectra
    from pyvlmx.models import load_model
    from pyvlmx.noise import accuracy_under_noise, noise_statistics
    from pyvlmx.noise.plots import plot_accuracy, plot_discrepancy, plot_qq
    from pyvlmx.report import build_report
    from pyvlmx.study.figures import plot_confusion, plot_examples, plot_quality
    from pyvlmx.systematic import load_records, run_sweep
    from pyvlmx.zeroshot import ZeroShotClassifier, evaluate

    cfg.validate()
    sw, atk, nz, sp, dt = cfg.sweep, cfg.attack, cfg.noise, cfg.spectra, cfg.detect
    device = resolve_device(cfg.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    stage = _Stages(out, log)
    stage_cfg = _stage_configs(cfg)
    log(f"study: model={cfg.model} data={cfg.data} device={device} -> {out}")
    log(f"sizes: targets={sw.targets} per image, eps={atk.eps * 255:.1f}/255, noise {nz.n} copies x "
        f"{len(nz.sigmas)} sigmas on {nz.images} image(s), spectra of {sp.pairs} pairs "
        f"(k={sp.k}, {sp.method}), detector K={dt.k}, EOT on {dt.eot_images} images, "
        + (f"matrix {','.join(cfg.matrix.attacks)} x {','.join(cfg.matrix.detectors)}"
           f"{' + adaptive' if cfg.matrix.adaptive else ''}" if cfg.detect_matrix else "no detection matrix"))
    # before the model loads: the data folder exists and has the classes the sweep needs
    sw.check_dataset(len(load_dataset(cfg.data, image_size=None, verify="none").classnames))
    model = load_model(cfg.model, pretrained=cfg.pretrained, device=device)
    dataset = load_dataset(cfg.data, model.image_size)
    classnames = list(dataset.classnames)
    labels = [int(lbl) for _, lbl in dataset.samples]
    clf = ZeroShotClassifier(model, classnames)

    # 1. zero-shot -------------------------------------------------------------
    zs = stage("zeroshot", stage_cfg["zeroshot"], lambda: evaluate(model, dataset, progress=progress))

    # 2. systematic sweep ----------------------------------------------------
    sweep_dir = out / "systematic"

    def _sweep():
        summary = run_sweep(model, dataset, sweep_dir, attack=cfg.stage_attack(),
                            sweep=cfg.stage_sweep(progress=progress))
        return {"summary": summary}

    sweep = stage("systematic", stage_cfg["systematic"], _sweep)["summary"]
    records = load_records(sweep_dir)
    chosen = _aligned_choice(records)
    if len(chosen) < 2:
        raise RuntimeError(f"the sweep produced {len(chosen)} usable aligned images; the analyses need >= 2 "
                           f"(a larger --eps or --max-steps makes more pairs succeed)")
    idx = sorted(chosen)
    # every clean image, decoded once: the detector calibrates on all of them
    clean_all = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(model.device)
    originals = clean_all[idx]
    aligned = torch.stack([load_image(sweep_dir / chosen[i]["png"]) for i in idx]).to(model.device)
    targets_of = [int(chosen[i]["target_class"]) for i in idx]

    # 3. noise ------------------------------------------------------------------
    def _noise():
        per_image = []
        n_img = min(nz.images, len(idx))
        for j in range(n_img):
            kinds = [("clean", originals[j])] + ([("aligned", aligned[j])] if nz.aligned else [])
            for kind, img in kinds:
                res = noise_statistics(model, img, nz.sigmas, nz.n, batch_size=nz.batch_size, clamp=nz.clamp,
                                       seed=cfg.seed + j, progress=progress, linearisation=nz.linearisation)
                res.update(kind=kind, image_index=idx[j], image=str(dataset.samples[idx[j]][0]))
                per_image.append(res)
        acc_sigmas = nz.accuracy_sigmas()
        acc = {"clean": accuracy_under_noise(model, originals, [labels[i] for i in idx], classnames,
                                             sigmas=acc_sigmas, n_copies=nz.acc_copies, seed=cfg.seed,
                                             classifier=clf),
               "aligned": accuracy_under_noise(model, aligned, [labels[i] for i in idx], classnames,
                                               sigmas=acc_sigmas, n_copies=nz.acc_copies, seed=cfg.seed,
                                               target_labels=targets_of, classifier=clf)}
        return {"statistics": per_image, "accuracy": acc}

    noise = stage("noise", stage_cfg["noise"], _noise)
    for j, res in enumerate(noise["statistics"]):
        plot_discrepancy(res, out / f"noise_discrepancy_{j}.png")
        plot_qq(res, out / f"noise_qq_{j}.png")
    plot_accuracy(noise["accuracy"], out / "noise_accuracy.png")

    # 4. spectra -------------------------------------------------------------
    m = min(sp.pairs, len(idx))  # pairs >= 2 (validated) and len(idx) >= 2 (checked above)
    if m < sp.pairs:  # the report says so too (spectra_text)
        log(f"[spectra] {sp.pairs} pairs asked for, {m} usable aligned images: comparing {m}")
    spectra = stage("spectra", stage_cfg["spectra"],
                    lambda: compare_spectra(model, originals[:m], aligned[:m], k=sp.k, method=sp.method,
                                            power_iters=sp.power_iters, oversample=sp.oversample,
                                            jvp_backend=sp.jvp_backend,
                                            seed=cfg.seed, progress=progress,
                                            names=[classnames[labels[i]] for i in idx[:m]]))
    plot_compare_spectra(spectra, out / "spectra.png")

    # 5. detection -----------------------------------------------------------
    def _detect():
        plain = evaluate_detector(model, clean_all, aligned, class_weights=clf.weights, sigma=dt.sigma,
                                  k=dt.k, seed=cfg.seed)
        n_eot = min(dt.eot_images, len(idx))
        tgt_emb = clf.weights[torch.tensor(targets_of[:n_eot], device=clf.weights.device)]
        eot_imgs, eot_info = eot_align(model, originals[:n_eot], tgt_emb, eps=atk.eps, steps=dt.eot_steps,
                                       eot_samples=dt.eot_samples, sigma=dt.sigma, seed=cfg.seed)
        with torch.no_grad():
            pred, _ = clf.predict(eot_imgs)
        eot_success = float((pred.cpu() == torch.tensor(targets_of[:n_eot])).float().mean())
        # Same clean images and seeds as the non-adaptive evaluation.
        eot = evaluate_detector(model, clean_all, eot_imgs, class_weights=clf.weights, sigma=dt.sigma,
                                k=dt.k, seed=cfg.seed)
        return {"plain": plain, "eot": eot, "eot_attack": {"images": n_eot, "targeted_success": eot_success,
                                                           "info": eot_info}}

    det = stage("detect", stage_cfg["detect"], _detect)
    plot_roc(det["plain"], out / "roc.png", extra={"adaptive (EOT)": det["eot"]})

    # 6. detection matrix -------------------------------------------------------
    matrix = None
    if cfg.detect_matrix:
        mx = cfg.stage_matrix()

        def _matrix():
            return run_matrix(model, clean_all, labels, classnames, attacks=mx.attacks, detectors=mx.detectors,
                              adaptive=mx.adaptive, eps=mx.eps, steps=mx.steps, seed=mx.seed,
                              resamples=mx.resamples, log=log, config=mx)

        matrix = stage("detect_matrix", stage_cfg["detect_matrix"], _matrix)
        (out / "detect_matrix.md").write_text(matrix_markdown(matrix))
        plot_matrix(matrix, out / "detect_matrix.png")

    # 7. figures of the sweep, study.json, report ------------------------------
    ex_rows = []
    for j, i in enumerate(idx[:6]):
        r = chosen[i]
        ex_rows.append({"original": originals[j].cpu(), "aligned": aligned[j].cpu(),
                        "true_name": classnames[r["label"]], "pred_before": classnames[r["pred_before"]],
                        "pred_after": classnames[r["pred_after"]], "target_name": r["target_name"],
                        "psnr": r.get("psnr"), "linf": r.get("linf", 0.0)})
    plot_examples(ex_rows, out / "examples.png")
    plot_confusion(sweep["confusion_target_vs_pred"], classnames, out / "confusion.png")
    plot_quality(records, out / "quality.png")

    study = _compose(cfg, zs, sweep, records, noise, spectra, det, matrix, idx, len(dataset), stage.timing,
                     time.perf_counter() - t_start, environment())
    write_json(out / "study.json", study)
    md, page = build_report(out)
    log(f"report: {page}\n        {md}")
    log(f"study finished in {time.perf_counter() - t_start:.1f} s")
    return read_json(out / "study.json")


def _metric(sweep: dict, name: str, stat: str):
    return sweep["metrics"][name].get(stat)


#: how each kind of headline interval is computed (``ci_method`` of a headline entry)
CI_METHODS = {
    "wilson": "rates: Wilson score interval",
    "bootstrap-images": f"the sweep's medians and worst values: percentile bootstrap over images ({RESAMPLES} "
                        f"resamples; a drawn image brings all its pairs)",
    "bootstrap-pairs": f"the effective-rank difference: percentile bootstrap over the spectra pairs ({RESAMPLES} "
                       f"resamples)",
    "paired-bootstrap-images": f"detection AUCs: paired percentile bootstrap over images ({RESAMPLES} resamples; "
                               f"an image's clean and attacked scores drawn together)",
}


def _entry(metric: str, value, fmt: str, note: str, ci, ci_method: str) -> dict:
    return {"metric": metric, "value": value, "fmt": fmt, "note": note,
            "ci": None if ci is None else [ci[0], ci[1]], "ci_method": ci_method}


def _detection(det: dict, pos_images: list[int], n_clean: int, seed: int) -> dict[str, dict]:
    """Per score: AUC and TPR at the detector's FPR, with paired bootstrap intervals over images."""
    neg, pos = detector_statistics(det)
    return {name: detection_auc_ci(neg[name], pos[name], range(n_clean), pos_images, fpr=det["fpr_target"],
                                   seed=seed)
            for name in neg}


def _matrix_section(matrix: dict) -> dict:
    """The detection matrix's report section: the heat map and one table row per cell, as stored."""
    rows = [[c["attack"], c["detector"], c.get("adaptive_for") or "", c["n_clean"], c["n_attacked"],
             c["attack_success"], c.get("attack_success_ci"), c["auc"], c["auc_ci"], c["tpr_at_5fpr"], c["tpr_ci"]]
            for c in matrix["cells"]]
    mc = matrix["config"]
    return {
        "title": "Detection matrix: attacks x detectors",
        "text": (f"Every attack against every detector on the {matrix['n_images']} clean images, all attacks at "
                 f"L-inf {mc['eps'] * 255:.3g}/255 and rounded to 8 bits (pyvlmx.detect.matrix). Detectors: "
                 f"{', '.join(matrix['detectors_order'])}, calibrated on clean images only (cross-fitted over "
                 f"{mc['folds']} folds), thresholds set before any attacked image is scored. AUC and TPR at "
                 f"{mc['fpr']:.0%} FPR with 95% paired bootstrap intervals over images ({mc['resamples']} "
                 f"resamples: an image's clean and attacked scores drawn together); attack success with its "
                 f"Wilson interval. An adaptive row's success says whether it still attacks: a low AUC from an "
                 f"attacker that stopped succeeding is no win."),
        "tables": [{"columns": ["attack", "detector", "adaptive vs", "clean", "attacked", "attack success",
                                "success 95% CI", "AUC", "AUC 95% CI", f"TPR at {mc['fpr']:.0%} FPR", "TPR 95% CI"],
                    "rows": rows, "formats": [None, None, None, None, None, "{:.2f}", "{:.2f}", "{:.3f}", "{:.3f}",
                                              "{:.2f}", "{:.2f}"],
                    "caption": "one row per attack and detector"}],
        "figures": [{"file": "detect_matrix.png", "caption": "detection AUC per attack and detector, with 95% "
                                                            "intervals; rows carry the attack's success"}],
    }


def _compose(cfg, zs, sweep, records, noise, spectra, det, matrix, idx, n_clean, timing, total_s, env) -> dict:
    from pyvlmx.stats import bootstrap_ci

    plain, eot = det["plain"], det["eot"]
    seed = cfg.seed
    fpr_key = f"tpr_at_fpr_{plain['fpr_target']:g}"
    n_eot = det["eot_attack"]["images"]
    dci = _detection(plain, idx, n_clean, seed)
    eci = _detection(eot, idx[:n_eot], n_clean, seed)
    comb, ecomb = dci["combined"], eci["combined"]
    n_pairs = sweep["pairs"]
    sp_n = int(spectra["n_pairs"])
    er = spectra["tests"]["effective_rank"]
    er_diff = [p["erank_aligned"] - p["erank_original"] for p in spectra["pairs"]]

    def pairs(metric, stat):
        return pairs_ci(records, metric, stat, seed=seed)

    headline = [
        _entry("zero-shot top-1 accuracy", zs["top1"], "{:.1%}",
               f"{zs['n_images']} clean images, {len(sweep['classnames'])} classes",
               rate_ci(zs["top1"], zs["n_images"]), "wilson"),
        _entry("systematic accuracy", sweep["systematic_accuracy"], "{:.1%}",
               f"fraction of {n_pairs} (image, target) pairs still classified as the true class",
               rate_ci(sweep["systematic_accuracy"], n_pairs), "wilson"),
        _entry("targeted success", sweep["targeted_success_rate"], "{:.1%}",
               f"aligned image classified as the target class (L-inf budget {cfg.attack.eps * 255:.0f}/255), "
               f"{n_pairs} pairs", rate_ci(sweep["targeted_success_rate"], n_pairs), "wilson"),
        _entry("PSNR median", _metric(sweep, "psnr", "median"), "{:.1f} dB", "", pairs("psnr", "median"),
               "bootstrap-images"),
        _entry("PSNR worst", _metric(sweep, "psnr", "worst"), "{:.1f} dB",
               "lowest over the pairs; the interval starts at it by construction", pairs("psnr", "worst"),
               "bootstrap-images"),
        _entry("SSIM median", _metric(sweep, "ssim", "median"), "{:.4f}", "", pairs("ssim", "median"),
               "bootstrap-images"),
        _entry("SSIM worst", _metric(sweep, "ssim", "worst"), "{:.4f}", "lowest over the pairs",
               pairs("ssim", "worst"), "bootstrap-images"),
        _entry("cosine to target median", _metric(sweep, "cos_target", "median"), "{:.3f}",
               "text embedding of the target class", pairs("cos_target", "median"), "bootstrap-images"),
        _entry("cosine to target worst", _metric(sweep, "cos_target", "worst"), "{:.3f}", "lowest over the pairs",
               pairs("cos_target", "worst"), "bootstrap-images"),
        _entry("Jacobian effective rank, aligned - original", er["mean_difference"], "{:+.2f}",
               f"mean over {sp_n} pairs (original {er['mean_original']:.2f}, aligned {er['mean_aligned']:.2f}); "
               f"Wilcoxon p = {er['wilcoxon_p']:.2g}, sign-flip p = {er['permutation_p']:.2g}",
               bootstrap_ci(er_diff, np.mean, resamples=RESAMPLES, confidence=CONFIDENCE, seed=seed),
               "bootstrap-pairs"),
        _entry("detection AUC (combined score)", plain["scores"]["combined"]["auc"], "{:.3f}",
               f"{plain['n_clean']} clean vs {plain['n_aligned']} aligned, K={plain['k']} noisy copies at sigma "
               f"{plain['sigma'] * 255:.0f}/255; TPR at 5% FPR {comb['tpr']:.2f} "
               f"[{comb['tpr_ci'][0]:.2f}, {comb['tpr_ci'][1]:.2f}]", comb["auc_ci"], "paired-bootstrap-images"),
        _entry("detection AUC vs adaptive (EOT) attacker", eot["scores"]["combined"]["auc"], "{:.3f}",
               f"{n_eot} images, EOT targeted success {det['eot_attack']['targeted_success']:.0%} "
               f"[{rate_ci(det['eot_attack']['targeted_success'], n_eot)[0]:.0%}, "
               f"{rate_ci(det['eot_attack']['targeted_success'], n_eot)[1]:.0%}]",
               ecomb["auc_ci"], "paired-bootstrap-images"),
    ]
    per_class_rows = [[name, pc["pairs"], pc["systematic_accuracy"], pc["targeted_success_rate"],
                       pc["metrics"]["psnr"].get("median"), pc["metrics"]["ssim"].get("median")]
                      for name, pc in sweep["per_class"].items()]
    zs_rows = [[name, v.get("n", ""), v.get("top1", v.get("accuracy"))] for name, v in
               zs.get("per_class", {}).items()] if isinstance(zs.get("per_class"), dict) else []
    noise_rows = []
    for res in noise["statistics"]:
        for r in res["per_sigma"]:
            lin = r.get("linearisation") or {}
            noise_rows.append([res["kind"], f"{r['sigma'] * 255:.3g}/255", r["rel_fro"], r["sampling_error"],
                               r["ratio"], "yes" if r["holds"] else "no", lin.get("median", ""), lin.get("p90", "")])

    det_rows = [[name, s["auc"], dci[name]["auc_ci"], s.get(fpr_key), s.get("direction", ""),
                 eot["scores"][name]["auc"], eci[name]["auc_ci"]]
                for name, s in plain["scores"].items()]
    sections = [
        {"title": "Zero-shot vs systematic evaluation",
         "text": ("Zero-shot accuracy is measured on the clean images. The systematic evaluation moves every "
                  "image, by gradient steps on its pixels within an L-inf budget, until its embedding matches each "
                  "other class's text embedding, and classifies the result (Salman et al., arXiv 2402.08473)."),
         "tables": ([{"columns": ["class", "images", "zero-shot top-1"], "rows": zs_rows,
                      "caption": "zero-shot accuracy per class"}] if zs_rows else []) +
                   [{"columns": ["true class", "pairs", "systematic acc.", "targeted success", "PSNR median",
                                 "SSIM median"], "rows": per_class_rows, "caption": "sweep per true class"}],
         "figures": [{"file": "examples.png", "caption": "original | aligned | amplified difference"},
                     {"file": "confusion.png", "caption": "confusion matrix of aligned predictions (target vs predicted)"},
                     {"file": "quality.png", "caption": "PSNR, SSIM and cosine-to-target over all pairs"}]},
        {"title": "Gaussian noise vs the linear approximation",
         "text": ("For noise e ~ N(0, s^2 I), the linearisation f(x0 + e) ~ f(x0) + J e predicts embeddings with "
                  "covariance s^2 J J^T. The discrepancy is the relative Frobenius error of the empirical covariance; "
                  "the sampling error is what N samples alone give (split halves). The approximation holds where the "
                  "ratio is within 2. Per sample, rho = ||f(x0 + e) - f(x0) - J e|| / ||f(x0 + e) - f(x0)|| is the "
                  "part of each noisy embedding's change that the linearisation misses (median and 90th "
                  "percentile over the draws; 0 where it is exact)."),
         "tables": [{"columns": ["image", "sigma", "rel. Frobenius error", "sampling error", "ratio", "holds",
                                 "rho median", "rho p90"],
                     "rows": noise_rows, "caption": "covariance discrepancy"}],
         "figures": [{"file": f"noise_discrepancy_{j}.png",
                      "caption": f"discrepancy vs sigma ({res['kind']} image)"} for j, res in
                     enumerate(noise["statistics"])] +
                    [{"file": f"noise_qq_{j}.png", "caption": f"normal Q-Q plots along the top predicted "
                                                              f"directions ({res['kind']} image)"}
                     for j, res in enumerate(noise["statistics"])] +
                    [{"file": "noise_accuracy.png", "caption": "zero-shot accuracy vs sigma, clean and aligned"}]},
        {"title": "Jacobian spectra: original vs aligned",
         "text": spectra_text(spectra, cfg.spectra.pairs),
         "tables": spectra_tables(spectra),
         "figures": [{"file": "spectra.png", "caption": "singular values of J, original vs aligned"}]},
        {"title": "Noise-sensitivity detection",
         "text": ("Scores from K noisy copies of each image, calibrated on clean images (cross-fitted), two-tailed. "
                  f"Adaptive attacker: alignment in expectation over the detector's noise "
                  f"({cfg.detect.eot_samples} samples per step, {cfg.detect.eot_steps} steps). AUC intervals: "
                  f"paired percentile bootstrap over images ({RESAMPLES} resamples; an image's clean and attacked "
                  f"scores drawn together)."),
         "tables": [{"columns": ["score", "AUC", "AUC 95% CI", "TPR at 5% FPR", "direction", "AUC vs EOT",
                                 "AUC vs EOT 95% CI"], "rows": det_rows, "caption": "detector",
                     "formats": [None, "{:.3f}", "{:.3f}", "{:.3f}", None, "{:.3f}", "{:.3f}"]}],
         "figures": [{"file": "roc.png", "caption": "ROC: clean vs aligned (solid), vs adaptive (EOT) dashed"}]},
    ]
    if matrix is not None:
        sections.append(_matrix_section(matrix))
    methods = dict.fromkeys(h["ci_method"] for h in headline)       # in the headline's order
    how = "; ".join(CI_METHODS[m] for m in methods)
    ci_note = f"{CONFIDENCE:.0%} intervals. {how[:1].upper()}{how[1:]}."
    return {"title": f"pyvlmx study: {cfg.model} on {cfg.data}", "headline": headline, "headline_note": ci_note,
            "sections": sections,
            "settings": dataclasses.asdict(cfg) | {"stage_seconds": timing, "total_seconds": total_s},
            "environment": env}
