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


#: exit status after SIGINT (Ctrl-C) and SIGTERM: 128 + the signal number
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


def main(argv=None) -> int:
    """Run one command; returns the exit status.

    0 success, 1 a failed check (``report``), 2 bad input or a computation
    pdlt refuses (one line on stderr: ``pdlt CMD: error: ...``), 130 / 143
    interrupted by SIGINT / SIGTERM (one line; a requested checkpoint is
    saved first). :class:`pdlt.ValidityWarning` s are printed as one line
    each (``pdlt CMD: warning: ...``) and listed in the ``--json`` output.
    """
    import warnings

    from ._commands import common
    from ._validation import ValidityWarning, describe_interrupt, sigterm_as_interrupt

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    with warnings.catch_warnings(record=True) as caught, sigterm_as_interrupt():
        warnings.simplefilter("always", ValidityWarning)
        common.begin(caught)
        try:
            code = int(args.run(args) or 0)
        except (ValueError, TypeError, FileNotFoundError, ArithmeticError, ImportError) as exc:
            print(f"pdlt {args.command}: error: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt as exc:
            msg, code = describe_interrupt(exc)
            print(f"pdlt {args.command}: {msg}", file=sys.stderr)
        records = list(caught)
    # outside catch_warnings: other warnings go to the real showwarning
    common.end(args.command, records)
    return code

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
