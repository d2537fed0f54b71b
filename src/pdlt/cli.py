"""The ``pdlt`` command: parse, call the public API, print.

Each subcommand lives in its own module under ``pdlt._commands`` with two
functions, ``register(subparsers)`` and ``run(args) -> int``; this file only
assembles them. Imports are lazy: ``pdlt --help`` imports neither torch nor
matplotlib.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module under pdlt._commands
COMMANDS = {
    "kernel": "kernel",
    "flow": "flow",
    "criticality": "criticality",
    "diagnose": "diagnose",
    "measure": "measure",
    "report": "report",
    "fit": "fit",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pdlt",
        description="The effective theory of deep networks (Roberts & Yaida), computable "
                    "and checked against real networks.")
    parser.add_argument("--version", action="version", version=f"pdlt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"pdlt._commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pdlt._commands.{module}":
                continue  # command not built yet
            raise
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, ArithmeticError, ImportError) as exc:
        print(f"pdlt {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
