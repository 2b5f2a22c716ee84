"""pyvlmx.config: options generated from dataclass fields, the number parser, unknown-option errors."""

import argparse
from dataclasses import dataclass, field

import pytest

from pyvlmx.config import (
    add_dataclass_args, dataclass_from_args, describe_fields, make_config, parse_number,
)
from pyvlmx.study.config import StudyConfig
from pyvlmx.systematic.config import SweepConfig, resolve_sweep_options


@dataclass
class Inner:
    n: int = field(default=8, metadata={"help": "copies", "flags": ("--copies",)})
    sigma: float = field(default=4 / 255, metadata={"help": "noise level", "kind": "budget"})


def _inner4():
    return Inner(n=4)


@dataclass
class Demo:
    eps: float = field(default=4 / 255, metadata={"help": "budget", "kind": "budget"})
    step: float | None = field(default=None, metadata={"help": "step size", "kind": "budget"})
    margin: float = field(default=0.0, metadata={"help": "a margin"})
    steps: int = field(default=10, metadata={"help": "step limit", "flags": ("--steps", "--max-steps")})
    quantize: bool = field(default=True, metadata={"help": "round to 8 bits"})
    mode: str = field(default="a", metadata={"help": "mode", "choices": ("a", "b")})
    schedule: tuple = field(default=(1 / 255, 2 / 255), metadata={"help": "budgets", "kind": "budget_list"})
    limit: int | None = field(default=None, metadata={"help": "at most N"})
    inner: Inner = field(default_factory=_inner4, metadata={"help": "inner", "prefix": "in-",
                                                           "aliases": {"n": ("--inner-n",)}})


def _parser(**kw):
    p = argparse.ArgumentParser(prog="demo", exit_on_error=False)
    add_dataclass_args(p, Demo, **kw)
    return p


def test_parse_number_accepts_fractions_and_refuses_bad_values():
    assert parse_number("4/255", name="--eps") == pytest.approx(4 / 255)
    assert parse_number("0.0157", name="--eps") == 0.0157
    assert parse_number("2e-2", name="--eps") == 0.02
    assert parse_number("0", name="--x", allow_zero=True) == 0.0
    assert parse_number("-0.5", name="--m", positive=False) == -0.5
    for bad, why in (("-1", "> 0"), ("0", "> 0"), ("nan", "> 0"), ("inf", "> 0"), ("1/0", "> 0"),
                     ("abc", "> 0")):
        with pytest.raises(ValueError, match=f"--eps: expected a number {why}.*got '{bad}'"):
            parse_number(bad, name="--eps")
    with pytest.raises(ValueError, match="--m: expected a finite number"):
        parse_number("-inf", name="--m", positive=False)


def test_options_types_defaults_and_help():
    p = _parser()
    a = p.parse_args([])
    assert dataclass_from_args(Demo, a) == Demo()
    a = p.parse_args(["--eps", "8/255", "--step", "none", "--max-steps", "3", "--no-quantize", "--mode", "b",
                      "--schedule", "1/255,4/255", "8/255", "--limit", "5", "--in-copies", "2",
                      "--in-sigma", "1/255", "--margin", "-0.25"])
    d = dataclass_from_args(Demo, a)
    assert d.eps == pytest.approx(8 / 255) and d.step is None and d.steps == 3 and d.quantize is False
    assert d.mode == "b" and d.schedule == pytest.approx((1 / 255, 4 / 255, 8 / 255)) and d.limit == 5
    assert d.inner == Inner(n=2, sigma=pytest.approx(1 / 255)) and d.margin == -0.25
    assert dataclass_from_args(Demo, p.parse_args(["--inner-n", "7"])).inner.n == 7  # a literal alias
    # nested defaults are those of the default_factory (n=4), not the class's (8)
    assert dataclass_from_args(Demo, p.parse_args([])).inner.n == 4
    text = p.format_help()
    for opt, default in (("--eps", "4/255"), ("--steps", "10"), ("--quantize", "on"), ("--mode", "a"),
                         ("--schedule", "1/255,2/255"), ("--limit", "none"), ("--in-copies", "4")):
        assert opt in text
        assert f"(default: {default})" in " ".join(text.split()), (opt, default)
    assert "--no-quantize" in text
    with pytest.raises(argparse.ArgumentError, match="--eps: expected a number > 0.*'-1'"):
        p.parse_args(["--eps", "-1"])


def test_exclude_and_defaults_override():
    p = _parser(exclude=("mode",), defaults_override={"steps": 99})
    assert "--mode" not in p.format_help()
    d = dataclass_from_args(Demo, p.parse_args([]), exclude=("mode",), base=Demo(steps=99, mode="b"))
    assert d.steps == 99 and d.mode == "b"
    with pytest.raises(ValueError, match=r"Demo: unknown option\(s\) \['nope'\]"):
        _parser(exclude=("nope",))


def test_make_config_names_the_config_and_its_fields():
    assert make_config(SweepConfig, "sweep", targets=2).targets == 2
    with pytest.raises(ValueError, match=r"sweep: unknown option\(s\) \['batchsize'\]; options: \[.*'batch_size'"):
        make_config(SweepConfig, "sweep", batchsize=3)
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        make_config(SweepConfig, "sweep", batchsize=3)
    with pytest.raises(ValueError, match=r"study.noise: unknown option\(s\) \['copies'\]"):
        make_config(StudyConfig, "study", noise={"copies": 3})
    with pytest.raises(ValueError, match="sweep: max_images must be an integer >= 1"):
        make_config(SweepConfig, "sweep", max_images=0)
    with pytest.raises(ValueError, match="sweep: batch_size must be an integer >= 1"):
        make_config(SweepConfig, "sweep", batch_size=0)


def test_sweep_options_split_between_the_two_configs():
    name, atk, sw = resolve_sweep_options(None, None, {"eps": 8 / 255, "batch_size": 4, "seed": 3})
    assert name == "embedding-alignment" and atk.eps == pytest.approx(8 / 255) and sw.batch_size == 4
    assert atk.seed == 3 and atk.errors == "record"  # the sweep's defaults for the attack
    # a typo of a sweep option is reported against the sweep, not the attack
    with pytest.raises(ValueError, match=r"^sweep: unknown option\(s\) \['batch_sise'\]"):
        resolve_sweep_options(None, None, {"batch_sise": 4})
    with pytest.raises(ValueError, match=r"^embedding-alignment: unknown option\(s\) \['max_step'\]"):
        resolve_sweep_options(None, None, {"max_step": 4})
    with pytest.raises(ValueError, match=r"run_sweep: unknown option\(s\) \['zzz'\]; sweep options: .*"
                                         r"embedding-alignment options: "):
        resolve_sweep_options(None, None, {"zzz": 1})
    with pytest.raises(ValueError, match=r"^sweep: unknown option\(s\) \['x'\]"):
        resolve_sweep_options(None, {"x": 1}, {})
    with pytest.raises(ValueError, match=r"^embedding-alignment: unknown option\(s\) \['epsilon'\]"):
        resolve_sweep_options({"epsilon": 1}, None, {})
    from pyvlmx.attacks import AlignmentConfig

    name, atk, sw = resolve_sweep_options(AlignmentConfig(eps=2 / 255), SweepConfig(targets=1), {})
    assert atk.errors == "raise" and atk.eps == pytest.approx(2 / 255) and sw.targets == 1  # as given


def test_study_nests_the_stage_configs_with_todays_defaults():
    c = StudyConfig()
    assert (c.sweep.targets, c.attack.eps, c.attack.max_steps, c.sweep.batch_size) == (3, 4 / 255, 100, 32)
    assert (c.noise.n, c.noise.images, c.noise.sigmas) == (256, 1, (0.1 / 255, 1 / 255, 4 / 255))
    assert c.noise.accuracy_sigmas() == (0.0, 2 / 255, 8 / 255, 16 / 255, 32 / 255) and c.noise.acc_copies == 4
    assert (c.spectra.pairs, c.spectra.k, c.spectra.method) == (12, 16, "randomized")  # every paired test can reach p < 0.01
    assert (c.detect.sigma, c.detect.k, c.detect.eot_images, c.detect.eot_samples, c.detect.eot_steps) == \
        (8 / 255, 16, 4, 4, 30)
    c.validate()
    with pytest.raises(ValueError, match="spectra: pairs must be an integer >= 2"):
        make_config(StudyConfig, "study", spectra={"pairs": 1})  # never silently 2


def test_describe_fields_lists_every_field():
    rows = {r["field"]: r for r in describe_fields(Demo)}
    assert rows["steps"]["flags"] == "--steps, --max-steps" and rows["eps"]["default"] == "4/255"
    assert rows["quantize"]["flags"] == "--quantize, --no-quantize"
    assert "inner" not in rows
