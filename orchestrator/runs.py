"""Runs of plans: prepare (graph, id, cache marks), execute, observe, cancel.

Shared by the CLI (a run in the foreground) and OrchestratorService (runs in the background,
watched over gRPC). In embedded mode the services are started once, on first use, and
stopped with the manager. Finished runs stay in memory within `Retention` bounds; after that
GetRun and WatchRun answer from the run's status in the store (`runs/<id>/status.pb`, the
latest attempt's; every attempt is kept under `runs/<id>/attempts/`, see orchestrator/runner.py).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from orchestrator.dispatch import Dispatcher
from orchestrator.graph import Graph, build_graph
from orchestrator.launcher import EmbeddedServices, start_embedded
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.plan import Plan
from orchestrator.runner import Runner, RunSummary, RunTracker, load_cached, run_id_for, run_status_key, run_summary_key, succeeded_key
from orchestrator.settings import ServiceAddresses
from orchestrator.steps import DatasetReader, check_known_counts, pin_dataset_names
from services.common.errors import InvalidArgument, NotFound, error_code
from services.common.events import EventLog, FinishedIndex, Retention
from services.common.jobs import TERMINAL
from services.common.store import FileStore, ObjectStore
from synthaug.v1 import common_pb2, orchestrator_pb2

log = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    graph: Graph
    run_id: str
    #: Keys of the steps whose records are in the store (and not forced).
    cached: set[str]
    #: Keys of the steps forced to recompute (--recompute: those kinds and all downstream).
    forced: set[str] = field(default_factory=set)

    def why(self, key: str) -> str:
        """Why a step will or will not run: "forced", "cached" or "new key" (no record)."""
        return "forced" if key in self.forced else "cached" if key in self.cached else "new key"


@dataclass
class _Run:
    tracker: RunTracker
    cancel: threading.Event
    #: The background thread running it (None: a dry run, or a run in the caller's thread).
    thread: threading.Thread | None = None
    dry_run: bool = False


class RunManager:
    def __init__(
        self,
        store: ObjectStore,
        addresses: ServiceAddresses,
        metrics: OrchestratorMetrics | None = None,
        max_parallel: int = 8,
        log_dir: str | Path | None = None,
        store_url: str | None = None,
        retention: Retention | None = None,
    ):
        self.store = store
        self.store_url = store_url or store.url
        self.addresses = addresses
        self.metrics = metrics or OrchestratorMetrics()
        self.max_parallel = max_parallel
        self.log_dir = Path(log_dir) if log_dir else (Path(store.root) / "logs" if isinstance(store, FileStore) else Path(".synthaug/logs"))
        self._embedded: EmbeddedServices | None = None
        self._dispatcher: Dispatcher | None = None
        self._lock = threading.Lock()  # the embedded services and the dispatcher
        self._runs_lock = threading.Lock()  # the table of runs in memory
        self._runs: dict[str, _Run] = {}
        self._retained = FinishedIndex(retention)

    # -- services -----------------------------------------------------------------------------

    def dispatcher(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                if self.addresses.embedded:
                    self._embedded = start_embedded(self.store_url, self.log_dir)
                    self._dispatcher = Dispatcher(self._embedded.addresses, self._embedded.security)
                else:
                    missing = self.addresses.missing()
                    if missing:
                        raise InvalidArgument(f"remote mode needs every service address; missing {missing} (flags --services or SYNTHAUG_<NAME>_ADDR)")
                    self._dispatcher = Dispatcher(self.addresses.addresses)
            return self._dispatcher

    @property
    def embedded(self) -> EmbeddedServices | None:
        return self._embedded

    def close(self) -> None:
        with self._runs_lock:
            runs = list(self._runs.values())
        for run in runs:
            run.cancel.set()
            if run.thread is not None:
                run.thread.join(timeout=60)
        if self._dispatcher is not None:
            self._dispatcher.close()
        if self._embedded is not None:
            self._embedded.stop()

    # -- runs ---------------------------------------------------------------------------------

    def prepare(self, plan: Plan, recompute: Iterable[str] = ()) -> PreparedRun:
        """The run's graph, id and cache state; InvalidArgument when the plan asks for more
        real images than a known train split has, or to recompute a kind it does not have."""
        read = DatasetReader(self.store)  # the plan's manifests, each read once
        graph = build_graph(pin_dataset_names(plan, self.store, read))  # step keys name content, not names
        forced = graph.downstream(recompute) if recompute else set()
        check_known_counts(self.store, graph, read)
        cached = {s.key for s in graph.steps if s.key not in forced and load_cached(self.store, s) is not None}
        return PreparedRun(graph, run_id_for(graph), cached, forced)

    def tracker(self, prepared: PreparedRun) -> RunTracker:
        tracker = RunTracker(self.store, prepared.graph, prepared.run_id, self.metrics)
        for key in prepared.cached:
            tracker.records[key].cached = True
        for key in prepared.forced:
            tracker.records[key].forced = True
        return tracker

    def run(
        self,
        plan: Plan,
        on_start: Callable[[RunTracker], object] | None = None,
        cancel: threading.Event | None = None,
        recompute: Iterable[str] = (),
    ) -> RunSummary:
        """Run in the calling thread (the CLI)."""
        prepared = self.prepare(plan, recompute)
        tracker = self.tracker(prepared)
        entry = _Run(tracker, cancel or threading.Event())
        with self._runs_lock:
            self._add(prepared.run_id, entry)
        try:
            if on_start is not None:
                on_start(tracker)
            needs_services = any(s.service != "local" for s in prepared.graph.steps if s.key not in prepared.cached)
            dispatcher = self.dispatcher() if needs_services else None
            return Runner(self.store, dispatcher, self.metrics, self.max_parallel).run(tracker, entry.cancel)  # type: ignore[arg-type]
        finally:
            self._finished(prepared.run_id, entry)

    def submit(self, plan: Plan, dry_run: bool = False, recompute: Iterable[str] = ()) -> orchestrator_pb2.RunRef:
        """Start a run in the background (OrchestratorService); the same plan → the same run."""
        prepared = self.prepare(plan, recompute)
        with self._runs_lock:
            existing = self._runs.get(prepared.run_id)
            if existing is not None and existing.thread is not None and not existing.tracker.finished:
                return existing.tracker.ref
            entry = _Run(self.tracker(prepared), threading.Event(), dry_run=dry_run)
            if not dry_run:
                entry.thread = threading.Thread(target=self._background, args=(entry,), name=f"run-{prepared.run_id}", daemon=True)
            self._add(prepared.run_id, entry)
        if dry_run:
            # Nothing will happen to it: it only waits for eviction (its status is not stored,
            # so a finished run of the same plan keeps answering from the store).
            self._finished(prepared.run_id, entry)
        else:
            assert entry.thread is not None
            entry.thread.start()
        return entry.tracker.ref

    def _add(self, run_id: str, entry: _Run) -> None:
        """Hold `entry` as the run `run_id` (call under the runs lock)."""
        self._runs[run_id] = entry
        self._retained.discard(run_id)

    def _finished(self, run_id: str, entry: _Run) -> None:
        """`entry` will not change any more: keep it within the retention bounds only."""
        with self._runs_lock:
            if self._runs.get(run_id) is entry:
                self._retained.add(run_id)
            for expired in self._retained.expired():
                self._runs.pop(expired, None)

    def held(self) -> list[str]:
        """Ids of the runs in memory now (running, and recently finished)."""
        with self._runs_lock:
            return list(self._runs)

    def _background(self, entry: _Run) -> None:
        tracker = entry.tracker
        try:
            Runner(self.store, self.dispatcher(), self.metrics, self.max_parallel).run(tracker, entry.cancel)
        except Exception as exc:  # reported through the run's status
            log.exception("run %s failed", tracker.run_id)
            tracker.error_code = error_code(exc)
            tracker.state = common_pb2.JOB_STATE_FAILED
            tracker.error = str(exc)
            tracker.update(None)
        finally:
            self._finished(tracker.run_id, entry)

    def _find(self, run_id: str) -> _Run | None:
        with self._runs_lock:
            return self._runs.get(run_id)

    def status(self, run_id: str) -> orchestrator_pb2.RunStatus:
        entry = self._find(run_id)
        if entry is not None:
            return entry.tracker.status()
        return load_status(self.store, run_id)

    def list_runs(self, limit: int = 0) -> list[orchestrator_pb2.RunInfo]:
        """Every run in the store, as the runs in memory make it fresher (running ones
        included), newest first; at most `limit` (0: all)."""
        infos = {info.run.id: info for info in stored_runs(self.store)}
        with self._runs_lock:
            held = [(run_id, entry) for run_id, entry in self._runs.items() if not entry.dry_run]
        for run_id, entry in held:
            tracker = entry.tracker
            info = infos.get(run_id)
            if info is None:
                if tracker.state == common_pb2.JOB_STATE_QUEUED:
                    continue  # prepared, not started: nothing to list yet
                info = infos[run_id] = orchestrator_pb2.RunInfo(run=tracker.ref, started=time.time() - (time.monotonic() - tracker.started))
            if not tracker.finished:
                status = tracker.status()
                info.state = status.state
                info.finished = 0.0
                info.steps_done, info.steps_total = steps_done(status), len(status.steps)
        out = sorted(infos.values(), key=lambda i: i.started, reverse=True)
        return out[:limit] if limit > 0 else out

    def watch(self, run_id: str, after: int, is_active: Callable[[], bool]) -> Iterator[orchestrator_pb2.RunEvent]:
        entry = self._find(run_id)
        if entry is not None:
            yield from entry.tracker.watch(after, is_active)
            return
        # A run no longer in memory: its stored status is its one (final) event.
        status = load_status(self.store, run_id)
        stored: EventLog[orchestrator_pb2.RunEvent] = EventLog(1)
        stored.append(lambda sequence: orchestrator_pb2.RunEvent(run=status.run, sequence=sequence, run_state=status.state), final=True)
        yield from stored.watch(after, is_active)

    def cancel(self, run_id: str) -> orchestrator_pb2.RunStatus:
        entry = self._find(run_id)
        if entry is None:
            return load_status(self.store, run_id)
        entry.cancel.set()
        return entry.tracker.status()


def steps_done(status: orchestrator_pb2.RunStatus) -> int:
    """Steps that will not change any more: succeeded (cached ones too), failed or skipped."""
    return sum(1 for s in status.steps if s.state in TERMINAL)


def is_run_id(text: str) -> bool:
    """A run id: 16 lower-case hex characters (the start of the plan's content hash)."""
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


def validate_run_id(run_id: str) -> str:
    if not is_run_id(run_id):
        raise InvalidArgument(f"invalid run id {run_id!r}: expected 16 hex characters")
    return run_id


def load_status(store: ObjectStore, run_id: str) -> orchestrator_pb2.RunStatus:
    validate_run_id(run_id)
    try:
        data = store.get_bytes(run_status_key(run_id))
    except NotFound:
        raise NotFound(f"run {run_id} not found") from None
    status = orchestrator_pb2.RunStatus()
    status.ParseFromString(data)
    return status


def load_succeeded(store: ObjectStore, run_id: str) -> dict[str, Any] | None:
    """The pointer to a run's latest successful attempt ({"attempt", "report", "summary",
    "status"}), None when no attempt succeeded."""
    validate_run_id(run_id)
    try:
        return dict(store.get_json(succeeded_key(run_id)))
    except NotFound:
        return None


def load_report_status(store: ObjectStore, run_id: str) -> orchestrator_pb2.RunStatus:
    """The status of the attempt whose report `synthaug report` shows: the latest attempt when
    it has a report, else the latest successful one (a failed re-run hides no report)."""
    latest = load_status(store, run_id)
    if latest.report.key:
        return latest
    pointer = load_succeeded(store, run_id)
    if pointer is None:
        return latest
    status = orchestrator_pb2.RunStatus()
    status.ParseFromString(store.get_bytes(pointer["status"]))
    return status


def stored_runs(store: ObjectStore) -> list[orchestrator_pb2.RunInfo]:
    """Every run with a status in the store, its latest attempt (a running one as its runner
    last wrote it), newest first."""
    files: dict[str, set[str]] = {}
    for key in store.list("runs/"):
        parts = key.split("/", 2)
        if len(parts) == 3:
            files.setdefault(parts[1], set()).add(parts[2])
    out = []
    for run_id, names in files.items():
        if "status.pb" in names and is_run_id(run_id):
            out.append(_stored_run(store, run_id, names))
    return sorted(out, key=lambda i: i.started, reverse=True)


def _stored_run(store: ObjectStore, run_id: str, names: set[str]) -> orchestrator_pb2.RunInfo:
    status = load_status(store, run_id)
    info = orchestrator_pb2.RunInfo(run=status.run, state=status.state, steps_done=steps_done(status), steps_total=len(status.steps))
    attempts = sorted({int(n.split("/")[1]) for n in names if n.startswith("attempts/") and n.split("/")[1].isdigit()})
    if attempts:
        info.attempt = attempts[-1]
        started = f"attempts/{attempts[-1]:04d}/started.json"
        if started in names:
            info.started = float(store.get_json(f"runs/{run_id}/{started}").get("time", 0.0))
    summary = store.get_json(run_summary_key(run_id)) if "summary.json" in names else None
    if summary is not None and int(summary.get("attempt", 0)) == info.attempt:
        info.finished = info.started + float(summary.get("wall_seconds", 0.0)) if info.started else 0.0
        info.executed, info.cached = int(summary.get("executed_steps", 0)), int(summary.get("cached_steps", 0))
        info.overhead_seconds, info.overhead_fraction = float(summary.get("overhead_seconds", 0.0)), float(summary.get("overhead_fraction", 0.0))
    pointer = load_succeeded(store, run_id) if "succeeded.json" in names else None
    if pointer is not None:
        info.last_succeeded_attempt, info.report_key = int(pointer.get("attempt", 0)), str(pointer.get("report", ""))
    return info


def list_runs(store: ObjectStore) -> list[dict]:
    """The latest attempt's summary of every run (with `last_succeeded_attempt` and its report)."""
    out = []
    for key in store.list("runs/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == "summary.json":
            out.append(store.get_json(key))
    return out
