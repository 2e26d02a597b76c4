"""The ``bitvote`` command: a thin layer over the library.

Each command group lives in its own module with ``add_parser(subparsers)`` that registers its
subcommands and sets ``func`` on them; :func:`main` dispatches, and turns a
:class:`~bitvote.errors.BitvoteError` (a user mistake) into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import BitvoteError
from ..integrity import deferred_notes

#: command modules, in the order their commands appear in ``bitvote --help``
COMMAND_MODULES = ["info", "train", "convert", "engine", "hw", "export", "data", "search"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line like every other error (``--help`` has the rest)."""

    def error(self, message):
        opt, sep, rest = message.partition(": ")
        if opt.startswith("argument ") and rest.startswith("must "):  # "argument --lr: must be" -> "--lr must be"
            message = f"{opt[len('argument '):]} {rest}"
        self.exit(2, f"bitvote: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bitvote",
        description="Binary neural networks with majority voters: train, convert, run packed, cost in hardware.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{name}":
                continue  # an optional command group that is not installed
            raise
        mod.add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # a usage error (one line, 2) or --help (0): the same return for in-process callers
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    args.argv = argv  # the raw command line, for commands that relaunch themselves (train --nproc)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        with deferred_notes():
            rc = args.func(args)
    except BitvoteError as e:
        if args.debug:
            raise
        rank = os.environ.get("RANK", "0") if os.environ.get("WORLD_SIZE", "1") != "1" else "0"
        where = f" (rank {rank})" if rank != "0" else ""  # under torchrun every rank may report
        print(f"bitvote: error{where}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitvote: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
