"""Runs recorded in a store by the runner's own code (RunTracker, Runner._record), without
services: what `synthaug status`, ListRuns and FetchReport read."""
from __future__ import annotations

from typing import Any, Mapping

from orchestrator.graph import build_graph
from orchestrator.plan import parse_plan
from orchestrator.runner import Runner, RunSummary, RunTracker, attempt_prefix, run_id_for
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2
from tests.integration.conftest import tiny_plan

S = common_pb2


def recorded_run(
    store: ObjectStore,
    name: str,
    *,
    started: float,
    finished: bool,
    report: Mapping[str, bytes] | None = None,
    done_steps: int = 2,
    plan: dict[str, Any] | None = None,
) -> str:
    """A run of a tiny plan named `name`, attempt 1 started at `started`: still running with
    `done_steps` steps succeeded, or finished (succeeded, with `report` files when given)."""
    graph = build_graph(parse_plan(plan or tiny_plan(name=name)))
    run_id = run_id_for(graph)
    tracker = RunTracker(store, graph, run_id)
    store.put_json(attempt_prefix(run_id, 1) + "started.json", {"attempt": 1, "time": started})
    tracker.state = S.JOB_STATE_RUNNING
    records = list(tracker.records.values())
    for rec in records[:done_steps]:
        rec.state, rec.progress = S.JOB_STATE_SUCCEEDED, 1.0
    records[done_steps].state = S.JOB_STATE_RUNNING
    tracker.update(None)  # the runner writes runs/<id>/status.pb as it goes
    if not finished:
        return run_id
    for rec in records:
        rec.state, rec.progress = S.JOB_STATE_SUCCEEDED, 1.0
    if report:
        for path, data in report.items():
            store.put_bytes(f"runs/{run_id}/report/{path}", data)
        tracker.report = common_pb2.ObjectRef(bucket=store.bucket, key=f"runs/{run_id}/report/index.html")
    tracker.state = S.JOB_STATE_SUCCEEDED
    summary = RunSummary(run_id, tracker.state, 12.5, 10.0, len(records), 0, [], tracker.report, attempt=1)
    Runner(store, None)._record(tracker, summary)  # type: ignore[arg-type]
    tracker.update(None)
    return run_id
