"""The systematic sweep on a seeded tiny open_clip ViT: success, resume after SIGKILL, torchrun shards.

A tiny ImageFolder (3 classes x 2 seeded noise images, 32x32 PNGs) is built in
a temp folder; every run uses one thread so results are bit-comparable across
processes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyvlmx.systematic import build_pairs, chunks_for_rank, load_records, merge, read_jsonl, run_sweep
from pyvlmx.systematic.store import JsonlWriter, TIMING_FIELDS

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["kettle", "xylophone", "zebra"]  # sorted: ImageFolder label order
MODEL = "open_clip:pyvlmx-tiny-vit"
# tiny random ViT: a wide budget (see tests/test_attacks.py)
CFG = {"eps": 32 / 255, "rel_step": 1 / 16, "max_steps": 80, "batch_size": 4, "templates": "short",
       "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny shapes: one thread is fastest."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyfolder")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir()
        for k in range(2):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / c / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def dataset(folder, tiny_clip):
    from pyvlmx.data import load_dataset

    return load_dataset(str(folder), tiny_clip.image_size)


@pytest.fixture(scope="module")
def reference(tiny_clip, dataset, tmp_path_factory):
    """One uninterrupted single-process sweep, the baseline of every comparison."""
    out = tmp_path_factory.mktemp("ref")
    summary = run_sweep(tiny_clip, dataset, out, save_images=True, **CFG)
    return out, summary


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def _strip_summary(s):
    return {k: v for k, v in s.items() if k != "timing"}


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYVLMX_QUIET_EXT="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --------------------------------------------------------------------------- pairs
def test_pair_list_and_shards():
    labels = [0, 0, 1, 2, 2]
    pairs = build_pairs(labels, 3)
    assert len(pairs) == 5 * 2
    assert all(p.target_class != p.label for p in pairs)
    assert [p.pair_id for p in pairs] == list(range(10))
    sub = build_pairs(labels, 3, targets=1, seed=5)
    assert len(sub) == 5 and sub == build_pairs(labels, 3, targets=1, seed=5)
    assert {(p.image_index, p.target_class) for p in sub} <= {(p.image_index, p.target_class) for p in pairs}
    img = build_pairs(labels, 3, target_mode="image")
    assert all(labels[p.target_image] == p.target_class for p in img)
    for world in (1, 2, 3, 4):
        got = [i for r in range(world) for ch in chunks_for_rank(10, 3, r, world) for i in ch]
        assert sorted(got) == list(range(10))  # every pair once, no padding duplicates
        # a chunk's members do not depend on the world size
        assert {tuple(c) for r in range(world) for c in chunks_for_rank(10, 3, r, world)} == \
            {tuple(c) for c in chunks_for_rank(10, 3, 0, 1)}
    with pytest.raises(ValueError, match="targets must be 'all' or a positive integer, got 0"):
        build_pairs(labels, 3, targets=0)
    with pytest.raises(ValueError, match=r"labels out of range \[0, 3\): \[5\]"):
        build_pairs([0, 5], 3)


def test_jsonl_drops_a_partial_last_line_and_rejects_damage(tmp_path):
    p = tmp_path / "r.jsonl"
    with JsonlWriter(p) as w:
        w.write([{"pair_id": i, "x": 0.1 * i} for i in range(3)])
    with open(p, "ab") as fh:
        fh.write(b'{"pair_id": 3, "x": 0.')  # a writer killed mid-line
    assert [r["pair_id"] for r in read_jsonl(p)] == [0, 1, 2]
    with JsonlWriter(p) as w:  # opening for append repairs first
        w.write([{"pair_id": 3}])
    assert [r["pair_id"] for r in read_jsonl(p)] == [0, 1, 2, 3]
    lines = p.read_bytes().split(b"\n")
    lines[1] = b'{"pair_id": 1, broken'
    p.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_jsonl(p)


# --------------------------------------------------------------------------- the sweep
def test_sweep_on_tiny_vit_reaches_full_success(reference, tiny_clip, dataset):
    from pyvlmx.data import load_image

    out, s = reference
    assert s["pairs"] == 6 * 2 and s["pairs_failed"] == 0
    assert s["targeted_success_rate"] == 1.0
    assert s["systematic_accuracy"] == 0.0 and s["systematic_accuracy_images"] == 0.0
    assert s["alignment_success_rate"] == 1.0
    assert s["metrics"]["linf"]["max"] <= 32 / 255 + 1e-6
    assert s["classnames"] == CLASSES
    recs = load_records(out)
    assert [r["pair_id"] for r in recs] == list(range(12))
    conf = np.zeros((3, 3), dtype=int)
    for r in recs:
        conf[r["target_class"], r["pred_after"]] += 1
    assert conf.tolist() == s["confusion_target_vs_pred"]
    assert np.trace(conf) == 12
    # the zero-shot accuracy is that of the clean predictions
    W = tiny_clip.class_embeddings(CLASSES, __import__("pyvlmx.zeroshot", fromlist=["x"]).SHORT_TEMPLATES)
    clean = torch.stack([dataset[i][0] for i in range(6)])
    with torch.no_grad():
        pred = (tiny_clip.encode_image(clean) @ W.t()).argmax(1)
    labels = torch.tensor([dataset[i][1] for i in range(6)])
    assert s["zero_shot_accuracy"] == pytest.approx(float((pred == labels).float().mean()))
    # saved PNGs are the aligned images: reloaded, they classify as the target
    imgs = torch.stack([load_image(out / r["png"]) for r in recs])
    with torch.no_grad():
        pred_png = (tiny_clip.encode_image(imgs) @ W.t()).argmax(1)
    assert pred_png.tolist() == [r["target_class"] for r in recs]
    assert json.loads((out / "summary.json").read_text())["pairs"] == 12


def test_sweep_resumes_after_sigkill_with_identical_results(reference, folder, tmp_path):
    ref_out, ref_summary = reference
    out = tmp_path / "killed"
    # a slowed-down sweep in a subprocess, killed (SIGKILL) once a few records are on disk
    script = f"""
import time, torch
torch.set_num_threads(1)
from pyvlmx.models import load_model
from pyvlmx.data import load_dataset
from pyvlmx.systematic import run_sweep
m = load_model({MODEL!r}, seed=0)
enc = m._encode_image
def slow(x):
    time.sleep(0.02)
    return enc(x)
m._encode_image = slow
ds = load_dataset({str(folder)!r}, m.image_size)
run_sweep(m, ds, {str(out)!r}, **{CFG!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shard = out / "shards" / "rank000-of001.jsonl"
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline and proc.poll() is None:
        n = len(read_jsonl(shard)) if shard.exists() else 0
        if n >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = read_jsonl(shard)
    assert 3 <= len(done) < 12
    assert not (out / "records.jsonl").exists()
    with open(shard, "ab") as fh:  # and a torn last line, as a crash mid-write leaves
        fh.write(b'{"pair_id": 11, "status": "o')
    # resume in this process, on the same folder
    from pyvlmx.data import load_dataset
    from pyvlmx.models import load_model

    m = load_model(MODEL, seed=0)
    summary = run_sweep(m, load_dataset(str(folder), m.image_size), out, **CFG)
    recs = load_records(out)
    assert [r["pair_id"] for r in recs] == list(range(12))
    assert len(read_jsonl(shard)) == 12  # nothing duplicated, the torn line gone
    ref = load_records(ref_out)
    assert _strip(recs) == _strip([dict(r, png=None) for r in ref])
    ref_s = _strip_summary(ref_summary)
    got_s = _strip_summary(summary)
    assert got_s == ref_s


def test_torchrun_two_processes_equal_one(reference, folder, tmp_path):
    ref_out, ref_summary = reference
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "pyvlmx", "systematic", "--model", MODEL, "--data", str(folder), "--out", str(out),
           "--eps", "32/255", "--rel-step", "0.0625", "--steps", "80", "--batch-size", "4",
           "--templates", "short", "--threads", "1", "--no-progress", "--save-images"]
    res = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["rank000-of002.jsonl", "rank001-of002.jsonl"]
    per_rank = [read_jsonl(p) for p in sorted((out / "shards").iterdir())]
    ids = [r["pair_id"] for rs in per_rank for r in rs]
    assert sorted(ids) == list(range(12))  # no duplicates, no padding
    assert all(len(rs) > 0 for rs in per_rank)
    assert _strip(load_records(out)) == _strip(load_records(ref_out))
    s = json.loads((out / "summary.json").read_text())
    assert s["timing"]["world_size"] == 2
    assert _strip_summary(s) == json.loads(json.dumps(_strip_summary(ref_summary)))
    assert "targeted success     100.0%" in res.stdout
    # merging by hand gives the same files
    (out / "records.jsonl").unlink()
    merged = merge(out)
    assert merged["targeted_success_rate"] == 1.0
    assert _strip(load_records(out)) == _strip(load_records(ref_out))


def test_failing_pairs_are_recorded_and_image_targets(tiny_clip, folder, tmp_path):
    import shutil

    from pyvlmx.data import load_dataset

    src = tmp_path / "data"
    shutil.copytree(folder, src)
    ds = load_dataset(str(src), tiny_clip.image_size)
    os.remove(ds.paths[1])  # vanishes after the dataset was listed
    out = tmp_path / "img"
    cfg = dict(CFG, eps=64 / 255, cos_threshold=0.995, max_steps=150)
    s = run_sweep(tiny_clip, ds, out, target_mode="image", targets=1, **cfg)
    recs = load_records(out)
    assert len(recs) == 6
    bad = [r for r in recs if r["status"] == "failed"]
    # image 1 is missing: its own pair fails, and so does any pair targeting it
    assert any(r["image_index"] == 1 for r in bad)
    assert all(r["image_index"] == 1 or r["target_image"] == 1 for r in bad)
    assert all("could not be loaded: FileNotFoundError" in r["error"] for r in bad)
    ok = [r for r in recs if r["status"] == "ok"]
    assert ok and all(r["success"] and r["cos_target"] >= 0.995 for r in ok)
    assert max(r["steps"] for r in ok) > 0
    assert all(ds.targets[r["target_image"]] == r["target_class"] for r in recs)
    assert s["pairs_failed"] == len(bad)
    # resuming with other settings is refused, naming what differs
    with pytest.raises(ValueError, match="another configuration.*target_mode"):
        run_sweep(tiny_clip, ds, out, target_mode="text", targets=1, **cfg)


# --------------------------------------------------------------------------- CLI
def test_cli_align_and_errors(folder, tmp_path, capsys):
    from pyvlmx.cli import main

    out = tmp_path / "align"
    img = str(folder / "kettle" / "0.png")
    common = ["--model", MODEL, "--classes", ",".join(CLASSES), "--eps", "32/255", "--rel-step", "0.0625",
              "--steps", "80", "--out", str(out)]
    assert main(["align", "--image", img, "--target", "zebra"] + common) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["record"]["success"] and m["record"]["pred_after_name"] == "zebra"
    # the saved PNG is the recorded result: its PSNR and L-inf against the original are the record's
    from pyvlmx import ops
    from pyvlmx.data import load_image

    x0, adv = load_image(img)[None], load_image(out / "aligned.png")[None]
    if m["record"]["psnr"] is not None:
        assert float(ops.psnr(adv, x0)) == pytest.approx(m["record"]["psnr"], abs=1e-3)
    assert float((adv - x0).abs().max()) == pytest.approx(m["record"]["linf"], abs=1e-6)
    assert m["record"]["linf"] <= 32 / 255 + 1e-6
    from PIL import Image

    with Image.open(out / "side_by_side.png") as fig:  # three panels side by side: 12 x 4.4 inches at 110 dpi
        assert fig.size == (1320, 484)
    printed = capsys.readouterr().out
    psnr = m["record"]["psnr"]
    assert f"PSNR {'inf' if psnr is None else format(psnr, '.2f')} dB" in printed
    assert main(["align", "--image", img, "--target", "zebr"] + common) == 2
    err = capsys.readouterr().err
    assert "target class 'zebr' is not in the class list (did you mean ['zebra']?)" in err
    assert main(["align", "--image", str(folder / "nope.png"), "--target", "zebra"] + common) == 2
    assert "no image file at" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "nothing")]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
