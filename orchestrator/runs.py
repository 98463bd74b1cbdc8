"""Runs of plans: prepare (graph, id, cache marks), execute, observe, cancel.

Shared by the CLI (a run in the foreground) and OrchestratorService (runs in the background,
watched over gRPC). In embedded mode the services are started once, on first use, and
stopped with the manager.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.dispatch import Dispatcher
from orchestrator.graph import Graph, build_graph
from orchestrator.launcher import EmbeddedServices, start_embedded
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.plan import Plan
from orchestrator.runner import RunSummary, Runner, RunTracker, load_cached, run_id_for
from orchestrator.settings import ServiceAddresses
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument, NotFound
from services.common.store import FileStore, ObjectStore
from synthaug.v1 import common_pb2, orchestrator_pb2

log = logging.getLogger(__name__)


def resolve_plan_names(plan: Plan, store: ObjectStore) -> Plan:
    """A dataset given by name is pinned to its current id, so step keys name content."""
    if plan.dataset.name is not None:
        ds = Dataset.load(store, plan.dataset.name)
        plan = plan.model_copy(deep=True)
        plan.dataset.name = ds.id
    return plan


@dataclass
class PreparedRun:
    graph: Graph
    run_id: str
    cached: set[str]


class RunManager:
    def __init__(
        self,
        store: ObjectStore,
        addresses: ServiceAddresses,
        metrics: OrchestratorMetrics | None = None,
        max_parallel: int = 8,
        log_dir: str | Path | None = None,
        store_url: str | None = None,
    ):
        self.store = store
        self.store_url = store_url or store.url
        self.addresses = addresses
        self.metrics = metrics or OrchestratorMetrics()
        self.max_parallel = max_parallel
        self.log_dir = Path(log_dir) if log_dir else (Path(store.root) / "logs" if isinstance(store, FileStore) else Path(".synthaug/logs"))
        self._embedded: EmbeddedServices | None = None
        self._dispatcher: Dispatcher | None = None
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[RunTracker, threading.Event, threading.Thread | None]] = {}

    # -- services -----------------------------------------------------------------------------

    def dispatcher(self) -> Dispatcher:
        with self._lock:
            if self._dispatcher is None:
                if self.addresses.embedded:
                    self._embedded = start_embedded(self.store_url, self.log_dir)
                    self._dispatcher = Dispatcher(self._embedded.addresses)
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
        for tracker, cancel, thread in list(self._runs.values()):
            cancel.set()
            if thread is not None:
                thread.join(timeout=60)
        if self._dispatcher is not None:
            self._dispatcher.close()
        if self._embedded is not None:
            self._embedded.stop()

    # -- runs ---------------------------------------------------------------------------------

    def prepare(self, plan: Plan) -> PreparedRun:
        graph = build_graph(resolve_plan_names(plan, self.store))
        cached = {s.key for s in graph.steps if load_cached(self.store, s) is not None}
        return PreparedRun(graph, run_id_for(graph), cached)

    def tracker(self, prepared: PreparedRun) -> RunTracker:
        tracker = RunTracker(self.store, prepared.graph, prepared.run_id, self.metrics)
        for key in prepared.cached:
            tracker.records[key].cached = True
        return tracker

    def run(self, plan: Plan, on_start: Callable[[RunTracker], None] | None = None, cancel: threading.Event | None = None) -> RunSummary:
        """Run in the calling thread (the CLI)."""
        prepared = self.prepare(plan)
        tracker = self.tracker(prepared)
        cancel = cancel or threading.Event()
        with self._lock:
            self._runs[prepared.run_id] = (tracker, cancel, None)
        if on_start is not None:
            on_start(tracker)
        needs_services = len(prepared.cached) < len(prepared.graph.steps)
        dispatcher = self.dispatcher() if needs_services else None
        return Runner(self.store, dispatcher, self.metrics, self.max_parallel).run(tracker, cancel)  # type: ignore[arg-type]

    def submit(self, plan: Plan, dry_run: bool = False) -> orchestrator_pb2.RunRef:
        """Start a run in the background (OrchestratorService); the same plan → the same run."""
        prepared = self.prepare(plan)
        with self._lock:
            existing = self._runs.get(prepared.run_id)
            if existing is not None and existing[0].state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING) and existing[2] is not None:
                return existing[0].ref
            tracker = self.tracker(prepared)
            cancel = threading.Event()
            if dry_run:
                self._runs[prepared.run_id] = (tracker, cancel, None)
                return tracker.ref
            thread = threading.Thread(target=self._background, args=(tracker, cancel), name=f"run-{prepared.run_id}", daemon=True)
            self._runs[prepared.run_id] = (tracker, cancel, thread)
        thread.start()
        return tracker.ref

    def _background(self, tracker: RunTracker, cancel: threading.Event) -> None:
        try:
            Runner(self.store, self.dispatcher(), self.metrics, self.max_parallel).run(tracker, cancel)
        except Exception as exc:  # reported through the run's status
            log.exception("run %s failed", tracker.run_id)
            tracker.state = common_pb2.JOB_STATE_FAILED
            tracker.error = str(exc)
            tracker.update(None)

    def _find(self, run_id: str) -> RunTracker | None:
        with self._lock:
            entry = self._runs.get(run_id)
        return entry[0] if entry else None

    def status(self, run_id: str) -> orchestrator_pb2.RunStatus:
        tracker = self._find(run_id)
        if tracker is not None:
            return tracker.status()
        return load_status(self.store, run_id)

    def watch(self, run_id: str, after: int, is_active: Callable[[], bool]):  # type: ignore[no-untyped-def]
        tracker = self._find(run_id)
        if tracker is None:
            status = load_status(self.store, run_id)
            yield orchestrator_pb2.RunEvent(run=status.run, sequence=1, run_state=status.state)
            return
        yield from tracker.watch(after, is_active)

    def cancel(self, run_id: str) -> orchestrator_pb2.RunStatus:
        with self._lock:
            entry = self._runs.get(run_id)
        if entry is None:
            return load_status(self.store, run_id)
        entry[1].set()
        return entry[0].status()


def validate_run_id(run_id: str) -> str:
    if len(run_id) != 16 or any(c not in "0123456789abcdef" for c in run_id):
        raise InvalidArgument(f"invalid run id {run_id!r}: expected 16 hex characters")
    return run_id


def load_status(store: ObjectStore, run_id: str) -> orchestrator_pb2.RunStatus:
    validate_run_id(run_id)
    try:
        data = store.get_bytes(f"runs/{run_id}/status.pb")
    except NotFound:
        raise NotFound(f"run {run_id} not found") from None
    status = orchestrator_pb2.RunStatus()
    status.ParseFromString(data)
    return status


def list_runs(store: ObjectStore) -> list[dict]:
    out = []
    for key in store.list("runs/"):
        if key.endswith("/summary.json"):
            out.append(store.get_json(key))
    return out
