"""One mapping from errors to exit codes for every `synthaug` command.

0 success, 2 bad input (InvalidArgument / NotFound: the message names the item), 1 failure.
Handlers are wrapped with `guarded` so they behave the same under any main() (tests build
their own parsers).
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from services.common.errors import InvalidArgument, NotFound, SynthaugError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def guarded(handler: Handler, prog: str = "synthaug") -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except (InvalidArgument, NotFound) as exc:
            sys.stderr.write(f"{prog}: error: {exc}\n")
            return 2
        except SynthaugError as exc:
            sys.stderr.write(f"{prog}: failed: {exc}\n")
            return 1
        except OSError as exc:  # the store or a folder failed underneath us
            log.debug("I/O failure", exc_info=True)
            sys.stderr.write(f"{prog}: failed: {exc}\n")
            return 1

    return run
