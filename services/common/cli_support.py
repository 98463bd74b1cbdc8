"""One mapping from errors to exit codes for every `synthaug` command.

0 success; 2 the caller's to fix (bad input, a missing item, a request that cannot succeed
as asked: INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION — the message names the item and
what to change); 1 any other failure (a service or the store unreachable, corruption, a
crash). The mapping is by status code, not class, so an error that crossed gRPC (a failed
job, a dispatch error) exits as the error raised in the service would. Handlers are wrapped
with `guarded` so they behave the same under any main() (tests build their own parsers).
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable, Iterable

from services.common.errors import USER_ERROR_CODES, SynthaugError

log = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]

#: Status codes that mean "change the input and try again".


def exit_code(code: str) -> int:
    """The exit code for an error with this gRPC status code name."""
    return 2 if code in USER_ERROR_CODES else 1


def exit_code_for_failures(codes: Iterable[str]) -> int:
    """Exit code of a run whose steps failed with these codes: 2 only when every failure is
    the caller's to fix (e.g. training diverged: lower the learning rate), else 1."""
    codes = list(codes)
    return 2 if codes and all(exit_code(c) == 2 for c in codes) else 1


def guarded(handler: Handler, prog: str = "synthaug") -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except SynthaugError as exc:
            status = exit_code(exc.code)
            sys.stderr.write(f"{prog}: {'error' if status == 2 else 'failed'}: {exc}\n")
            return status
        except OSError as exc:  # the store or a folder failed underneath us
            log.debug("I/O failure", exc_info=True)
            sys.stderr.write(f"{prog}: failed: {exc}\n")
            return 1

    return run
