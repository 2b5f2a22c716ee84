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
from pathlib import Path
from typing import Iterable, NamedTuple

from pyvlmx.errors import UserError
from pyvlmx import io
from pyvlmx.io import atomic_write_text  # noqa: F401 (the one atomic writer; store.atomic_write_text is API)

SHARD_DIR = "shards"
CONFIG_NAME = "config.json"
RECORDS_NAME = "records.jsonl"
SUMMARY_NAME = "summary.json"
# Fields that depend on timing, not on the computation: excluded when records
# from two runs are compared (resume, sharding).
TIMING_FIELDS = ("wall_s",)


def dumps(record: dict) -> str:
    """One record as one compact JSON line: :func:`pyvlmx.io.dumps`' policy (non-finite -> null), sorted keys."""
    return io.dumps(record, sort_keys=True)


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


def _comparable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMING_FIELDS}


def shard_files(out_dir: str | os.PathLike) -> list[Path]:
    return sorted((Path(out_dir) / SHARD_DIR).glob("rank*-of*.jsonl"))


def collect_records(out_dir: str | os.PathLike) -> list[dict]:
    """All records in a sweep folder's shard files, one per pair, sorted by ``pair_id``.

    A pair written twice (a chunk recomputed after a crash writes only missing
    pairs, so this means two runs overlapped) must hold the same result
    (timing aside); otherwise this is a UserError naming the pair and the way
    out (``pyvlmx merge --repair``, see :func:`plan_repair`).
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
                raise UserError(f"{out_dir}: pair {pid} has two different records (fields {diff}); two "
                                f"sweeps overlapped in this folder. 'pyvlmx merge --repair {out_dir}' keeps the "
                                f"records that match its config.json and drops the others ('pyvlmx merge "
                                f"{out_dir}' lists them first)")
            by_id.setdefault(pid, rec)
    return [by_id[k] for k in sorted(by_id)]


# --- folders left mixed by overlapping runs ----------------------------------------------------

def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and len(value) > 4:
        return f"[{len(value)} items]"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """The settings two configurations disagree on, nested keys dotted (``attack.eps``).

    Returns:
        sorted (key, old value, new value); a key missing on one side has the
        value ``None`` there.  Compared as JSON, so tuples equal lists.
    """
    a = _flatten(json.loads(json.dumps(old, sort_keys=True)))
    b = _flatten(json.loads(json.dumps(new, sort_keys=True)))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def describe_config_differences(old: dict, new: dict, limit: int = 8) -> str:
    """``attack.eps: folder has 0.0156863, now 0.0313725; seed: folder has 0, now 1``."""
    diffs = config_differences(old, new)
    parts = []
    for k, a, b in diffs[:limit]:
        if isinstance(a, list) and isinstance(b, list) and (len(a) > 4 or len(b) > 4):
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            at = (f"first difference at [{first}]: {_fmt(a[first])} vs {_fmt(b[first])}"
                  if first < min(len(a), len(b)) else "one extends the other")
            parts.append(f"{k}: folder has {len(a)} items, now {len(b)} ({at})")
        else:
            parts.append(f"{k}: folder has {_fmt(a)}, now {_fmt(b)}")
    if len(diffs) > limit:
        parts.append(f"and {len(diffs) - limit} more")
    return "; ".join(parts)


def check_config(out_dir: str | os.PathLike, saved: dict, config: dict) -> None:
    """Refuse to resume a sweep folder whose ``config.json`` differs from ``config``.

    Raises:
        UserError: naming only the settings that differ, with the folder's
            value and the new one.
    """
    if config_differences(saved, config):
        raise UserError(f"{out_dir} holds a sweep with another configuration "
                        f"({describe_config_differences(saved, config)}); resume with the same settings or use "
                        f"a new --out folder")


def _contradiction(rec: dict, config: dict) -> str | None:
    """Why ``rec`` cannot have been computed with ``config`` (None: nothing recorded disagrees).

    Records carry few of the settings: the budget (``eps``, fixed unless the
    attack searches for a minimal one), 8-bit quantisation and the targets.
    """
    attack = config.get("attack") or {}
    eps = rec.get("eps")
    if isinstance(eps, (int, float)) and isinstance(attack.get("eps"), (int, float)) \
            and attack.get("norm", "linf") != "none":
        if attack.get("minimal", "off") == "off":
            if not math.isclose(eps, attack["eps"], rel_tol=1e-6, abs_tol=1e-12):
                return f"eps {eps:.6g}, the folder's config.json has attack.eps {attack['eps']:.6g}"
        else:
            top = max(list(attack.get("eps_schedule") or [attack["eps"]]) + [attack["eps"]])
            if eps > top * (1 + 1e-6):
                return f"eps {eps:.6g} is above the largest budget {top:.6g} of the folder's config.json"
    if "quantized" in rec and "quantize" in attack and bool(rec["quantized"]) != bool(attack["quantize"]):
        return f"quantized={rec['quantized']}, the folder's config.json has attack.quantize={attack['quantize']}"
    names = config.get("classnames")
    if names and isinstance(rec.get("target_class"), int) and 0 <= rec["target_class"] < len(names) \
            and rec.get("target_name") not in (None, names[rec["target_class"]]):
        return f"target {rec.get('target_name')!r} is not class {rec['target_class']} of the folder's classes"
    n_pairs = config.get("n_pairs")
    if isinstance(n_pairs, int) and isinstance(rec.get("pair_id"), int) and rec["pair_id"] >= n_pairs:
        return f"pair {rec['pair_id']} is beyond the {n_pairs} pairs of the folder's config.json"
    return None


class RepairPlan(NamedTuple):
    """What :func:`repair_mixed` would keep and drop in a sweep folder.

    Attributes:
        keep: (shard file, line number, record) kept, one per pair.
        drop: (shard file, line number, record, reason) dropped.
        conflicts: pairs that had two or more different records.
    """

    keep: list
    drop: list
    conflicts: list

    @property
    def needed(self) -> bool:
        """Records other than identical copies must go before the folder can be merged or resumed."""
        return any(not why.startswith("identical copy") for _, _, _, why in self.drop)

    def explain(self, limit: int = 20) -> str:
        """Lines saying which records are kept and which dropped, and why."""
        if not self.drop:
            return "nothing to repair: every pair has one record (or identical copies) matching config.json"
        lines = [f"{len(self.drop)} record(s) to drop, {len(self.keep)} to keep "
                 f"({len(self.conflicts)} pair(s) had different records):"]
        for f, line, rec, why in self.drop[:limit]:
            lines.append(f"  drop {Path(f).name} line {line}: pair {rec.get('pair_id')}: {why}")
        if len(self.drop) > limit:
            lines.append(f"  ... and {len(self.drop) - limit} more")
        kept = {int(r["pair_id"]): (f, line) for f, line, r in self.keep}
        for pid in self.conflicts[:limit]:
            if pid in kept:
                f, line = kept[pid]
                lines.append(f"  keep {Path(f).name} line {line}: pair {pid}")
            else:
                lines.append(f"  pair {pid}: no record kept; running the sweep again on this folder computes it")
        return "\n".join(lines)


def plan_repair(out_dir: str | os.PathLike) -> RepairPlan:
    """Decide, for a folder written by overlapping runs, which records to keep.

    Rules, per record in shard-file order:

    1. a record that contradicts the folder's ``config.json`` (its ``eps``,
       ``quantized``, target or pair id cannot come from that configuration)
       is dropped, wherever it is, duplicate or not;
    2. of the records left for a pair, the first written is kept and later
       ones are dropped: identical copies (two runs with the same settings),
       or copies that differ only in what records do not show (then both
       came from settings that agree with config.json on all that is
       recorded; the message says so);
    3. a pair left without a record is recomputed by running the sweep again.

    A run whose settings differ only in what records do not carry (say
    ``max_steps``) cannot be told apart from the folder's own: when such a
    run wrote a pair alone, its record stays.  For certainty, use a new folder.
    """
    out_dir = Path(out_dir)
    cfg_path = out_dir / CONFIG_NAME
    if not cfg_path.exists():
        raise UserError(f"{out_dir} is not a sweep folder (no {CONFIG_NAME})")
    config = json.loads(cfg_path.read_text())
    keep: dict[int, tuple] = {}
    drop: list = []
    versions: dict[int, set] = {}  # distinct results per pair, timing aside
    for f in shard_files(out_dir):
        for line, rec in enumerate(read_jsonl(f), start=1):
            if "pair_id" not in rec:
                drop.append((f, line, rec, "record without pair_id"))
                continue
            pid = int(rec["pair_id"])
            versions.setdefault(pid, set()).add(dumps(_comparable(rec)))
            why = _contradiction(rec, config)
            if why is not None:
                drop.append((f, line, rec, why))
                continue
            first = keep.get(pid)
            if first is None:
                keep[pid] = (f, line, rec)
            elif _comparable(first[2]) == _comparable(rec):
                drop.append((f, line, rec, f"identical copy of {Path(first[0]).name} line {first[1]}"))
            else:
                diff = sorted(k for k in set(first[2]) | set(rec)
                              if k not in TIMING_FIELDS and first[2].get(k) != rec.get(k))
                drop.append((f, line, rec, f"differs from {Path(first[0]).name} line {first[1]} (fields "
                                           f"{diff[:6]}), and nothing recorded tells which matches config.json; "
                                           f"the first written is kept"))
    conflicts = sorted(pid for pid, v in versions.items() if len(v) > 1)
    return RepairPlan(keep=[keep[k] for k in sorted(keep)], drop=drop, conflicts=conflicts)


def repair_mixed(out_dir: str | os.PathLike, plan: RepairPlan | None = None) -> RepairPlan:
    """Apply :func:`plan_repair`: rewrite each shard with the kept records only.

    Dropped records are not lost: they are appended to
    ``repair-dropped.jsonl`` in the folder (outside ``shards/``, so nothing
    reads them again), each with ``_dropped_from`` and ``_dropped_because``.
    Call it with the folder's run lock held (``pyvlmx merge --repair`` does).
    """
    out_dir = Path(out_dir)
    plan = plan_repair(out_dir) if plan is None else plan
    if not plan.drop:
        return plan
    with JsonlWriter(out_dir / "repair-dropped.jsonl") as w:
        w.write([dict(rec, _dropped_from=f"{Path(f).name}:{line}", _dropped_because=why)
                 for f, line, rec, why in plan.drop])
    by_file: dict[Path, list] = {f: [] for f in shard_files(out_dir)}
    for f, line, rec in plan.keep:
        by_file.setdefault(Path(f), []).append((line, rec))
    for f, rows in by_file.items():
        rows.sort(key=lambda t: t[0])
        atomic_write_text(f, "".join(dumps(r) + "\n" for _, r in rows))
    merged = out_dir / RECORDS_NAME
    if merged.exists():  # made from the mixed shards: stale
        merged.unlink()
    return plan


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
