"""Step executors read their inputs by role and send every resolved setting to the service."""
from __future__ import annotations

import json

import pytest

from orchestrator.graph import Step, build_graph
from orchestrator.plan import parse_plan
from orchestrator.runner import RunSummary, load_cached, step_cache_key
from orchestrator.steps import StepTimes, report_request, synthesis_prefix
from services.common.datasets import Dataset
from services.common.demo_data import DemoConfig, register_demo
from services.common.errors import InvalidArgument
from services.common.refs import add_output
from services.common.sampling import nested_order
from services.common.store import ObjectStore
from services.evaluator.core.provenance import parse_provenance
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
        elif s.kind in ("dataset", "split", "subset", "compose", "gan_generate"):
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


def test_the_report_carries_the_runs_provenance_and_contact_sources() -> None:
    arms = [*BASE["arms"][:3], {"name": "slow", "real": 10, "composite": 5, "segmenter": {"lr": 0.001}}]
    plan = parse_plan({**BASE, "arms": arms})
    graph = build_graph(plan)
    results = results_by_role(graph.steps)
    report = graph.of_kind("report")[0]
    inputs = {role: results[dep.key] for role, dep in report.deps.items()}
    request = report_request(report, inputs, results, prefix="runs/x/report", graph=graph, run_id="0123456789abcdef")
    prov = parse_provenance(request.provenance_json)  # the evaluator accepts it as it is
    assert [(s.label, s.kind, s.key, s.code_digest) for s in prov.steps] == [(s.label, s.kind, s.key, s.code_digest) for s in graph.steps]
    assert prov.synthesis_real == 10 and prov.run_id == "0123456789abcdef" and prov.plan == "p"
    assert prov.arm("slow") is not None and prov.arm("slow").segmenter == {"lr": 0.001}  # type: ignore[union-attr]
    assert prov.arm("real") is not None and prov.arm("real").segmenter == {}  # type: ignore[union-attr]
    roles = {d.role: d.id for d in prov.datasets}
    assert roles["split"] == graph.of_kind("split")[0].key[:32] and roles["synthesis_real"] == graph.of_kind("subset")[0].key[:32]
    assert {"real", "composite", "gan_masks", "gan"} <= set(roles)
    assert prov.budget == plan.budget.describe() and json.loads(request.provenance_json)["image_size"] == 256
    assert [(c.label, c.split) for c in request.contact_sources] == [("real", "train"), ("composite", ""), ("gan", "")]
    # The same inputs give the same request bytes (the report job's id).
    again = report_request(report, inputs, results, prefix="runs/x/report", graph=graph, run_id="0123456789abcdef")
    assert again.SerializeToString(deterministic=True) == request.SerializeToString(deterministic=True)


def test_step_time_splits_into_queued_dispatch_compute_and_result() -> None:
    # Decided at 10; a thread took it at 12 (waited 2 for one); submitted, the job waited 3 s
    # for a slot at the service, which started it at 16.5; it finished at 26.5; recorded at 27.
    times = StepTimes(decided=10.0, thread=12.0, started=16.5, computed=26.5, service_queue=3.0, recorded=27.0)
    assert times.breakdown() == {"queued_seconds": 5.0, "dispatch_seconds": 1.5, "compute_seconds": 10.0, "result_seconds": 0.5}
    # A service clock that claims more waiting than could have happened is capped.
    skewed = StepTimes(decided=0.0, thread=0.0, started=1.0, computed=2.0, service_queue=60.0, recorded=2.0)
    assert skewed.breakdown()["queued_seconds"] == 1.0 and skewed.breakdown()["dispatch_seconds"] == 0.0


def test_overhead_is_dispatch_and_result_over_step_time() -> None:
    steps = [
        {"queued_seconds": 5.0, "dispatch_seconds": 1.0, "compute_seconds": 8.0, "result_seconds": 1.0},
        {"queued_seconds": 0.0, "dispatch_seconds": 0.5, "compute_seconds": 9.0, "result_seconds": 0.5},
    ]
    summary = RunSummary("r" * 16, common_pb2.JOB_STATE_SUCCEEDED, 30.0, 17.0, 2, 0, [], None, attempt=1, steps=steps)
    assert (summary.overhead_seconds, summary.step_seconds, summary.overhead_fraction) == (3.0, 20.0, 0.15)
    doc = summary.document("p")
    assert (doc["overhead_seconds"], doc["overhead_fraction"], doc["queued_seconds"], doc["attempt"]) == (3.0, 0.15, 5.0, 1)
    # A run from cache: its time is the cache lookups, all of it overhead (not 0%).
    cached = RunSummary("r" * 16, common_pb2.JOB_STATE_SUCCEEDED, 0.2, 0.0, 0, 2, [], None, steps=[
        {"queued_seconds": 0.0, "dispatch_seconds": 0.0, "compute_seconds": 0.0, "result_seconds": 0.01}] * 2)
    assert cached.overhead_seconds == 0.02 and cached.overhead_fraction == 1.0


def test_the_synthesis_subset_keeps_the_prefix_records_unchanged(file_store: ObjectStore) -> None:
    parent = Dataset.load(file_store, register_demo(file_store, 12, 4, DemoConfig(size=48)).dataset_id)
    split = Dataset.load(file_store, parent.with_splits({r["id"]: ("train" if r["id"] <= 8 else "test") for r in parent.image_records()}, {"demo": True}))
    ids = synthesis_prefix(split, "train", 5, 77)
    assert ids == nested_order(77, split.id, "train", list(range(1, 9)))[:5]  # the arms' order
    assert ids == synthesis_prefix(split, "train", 6, 77)[:5]  # nested
    subset = Dataset.load(file_store, split.subset(ids, {"count": 5}))
    assert [r for r in subset.image_records()] == [split.record(i) for i in sorted(ids)]
    assert all(subset.annotations_of(i) == split.annotations_of(i) for i in ids)
    assert subset.provenance["parents"] == [split.id] and subset.provenance["params"]["subset"] == {"count": 5, "image_ids": sorted(ids)}
    with pytest.raises(InvalidArgument, match=r"synthesis.real \(9\) is more than the 8 images of split 'train'"):
        synthesis_prefix(split, "train", 9, 77)
    with pytest.raises(InvalidArgument, match=r"has no images with ids \[99\]"):
        split.subset([1, 99], {})
