"""``pyvlmx merge DIR``: join a sweep's shard files into records.jsonl and summary.json."""

from __future__ import annotations


def _run(args) -> int:
    from pyvlmx.systematic import format_summary, merge

    summary = merge(args.dir, partial=args.partial)
    print(format_summary(summary))
    print(f"wrote {args.dir}/records.jsonl and {args.dir}/summary.json")
    return 0


def register(sub) -> None:
    p = sub.add_parser("merge", help="merge a systematic sweep's shards (records.jsonl, summary.json)")
    p.add_argument("dir", help="the sweep folder (--out of pyvlmx systematic)")
    p.add_argument("--partial", action="store_true", help="summarise an unfinished sweep")
    p.set_defaults(func=_run)
