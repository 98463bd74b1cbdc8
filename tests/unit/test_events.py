"""The event log jobs and runs share, and the bound on finished entries kept in memory."""
from __future__ import annotations

import threading

import pytest

from services.common.errors import InvalidArgument
from services.common.events import EventLog, FinishedIndex, Retention


def numbered(log: EventLog[tuple[int, str]], *names: str, final: bool = False) -> None:
    """Append one event per name, each holding its sequence number; `final` marks the last."""
    for i, name in enumerate(names):
        def event(sequence: int, name: str = name) -> tuple[int, str]:
            return sequence, name

        log.append(event, final=final and i == len(names) - 1)


def test_sequence_numbers_and_after() -> None:
    log: EventLog[tuple[int, str]] = EventLog(10)
    assert log.sequence == 0 and not log.finished
    numbered(log, "a", "b", "c")
    assert log.sequence == 3
    assert log.after(0) == [(1, "a"), (2, "b"), (3, "c")]
    assert log.after(2) == [(3, "c")]
    assert log.after(3) == []


def test_bounded_log_keeps_the_newest_events() -> None:
    log: EventLog[tuple[int, str]] = EventLog(3)
    numbered(log, *"abcdef")
    assert log.after(0) == [(4, "d"), (5, "e"), (6, "f")]  # numbers continue; old ones dropped
    assert log.sequence == 6


def test_watch_ends_with_the_final_event() -> None:
    log: EventLog[tuple[int, str]] = EventLog(10)
    numbered(log, "queued", "running")
    numbered(log, "done", final=True)
    assert [name for _, name in log.watch()] == ["queued", "running", "done"]
    assert [name for _, name in log.watch(after=2)] == ["done"]
    # A watcher that re-attaches after the final event gets nothing and returns at once.
    assert list(log.watch(after=3)) == []
    assert log.finished and log.wait_finished(timeout=0)


def test_watch_follows_events_from_another_thread() -> None:
    log: EventLog[tuple[int, str]] = EventLog(100)
    seen: list[str] = []
    first = threading.Event()

    def follow() -> None:
        for _, name in log.watch(poll=0.05):
            seen.append(name)
            first.set()

    watcher = threading.Thread(target=follow)
    watcher.start()
    numbered(log, "e0")
    assert first.wait(timeout=10)
    numbered(log, *[f"e{i}" for i in range(1, 50)])
    numbered(log, "end", final=True)
    watcher.join(timeout=10)
    assert not watcher.is_alive()
    assert seen == [f"e{i}" for i in range(50)] + ["end"]


def test_watch_stops_when_the_watcher_goes_away() -> None:
    log: EventLog[tuple[int, str]] = EventLog(10)
    numbered(log, "a")
    active = [True, False]
    # The log never finishes; the watcher is active for one wait, then gone.
    assert [name for _, name in log.watch(is_active=lambda: active.pop(0), poll=0.01)] == ["a"]
    assert not log.wait_finished(timeout=0.01)


def test_event_log_size_must_be_positive() -> None:
    with pytest.raises(InvalidArgument, match="max_events must be ≥ 1, got 0"):
        EventLog(0)


def test_finished_index_keeps_at_most_max_finished_oldest_out_first() -> None:
    index = FinishedIndex(Retention(max_finished=2, max_age_seconds=3600))
    for key in ("a", "b", "c"):
        index.add(key)
    assert index.expired() == ["a"]
    assert len(index) == 2 and "b" in index and "c" in index
    index.add("b")  # finished again: now the newest
    index.add("d")
    assert index.expired() == ["c"]
    index.discard("b")  # runs again: not finished, never expired while it runs
    assert index.expired() == []
    assert "b" not in index and "d" in index


def test_finished_index_drops_entries_older_than_max_age() -> None:
    index = FinishedIndex(Retention(max_finished=100, max_age_seconds=0))
    index.add("a")
    index.add("b")
    assert index.expired() == ["a", "b"]
    assert len(index) == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_finished": -1}, "Retention.max_finished must be ≥ 0, got -1"),
        ({"max_age_seconds": -5.0}, "Retention.max_age_seconds must be ≥ 0, got -5.0"),
    ],
)
def test_retention_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Retention(**kwargs)
