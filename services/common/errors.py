"""The error vocabulary of synthaug.

Core code raises these; the gRPC runtime maps them to status codes in one place and the
CLI maps them to exit codes. Messages name the offending item, because the user reads them.
"""
from __future__ import annotations


class SynthaugError(Exception):
    """Base class of the errors that are part of synthaug's interface."""

    #: gRPC status code name this error maps to.
    code = "INTERNAL"


class InvalidArgument(SynthaugError, ValueError):
    """Bad input from the caller: a parameter, a file, a dataset. Maps to INVALID_ARGUMENT."""

    code = "INVALID_ARGUMENT"


class NotFound(SynthaugError, KeyError):
    """A referenced object, dataset or job does not exist. Maps to NOT_FOUND."""

    code = "NOT_FOUND"

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class Unavailable(SynthaugError):
    """This replica can't take the work now (draining, shutting down): try another. Maps to UNAVAILABLE."""

    code = "UNAVAILABLE"


class IntegrityError(SynthaugError):
    """Stored bytes do not match what names them (a blob's hash, a dataset id, a record's
    checksum): corruption on disk or an edit. Maps to DATA_LOSS; the CLI exits 1. The message
    names the key and says how to recover (`synthaug store verify --repair`, then re-run)."""

    code = "DATA_LOSS"

    def __init__(self, message: str, key: str = "", detail: str = ""):
        super().__init__(message)
        self.key = key
        self.detail = detail or message  # what is wrong, without the advice (for listings)


class JobCancelled(SynthaugError):
    """Raised inside a job when it was cancelled; the job ends CANCELLED, not FAILED."""

    code = "CANCELLED"


def error_code(exc: BaseException) -> str:
    """The gRPC status code name for an exception (INTERNAL for anything unexpected)."""
    return exc.code if isinstance(exc, SynthaugError) else "INTERNAL"
