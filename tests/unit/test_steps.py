"""Step executors read their inputs by role and send every resolved setting to the service."""
from __future__ import annotations

import pytest

from orchestrator.graph import Step, build_graph
from orchestrator.plan import parse_plan
from orchestrator.runner import load_cached, step_cache_key
from orchestrator.steps import report_request
from services.common.errors import InvalidArgument
from services.common.refs import add_output
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2
from tests.unit.test_plan import BASE


def ref(key: str) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(bucket="b", key=key, sha256="0" * 64)


def results_by_role(steps: list[Step]) -> dict[str, common_pb2.JobResult]:
    """What each step's service returns, by the roles the protos document (decoys first)."""
    out: dict[str, common_pb2.JobResult] = {}
    for s in steps:
        result = common_pb2.JobResult(objects=[ref(f"{s.key}/decoy")])  # position 0 is never read
        if s.kind == "segment_train":
            add_output(result, "training_record", ref(f"{s.key}/record.json"))
            add_output(result, "model", ref(f"{s.key}/model.pt"))
        elif s.kind == "predict":
            add_output(result, "predictions", ref(f"{s.key}/predictions.json"))
        elif s.kind == "evaluate":
            add_output(result, "evaluation", ref(f"{s.key}/evaluation.json"))
        elif s.kind in ("dataset", "split"):
            add_output(result, "dataset", common_pb2.DatasetRef(id=s.key[:32], num_images=20))
        out[s.key] = result
    return out


def test_report_request_reads_every_run_by_role_and_carries_the_settings() -> None:
    plan = parse_plan({**BASE, "evaluation": {"overlay_images": 3, "n_bootstrap": 300}})
    graph = build_graph(plan)
    results = results_by_role(graph.steps)
    report = graph.of_kind("report")[0]
    inputs = {role: results[dep.key] for role, dep in report.deps.items()}
    request = report_request(report, inputs, results, prefix="runs/x/report")
    assert len(request.runs) == len(plan.arms) * len(plan.seeds)
    by_arm = {(r.arm, r.seed): r for r in request.runs}
    for ev in graph.of_kind("evaluate"):
        run = by_arm[(ev.arm, ev.seed)]
        predict = ev.deps["predictions"]
        train = predict.deps["model"]
        assert run.evaluation.key == f"{ev.key}/evaluation.json"
        assert run.predictions.key == f"{predict.key}/predictions.json"
        assert run.training_record.key == f"{train.key}/record.json"
    hybrid = by_arm[("hybrid", 1)]
    assert (hybrid.real_count, hybrid.composite_count, hybrid.gan_count) == (10, 10, 10)
    assert request.truth.id == graph.of_kind("split")[0].key[:32] and request.split == "test"
    # Every setting set explicitly: the evaluator runs what the step's key names.
    assert request.HasField("overlay_images") and request.overlay_images == 3
    assert request.HasField("n_bootstrap") and request.n_bootstrap == 300
    assert (request.prefix, request.title) == ("runs/x/report", "p")


def test_a_missing_role_names_the_step_and_the_role() -> None:
    graph = build_graph(parse_plan(BASE))
    results = results_by_role(graph.steps)
    train = graph.of_kind("segment_train")[0]
    del results[train.key].outputs["training_record"]
    report = graph.of_kind("report")[0]
    inputs = {role: results[dep.key] for role, dep in report.deps.items()}
    with pytest.raises(InvalidArgument, match=rf"step {train.label} has no 'training_record' output \(it has \['model'\]\)"):
        report_request(report, inputs, results, prefix="runs/x/report")


def test_a_step_record_is_used_only_when_intact(file_store: ObjectStore) -> None:
    step = build_graph(parse_plan(BASE)).of_kind("split")[0]
    assert load_cached(file_store, step) is None
    result = add_output(common_pb2.JobResult(), "dataset", common_pb2.DatasetRef(id="d" * 32, num_images=20))
    file_store.put_record(step_cache_key(step.key), result.SerializeToString(deterministic=True))
    assert load_cached(file_store, step) == result
    # Bytes without the record envelope (truncated, edited, foreign): computed again, not trusted.
    file_store.put_bytes(step_cache_key(step.key), result.SerializeToString(deterministic=True))
    assert load_cached(file_store, step) is None
