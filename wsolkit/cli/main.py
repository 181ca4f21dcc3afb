"""The ``wsolkit`` command line: one module per command, dispatched by ``set_defaults(run=...)``.

Each command module has ``add_parser(commands)``; :func:`main` parses, calls the chosen
command's ``run(args)`` and turns a :class:`~wsolkit.errors.WSOLError` into a one-line
message, with the library's parameter names written as this command's flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wsolkit.cli import (
    beam,
    clean_boxes,
    evaluate,
    fcam,
    finetune,
    heads,
    localize,
    methods,
    mosaics,
    proposals,
    segment,
)
from wsolkit.cli.options import EXIT_USAGE, flag_message
from wsolkit.errors import WSOLError

COMMANDS = (methods, localize, evaluate, segment, clean_boxes, proposals, finetune, beam, heads,
            mosaics, fcam)
"""Command modules, in the order ``wsolkit --help`` lists them (segment adds instances)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="wsolkit", description="Weakly supervised object localization with classifiers."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 some items failed, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except WSOLError as error:
        message = flag_message(str(error), args.command_parser, args.flags)
        print(f"wsolkit: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("wsolkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
