"""Shared helpers of the pyvlmx benchmarks.

Every benchmark module exposes ``run(quick: bool, device: str)`` returning or
yielding rows (dicts) and is runnable as ``python -m benchmarks.<name>
[--quick] [--device cuda] [--out DIR]``; :func:`main` implements that command
line.  A module that yields has each row saved as soon as it is measured
(:func:`collect`), so a long run that is stopped keeps what it measured.  Timings use
``torch.utils.benchmark.Timer.blocked_autorange`` (warm-up first, median and
interquartile range, ``torch.cuda.synchronize`` on GPU), and every figure is
compared against a baseline measured in the same process.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
from typing import Callable, Iterable, Optional

import torch
import torch.utils.benchmark as tb

__all__ = ["timeit", "metadata", "write_results", "markdown_table", "sync", "collect", "main"]


def sync(device: str | torch.device | None = None) -> None:
    """Wait for queued GPU work when device is CUDA (no-op on CPU)."""
    dev = torch.device(device) if device is not None else None
    if (dev is None or dev.type == "cuda") and torch.cuda.is_available():
        torch.cuda.synchronize(dev if dev is not None and dev.type == "cuda" else None)


def timeit(stmt_fn: Callable[[], object], *, device: str = "cpu", min_run_time: float = 0.5,
           warmup: int = 1) -> dict:
    """Time a zero-argument callable.

    Args:
        stmt_fn: what to time; its result is discarded.
        device: "cpu" or "cuda"; on CUDA every measured block ends with a
            synchronize so that kernel time is counted.
        min_run_time: seconds that blocked_autorange spends measuring.
        warmup: calls before measuring (compilation, allocator, caches).

    Returns:
        dict(median=seconds, iqr=seconds, mean=seconds, runs=int).
    """
    is_cuda = torch.device(device).type == "cuda"

    def call():
        stmt_fn()
        if is_cuda:
            torch.cuda.synchronize()

    for _ in range(max(0, warmup)):
        call()
    m = tb.Timer(stmt="call()", globals={"call": call},
                 num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time)
    return {"median": float(m.median), "iqr": float(m.iqr), "mean": float(m.mean),
            "runs": int(len(m.times))}


def _git_commit() -> Optional[str]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if not commit:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def metadata(device: str = "cpu") -> dict:
    """Run metadata: commit, versions, device, threads, build of pyvlmx._C."""
    import numpy as np

    from pyvlmx import _ext

    meta = {
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
    }
    # PYVLMX_BENCH_SKIP_BUILD_INFO=1 leaves out the build-info op (a workaround for
    # images whose compiler breaks std::string across the libtorch boundary).
    if os.environ.get("PYVLMX_BENCH_SKIP_BUILD_INFO") == "1":
        meta["pyvlmx_ext"] = {"loaded": _ext.has_ops(), "skipped": "PYVLMX_BENCH_SKIP_BUILD_INFO=1"}
    else:
        meta["pyvlmx_ext"] = _ext.build_info()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        idx = torch.cuda.current_device()
        meta["gpu"] = torch.cuda.get_device_name(idx)
        meta["cuda_runtime"] = torch.version.cuda
    try:
        import skimage

        meta["skimage"] = skimage.__version__
    except ImportError:
        meta["skimage"] = None
    return meta


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    if v is None:
        return ""
    return str(v)


def markdown_table(rows: list[dict], columns: Optional[Iterable[str]] = None) -> str:
    """Rows as a Markdown table over the union of their keys (or given columns)."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = []
        for row in rows:
            for k in row:
                if k not in columns:
                    columns.append(k)
    columns = list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_results(name: str, rows: list[dict], out_dir: str = "benchmarks/results",
                  meta: Optional[dict] = None, columns: Optional[Iterable[str]] = None) -> tuple[str, str]:
    """Write ``<out_dir>/<name>.json`` (metadata + rows) and ``<name>.md``.

    Returns:
        (json_path, md_path).
    """
    os.makedirs(out_dir, exist_ok=True)
    device = rows[0].get("device", "cpu") if rows else "cpu"
    meta = meta if meta is not None else metadata(device)
    jpath = os.path.join(out_dir, f"{name}.json")
    mpath = os.path.join(out_dir, f"{name}.md")
    from pyvlmx.io import write_json

    # other values as text, as before; non-finite numbers -> null (pyvlmx.io's policy)
    doc = json.loads(json.dumps({"benchmark": name, "metadata": meta, "rows": rows}, default=str))
    write_json(jpath, doc, indent=2)
    with open(mpath, "w") as fh:
        fh.write(f"# {name}\n\n")
        fh.write(f"commit {meta.get('commit')}, torch {meta.get('torch')}, device {meta.get('device')}"
                 f"{' (' + meta['gpu'] + ')' if meta.get('gpu') else ''}, "
                 f"threads {meta.get('threads')}, {meta.get('time_utc')}\n\n")
        fh.write(markdown_table(rows, columns))
    return jpath, mpath


def collect(rows: Iterable[dict], save: Callable[[list[dict]], object]) -> list[dict]:
    """Gather rows from a list or a generator, calling ``save(rows_so_far)`` after each.

    An exception inside the generator (or Ctrl-C) leaves the rows measured
    before it saved, and is raised again.
    """
    done: list[dict] = []
    for row in rows:
        done.append(row)
        save(done)
    if not done:
        save(done)
    return done


def main(name: str, run: Callable[[bool, str], Iterable[dict]], argv=None,
         columns: Optional[Iterable[str]] = None) -> list[dict]:
    """Command line shared by the benchmark modules."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}")
    p.add_argument("--quick", action="store_true", help="small shapes, short timing (sanity run)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default="benchmarks/results", help="output folder")
    args = p.parse_args(argv)
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: no CUDA device is available")
    meta = metadata(args.device)
    stem = name + ("_quick" if args.quick else "") + f"_{torch.device(args.device).type}"
    paths: list[tuple[str, str]] = []

    def save(rows: list[dict]) -> None:
        paths[:] = [write_results(stem, rows, args.out, meta, columns)]
        print(markdown_table(rows[-1:], columns).splitlines()[-1] if rows else "(no rows)", flush=True)

    rows = collect(run(args.quick, args.device), save)
    jpath, mpath = paths[0]
    with open(mpath) as fh:
        print(fh.read())
    print(f"wrote {jpath} and {mpath}")
    return rows
