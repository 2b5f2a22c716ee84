"""The generated CLI: every option documented with its default, bad input refused before a model loads."""

import argparse
import json
import re

import pytest

import pyvlmx.models
from pyvlmx.cli import build_parser, main

COMMANDS = ["align", "systematic", "study", "noise", "spectra", "detect", "transfer", "zeroshot"]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the command had to refuse its input first."""

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(pyvlmx.models, "load_model", refuse)
    monkeypatch.setattr(pyvlmx.models.registry, "load_model", refuse)


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command):
    p = _subparsers()[command]
    for action in p._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        text = p._get_formatter()._expand_help(action) if action.help else ""
        assert text and not text.startswith("("), f"{command} {action.option_strings}: no help"
        assert re.search(r"\((default: .+|required)\)$", text), f"{command} {action.option_strings}: {text!r}"


def test_existing_option_names_keep_working():
    sub = _subparsers()
    a = sub["systematic"].parse_args(["--out", "o", "--eps", "8/255", "--steps", "5", "--attack", "adam",
                                      "--no-quantize", "--targets", "2", "--no-progress", "--device", "cpu"])
    assert (a.max_steps, a.optimizer, a.quantize, a.targets, a.progress) == (5, "adam", False, 2, False)
    assert a.eps == pytest.approx(8 / 255)
    s = sub["study"].parse_args(["--noise-n", "64", "--spectra-pairs", "3", "--eot-images", "2",
                                 "--noise-sigmas", "0.1/255", "1/255", "--max-steps", "7", "--precision", "bf16"])
    assert (s.noise_n, s.spectra_pairs, s.detect_eot_images, s.max_steps, s.precision) == (64, 3, 2, 7, "bf16")
    assert s.noise_sigmas == pytest.approx((0.1 / 255, 1 / 255))
    assert s.out == "runs/study" and s.device == "auto"
    for command in COMMANDS:
        assert sub[command].get_default("device") == "auto", command


@pytest.mark.parametrize("argv, message", [
    (["systematic", "--eps=-1/255"], "--eps: expected a number > 0 (such as 4/255 or 0.0157), got '-1/255'"),
    (["systematic", "--eps", "nan"], "got 'nan'"),
    (["study", "--detect-sigma", "inf"], "--detect-sigma: expected a number > 0"),
    (["noise", "--image", "x.png", "--sigmas", "1/255,0"], "--sigmas: expected a number > 0"),
    (["systematic", "--steps", "many"], "--steps: expected an integer, got 'many'"),
    (["systematic", "--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["systematic", "--targets", "none"], "--targets must be 'all' or a positive integer, got 'none'"),
])
def test_bad_values_fail_at_parse_time_naming_option_and_value(argv, message, tmp_path, capsys, no_model):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_option_fails_before_any_model(tmp_path, capsys, no_model):
    with pytest.raises(SystemExit):
        main(["systematic", "--out", str(tmp_path), "--batchsize", "3"])
    assert "unrecognized arguments: --batchsize 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["align", "--image", "x.png", "--target", "cat", "--eps", "300/255"], "an L-inf eps above 1"),
    (["systematic", "--max-images", "0"], "--max-images: sweep: max_images must be an integer >= 1"),
    (["systematic", "--batch-size", "0"], "--batch-size: sweep: batch_size must be an integer >= 1"),
    (["systematic", "--targets", "999"], "targets=999 is more than the 21 other class(es)"),
    (["study", "--spectra-pairs", "1"], "--spectra-pairs: spectra: pairs must be an integer >= 2"),
    (["study", "--noise-n", "4"], "--noise-n: noise: n must be an integer >= 8"),
    (["study", "--targets", "50"], "targets=50 is more than the 21 other class(es)"),
    (["noise", "--image", "x.png", "--n", "4"], "--n: noise: n must be an integer >= 8"),
    (["spectra", "--image", "x.png", "--method", "krylov"], "needs k"),
])
def test_invalid_settings_refused_before_any_model(argv, message, tmp_path, capsys, no_model):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_large_eps_warns_that_the_change_is_visible(tmp_path, no_model):
    with pytest.warns(UserWarning, match="above 16/255: the change will be visible"):
        with pytest.raises(AssertionError, match="a model was loaded"):
            main(["systematic", "--eps", "32/255", "--out", str(tmp_path / "o")])


def test_one_class_folder_names_the_way_out(tmp_path, capsys, no_model):
    from PIL import Image

    (tmp_path / "data" / "cat").mkdir(parents=True)
    Image.new("RGB", (40, 40), (90, 20, 30)).save(tmp_path / "data" / "cat" / "a.png")
    assert main(["systematic", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2 classes: add another class folder" in err
    assert "pyvlmx noise, pyvlmx spectra" in err and "min_classes=1" not in err


def test_list_attacks_shows_each_attack_with_options(capsys):
    assert main(["list-attacks"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("embedding-alignment")
    block = out.split("embedding-alignment", 1)[1].split("\n\n")[0]
    for opt, default in (("--eps", "4/255"), ("--steps, --max-steps", "200"), ("--optimizer, --attack", "sign"),
                         ("--quantize, --no-quantize", "on")):
        assert re.search(rf"{re.escape(opt)}\s+default {re.escape(default)}\b", block), opt


def test_noise_with_few_copies_finishes_with_a_note(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "noise"
    assert main(["noise", "--model", "open_clip:pyvlmx-tiny-vit", "--device", "cpu", "--image", str(img),
                 "--n", "16", "--sigmas", "1/255", "--batch-size", "16", "--out", str(out)]) == 0
    assert "normality tests and the Q-Q plot need" in capsys.readouterr().out
    r = json.loads((out / "noise_x.json").read_text())
    assert r["n"] == 16 and "qq" not in r["per_sigma"][0]
    assert (out / "noise_x_qq.png").is_file()
    assert json.loads((out / "summary.json").read_text())["config"]["n"] == 16
