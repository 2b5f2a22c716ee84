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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Bad input: one clear line, no traceback deep inside torch.
        print(f"pyvlmx {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
