"""Sweep folders: the configuration check, permissions of result files, and repairing a mixed folder."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
from PIL import Image

from pyvlmx.errors import UserError
from pyvlmx.systematic import load_records, run_sweep
from pyvlmx.systematic.store import (TIMING_FIELDS, atomic_write_text, config_differences,
                                     describe_config_differences, plan_repair, read_jsonl)

CFG = {"rel_step": 1 / 16, "max_steps": 40, "batch_size": 4, "templates": "short", "progress": False}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny shapes: one thread is fastest (and records are bit-comparable)."""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_clip):
    from pyvlmx.data import load_dataset

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(1)
    for c in ("kettle", "xylophone", "zebra"):
        (root / c).mkdir()
        for k in range(2):
            Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(root / c / f"{k}.png")
    return load_dataset(str(root), tiny_clip.image_size)


@pytest.fixture(scope="module")
def two_sweeps(tiny_clip, dataset, tmp_path_factory):
    """The same 12 pairs swept at eps 32/255 (a) and 64/255 (b), each in its own folder."""
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    run_sweep(tiny_clip, dataset, a, eps=32 / 255, **CFG)
    run_sweep(tiny_clip, dataset, b, eps=64 / 255, **CFG)
    return a, b


def _strip(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_config_mismatch_names_only_the_differing_keys(tiny_clip, dataset, two_sweeps):
    a, _ = two_sweeps
    with pytest.raises(UserError) as err:
        run_sweep(tiny_clip, dataset, a, eps=64 / 255, **dict(CFG, seed=3))
    msg = str(err.value)
    assert msg == (f"{a} holds a sweep with another configuration (attack.eps: folder has 0.12549, now 0.25098; "
                   f"attack.seed: folder has 0, now 3; seed: folder has 0, now 3); resume with the same settings "
                   f"or use a new --out folder")
    saved = json.loads((a / "config.json").read_text())
    assert config_differences(saved, saved) == []
    other = dict(saved, classnames=saved["classnames"][:1] + ["yak"] + saved["classnames"][2:] + ["q"] * 3)
    assert describe_config_differences(saved, other) == \
        "classnames: folder has 3 items, now 6 (first difference at [1]: 'xylophone' vs 'yak')"


def test_result_files_follow_the_umask(tmp_path, two_sweeps):
    old = os.umask(0o027)
    try:
        p = atomic_write_text(tmp_path / "new.json", "{}")
        assert stat.S_IMODE(p.stat().st_mode) == 0o640
        os.umask(0o022)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "x.txt", "x").stat().st_mode) == 0o644
    finally:
        os.umask(old)
    a, _ = two_sweeps  # written by run_sweep under the test process's umask
    want = 0o666 & ~old
    for name in ("summary.json", "config.json", "records.jsonl", "summary.txt"):
        assert stat.S_IMODE((a / name).stat().st_mode) == want, name


def test_merge_explains_and_repairs_a_folder_mixed_by_two_runs(tiny_clip, dataset, two_sweeps, tmp_path, capsys):
    from pyvlmx.cli import main

    a, b = two_sweeps
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    (mixed / "records.jsonl").unlink()
    shard = mixed / "shards" / "rank000-of001.jsonl"
    rec_a, rec_b = read_jsonl(shard), read_jsonl(b / "shards" / "rank000-of001.jsonl")
    # what an older pyvlmx left: a second run at eps 64/255 wrote pairs 0-5 again, and
    # alone wrote pairs 10-11 (the first run was stopped before it got there)
    keep_a = [r for r in rec_a if r["pair_id"] < 10]
    by_b = {r["pair_id"]: r for r in rec_b}
    lines = keep_a + [by_b[i] for i in range(6)] + [by_b[10], by_b[11]] + [keep_a[7]]  # and one exact copy
    shard.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))

    with pytest.raises(UserError, match=r"pair 0 has two different records .*'pyvlmx merge --repair .*mixed' "
                                        r"keeps the records that match its config.json"):
        load_records(mixed)
    plan = plan_repair(mixed)
    assert plan.needed and plan.conflicts == [0, 1, 2, 3, 4, 5]
    assert [r["pair_id"] for _, _, r in plan.keep] == list(range(10))
    dropped = {line: why for _, line, _, why in plan.drop}
    assert dropped[11] == "eps 0.25098, the folder's config.json has attack.eps 0.12549"
    assert set(dropped) == set(range(11, 20))
    assert dropped[19] == "identical copy of rank000-of001.jsonl line 8"

    assert main(["merge", str(mixed)]) == 2  # explains, changes nothing
    out = capsys.readouterr()
    assert "9 record(s) to drop, 10 to keep (6 pair(s) had different records):" in out.out
    assert "drop rank000-of001.jsonl line 17: pair 10: eps 0.25098, the folder's config.json has attack.eps " \
           "0.12549" in out.out
    line0 = 1 + [r["pair_id"] for r in keep_a].index(0)
    assert f"keep rank000-of001.jsonl line {line0}: pair 0\n" in out.out
    assert out.err.startswith("pyvlmx merge: error: ") and "'pyvlmx merge --repair" in out.err
    assert len(read_jsonl(shard)) == 19

    assert main(["merge", "--repair", str(mixed)]) == 2  # repaired; pairs 10 and 11 now need computing
    out = capsys.readouterr()
    assert "repaired: dropped records saved in" in out.out
    assert "10 of 12 pairs recorded (2 missing); run the sweep again on this folder" in out.err
    assert _strip(read_jsonl(shard)) == _strip(keep_a)
    assert len(read_jsonl(mixed / "repair-dropped.jsonl")) == 9
    assert not plan_repair(mixed).drop

    run_sweep(tiny_clip, dataset, mixed, eps=32 / 255, **CFG)  # resume computes the two missing pairs
    assert _strip(load_records(mixed)) == _strip(load_records(a))
