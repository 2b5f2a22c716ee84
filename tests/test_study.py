"""`pyvlmx study` end to end on a tiny model: every stage, the report, resume."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pyvlmx.report.browser import image_check, render_dom
from pyvlmx.config import make_config
from pyvlmx.models import VisionLanguageModel
from pyvlmx.study import StudyConfig, run_study
from test_report import needs_browser

CLASSES = ["bald eagle", "strawberry", "tabby cat", "yurt", "jeep", "goose"]


def _one_photo_per_class(data):
    """An image folder holding the first sample photo of each of CLASSES."""
    from pyvlmx.data.samples import ensure_installed

    src = ensure_installed()
    for name in CLASSES:
        first = sorted((src / name).iterdir())[0]
        (data / name).mkdir()
        shutil.copy(first, data / name / first.name)
    return data


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    data = _one_photo_per_class(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("study")
    cfg = make_config(StudyConfig, "study", model="open_clip:pyvlmx-tiny-vit", data=str(data),
                      sweep={"targets": 2, "batch_size": 16}, attack={"eps": 32 / 255, "max_steps": 30},
                      noise={"sigmas": (0.5 / 255, 8 / 255), "n": 64, "acc_sigmas": (0.0, 16 / 255),
                             "acc_copies": 2},
                      spectra={"pairs": 2, "k": 4, "method": "exact"},
                      detect={"k": 4, "eot_images": 2, "eot_samples": 2, "eot_steps": 3},
                      matrix={"attacks": ("alignment-text", "noise"), "steps": 2, "noise_k": 2,
                              "adaptive_images": 4, "adaptive_steps": 2})
    log = []
    study = run_study(cfg, out, progress=False, log=log.append)
    return cfg, out, study, log


def test_study_writes_every_stage_and_report(tiny_study):
    cfg, out, study, _ = tiny_study
    for name in ("zeroshot", "systematic", "noise", "spectra", "detect", "detect_matrix"):
        stage = json.loads((out / f"{name}.json").read_text())
        assert stage["_stage"]["config"]["model"] == cfg.model and stage["_stage"]["config"]["seed"] == cfg.seed
    metrics = {h["metric"]: h["value"] for h in study["headline"]}
    sweep = json.loads((out / "systematic" / "summary.json").read_text())
    assert metrics["systematic accuracy"] == sweep["systematic_accuracy"]
    assert metrics["targeted success"] == sweep["targeted_success_rate"]
    assert sweep["pairs"] == len(CLASSES) * cfg.sweep.targets
    det = json.loads((out / "detect.json").read_text())
    assert metrics["detection AUC (combined score)"] == det["plain"]["scores"]["combined"]["auc"]
    assert det["plain"]["n_clean"] == len(CLASSES)
    figures = [f["file"] for s in study["sections"] for f in s["figures"]]
    for f in figures:
        with Image.open(out / f) as im:
            assert im.format == "PNG" and min(im.size) >= 100, f
    md = (out / "report.md").read_text()
    assert "| systematic accuracy |" in md
    assert (out / "report.html").read_text().count("data:image/png;base64,") == len(figures)


def test_study_resumes_without_recomputing(tiny_study):
    cfg, out, study, _ = tiny_study
    log = []
    again = run_study(cfg, out, progress=False, log=log.append)
    assert sum("already done" in line for line in log) == 6
    assert again["headline"] == study["headline"]


@needs_browser
def test_study_report_in_browser(tiny_study):
    _, out, study, _ = tiny_study
    loaded, total = image_check(render_dom(out / "report.html"))
    n_fig = sum(len(s["figures"]) for s in study["sections"])
    assert total == n_fig and loaded == n_fig


# --- the study on a linear model: every stage's answer is known in advance ---------------------------

class _LinearStudyModel(VisionLanguageModel):
    """``encode_image(x) = A vec(x)`` (no normalisation at all: J = A everywhere); class texts -> W[c]."""

    name = "study-linear:A"
    family = "study-linear"

    def __init__(self, A, W, classnames, image_size):
        super().__init__(image_size=image_size, embed_dim=A.shape[0], logit_scale=10.0,
                         mean=(0, 0, 0), std=(1, 1, 1))
        self.register_buffer("A", A.clone())
        self.register_buffer("W", W.clone())
        self.classnames = list(classnames)

    def encode_image(self, pixels, normalize=True):   # ignores normalize: linear in the pixels
        return self._encode_image(self.normalize_pixels(pixels))

    def _encode_image(self, normalized):
        return normalized.flatten(1) @ self.A.t()

    def _encode_text(self, texts):
        rows = []
        for t in texts:
            hits = [c for c, name in enumerate(self.classnames) if name in t]
            rows.append(self.W[max(hits, key=lambda c: len(self.classnames[c]))] if hits
                        else torch.zeros(self.embed_dim))
        return torch.stack(rows)


LIN_SIZE, LIN_DIM = 16, 8    # SSIM needs >= 11 x 11
LIN_PAIRS = 3                # not the tiny study's 2: the spectra stage runs what it is asked for


def _linear_parts():
    g = torch.Generator().manual_seed(5)
    P = 3 * LIN_SIZE * LIN_SIZE
    A = 3 * torch.randn(LIN_DIM, P, generator=g) / P ** 0.5
    W = torch.linalg.qr(torch.randn(LIN_DIM, LIN_DIM, generator=g)).Q[:len(CLASSES)]
    return A, W


@pytest.fixture(scope="module")
def linear_study(tmp_path_factory):
    from pyvlmx.models import register_family
    from pyvlmx.models.registry import ModelFamily

    A, W = _linear_parts()
    register_family(ModelFamily(
        name="study-linear", loader=lambda arch, pretrained=None, device="cpu", **kw:
            _LinearStudyModel(A, W, CLASSES, LIN_SIZE).to(device).eval(),
        list_archs=lambda: ["A"], requires="", available=lambda: None, description="test: linear"))
    data = _one_photo_per_class(tmp_path_factory.mktemp("lin_data"))
    out = tmp_path_factory.mktemp("lin_study")
    cfg = make_config(StudyConfig, "study", model="study-linear:A", data=str(data), device="cpu",
                      sweep={"targets": 2, "batch_size": 16}, attack={"eps": 32 / 255, "max_steps": 50},
                      noise={"sigmas": (0.5 / 255, 8 / 255, 64 / 255), "n": 512, "acc_sigmas": (0.0, 16 / 255),
                             "acc_copies": 2, "aligned": True},
                      spectra={"pairs": LIN_PAIRS, "k": 4, "method": "exact"},
                      detect={"k": 16, "eot_images": 2, "eot_samples": 2, "eot_steps": 3}, detect_matrix=False)
    try:
        study = run_study(cfg, out, progress=False, log=lambda s: None)
        yield cfg, out, study, A, W, data
    finally:   # leave the registry as the other tests know it
        from pyvlmx.models import registry
        registry._FAMILIES.pop("study-linear", None)


def test_linear_study_noise_holds_at_every_sigma(linear_study):
    cfg, out, _, A, _, _ = linear_study
    noise = json.loads((out / "noise.json").read_text())
    ev = torch.linalg.eigvalsh((A @ A.t()).double()).flip(0)
    assert len(noise["statistics"]) == 2                        # one clean and one aligned image
    for res in noise["statistics"]:
        assert [row["sigma"] for row in res["per_sigma"]] == list(cfg.noise.sigmas)
        for row in res["per_sigma"]:
            # J = A at every image and sigma: only sampling separates C_emp from sigma^2 A A^T
            assert row["holds"] and row["ratio"] < 2, row["sigma"]
            assert row["mean_shift_ratio"] < 4
            # and per sample: f(x0 + e) - f(x0) = J e exactly, up to float32 rounding
            lin = row["linearisation"]
            assert lin["n"] == cfg.noise.linearisation > 0 and lin["p90"] < 1e-3, lin
        assert res["sigma_breaks"] is None and res["sigma_linear_max"] == max(cfg.noise.sigmas)
        assert torch.allclose(torch.tensor(res["jacobian"]["top_eigenvalues_JJt"], dtype=torch.float64),
                              ev[:len(res["jacobian"]["top_eigenvalues_JJt"])], rtol=1e-4)


def test_linear_study_spectra_are_the_singular_values_of_A(linear_study):
    _, out, _, A, _, _ = linear_study
    spectra = json.loads((out / "spectra.json").read_text())
    s = torch.linalg.svdvals(A.double())[:4]
    assert spectra["n_pairs"] == LIN_PAIRS and len(spectra["pairs"]) == LIN_PAIRS
    for p in spectra["pairs"]:
        for key in ("original", "aligned"):
            assert torch.allclose(torch.tensor(p[key], dtype=torch.float64), s, rtol=1e-4), key
    # the same Jacobian at every image: no paired difference at all
    t = spectra["tests"]["mean_log_singular_value"]
    assert t["permutation_p"] == pytest.approx(1.0)


def test_linear_study_zeroshot_and_detection_scores(linear_study):
    from pyvlmx.data import load_dataset

    _, out, study, A, W, data = linear_study
    ds = load_dataset(str(data), LIN_SIZE)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([int(lbl) for _, lbl in ds.samples])
    logits = 10.0 * (x.flatten(1) @ A.t()) @ W.t()
    zs = json.loads((out / "zeroshot.json").read_text())
    assert zs["top1"] == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    det = json.loads((out / "detect.json").read_text())["plain"]
    clean = det["raw_scores"]["clean"]
    # the clean margin score is the top-1 minus top-2 logit of the linear classifier
    top2 = logits.topk(2, dim=1).values
    assert clean["margin"] == pytest.approx((top2[:, 0] - top2[:, 1]).tolist(), rel=1e-4, abs=1e-5)
    # noise moves every logit by the same Gaussian, whatever the image: std of the difference of
    # classes a and b is 10 sigma |A^T (W_a - W_b)|; a clean image 6 such stds from its boundary never flips
    sigma = det["sigma"]
    pred = logits.argmax(1)
    for i in range(len(ds)):
        others = [c for c in range(len(CLASSES)) if c != pred[i]]
        gaps = logits[i, pred[i]] - logits[i, others]
        stds = torch.stack([10 * sigma * torch.linalg.vector_norm(A.t() @ (W[pred[i]] - W[c])) for c in others])
        if bool((gaps > 6 * stds).all()):
            assert clean["flip_rate"][i] == 0.0
    # aligned images stop just past the target's boundary: smaller margins than the clean images
    aligned = det["raw_scores"]["aligned"]
    assert np.median(aligned["margin"]) < np.median(clean["margin"])
    metrics = {h["metric"]: h["value"] for h in study["headline"]}
    assert metrics["detection AUC (combined score)"] == det["scores"]["combined"]["auc"]


def test_study_figures_draw_their_data(tmp_path):
    """The study's own figures: the confusion heat map is the row-normalised matrix, the quality
    histograms count the finished pairs, the example grid has one row of three panels per pair."""
    import numpy as np

    from pyvlmx.study.figures import plot_confusion, plot_examples, plot_quality

    m = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    fig = plot_confusion(m, ["a", "b", "c"], tmp_path / "c.png")
    drawn = np.asarray(fig.axes[0].get_images()[0].get_array())
    np.testing.assert_allclose(drawn, [[0.75, 0.25, 0], [0, 0, 0], [0.25, 0.25, 0.5]])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c"]
    recs = [{"status": "ok", "psnr": 40.0 + i, "ssim": 0.9, "cos_target": 0.5} for i in range(5)]
    recs += [{"status": "failed", "psnr": None, "ssim": None, "cos_target": None},
             {"status": "ok", "psnr": None, "ssim": 1.0, "cos_target": 0.7}]   # PSNR None: identical image
    fig = plot_quality(recs, tmp_path / "q.png")
    counts = [sum(p.get_height() for p in ax.patches) for ax in fig.axes]
    assert counts == [5, 6, 6] and [ax.get_xlabel() for ax in fig.axes] == ["PSNR (dB)", "SSIM", "cosine to target"]
    x = torch.full((3, 8, 8), 0.5)
    rows = [{"original": x, "aligned": x + 1 / 255, "true_name": "cat", "pred_before": "cat", "pred_after": "dog",
             "target_name": "dog", "psnr": 48.1, "linf": 1 / 255}] * 2
    fig = plot_examples(rows, tmp_path / "e.png")
    assert len(fig.axes) == 6 and "aligned to dog" in fig.axes[1].get_title()
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- intervals on the headline, and the spectra section's tables ------------------------------------

def _wilson_zero(n, z=1.959963984540054):
    """Wilson's upper end at 0 successes of n, by hand: z^2 / (n + z^2)."""
    return z * z / (n + z * z)


@pytest.mark.parametrize("which", ["tiny_study", "linear_study"])
def test_every_headline_figure_has_an_interval_around_it_in_the_reports(which, request):
    from pyvlmx.study.run import CI_METHODS

    out, study = request.getfixturevalue(which)[1:3]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for h in study["headline"]:
        lo, hi = h["ci"]
        lo, hi = (-math.inf if lo is None else lo), (math.inf if hi is None else hi)   # null: unbounded
        assert h["value"] is not None and lo <= h["value"] <= hi, h
        assert h["ci_method"] in CI_METHODS, h
        ends = [("inf" if e > 0 else "-inf") if math.isinf(e) else h["fmt"].format(e) for e in (lo, hi)]
        value, ci = h["fmt"].format(h["value"]), f"[{ends[0]}, {ends[1]}]"
        assert f"| {h['metric']} | {value} | {ci} |" in md
        assert f"<td>{value}</td><td>{ci}</td>" in html
    assert "Wilson score interval" in study["headline_note"] and study["headline_note"] in md
    assert "{" not in study["headline_note"]


def test_linear_study_intervals_are_the_known_ones(linear_study):
    """The rates' intervals are Wilson's of counts found here from the linear classifier and the records;
    the worst values' intervals start at the worst pair; the same Jacobian everywhere gives a zero
    effective-rank difference with a zero-width interval."""
    from pyvlmx.data import load_dataset
    from pyvlmx.stats import wilson_interval
    from pyvlmx.systematic import load_records

    _, out, study, A, W, data = linear_study
    head = {h["metric"]: h for h in study["headline"]}
    ds = load_dataset(str(data), LIN_SIZE)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([int(lbl) for _, lbl in ds.samples])
    correct = int(((x.flatten(1) @ A.t() @ W.t()).argmax(1) == labels).sum())
    assert head["zero-shot top-1 accuracy"]["ci"] == pytest.approx(wilson_interval(correct, len(ds)))
    records = load_records(out / "systematic")
    kept = sum(r["status"] == "ok" and r["pred_after"] == r["label"] for r in records)
    hit = sum(r["status"] == "ok" and r["pred_after"] == r["target_class"] for r in records)
    assert head["systematic accuracy"]["ci"] == pytest.approx(wilson_interval(kept, len(records)))
    assert head["targeted success"]["ci"] == pytest.approx(wilson_interval(hit, len(records)))
    ok = [r for r in records if r["status"] == "ok"]
    for metric, key in (("PSNR worst", "psnr"), ("SSIM worst", "ssim"), ("cosine to target worst", "cos_target")):
        # (a null PSNR is an unchanged image: +inf, never the worst)
        assert head[metric]["ci"][0] == pytest.approx(min(r[key] for r in ok if r[key] is not None)), metric
    er = head["Jacobian effective rank, aligned - original"]
    assert abs(er["value"]) < 1e-9 and max(map(abs, er["ci"])) < 1e-9


def _section(study, title_start):
    return next(s for s in study["sections"] if s["title"].startswith(title_start))


@pytest.mark.parametrize("which", ["tiny_study", "linear_study"])
def test_spectra_tables_are_the_stored_tests(which, request):
    out, study = request.getfixturevalue(which)[1:3]
    spectra = json.loads((out / "spectra.json").read_text())
    n = spectra["n_pairs"]
    assert n == request.getfixturevalue(which)[0].spectra.pairs
    sec = _section(study, "Jacobian spectra")
    tests, per_index, per_pair = sec["tables"]
    for row, key in zip(tests["rows"], ("effective_rank", "mean_log_singular_value"), strict=True):
        t = spectra["tests"][key]
        assert row[:8] == [t["statistic"], n, t["mean_original"], t["mean_aligned"], t["mean_difference"],
                           t["direction"], t["wilcoxon_p"], t["permutation_p"]]
        low = f"{2 / 2 ** n:.2g}"                  # all n pairs one way: 2 of the 2^n sign patterns
        assert row[8] == f"{low} / {low}"
    assert [r[3] for r in per_index["rows"]] == spectra["tests"]["per_index_wilcoxon_holm_p"]
    assert [r[1:3] for r in per_index["rows"]] == [[o, a] for o, a in zip(spectra["mean_log_sv"]["original"],
                                                                         spectra["mean_log_sv"]["aligned"])]
    assert [r[:3] for r in per_pair["rows"]] == [[p["name"], p["erank_original"], p["erank_aligned"]]
                                                 for p in spectra["pairs"]]
    assert f"at {n} original/aligned pairs" in sec["text"] and "asked for" not in sec["text"]
    assert "{" not in sec["text"]                   # prose, not a JSON dump
    md = (out / "report.md").read_text()
    t = spectra["tests"]["effective_rank"]
    assert (f"| {t['statistic']} | {n} | {t['mean_original']:.3f} | {t['mean_aligned']:.3f} | "
            f"{t['mean_difference']:+.3f} | {t['direction']} | {t['wilcoxon_p']:.2g} | "
            f"{t['permutation_p']:.2g} |") in md


def test_smallest_p_of_the_paired_tests_and_the_default_pairs():
    from pyvlmx.study.spectra_report import smallest_p

    assert smallest_p(2, 16) == {"wilcoxon_p": 0.5, "permutation_p": 0.5, "per_index_holm_p": 1.0}
    assert smallest_p(8, 16)["wilcoxon_p"] == pytest.approx(2 / 256)
    assert smallest_p(12, 16)["per_index_holm_p"] == pytest.approx(16 * 2 / 4096)
    # beyond 16 pairs the permutation test samples 10000 sign patterns: at best 1 / 10001
    assert smallest_p(20, 16)["permutation_p"] == pytest.approx(1 / 10001)
    with pytest.raises(ValueError, match="n >= 2 pairs, got 1"):
        smallest_p(1, 16)
    # the default study can reach p < 0.01 in every test, the Holm-corrected per-index ones included
    cfg = StudyConfig()
    assert cfg.spectra.pairs >= 10
    assert max(smallest_p(cfg.spectra.pairs, cfg.spectra.k).values()) < 0.01


def test_spectra_text_says_when_fewer_pairs_than_asked():
    from pyvlmx.study.spectra_report import spectra_text

    pairs = [{"original": [2.0, 1.0], "aligned": [3.0, 1.0]}] * 4
    text = spectra_text({"n_pairs": 4, "k": 2, "method": "exact", "pairs": pairs}, requested=12)
    assert "at 4 original/aligned pairs (12 asked for; only 4 usable aligned images)" in text
    assert "At n = 4 the smallest two-sided p these tests can give is 0.12 (Wilcoxon)" in text


def test_rate_interval_is_wilson_of_the_count():
    from pyvlmx.study.intervals import rate_ci

    assert rate_ci(0.0, 69) == pytest.approx((0.0, _wilson_zero(69)))
    lo, hi = rate_ci(1.0, 23)
    assert hi == 1.0 and lo == pytest.approx(1 - _wilson_zero(23))
    with pytest.raises(ValueError, match="rate 0.5 is not a count out of n = 3"):
        rate_ci(0.5, 3)


def _records(values_by_image, metric="psnr"):
    return [{"status": "ok", "image_index": i, metric: v} for i, vs in values_by_image.items() for v in vs] + \
           [{"status": "failed", "image_index": 0, metric: -1.0}]      # a failed pair counts nowhere


def test_pairs_interval_resamples_images():
    from pyvlmx.study.intervals import pairs_ci

    # every pair the same: nothing to vary
    assert pairs_ci(_records({0: [40.0, 40.0], 1: [40.0]}), "psnr") == (40.0, 40.0)
    # the worst's interval starts at the worst finished pair; the failed pair's -1 is not one
    recs = _records({i: [30.0 + i, 50.0 + i] for i in range(10)})
    lo, hi = pairs_ci(recs, "psnr", "worst")
    assert lo == 30.0 and 30.0 < hi < 50.0
    # two images: one with three pairs at 1, one with a single pair at 5. A resample draws two images:
    # both the first (p 1/4) or one of each (1/2) give median 1, both the second (1/4) gives 5
    lo, hi = pairs_ci(_records({0: [1.0, 1.0, 1.0], 1: [5.0]}, "ssim"), "ssim")
    assert (lo, hi) == (1.0, 5.0)
    # unchanged images have PSNR null (+inf), ranked above every finite value, and come back as null
    assert pairs_ci(_records({0: [None], 1: [None]}), "psnr") == (None, None)
    with pytest.raises(ValueError, match="'median' or 'worst', got 'mean'"):
        pairs_ci(recs, "psnr", "mean")


def test_detector_statistics_are_the_cross_fitted_scores():
    from pyvlmx.detect import evaluate_detector
    from pyvlmx.study.intervals import detection_auc_ci, detector_statistics

    clean = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 20.0])
    aligned = np.array([5.0, 100.0])
    det = evaluate_detector(None, None, None, folds=2,
                            raw={"clean": {"displacement": clean}, "aligned": {"displacement": aligned}})
    neg, pos = detector_statistics(det)
    # fold 0 (images 0, 2, 4) is scored against fold 1's clean [1, 3, 20]: median 3, MAD 2; fold 1 against
    # [0, 2, 10]: median 2, MAD 2; |z| = |s - median| / (1.4826 MAD)
    scale = 1.4826 * 2
    np.testing.assert_allclose(neg["displacement"], np.array([3, 1, 1, 1, 7, 18]) / scale)
    np.testing.assert_allclose(pos["displacement"], np.array([2, 98]) / scale)
    np.testing.assert_array_equal(neg["combined"], neg["displacement"])
    res = detection_auc_ci(neg["combined"], pos["combined"], range(6), [0, 1])
    assert res["auc"] == det["scores"]["combined"]["auc"] == pytest.approx(9 / 12)
    assert res["auc_ci"][0] <= res["auc"] <= res["auc_ci"][1] and res["images"] == 6
    # they survive the JSON round trip the study's detect.json makes
    back = json.loads(json.dumps(det))
    np.testing.assert_array_equal(detector_statistics(back)[1]["displacement"], pos["displacement"])


def test_detection_interval_of_separated_scores_is_a_point():
    from pyvlmx.study.intervals import detection_auc_ci

    res = detection_auc_ci([0.1, 0.2, 0.3, 0.4], [0.9, 0.8], range(4), [1, 3])
    assert (res["auc"], res["auc_ci"], res["tpr"], res["tpr_ci"]) == (1.0, [1.0, 1.0], 1.0, [1.0, 1.0])


# --- the detection matrix stage ----------------------------------------------------------------------

def test_study_detect_matrix_section_is_the_stored_cells(tiny_study):
    cfg, out, study, _ = tiny_study
    matrix = json.loads((out / "detect_matrix.json").read_text())
    # the study's budget and seed, whatever the matrix's own defaults
    assert matrix["config"]["eps"] == cfg.attack.eps and matrix["config"]["seed"] == cfg.seed
    assert matrix["n_images"] == len(CLASSES)
    assert {c["detector"] for c in matrix["cells"]} == set(cfg.matrix.detectors)
    assert len(matrix["cells"]) == len(matrix["rows"]) * len(cfg.matrix.detectors)
    # the study's default has the adaptive rows: one attacker per detector, on the first adaptive_images
    adaptive = [c for c in matrix["cells"] if c.get("adaptive_for")]
    assert {c["adaptive_for"] for c in adaptive} == set(cfg.matrix.detectors)
    assert {c["n_attacked"] for c in adaptive} == {cfg.matrix.adaptive_images}
    sec = _section(study, "Detection matrix")
    (tab,) = sec["tables"]
    assert tab["rows"] == [[c["attack"], c["detector"], c.get("adaptive_for") or "", c["n_clean"], c["n_attacked"],
                            c["attack_success"], c["attack_success_ci"], c["auc"], c["auc_ci"], c["tpr_at_5fpr"],
                            c["tpr_ci"]] for c in matrix["cells"]]
    assert [f["file"] for f in sec["figures"]] == ["detect_matrix.png"]
    c = matrix["cells"][0]
    md = (out / "report.md").read_text()
    assert (f"| {c['attack']} | {c['detector']} |  | {c['n_clean']} | {c['n_attacked']} | "
            f"{c['attack_success']:.2f} | [{c['attack_success_ci'][0]:.2f}, {c['attack_success_ci'][1]:.2f}] | "
            f"{c['auc']:.3f} | [{c['auc_ci'][0]:.3f}, {c['auc_ci'][1]:.3f}] |") in md
    assert (out / "detect_matrix.md").read_text().count("\n| ") >= len(matrix["rows"])


def test_linear_study_without_the_matrix(linear_study):
    cfg, out, study, *_ = linear_study
    assert not cfg.detect_matrix and not (out / "detect_matrix.json").exists()
    assert not any(s["title"].startswith("Detection matrix") for s in study["sections"])


def test_study_options_of_the_matrix():
    import argparse

    from pyvlmx.cli.study import register
    from pyvlmx.config import dataclass_from_args

    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["study", "--matrix-attacks", "noise,pgd", "--matrix-detectors", "ttc",
                         "--no-matrix-adaptive", "--eps", "2/255"])
    cfg = dataclass_from_args(StudyConfig, args)
    assert (cfg.matrix.attacks, cfg.matrix.detectors, cfg.matrix.adaptive) == (("noise", "pgd"), ("ttc",), False)
    assert StudyConfig().matrix.adaptive      # the study's default: the adaptive rows too
    assert cfg.detect_matrix and cfg.stage_matrix().eps == 2 / 255 == cfg.attack.eps
    with pytest.raises(SystemExit):                     # the budget is the study's: no option of its own
        p.parse_args(["study", "--matrix-eps", "8/255"])
    assert not dataclass_from_args(StudyConfig, p.parse_args(["study", "--no-detect-matrix"])).detect_matrix
    with pytest.raises(ValueError, match=r"unknown attack\(s\) \['fgsm'\]; attacks: \['alignment-image'"):
        make_config(StudyConfig, "study", matrix={"attacks": ("fgsm",)}).validate()
    with pytest.raises(ValueError, match="norm is 'l2'; use --norm linf or --no-detect-matrix"):
        make_config(StudyConfig, "study", attack={"norm": "l2", "eps": 0.5}).validate()
