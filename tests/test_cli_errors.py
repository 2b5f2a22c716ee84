"""The CLI's error surface: one line and exit code 2 for bad input; a traceback and where to report a bug."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyvlmx.cli import REPORT_HINT, main
from test_checks import unwritable  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, timeout=300):
    env = dict(os.environ, PYVLMX_QUIET_EXT="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pyvlmx", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


def test_out_naming_an_existing_file_is_one_line_before_any_work(tmp_path):
    f = tmp_path / "results.json"
    f.write_text("{}")
    res = _cli("zeroshot", "--model", "no-such-model", "--out", str(f))
    assert res.returncode == 2
    # the --out check comes first: the unknown model is never looked up
    assert res.stderr.strip().splitlines() == [
        f"pyvlmx zeroshot: error: --out {f} is an existing file, not a folder; choose a folder (it is created "
        f"if missing)"]
    assert f.read_text() == "{}"


def test_read_only_out_is_refused_before_the_model_loads(unwritable, monkeypatch, capsys):
    import pyvlmx.models

    def never(*a, **k):
        raise AssertionError("the model was loaded although --out is not writable")

    monkeypatch.setattr(pyvlmx.models, "load_model", never)
    assert main(["zeroshot", "--out", str(unwritable)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pyvlmx zeroshot: error: --out {unwritable} is not writable (")
    assert len(err.strip().splitlines()) == 1


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, monkeypatch, capsys):
    import pyvlmx.models

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 80 GiB total)\nmore")

    monkeypatch.setattr(pyvlmx.models, "load_model", oom)
    assert main(["zeroshot", "--out", str(tmp_path / "o"), "--batch-size", "64"]) == 2
    assert capsys.readouterr().err == (
        "pyvlmx zeroshot: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 80 GiB "
        "total)); try a smaller --batch-size (this run used 64)\n")


def test_unexpected_errors_keep_the_traceback_and_say_where_to_report(tmp_path, monkeypatch):
    import pyvlmx.models

    def bug(*a, **k):
        return {}["missing"]  # a KeyError from pyvlmx's own code: a bug, not bad input

    monkeypatch.setattr(pyvlmx.models, "load_model", bug)
    with pytest.raises(KeyError) as err:
        main(["zeroshot", "--out", str(tmp_path / "o")])
    assert REPORT_HINT in getattr(err.value, "__notes__", [])

    def torch_error(*a, **k):
        return torch.zeros(2) @ torch.zeros(3)  # RuntimeError raised inside torch, not by a pyvlmx raise

    monkeypatch.setattr(pyvlmx.models, "load_model", torch_error)
    with pytest.raises(RuntimeError, match="size mismatch|shape|inconsistent|Dimension") as err:
        main(["zeroshot", "--out", str(tmp_path / "o")])
    assert REPORT_HINT in err.value.__notes__


def test_runtime_errors_pyvlmx_raises_are_one_line(tmp_path, capsys):
    # merge of an unfinished sweep: pyvlmx's own RuntimeError, about the input
    d = tmp_path / "sweep"
    (d / "shards").mkdir(parents=True)
    (d / "config.json").write_text('{"n_pairs": 3, "classnames": ["a", "b"]}')
    assert main(["merge", str(d)]) == 2
    assert capsys.readouterr().err == (f"pyvlmx merge: error: {d}: 0 of 3 pairs recorded (3 missing); run the "
                                       f"sweep again on this folder to finish it\n")
