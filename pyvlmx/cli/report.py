"""``pyvlmx report DIR``: rebuild report.md and report.html from a study folder."""

from __future__ import annotations


def _run(args) -> int:
    from pyvlmx.report import build_report

    md, page = build_report(args.dir)
    print(f"wrote {md}\nwrote {page}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="rebuild report.md / report.html from a study folder")
    p.add_argument("dir", help="output folder of `pyvlmx study`")
    p.set_defaults(func=_run)
