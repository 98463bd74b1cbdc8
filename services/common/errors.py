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


class FailedPrecondition(SynthaugError):
    """The request is well-formed but cannot succeed as asked, and retrying will not help
    until the caller changes something (e.g. training diverged: lower the learning rate).
    Maps to FAILED_PRECONDITION; the CLI treats it as the caller's to fix (exit 2)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(SynthaugError):
    """This replica's bounded queue is full: retry later or on another replica. Maps to
    RESOURCE_EXHAUSTED (which the orchestrator's dispatcher retries with backoff)."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(SynthaugError):
    """This replica can't take the work now (draining, shutting down): try another. Maps to UNAVAILABLE."""

    code = "UNAVAILABLE"


class StoreUnavailable(Unavailable):
    """The object store did not answer within the retry budget. The message is one line that
    names the endpoint and the setting to check; the CLI exits 1 without a traceback."""


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


#: Status codes that mean "the caller must change something" (the plan, its data, a setting):
#: the CLI exits 2 for them, 1 for anything else.
USER_ERROR_CODES = frozenset({"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION"})


def error_code(exc: BaseException) -> str:
    """The gRPC status code name for an exception (INTERNAL for anything unexpected)."""
    return exc.code if isinstance(exc, SynthaugError) else "INTERNAL"
