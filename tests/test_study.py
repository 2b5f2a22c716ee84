"""`pyvlmx study` end to end on a tiny model: every stage, the report, resume."""

import json
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
                      detect={"k": 4, "eot_images": 2, "eot_samples": 2, "eot_steps": 3})
    log = []
    study = run_study(cfg, out, progress=False, log=log.append)
    return cfg, out, study, log


def test_study_writes_every_stage_and_report(tiny_study):
    cfg, out, study, _ = tiny_study
    for name in ("zeroshot", "systematic", "noise", "spectra", "detect"):
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
    assert sum("already done" in line for line in log) == 5
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
                      spectra={"pairs": 2, "k": 4, "method": "exact"},
                      detect={"k": 16, "eot_images": 2, "eot_samples": 2, "eot_steps": 3})
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
    assert spectra["n_pairs"] == 2
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
