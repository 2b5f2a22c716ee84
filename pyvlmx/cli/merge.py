"""``pyvlmx merge DIR``: join a sweep's shard files into records.jsonl and summary.json.

A folder that overlapping runs left mixed (a pair with two different records)
is explained (which records would be kept, which dropped, and why) and, with
``--repair``, mended; see :func:`pyvlmx.systematic.store.plan_repair`.
"""

from __future__ import annotations

import os


def _run(args) -> int:
    from pyvlmx.errors import UserError
    from pyvlmx.runlock import run_lock
    from pyvlmx.systematic import format_summary, merge
    from pyvlmx.systematic.store import plan_repair, repair_mixed

    if not os.path.isdir(args.dir):
        raise FileNotFoundError(f"{args.dir} is not a sweep folder (no such folder)")
    with run_lock(args.dir, wait=args.wait):  # no sweep may write while the shards are read or rewritten
        plan = plan_repair(args.dir)
        if plan.drop and (plan.needed or args.repair):
            print(plan.explain())
            if not args.repair:
                raise UserError(f"{args.dir}: shards hold records that overlapping runs left (listed above); "
                                f"'pyvlmx merge --repair {args.dir}' keeps and drops them as listed")
            repair_mixed(args.dir, plan)
            print(f"repaired: dropped records saved in {args.dir}/repair-dropped.jsonl")
        summary = merge(args.dir, partial=args.partial)
    print(format_summary(summary))
    print(f"wrote {args.dir}/records.jsonl and {args.dir}/summary.json")
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge a systematic sweep's shards (records.jsonl, summary.json)")
    p.add_argument("dir", help="the sweep folder (--out of pyvlmx systematic)")
    p.add_argument("--partial", action="store_true", help="summarise an unfinished sweep")
    p.add_argument("--repair", action="store_true",
                   help="a folder left mixed by overlapping runs: keep the records that match config.json "
                        "(the first of identical copies) and drop the others (merge alone lists them)")
    p.add_argument("--wait", action="store_true", help="wait for a sweep running on DIR to finish")
    p.set_defaults(func=_run)
