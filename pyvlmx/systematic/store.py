"""Crash-safe JSON Lines storage for sweep records, shard files and their merge.

One record per line.  A writer appends whole lines with one ``write`` and then
``flush`` + ``fsync``, so after a crash (even SIGKILL) a file holds complete
records followed by, at worst, one partial last line.  Readers drop such a
last line (one that has no newline or does not parse); ``repair=True``
truncates it away before a writer appends again.  A damaged line anywhere
else is an error naming the file and line: that is not a crash artefact.

Layout of a sweep folder::

    config.json                 the sweep's configuration (resume must match)
    shards/rank<r>-of<N>.jsonl  records written by rank r of N (N = 1 alone)
    images/<pair>.png           aligned images (8-bit, lossless), if saved
    records.jsonl               merged records, sorted by pair_id
    summary.json                the summary (see pyvlmx.systematic.summary)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Iterable

SHARD_DIR = "shards"
CONFIG_NAME = "config.json"
RECORDS_NAME = "records.jsonl"
SUMMARY_NAME = "summary.json"
# Fields that depend on timing, not on the computation: excluded when records
# from two runs are compared (resume, sharding).
TIMING_FIELDS = ("wall_s",)


def _clean(value):
    """JSON has no inf/nan: map non-finite floats to None (documented per field)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(record: dict) -> str:
    return json.dumps(_clean(record), allow_nan=False, sort_keys=True)


def shard_path(out_dir: str | os.PathLike, rank: int, world: int) -> Path:
    return Path(out_dir) / SHARD_DIR / f"rank{rank:03d}-of{world:03d}.jsonl"


def read_jsonl(path: str | os.PathLike, repair: bool = False) -> list[dict]:
    """Read a JSON Lines file written by :class:`JsonlWriter`.

    Args:
        path: the file.
        repair: truncate a partial last line (left by a killed writer) from
            the file, so appending continues on a line boundary.

    Returns:
        the complete records, in file order.

    Raises:
        ValueError: a line other than the last is not valid JSON.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records = []
    good_end = 0
    pos = 0
    lines = data.split(b"\n")
    for n, line in enumerate(lines):
        is_last = n == len(lines) - 1
        end = pos + len(line) + (0 if is_last else 1)
        if is_last:
            # text after the final newline: a partial line from a killed writer
            break
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if n == len(lines) - 2 and not lines[-1]:
                    # the last complete line is damaged: also a crash artefact
                    # only if nothing follows; treat as partial and drop it
                    break
                raise ValueError(f"{path}: line {n + 1} is not valid JSON ({exc}); the file is damaged "
                                 f"beyond a partial last line") from exc
            if not isinstance(rec, dict):
                raise ValueError(f"{path}: line {n + 1} is not a JSON object")
            records.append(rec)
        good_end = end
        pos = end
    if repair and good_end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return records


class JsonlWriter:
    """Append records to a JSON Lines file, durably: one write, flush and fsync per call.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "r.jsonl")
        >>> with JsonlWriter(p) as w:
        ...     w.write([{"pair_id": 0}])
        >>> read_jsonl(p)
        [{'pair_id': 0}]
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        read_jsonl(self.path, repair=True)  # drop a partial last line first
        self._fh = open(self.path, "ab")

    def write(self, records: Iterable[dict]) -> None:
        blob = "".join(dumps(r) + "\n" for r in records).encode()
        if not blob:
            return
        self._fh.write(blob)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a whole file atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _comparable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMING_FIELDS}


def shard_files(out_dir: str | os.PathLike) -> list[Path]:
    return sorted((Path(out_dir) / SHARD_DIR).glob("rank*-of*.jsonl"))


def collect_records(out_dir: str | os.PathLike) -> list[dict]:
    """All records in a sweep folder's shard files, one per pair, sorted by ``pair_id``.

    A pair written twice (a chunk recomputed after a crash writes only missing
    pairs, so this means two runs overlapped) must hold the same result
    (timing aside); otherwise this is a ValueError naming the pair.
    """
    by_id: dict[int, dict] = {}
    for f in shard_files(out_dir):
        for rec in read_jsonl(f):
            if "pair_id" not in rec:
                raise ValueError(f"{f}: record without pair_id: {str(rec)[:200]}")
            pid = int(rec["pair_id"])
            old = by_id.get(pid)
            if old is not None and _comparable(old) != _comparable(rec):
                diff = sorted(k for k in set(old) | set(rec)
                              if k not in TIMING_FIELDS and old.get(k) != rec.get(k))
                raise ValueError(f"{out_dir}: pair {pid} has two different records (fields {diff}); "
                                 f"two sweeps with different settings wrote to the same folder")
            by_id.setdefault(pid, rec)
    return [by_id[k] for k in sorted(by_id)]


def load_records(out_dir: str | os.PathLike) -> list[dict]:
    """Records of a sweep folder, sorted by ``pair_id``.

    Reads the merged ``records.jsonl`` when it is complete (as many records
    as the shards hold), else the shard files directly, so a running or
    interrupted sweep can be read too.

    Args:
        out_dir: the folder given to :func:`pyvlmx.systematic.run_sweep`.

    Returns:
        list of record dicts (see :func:`pyvlmx.systematic.run_sweep`).
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"no sweep folder at {out_dir}")
    shards = collect_records(out_dir)
    merged_path = out_dir / RECORDS_NAME
    if merged_path.exists():
        merged = read_jsonl(merged_path)
        if len(merged) == len(shards):
            return merged
    if not shards and not (out_dir / CONFIG_NAME).exists():
        raise FileNotFoundError(f"{out_dir} holds no sweep (no {CONFIG_NAME}, no {SHARD_DIR}/*.jsonl)")
    return shards


def write_merged(out_dir: str | os.PathLike, records: list[dict]) -> Path:
    """Write ``records.jsonl`` (sorted by pair_id) atomically."""
    text = "".join(dumps(r) + "\n" for r in sorted(records, key=lambda r: r["pair_id"]))
    return atomic_write_text(Path(out_dir) / RECORDS_NAME, text)
