"""What services' jobs and the orchestrator's runs share: a followable event log, and a bound
on how many finished ones stay in memory.

A job (services/common/jobs.py) and a run (orchestrator/runner.py) are both observed the same
way: every change becomes an event with the next sequence number, watchers stream the events
after the last one they saw (re-attaching after a broken stream with `after`), and the stream
ends with the final event. One class does that for both, so the two can't drift apart.

Finished jobs and runs are kept in memory only for a while (`Retention`): their records stay
in the store, which answers once they are gone, so a server that runs for months holds only
its recent work.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from services.common.errors import InvalidArgument

E = TypeVar("E")

#: How long a watcher waits for the next event before asking `is_active()` again.
POLL_SECONDS = 0.5


class EventLog(Generic[E]):
    """A bounded, sequence-numbered log of events that watchers follow until its final event.

    Sequence numbers start at 1 and never repeat. When more than `max_events` were appended,
    the oldest are dropped: a watcher that fell that far behind skips to the recent ones (the
    state itself is always in the newest events). `cond` is the log's lock; an owner that
    changes its state and appends the event describing it holds `cond` around both, so no
    watcher sees one without the other.
    """

    def __init__(self, max_events: int = 1000):
        if max_events < 1:
            raise InvalidArgument(f"max_events must be ≥ 1, got {max_events}")
        self.cond = threading.Condition(threading.RLock())
        self._events: collections.deque[tuple[int, E]] = collections.deque(maxlen=max_events)
        self._sequence = 0
        self._final: int | None = None

    @property
    def sequence(self) -> int:
        """The newest event's sequence number (0: none yet)."""
        with self.cond:
            return self._sequence

    @property
    def finished(self) -> bool:
        """True once the final event was appended."""
        with self.cond:
            return self._final is not None

    def append(self, make: Callable[[int], E], final: bool = False) -> E:
        """Append the event `make(sequence)` builds; `final` ends every watch after it."""
        with self.cond:
            sequence = self._sequence + 1
            event = make(sequence)
            self._sequence = sequence
            self._events.append((sequence, event))
            if final:
                self._final = sequence
            self.cond.notify_all()
            return event

    def after(self, sequence: int) -> list[E]:
        """The kept events newer than `sequence`, oldest first."""
        with self.cond:
            return [e for s, e in self._events if s > sequence]

    def watch(self, after: int = 0, is_active: Callable[[], bool] = lambda: True, poll: float = POLL_SECONDS) -> Iterator[E]:
        """Events after `after`, as they come, until the final one (or `is_active()` is false)."""
        last = after
        while True:
            with self.cond:
                pending = [(s, e) for s, e in self._events if s > last]
                if not pending and self._final is None:
                    self.cond.wait(timeout=poll)
                    pending = [(s, e) for s, e in self._events if s > last]
                newest = pending[-1][0] if pending else last
                done = self._final is not None and newest >= self._final
            for sequence, event in pending:
                last = sequence
                yield event
            if done or not is_active():
                return

    def wait_finished(self, timeout: float | None = None) -> bool:
        """Block until the final event (or `timeout` seconds); whether it came."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while self._final is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(timeout=remaining)
            return True


@dataclass(frozen=True)
class Retention:
    """How many finished jobs or runs stay in memory, and for how long after they finished.

    Beyond either bound the oldest finished ones are dropped from memory; their records stay in
    the store and answer status and watch requests from there."""

    max_finished: int = 256
    max_age_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_finished < 0:
            raise InvalidArgument(f"Retention.max_finished must be ≥ 0, got {self.max_finished}")
        if self.max_age_seconds < 0:
            raise InvalidArgument(f"Retention.max_age_seconds must be ≥ 0, got {self.max_age_seconds}")


class FinishedIndex:
    """The finished entries of an in-memory table in the order they finished, and which of them
    `Retention` says to drop. Not thread-safe: the owner calls it under its table's lock."""

    def __init__(self, retention: Retention | None = None):
        self.retention = retention if retention is not None else Retention()
        self._finished: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._finished)

    def __contains__(self, key: object) -> bool:
        return key in self._finished

    def add(self, key: str) -> None:
        """`key` finished now (again: it moves to the newest end)."""
        self._finished.pop(key, None)
        self._finished[key] = time.monotonic()

    def discard(self, key: str) -> None:
        """`key` is no longer finished (it runs again) or no longer in the table."""
        self._finished.pop(key, None)

    def expired(self) -> list[str]:
        """Remove and return the keys to drop from the table now, oldest first."""
        out = []
        cutoff = time.monotonic() - self.retention.max_age_seconds
        while self._finished:
            key, finished_at = next(iter(self._finished.items()))
            if len(self._finished) <= self.retention.max_finished and finished_at > cutoff:
                break
            del self._finished[key]
            out.append(key)
        return out
