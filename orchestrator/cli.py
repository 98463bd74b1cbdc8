"""The `synthaug` command line.

Each area contributes its subcommands through a `register(subparsers)` function in its own
module, so the CLI is assembled here without this file knowing their flags. Exit codes:
0 success, 2 the caller's to fix (bad input, a missing item, a request that cannot succeed as
asked: the message says what to change), 1 failure, 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM).

SIGTERM (what `kill`, CI time-outs and schedulers send) takes the Ctrl-C path: jobs are
cancelled, embedded services drain and stop, then the CLI exits. A second signal while that
happens is ignored, so the clean-up is not cut short; after SIGKILL the embedded services
notice on their own that their parent is gone (orchestrator/launcher.py).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Iterator, Sequence

from services.common.cli_support import guarded
from services.common.logs import configure_logging
from synthaug import __version__

log = logging.getLogger("synthaug")

#: Modules with a `register(subparsers)` function, in the order their commands are listed.
COMMAND_MODULES: tuple[str, ...] = (
    "ingest.cli_data",
    "orchestrator.commands",
    "orchestrator.model_commands",
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so that the same clean-up runs."""


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Once: further SIGTERM/SIGINT must not interrupt the clean-up this one starts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM → Terminated in the main thread (signals can only be handled there) while the
    command runs; the previous handlers are restored afterwards (tests call main() in-process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: installed outside Python; nothing to restore
                signal.signal(sig, handler)


def command_parser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    """The parser of `command` (a group such as `import` or `dataset`), else `parser`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, json_lines=False)
    if not hasattr(args, "func"):
        # No command, or a group without its subcommand (`synthaug import`): that one's help.
        command_parser(parser, getattr(args, "command", None)).print_help(sys.stderr)
        return 2
    try:
        with sigterm_as_interrupt():
            return guarded(args.func)(args)
    except Terminated:
        sys.stderr.write("synthaug: terminated; jobs cancelled and services stopped\n")
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        sys.stderr.write("synthaug: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
