"""One run per output folder: real processes contend for pyvlmx.runlock's flock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyvlmx.runlock import INFO_NAME, RunLockBusy, holder_of, job_key, run_lock

ROOT = Path(__file__).resolve().parent.parent

HOLD = """
import sys, time
from pyvlmx.runlock import run_lock
with run_lock(sys.argv[1], wait=sys.argv[2] == "wait") as info:
    print("held", time.time(), flush=True)
    sys.stdin.readline()               # hold until the test says go
    print("releasing", time.time(), flush=True)
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYVLMX_QUIET_EXT"] = "1"
    env.update(extra)
    return env


def _holder(folder, mode="nowait", **env):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), mode], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(**env))
    return p


def _wait_line(p, prefix):
    line = p.stdout.readline()
    assert line.startswith(prefix), line + p.stderr.read()
    return float(line.split()[1])


def test_second_process_is_refused_naming_the_holder(tmp_path):
    p = _holder(tmp_path)
    try:
        _wait_line(p, "held")
        info = holder_of(tmp_path)
        assert info["pid"] == p.pid and info["host"] == socket.gethostname()
        with pytest.raises(RunLockBusy, match=rf"{tmp_path} is in use by another pyvlmx run: pid {p.pid} on host "
                                              rf"{socket.gethostname()} since 20\d\d-.*pass --wait"):
            with run_lock(tmp_path):
                pass
        # and a second real process: the CLI refuses in one line, exit code 2
        out = subprocess.run([sys.executable, "-m", "pyvlmx", "merge", str(tmp_path)], capture_output=True,
                             text=True, env=_env(), timeout=120)
        assert out.returncode == 2
        assert out.stderr.strip().splitlines() == [
            l for l in out.stderr.strip().splitlines() if l.startswith("pyvlmx merge: error: ")]
        assert f"in use by another pyvlmx run: pid {p.pid}" in out.stderr
    finally:
        p.stdin.write("\n")
        p.stdin.close()
        p.wait(timeout=60)
    assert holder_of(tmp_path) is None
    with run_lock(tmp_path) as info:  # free again
        assert info["pid"] == os.getpid()
    assert (tmp_path / INFO_NAME).read_text() == ""  # the last holder out clears the description


def test_sigkilled_holder_blocks_nobody(tmp_path):
    p = _holder(tmp_path)
    _wait_line(p, "held")
    assert holder_of(tmp_path)["pid"] == p.pid
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert json.loads((tmp_path / INFO_NAME).read_text())["pid"] == p.pid  # stale description left behind...
    assert holder_of(tmp_path) is None  # ...but the kernel dropped the lock with the process
    with run_lock(tmp_path) as info:
        assert info["pid"] == os.getpid()


def test_wait_mode_queues_behind_the_holder(tmp_path):
    first = _holder(tmp_path)
    _wait_line(first, "held")
    second = _holder(tmp_path, "wait")
    try:
        # the second is asking; it cannot get the folder while the first holds it
        assert holder_of(tmp_path)["pid"] == first.pid
        first.stdin.write("\n")
        first.stdin.flush()
        released = _wait_line(first, "releasing")
        acquired = _wait_line(second, "held")
        assert acquired >= released
        assert holder_of(tmp_path)["pid"] == second.pid
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.close()
            p.wait(timeout=60)
    assert first.returncode == 0 and second.returncode == 0


def test_ranks_of_one_torchrun_job_share_the_lock(tmp_path):
    job = dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517", TORCHELASTIC_RUN_ID="abc")
    rank0 = _holder(tmp_path, RANK="0", **job)
    rank1 = _holder(tmp_path, RANK="1", **job)
    try:
        _wait_line(rank0, "held")
        _wait_line(rank1, "held")  # both hold it at once
        other = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "nowait"], input="\n",
                               capture_output=True, text=True, env=_env(**dict(job, MASTER_PORT="29518")),
                               timeout=120)
        assert other.returncode != 0 and "RunLockBusy" in other.stderr and "a torchrun job of 2 ranks" in other.stderr
    finally:
        for p in (rank0, rank1):
            p.stdin.write("\n")
            p.stdin.close()
            p.wait(timeout=60)
    assert rank0.returncode == 0 and rank1.returncode == 0
    assert job_key(job) == job_key(dict(job, RANK="1")) != job_key(dict(job, MASTER_PORT="1"))
    assert job_key({}).startswith("process:")


def test_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path) as a:
        with run_lock(tmp_path / ".") as b:  # the CLI holds --out, run_sweep asks again
            assert a is b
        assert holder_of(tmp_path)["pid"] == os.getpid()  # still held by the outer block
    assert holder_of(tmp_path) is None


def test_lock_refuses_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(ValueError, match="is an existing file, not a folder"):
        with run_lock(f):
            pass
