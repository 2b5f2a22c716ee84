"""The compiled extension is present, registered, and describes its build."""

import json
import subprocess
import sys

import torch

import pyvlmx
from pyvlmx import _ext


def test_extension_loaded_and_build_info_op_called():
    assert _ext.has_ops(), f"pyvlmx._C failed to load: {_ext.load_error()}"
    raw = torch.ops.pyvlmx.build_info()
    info = json.loads(raw)
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)
    if info["with_cuda"]:
        assert info["cuda_version"] == torch.version.cuda
        assert info["cuda_runtime"] // 1000 == int(torch.version.cuda.split(".")[0])
    assert pyvlmx.build_info()["loaded"] is True


def test_cuda_devices_op_matches_torch():
    assert torch.ops.pyvlmx.cuda_devices() == torch.cuda.device_count()


def test_cli_info_reports_build(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pyvlmx", "info", "--json"], capture_output=True,
                         text=True, check=True)
    env = json.loads(out.stdout)
    assert env["build"]["loaded"] is True
    assert env["versions"]["torch"] == torch.__version__


def test_torch_mismatch_warns(monkeypatch):
    import warnings

    monkeypatch.setattr(_ext, "_WARNED", False)
    monkeypatch.setattr(_ext, "build_info", lambda: {"torch_version": "1.0.0", "loaded": True})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _ext.warn_if_unusable()
    assert any("built against torch 1.0.0" in str(w.message) for w in caught)
