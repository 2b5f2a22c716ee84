"""Run every pyvlmx benchmark in one process and write one table.

    python -m benchmarks [--quick] [--device cpu|cuda] [--out DIR] [--only NAME ...]

Each module ``benchmarks/bench_<name>.py`` exposes ``run(quick, device)``
returning or yielding rows (dicts); each module's files are rewritten after
every row, so a stopped run keeps what it measured.  Every figure in a row is measured in this same run,
next to its baseline; ``<out>/<name>.json`` and ``<out>/<name>.md`` are
written per module, plus ``<out>/summary.md`` joining the tables.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from benchmarks._common import collect, metadata, write_results

MODULES = ["kernels", "attack", "spectra", "jvp", "sweep", "compile"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--only", nargs="*", choices=MODULES, help="run these modules only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    sections = []
    for name in args.only or MODULES:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        print(f"== benchmarks.bench_{name} ({'quick' if args.quick else 'full'}, {args.device})", flush=True)
        t0 = time.perf_counter()
        try:
            meta = metadata(args.device)
            collect(mod.run(quick=args.quick, device=args.device),
                    lambda done, name=name, meta=meta: write_results(name, done, out, meta))
        except Exception:  # report which module broke, keep the others' results
            failed.append(name)
            traceback.print_exc()
            continue
        md = (out / f"{name}.md").read_text()
        sections.append(f"### {name}\n\n{md}\n")
        print(md)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    meta = metadata()
    header = (f"Measured on {meta.get('device_name', args.device)}, torch {meta.get('torch')}, "
              f"{meta.get('threads')} threads, commit {meta.get('commit')}, "
              f"{'quick' if args.quick else 'full'} mode.\n\n")
    (out / "summary.md").write_text(header + "\n".join(sections))
    (out / "summary.json").write_text(json.dumps({"meta": meta, "failed": failed}, indent=2))
    if failed:
        print(f"benchmark modules that failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
