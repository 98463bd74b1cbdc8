"""The `synthaug` command line.

Each area contributes its subcommands through a `register(subparsers)` function in its own
module, so the CLI is assembled here without this file knowing their flags. Exit codes:
0 success, 2 bad input (InvalidArgument / NotFound: the message names the item), 1 failure.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

from services.common.cli_support import guarded
from services.common.logs import configure_logging
from synthaug import __version__

log = logging.getLogger("synthaug")

#: Modules with a `register(subparsers)` function, in the order their commands are listed.
COMMAND_MODULES: tuple[str, ...] = (
    "services.common.cli_data",
    "orchestrator.commands",
    "services.compositor.cli",
    "services.evaluator.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthaug",
        description="Measure how synthetic training data (copy-paste composites, pix2pix images) changes instance-segmentation accuracy.",
    )
    parser.add_argument("--version", action="version", version=f"synthaug {__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, json_lines=False)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return guarded(args.func)(args)
    except KeyboardInterrupt:
        sys.stderr.write("synthaug: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
