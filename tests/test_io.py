"""pyvlmx.io: the atomic writer (mode, atomicity) and the one JSON policy for NaN and inf."""

import json
import math
import os

import numpy as np
import pytest
import torch

from pyvlmx import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_mode_follows_the_umask(tmp_path, umask_022):
    p = io.write_json(tmp_path / "a.json", {"x": 1})
    assert p.stat().st_mode & 0o777 == 0o644
    os.umask(0o077)
    q = io.atomic_write_text(tmp_path / "b.txt", "hi")
    assert q.stat().st_mode & 0o777 == 0o600
    assert q.read_text() == "hi"
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []  # no temp file left


def test_non_finite_becomes_null_everywhere(tmp_path):
    obj = {"psnr": float("inf"), "neg": -math.inf, "nan": float("nan"), "ok": 1.5,
           "nested": [{"r": float("inf")}, (np.float32("nan"), np.float64(2.0))],
           "tensor": torch.tensor([1.0, float("inf")]), "array": np.array([np.nan, 3.0]), 7: "key"}
    p = io.write_json(tmp_path / "r.json", obj)
    text = p.read_text()
    assert "Infinity" not in text and "NaN" not in text and '"inf"' not in text
    assert io.read_json(p) == {"psnr": None, "neg": None, "nan": None, "ok": 1.5,
                               "nested": [{"r": None}, [None, 2.0]], "tensor": [1.0, None],
                               "array": [None, 3.0], "7": "key"}
    assert io.dumps([float("nan"), 1]) == "[null, 1]"
    json.loads(io.dumps({"a": float("inf")}))  # strict JSON
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        io.dumps({"x": object()})


def test_a_crash_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "summary.json"
    io.write_json(p, {"v": "old"})

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        io.write_json(p, {"v": "new"})
    monkeypatch.undo()
    assert io.read_json(p) == {"v": "old"}
    assert sorted(f.name for f in tmp_path.iterdir()) == ["summary.json"]  # temp file removed


def test_read_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*missing.json"):
        io.read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        io.read_json(tmp_path / "bad.json")
