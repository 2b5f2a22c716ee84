"""Checkpoint files that are junk, unsafe or of the wrong shape: one line each, and no code ever runs."""

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyvlmx.models import load_model
from pyvlmx.models.base import CheckpointError, load_state_dict_file

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = re.escape("expected a state dict (parameter name -> tensor)")


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def _evil(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"visual.proj": _Payload(marker)}))
    return path, marker


def _random(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(4096))
    return path


def test_random_bytes(tmp_path):
    path = _random(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^m: checkpoint {path}: not a checkpoint \(torch.load cannot read "
                                              rf"it: \w+: .*\); {EXPECTED}") as err:
        load_state_dict_file(path, model="m")
    assert "\n" not in str(err.value)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    path, marker = _evil(tmp_path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: refused: the pickle would run code \(it calls "
                                              rf"io.open\); pyvlmx loads with weights_only=True"):
        load_state_dict_file(path, model="m")
    with pytest.raises(CheckpointError, match="refused: the pickle would run code"):
        load_model("open_clip:pyvlmx-tiny-vit", pretrained=str(path))
    assert not marker.exists()


def test_wrong_structures(tmp_path, tiny_clip):
    lst = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], lst)
    with pytest.raises(CheckpointError, match=rf"^open_clip:pyvlmx-tiny-vit: checkpoint {lst}: wrong structure: it "
                                              rf"holds a list of 1 item\(s\); {EXPECTED}"):
        load_model("open_clip:pyvlmx-tiny-vit", pretrained=str(lst))
    other = tmp_path / "other.pt"
    torch.save({"a": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match=rf"checkpoint {other}: wrong structure: a state dict, but not one for "
                                              rf"this model \(Error\(s\) in loading state_dict for CLIP: Missing"):
        load_model("open_clip:pyvlmx-tiny-vit", pretrained=str(other))
    numbers = tmp_path / "numbers.pt"
    torch.save({"a": 1}, numbers)
    with pytest.raises(CheckpointError, match="holds a dict whose entry 'a' is of type int, not tensors"):
        load_state_dict_file(numbers, model="m")
    # a good one still loads, directly and nested under "state_dict"
    from pyvlmx.models.adapters.open_clip import save_checkpoint

    good = save_checkpoint(tiny_clip, tmp_path / "good.pt")
    assert set(load_state_dict_file(good, model="m")) == set(tiny_clip.clip.state_dict())
    torch.save({"state_dict": tiny_clip.clip.state_dict()}, tmp_path / "nested.pt")
    assert set(load_state_dict_file(tmp_path / "nested.pt", model="m")) == set(tiny_clip.clip.state_dict())
    with pytest.raises(FileNotFoundError, match="checkpoint .*missing.pt does not exist"):
        load_state_dict_file(tmp_path / "missing.pt", model="m")


def test_imagebind_uses_the_same_helper(tmp_path):
    from pyvlmx.models.adapters import imagebind as ib_adapter

    why = ib_adapter._available()
    if why is not None:
        pytest.skip(f"imagebind family unavailable: {why}")
    path = _random(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^imagebind:pyvlmx-tiny: checkpoint {path}: not a checkpoint"):
        load_model("imagebind:pyvlmx-tiny", pretrained=str(path))


def test_conse_uses_the_same_helper(tmp_path):
    evil, marker = _evil(tmp_path)
    with pytest.raises(CheckpointError, match=rf"^conse-efficientnet-lite0: checkpoint {evil}: refused"):
        load_model("conse-efficientnet-lite0", pretrained=str(evil))
    assert not marker.exists()


def test_cli_junk_checkpoint_is_one_line(tmp_path):
    path, marker = _evil(tmp_path)
    env = dict(os.environ, PYVLMX_QUIET_EXT="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for ckpt, reason in ((_random(tmp_path), "not a checkpoint"), (path, "refused: the pickle would run code")):
        res = subprocess.run([sys.executable, "-m", "pyvlmx", "zeroshot", "--model", "open_clip:pyvlmx-tiny-vit",
                              "--pretrained", str(ckpt), "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"pyvlmx zeroshot: error: open_clip:pyvlmx-tiny-vit: checkpoint {ckpt}: {reason}"), res.stderr
    assert not marker.exists()
