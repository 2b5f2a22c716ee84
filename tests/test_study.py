"""`pyvlmx study` end to end on a tiny model: every stage, the report, resume."""

import json
import shutil

import pytest

from pyvlmx.report.browser import image_check, render_dom
from pyvlmx.config import make_config
from pyvlmx.study import StudyConfig, run_study
from test_report import needs_browser

CLASSES = ["bald eagle", "strawberry", "tabby cat", "yurt", "jeep", "goose"]


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from pyvlmx.data.samples import ensure_installed

    src = ensure_installed()
    data = tmp_path_factory.mktemp("data")
    for name in CLASSES:
        first = sorted((src / name).iterdir())[0]
        (data / name).mkdir()
        shutil.copy(first, data / name / first.name)
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
        assert stage["_stage"]["seconds"] >= 0
    metrics = {h["metric"]: h["value"] for h in study["headline"]}
    sweep = json.loads((out / "systematic" / "summary.json").read_text())
    assert metrics["systematic accuracy"] == sweep["systematic_accuracy"]
    assert metrics["targeted success"] == sweep["targeted_success_rate"]
    assert sweep["pairs"] == len(CLASSES) * cfg.sweep.targets
    assert 0.0 <= metrics["detection AUC (combined score)"] <= 1.0
    figures = [f["file"] for s in study["sections"] for f in s["figures"]]
    for f in figures:
        assert (out / f).stat().st_size > 1000, f
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
