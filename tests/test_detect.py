"""Noise-sensitivity detector on constructed cases with known answers."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

from _analysis_models import LinearVLM
from pyvlmx.detect import Calibration, align, evaluate_detector, noise_scores, plot_roc, roc_curve, tpr_at_fpr
from pyvlmx.detect.config import MatrixConfig


def test_roc_auc_matches_mann_whitney():
    rng = np.random.default_rng(0)
    neg, pos = rng.normal(size=40), rng.normal(0.7, size=30)
    pos[:3] = neg[:3]                                     # ties
    r = roc_curve(neg, pos)
    u = stats.mannwhitneyu(pos, neg).statistic
    assert r["auc"] == pytest.approx(u / (40 * 30))
    assert np.trapezoid(r["tpr"], r["fpr"]) == pytest.approx(r["auc"], abs=1e-12)
    perfect = roc_curve(np.zeros(5), np.ones(5))
    assert perfect["auc"] == 1.0 and tpr_at_fpr(perfect, 0.05) == 1.0


def test_calibration_two_tailed_pvalue():
    cal = Calibration.fit(np.arange(99, dtype=float))
    assert cal.pvalue(np.array([49.0]))[0] == 1.0
    lo, hi = cal.pvalue(np.array([-5.0, 200.0]))
    assert lo == hi == pytest.approx(2 / 100)
    assert cal.z(np.array([cal.median]))[0] == 0.0


def _boundary_model():
    # embedding (mean(red) - 0.5, 1), normalised; class 0 iff mean(red) > 0.5
    A = torch.zeros(2, 3 * 8 * 8)
    A[0, :64] = 1 / 64
    return LinearVLM(A, image_size=8, bias=torch.tensor([-0.5, 1.0])).eval()


def _clean_set(seed):
    g = torch.Generator().manual_seed(seed)
    x = 0.45 + 0.1 * torch.rand(20, 3, 8, 8, generator=g)
    x[:, 0] += torch.where(torch.arange(20) % 2 == 0, 0.2, -0.2).view(20, 1, 1)   # far from the boundary
    return x


def test_detector_on_constructed_case(tmp_path):
    m = _boundary_model()
    W = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    clean = _clean_set(0)
    # "aligned" images sit exactly on the decision boundary: noise flips them half the time
    aligned = clean.clone()
    aligned[:, 0] = 0.5
    r = evaluate_detector(m, clean, aligned, class_weights=W, sigma=0.05, k=32)
    json.dumps(r)
    assert r["raw_scores"]["clean"]["flip_rate"] == [0.0] * 20
    assert r["scores"]["flip_rate"]["auc"] == 1.0
    assert r["scores"]["flip_rate"]["direction"] == "aligned higher"
    assert r["scores"]["combined"]["auc"] == 1.0
    assert r["scores"]["combined"]["tpr_at_fpr_0.05"] == 1.0
    # null case: "aligned" drawn like the clean images -> no separation
    null = evaluate_detector(m, clean, _clean_set(1), class_weights=W, sigma=0.05, k=32)
    assert abs(null["scores"]["combined"]["auc"] - 0.5) < 0.25
    fig = plot_roc(r, tmp_path / "roc.png", extra={"null": null})
    assert (tmp_path / "roc.png").is_file()
    ax, ax2 = fig.axes
    names = list(r["scores"])                                  # 5 scores + combined
    lines = ax.get_lines()
    assert len(lines) == len(names) + 1 + 2                    # + the null's combined, chance, FPR target
    for line, n in zip(lines, names):
        assert list(line.get_xdata()) == r["scores"][n]["roc"]["fpr"]
        assert list(line.get_ydata()) == r["scores"][n]["roc"]["tpr"]
    null_line = lines[len(names)]
    assert null_line.get_linestyle() == "--"
    assert list(null_line.get_ydata()) == null["scores"]["combined"]["roc"]["tpr"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[names.index("combined")] == "combined AUC=1.000"
    assert list(lines[-1].get_xdata()) == [0.05, 0.05]          # the FPR target
    # histograms of the best raw score: clean and aligned bars hold 20 images each, the null's step too
    best = r["best"] if r["best"] != "combined" else names[0]
    assert ax2.get_xlabel().startswith(best)
    bars = [p for p in ax2.patches if type(p).__name__ == "Rectangle"]
    assert len(bars) == 2 * 24
    assert sum(p.get_height() for p in bars[:24]) == 20 and sum(p.get_height() for p in bars[24:]) == 20


def test_noise_scores_are_per_image_deterministic(tiny_clip):
    imgs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    W = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), dim=1)
    a = noise_scores(tiny_clip, imgs, W, sigma=0.02, k=8, seed=5)
    b = noise_scores(tiny_clip, imgs[1:], W, sigma=0.02, k=8, seed=6)   # image 1 keeps seed 5 + 1
    assert a["displacement"][1] == b["displacement"][0]
    assert set(a) == {"flip_rate", "displacement", "confidence_drop", "kl", "margin"}
    assert (a["displacement"] > 0).all()


@pytest.mark.parametrize("eot", [0, 4])
def test_align_reaches_target_within_budget(tiny_clip, eot):
    g = torch.Generator().manual_seed(0)
    src = torch.round(torch.rand(2, 3, 32, 32, generator=g) * 255) / 255
    tgt_img = torch.rand(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        t = tiny_clip.encode_image(tgt_img)
        cos0 = torch.nn.functional.cosine_similarity(tiny_clip.encode_image(src), t)
    out, info = align(tiny_clip, src, t, eps=8 / 255, steps=20, eot_samples=eot, sigma=2 / 255)
    assert max(info["linf"]) <= 8 / 255 + 1e-6
    assert out.min() >= 0 and out.max() <= 1
    assert torch.allclose(out * 255, torch.round(out * 255), atol=1e-4)
    assert all(1 - c < (1 - c0) / 4 for c, c0 in zip(info["cosine"], cos0.tolist()))


def _folder(root, per_class=3):
    from PIL import Image

    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(g.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_detect_cli_matrix_mode_writes_json_table_and_heat_map(tmp_path, capsys):
    from pyvlmx.cli import main
    from pyvlmx.stats import auc

    data = _folder(tmp_path / "data")
    out = tmp_path / "m"
    assert main(["detect", "--attacks", "noise", "--detectors", "ttc,squeeze", "--data", str(data), "--model",
                 "open_clip:pyvlmx-tiny-vit", "--device", "cpu", "--out", str(out), "--resamples", "1000"]) == 0
    res = json.loads((out / "detect_matrix.json").read_text())
    assert res["config"]["eps"] == pytest.approx(4 / 255)               # the matrix's default budget, not 8/255
    assert res["rows"] == ["noise-gaussian", "noise-uniform"] and res["n_images"] == 6
    for c in res["cells"]:
        assert c["auc"] == auc(res["scores"]["clean"][c["detector"]],
                               res["scores"]["attacked"][c["attack"]][c["detector"]])
    md = (out / "detect_matrix.md").read_text()
    assert "| noise-uniform | 6 |" in md and md in capsys.readouterr().out
    assert (out / "detect_matrix.png").stat().st_size > 0


def test_detect_cli_rejects_unknown_matrix_names_before_loading_the_model(tmp_path, capsys):
    from pyvlmx.cli import main

    # a model that does not exist: the name check must answer first
    assert main(["detect", "--attacks", "pgd,deepfool", "--model", "open_clip:no-such-model", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--attacks: unknown attack(s) ['deepfool']; attacks: ['alignment-image', 'alignment-text', 'pgd'" in err
    assert main(["detect", "--detectors", "lid", "--out", str(tmp_path / "o")]) == 2
    assert "unknown detector(s) ['lid']; detectors: ['noise', 'ttc', 'squeeze']" in capsys.readouterr().err
    assert main(["detect", "--adaptive", "--eot", "--data", "samples", "--out", str(tmp_path / "o")]) == 2
    assert "takes no --sweep, --clean, --aligned or --eot" in capsys.readouterr().err


def test_detect_cli_keeps_the_single_detector_defaults_outside_the_matrix():
    from pyvlmx.cli import build_parser
    from pyvlmx.cli.detect import _fill_shared, _matrix_mode

    p = build_parser()
    single = p.parse_args(["detect", "--out", "o", "--data", "samples"])
    _fill_shared(single)
    assert not _matrix_mode(single)
    assert (single.eps, single.max_steps, single.k, single.eot_samples, single.eot_steps) == (8 / 255, 50, 32, 8, 50)
    matrix = p.parse_args(["detect", "--out", "o", "--adaptive", "--k", "4"])
    _fill_shared(matrix)
    assert _matrix_mode(matrix) and matrix.adaptive and matrix.attacks == MatrixConfig().attacks
    assert (matrix.eps, matrix.max_steps, matrix.k) == (4 / 255, MatrixConfig().steps, 4)
