"""Step executors read their inputs by role and send every resolved setting to the service."""
from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from ingest.demo_data import DemoConfig, register_demo
from orchestrator.graph import Step, build_graph
from orchestrator.plan import parse_plan
from orchestrator.runner import RunSummary, load_cached, step_cache_key
from orchestrator.steps import (
    DatasetReader,
    StepContext,
    StepTimes,
    check_disjoint,
    check_known_counts,
    pin_dataset_names,
    report_request,
    run_filter,
    run_test_set,
    synthesis_prefix,
)
from services.common.datasets import Dataset, manifest_key, register_name
from services.common.errors import InvalidArgument, NotFound
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
        elif s.kind in ("predict", "fidelity_predict"):
            add_output(result, "predictions", ref(f"{s.key}/predictions.json"))
        elif s.kind in ("evaluate", "fidelity_evaluate"):
            add_output(result, "evaluation", ref(f"{s.key}/evaluation.json"))
        elif s.kind == "features":
            add_output(result, "features", ref(f"{s.key}/features.npz"))
        elif s.kind == "quality":
            add_output(result, "quality", ref(f"{s.key}/quality.json"))
        elif s.kind in ("dataset", "split", "subset", "test_set", "compose", "gan_generate", "filter"):
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


# --- external test sets ------------------------------------------------------------------------

TEST_SETS = [
    {"label": "ph2", "dataset": {"demo": {"count": 6, "seed": 7, "size": 96}}},
    {"label": "clinic-b", "dataset": {"name": "clinic-b"}, "split": "test"},
]


def report_for(plan_data: dict) -> tuple[Any, Any, dict[str, common_pb2.JobResult], Any]:
    graph = build_graph(parse_plan(plan_data))
    results = results_by_role(graph.steps)
    report = graph.of_kind("report")[0]
    inputs = {role: results[dep.key] for role, dep in report.deps.items()}
    return graph, report, results, report_request(report, inputs, results, prefix="runs/x/report", graph=graph, run_id="0123456789abcdef")


def test_the_report_gets_one_run_per_arm_seed_and_test_set_and_every_test_sets_truth() -> None:
    graph, _report, results, request = report_for({**BASE, "test_sets": TEST_SETS})
    plan = graph.plan
    assert len(request.runs) == len(plan.arms) * len(plan.seeds) * 3
    assert {(r.arm, r.seed, r.test_set) for r in request.runs} == {
        (a.name, s, t) for a in plan.arms for s in plan.seeds for t in ("internal", "ph2", "clinic-b")}
    sets = {s.test_set: s for s in graph.of_kind("test_set")}
    assert [(t.label, t.truth.id, t.split) for t in request.test_sets] == [
        ("ph2", sets["ph2"].key[:32], ""), ("clinic-b", sets["clinic-b"].key[:32], "test")]
    assert request.truth.id == graph.of_kind("split")[0].key[:32] and request.split == "test"
    for ev in graph.of_kind("evaluate"):  # each run carries its own test set's evaluation and predictions
        (run,) = [r for r in request.runs if (r.arm, r.seed, r.test_set) == (ev.arm, ev.seed, ev.test_set)]
        assert run.evaluation.key == f"{ev.key}/evaluation.json"
        assert run.predictions.key == f"{ev.deps['predictions'].key}/predictions.json"
        assert run.training_record.key == f"{ev.deps['predictions'].deps['model'].key}/record.json"
    # Provenance: each test set's dataset id and label; the steps per test set name it.
    prov = parse_provenance(request.provenance_json)
    assert [(d.label, d.id) for d in prov.datasets if d.role == "test_set"] == [
        ("ph2", results[sets["ph2"].key].dataset_outputs["dataset"].id), ("clinic-b", results[sets["clinic-b"].key].dataset_outputs["dataset"].id)]
    assert {s.test_set for s in prov.steps if s.kind == "evaluate"} == {"internal", "ph2", "clinic-b"}
    assert json.loads(request.provenance_json)["test_sets"] == [{"label": "ph2", "split": ""}, {"label": "clinic-b", "split": "test"}]


def test_without_an_internal_test_split_the_report_has_no_internal_truth() -> None:
    _graph, _report, _results, request = report_for({**BASE, "split": {"train": 0.8, "val": 0.2, "test": 0}, "test_sets": TEST_SETS[:1]})
    assert not request.HasField("truth") and request.split == ""
    assert {r.test_set for r in request.runs} == {"ph2"} and [t.label for t in request.test_sets] == ["ph2"]


def demo(store: ObjectStore, count: int, seed: int, size: int = 48, name: str = "") -> Dataset:
    ds = Dataset.load(store, register_demo(store, count, seed, DemoConfig(size=size)).dataset_id)
    if name:
        register_name(store, name, ds.id)
    return ds


def test_a_test_set_sharing_an_image_with_the_training_data_is_refused_naming_them(file_store: ObjectStore) -> None:
    training = demo(file_store, 6, seed=3)
    overlapping = demo(file_store, 8, seed=3)  # the same generator: its first 6 images are the training ones
    with pytest.raises(InvalidArgument) as info:
        check_disjoint("ph2", overlapping, "", training)
    message = str(info.value)
    assert "test set 'ph2' shares 6 of its 8 images with the training dataset" in message
    assert "demo_000000.png (id 1) = demo_000000.png (id 1)" in message and "demo_000005.png (id 6) = demo_000005.png (id 6)" in message
    assert "demo_000006.png" not in message
    check_disjoint("ph2", demo(file_store, 8, seed=4), "", training)  # other images: accepted
    with pytest.raises(InvalidArgument, match=r"test set 'ph2': dataset \w+ has no images in split 'test'"):
        check_disjoint("ph2", demo(file_store, 4, seed=5), "test", training)


def test_the_test_set_step_loads_its_data_and_checks_it_against_the_training_data(file_store: ObjectStore) -> None:
    training = demo(file_store, 6, seed=3, name="train-data")
    demo(file_store, 8, seed=3, name="same-source")
    clean = demo(file_store, 5, seed=9, name="clinic-b")
    plan = parse_plan({**BASE, "dataset": {"name": "train-data"}, "arms": [{"name": "real", "real": 2}],
                       "test_sets": [{"label": "b", "dataset": {"name": "clinic-b"}}, {"label": "s", "dataset": {"name": "same-source"}}]})
    graph = build_graph(plan)
    ctx = StepContext(file_store, None, plan, lambda *a: None, threading.Event(), {}, "r")  # type: ignore[arg-type]
    inputs = {"training": add_output(common_pb2.JobResult(), "dataset", training.ref())}
    b, s = graph.of_kind("test_set")
    assert run_test_set(b, inputs, ctx).result.dataset_outputs["dataset"].id == clean.id
    with pytest.raises(InvalidArgument, match=r"test set 's' shares 6 of its 8 images"):
        run_test_set(s, inputs, ctx)
    # Known before the run (stored datasets): prepare / --dry-run refuse the plan up front.
    with pytest.raises(InvalidArgument, match=r"test set 's' shares 6 of its 8 images"):
        check_known_counts(file_store, build_graph(pin_dataset_names(plan, file_store)))
    # Names are pinned to ids (keys name content); demo data are not known before the run.
    pinned = pin_dataset_names(plan, file_store)
    assert (pinned.dataset.name, pinned.test_sets[0].dataset.name) == (training.id, clean.id) and plan.dataset.name == "train-data"
    unknown = parse_plan({**BASE, "dataset": {"name": "train-data"}, "arms": [{"name": "real", "real": 2}],
                          "test_sets": [{"label": "d", "dataset": {"demo": {"count": 8, "seed": 3, "size": 48}}}]})
    check_known_counts(file_store, build_graph(unknown))
    with pytest.raises(NotFound):
        pin_dataset_names(parse_plan({**BASE, "test_sets": [{"label": "x", "dataset": {"name": "nowhere"}}]}), file_store)


def test_preparing_a_plan_reads_each_dataset_manifest_once(file_store: ObjectStore,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinning names, the train-size check and the disjointness check share one reader: the
    training dataset's and each test set's manifest are read once (they were read three times
    and twice)."""
    training = demo(file_store, 6, seed=3, name="train-data")
    clean = demo(file_store, 5, seed=9, name="clinic-b")
    plan = parse_plan({**BASE, "dataset": {"name": "train-data"}, "arms": [{"name": "real", "real": 2}],
                       "test_sets": [{"label": "b", "dataset": {"name": "clinic-b"}}]})
    reads: list[str] = []
    get_json = file_store.get_json

    def counting(key: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(key)
        return get_json(key, *args, **kwargs)

    monkeypatch.setattr(file_store, "get_json", counting)
    read = DatasetReader(file_store)
    check_known_counts(file_store, build_graph(pin_dataset_names(plan, file_store, read)), read)
    manifests = [k for k in reads if k.endswith("/dataset.json")]
    assert sorted(manifests) == sorted([manifest_key(training.id), manifest_key(clean.id)])
    # a cached step's output is a DatasetRef: by id or by name, the same dataset, not read again
    reads.clear()
    assert read(training.ref()) is read(common_pb2.DatasetRef(name="train-data")) is read(training.id)
    assert not [k for k in reads if k.endswith("/dataset.json")]
    with pytest.raises(InvalidArgument, match="bucket"):
        read(common_pb2.DatasetRef(id=training.id, manifest=common_pb2.ObjectRef(bucket="elsewhere", key="k")))
    reads.clear()  # pinning without the reader: the checks read them again (once, together)
    check_known_counts(file_store, build_graph(pin_dataset_names(plan, file_store)))
    assert sorted(k for k in reads if k.endswith("/dataset.json")) == sorted(2 * manifests)


# --- synthetic-data quality and filters ---------------------------------------------------------


def test_the_report_carries_the_quality_results_and_each_runs_source() -> None:
    plan = {**BASE, "gan": {"per_seed": True}, "quality": {"nearest_k": 3, "inception_weights": "store:weights/inception.pt"}}
    graph, report, _results, request = report_for(plan)
    quality = {s.params["feature_space"]: s for s in graph.of_kind("quality")}
    # One result per feature space, the real-only model's space first.
    assert [q.key for q in request.quality] == [f"{quality['segmenter_fpn'].key}/quality.json", f"{quality['inception'].key}/quality.json"]
    sources = {(r.arm, r.seed): r.quality_source for r in request.runs}
    assert sources == {("real", 1): "", ("real", 2): "", ("comp", 1): "composite", ("comp", 2): "composite",
                       ("gan", 1): "gan-s1", ("gan", 2): "gan-s2", ("hybrid", 1): "", ("hybrid", 2): ""}
    prov = json.loads(request.provenance_json)
    assert prov["quality"] == {
        "feature_spaces": ["segmenter_fpn", "inception"], "model": {"arm": "real", "seed": 1},
        "real_train": "the synthesis prefix (the real images the synthetic data derive from)", "real_test": "the internal test split",
        "sources": ["composite", "gan-s1", "gan-s2"], "steps": {"segmenter_fpn": "quality segmenter_fpn seed=1", "inception": "quality inception seed=1"}}
    parse_provenance(request.provenance_json)  # the evaluator accepts it
    # Without Inception weights the provenance says so; without quality no run names a source.
    _g, _r, _res, fpn_only = report_for({**BASE, "quality": {"nearest_k": 3}})
    assert "no Inception weights supplied" in json.loads(fpn_only.provenance_json)["quality"]["note"]
    _g, _r, _res, none = report_for({**BASE, "quality": {"enabled": False}})
    assert not none.quality and all(r.quality_source == "" for r in none.runs)


def test_a_filtered_arms_dataset_is_named_in_the_provenance() -> None:
    arms = [*BASE["arms"], {"name": "comp-f", "real": 10, "composite": 10, "filter": {"by": "mask_fidelity", "keep": 0.5}}]
    graph, _report, results, request = report_for({**BASE, "arms": arms})
    prov = parse_provenance(request.provenance_json)
    filters = graph.of_kind("filter")
    assert [(d.role, d.label, d.id, d.step) for d in prov.datasets if d.role == "filtered"] == [
        ("filtered", "composite", results[f.key].dataset_outputs["dataset"].id, f.label) for f in filters]
    assert prov.arm("comp-f") is not None and json.loads(request.provenance_json)["arms"][-1]["filter"] == {"by": "mask_fidelity", "keep": 0.5}


def filter_step(by: str, count: int, candidates: int, source: str = "composite") -> Step:
    return Step("filter", f"filter {source}", {"by": by, "keep": 0.5, "count": count, "candidates": candidates, "order_seed": 5, "source": source})


def test_a_filter_keeps_the_best_ranked_of_its_candidates(file_store: ObjectStore) -> None:
    pool = demo(file_store, 12, seed=2)
    ids = [r["id"] for r in pool.image_records()]
    candidates = nested_order(5, pool.id, "", ids)[:6]  # what an unfiltered arm's 6 would be
    outside = next(i for i in ids if i not in candidates)
    # Scores: the best image of the pool is no candidate; two candidates tie.
    iou = {i: 0.1 * (k % 4) for k, i in enumerate(ids)} | {outside: 1.0, candidates[0]: 0.9, candidates[4]: 0.9}
    evaluation = {"truth_dataset": pool.id, "per_image": [{"image_id": i, "iou": iou[i]} for i in ids]}
    ctx = StepContext(file_store, None, parse_plan(BASE), lambda *a: None, threading.Event(), {}, "r")  # type: ignore[arg-type]

    def inputs(role: str, document: Any) -> dict[str, common_pb2.JobResult]:
        info = file_store.put_blob(json.dumps(document).encode(), ".json")
        ranking = add_output(common_pb2.JobResult(), role, common_pb2.ObjectRef(bucket=file_store.bucket, key=info.key, sha256=info.sha256))
        return {"pool": add_output(common_pb2.JobResult(), "dataset", pool.ref()), "ranking": ranking}

    out = run_filter(filter_step("mask_fidelity", 3, 6), inputs("evaluation", evaluation), ctx)
    subset = Dataset.load(file_store, out.result.dataset_outputs["dataset"])
    expected = sorted(candidates, key=lambda i: (-iou[i], i))[:3]
    assert sorted(r["id"] for r in subset.image_records()) == sorted(expected) and outside not in expected
    assert min(candidates[0], candidates[4]) in expected  # ties: the lower id first
    assert [subset.record(i) for i in expected] == [pool.record(i) for i in expected]  # records unchanged
    params = subset.provenance["params"]["subset"]
    assert params["filter"]["by"] == "mask_fidelity" and params["filter"]["candidates"] == 6 and params["image_ids"] == sorted(expected)

    # Realism: the quality JSON's per-image realism of the source.
    realism = {i: float(k) for k, i in enumerate(reversed(ids))}
    quality = {"rows": [{"label": "real-vs-real", "dataset": "x"}, {"label": "composite", "dataset": pool.id}],
               "per_image": {"composite": {"image_id": ids, "realism": [realism[i] for i in ids]}}}
    out = run_filter(filter_step("realism", 2, 6), inputs("quality", quality), ctx)
    chosen = sorted(r["id"] for r in Dataset.load(file_store, out.result.dataset_outputs["dataset"]).image_records())
    assert chosen == sorted(sorted(candidates, key=lambda i: -realism[i])[:2])

    # A ranking of other images, or one missing some, is refused naming the step.
    other = demo(file_store, 12, seed=3)
    with pytest.raises(InvalidArgument, match=rf"step filter composite: the fidelity evaluation is not of dataset {pool.id}"):
        run_filter(filter_step("mask_fidelity", 3, 6), inputs("evaluation", {**evaluation, "truth_dataset": other.id}), ctx)
    with pytest.raises(InvalidArgument, match=r"the mask_fidelity ranking misses 1 images"):
        run_filter(filter_step("mask_fidelity", 3, 6), inputs("evaluation", {**evaluation, "per_image": evaluation["per_image"][1:]}), ctx)
    with pytest.raises(InvalidArgument, match=r"the quality result has no source 'gan'"):
        run_filter(filter_step("realism", 2, 6, source="gan"), inputs("quality", quality), ctx)
    with pytest.raises(InvalidArgument, match=r"has 12 images, fewer than the 13 a filter ranks"):
        run_filter(filter_step("mask_fidelity", 3, 13), inputs("evaluation", evaluation), ctx)
