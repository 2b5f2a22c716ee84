"""The ``pyvlmx`` command line: one entry point, one subcommand per task.

Each subcommand lives in its own module here and exposes
``register(subparsers)``, which adds its parser and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Module names under pyvlmx.cli, in the order ``pyvlmx --help`` lists them.
SUBCOMMANDS = [
    "info",
    "align", "systematic", "merge",
    "zeroshot",
    "study",
    "report",
    "transfer",
    "noise", "spectra", "detect",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyvlmx",
        description="Systematic evaluation of vision-language models "
                    "(zero-shot vs embedding alignment, noise, spectra, detection).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f"pyvlmx.cli.{name}").register(sub)
    for p in sub.choices.values():  # every command that writes an --out folder can queue behind another run
        if "--out" in p._option_string_actions and "--wait" not in p._option_string_actions:
            p.add_argument("--wait", action="store_true",
                           help="if another run is using --out, wait for it to finish instead of exiting")
    return parser


# Errors that mean bad input (pyvlmx.errors.UserError is a ValueError): one line, exit code 2.
EXPECTED_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError,
                   IsADirectoryError)
REPORT_HINT = ("this looks like a bug in pyvlmx: please report it with the command line, the traceback above "
               "and the output of `pyvlmx info`")


def _raised_here(exc: BaseException) -> bool:
    """True when a ``raise`` statement in pyvlmx's own code raised ``exc`` (not torch, not a C call)."""
    import linecache
    import os

    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    return path.startswith(pkg + os.sep) and linecache.getline(path, tb.tb_lineno).lstrip().startswith("raise")


def _add_report_hint(exc: BaseException) -> None:
    if hasattr(exc, "add_note"):  # Python 3.11+: printed under the traceback
        exc.add_note(REPORT_HINT)
    else:
        print(f"pyvlmx: {REPORT_HINT}", file=sys.stderr)


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(exc)


def main(argv: list[str] | None = None) -> int:
    import contextlib

    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"pyvlmx {args.command}: error:"
    try:
        with contextlib.ExitStack() as held:
            if getattr(args, "out", None) is not None:
                # before any model loads: --out is (or can be made) a writable folder, and
                # this is the only run on it (the ranks of one torchrun job share it)
                from pyvlmx.checks import check_out_dir
                from pyvlmx.runlock import run_lock

                check_out_dir(args.out)
                held.enter_context(run_lock(args.out, wait=bool(getattr(args, "wait", False))))
            result = args.func(args)
    except EXPECTED_ERRORS as exc:  # bad input: one clear line, no traceback deep inside torch
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as exc:
        if _out_of_memory(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            bs = getattr(args, "batch_size", None)
            hint = f"try a smaller --batch-size (this run used {bs})" if bs else "try a smaller batch or input"
            print(f"{prefix} out of memory ({first}); {hint}", file=sys.stderr)
            return 2
        if _raised_here(exc):  # pyvlmx's own message about the input or the environment
            print(f"{prefix} {exc}", file=sys.stderr)
            return 2
        _add_report_hint(exc)
        raise
    except Exception as exc:
        _add_report_hint(exc)
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
