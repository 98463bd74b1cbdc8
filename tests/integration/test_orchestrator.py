"""The orchestrator end to end over real service processes: caching, replicas, failover, gRPC.

Every test here starts real service processes (`python -m services.<name>`) on loopback ports.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import yaml

from orchestrator.cli import main
from orchestrator.commands import export_report
from orchestrator.graph import training_order_seed
from orchestrator.launcher import EmbeddedServices, start_embedded, start_service, wait_serving
from orchestrator.plan import parse_plan
from orchestrator.runner import attempt_prefix, attempts_of, step_cache_key
from orchestrator.runs import RunManager, list_runs, load_report_status, load_status
from orchestrator.server import build as build_orchestrator
from orchestrator.settings import ServiceAddresses
from services.common import refs
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.events import Retention
from services.common.sampling import nested_order
from services.common.store import FileStore
from synthaug.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from tests.grpc_helpers import running_server
from tests.integration.conftest import tiny_plan

SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileStore, EmbeddedServices]]:
    """One store and the four services (two segmenter replicas) for the module."""
    root = tmp_path_factory.mktemp("orch")
    store = FileStore(root / "store")
    services = start_embedded(store.url, root / "logs")
    try:
        proc, address = start_service("segmenter", store.url, root / "logs2")
        services.processes["segmenter-2"] = proc
        wait_serving("segmenter", proc, address, root / "logs2" / "segmenter.log", timeout=180)
        services.addresses["segmenter"].append(address)
        yield store, services
    finally:
        services.stop()


def test_tiny_plan_runs_then_reruns_from_cache_and_replicas_share_the_arms(shared: tuple[FileStore, EmbeddedServices]) -> None:
    store, services = shared
    plan = parse_plan(tiny_plan(seeds=[0, 1]))
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        first = manager.run(plan)
        assert first.state == SUCCEEDED, first.failed
        assert first.cached == 0 and first.executed == len(manager.prepare(plan).graph.steps)
        status = manager.status(first.run_id)
        trains = [s for s in status.steps if s.kind == "segment_train"]
        assert len(trains) == 4
        # Four training jobs over two segmenter replicas: both got work.
        assert {s.replica for s in trains} == set(services.addresses["segmenter"])
        assert status.report.key.endswith("index.html") and store.exists(status.report.key)
        assert 0.0 <= first.overhead_fraction < 1.0
        # Prometheus: steps by kind, evaluation scores per arm, run outcome.
        reg = manager.metrics.registry
        assert reg.get_sample_value("synthaug_steps_finished_total", {"plan": "tiny", "kind": "segment_train", "state": "JOB_STATE_SUCCEEDED", "cached": "false"}) == 4
        assert reg.get_sample_value("synthaug_runs_total", {"plan": "tiny", "state": "JOB_STATE_SUCCEEDED"}) == 1
        assert reg.get_sample_value("synthaug_images_produced_total", {"plan": "tiny", "kind": "compose"}) == 8
        for arm in ("real", "comp"):
            assert reg.get_sample_value("synthaug_evaluation_score", {"plan": "tiny", "arm": arm, "test_set": "internal", "metric": "mean_iou"}) is not None
        assert reg.get_sample_value("synthaug_step_duration_seconds_count", {"plan": "tiny", "kind": "segment_train"}) == 4

        # Where the time went, per step and for the run (what bench/ reads).
        record = store.get_json(f"runs/{first.run_id}/summary.json")
        assert record["attempt"] == 1 and record["executed_steps"] == first.executed
        assert {"overhead_seconds", "overhead_fraction", "queued_seconds"} <= set(record)
        for step in record["steps"]:
            assert {"queued_seconds", "dispatch_seconds", "compute_seconds", "result_seconds"} <= set(step)
            assert all(step[k] >= 0 for k in ("queued_seconds", "dispatch_seconds", "compute_seconds", "result_seconds"))
        assert record["overhead_seconds"] == pytest.approx(sum(s["dispatch_seconds"] + s["result_seconds"] for s in record["steps"]))
        assert sum(s["compute_seconds"] for s in record["steps"] if s["kind"] == "segment_train") > 0

        again = manager.run(plan)
        assert again.run_id == first.run_id and again.attempt == 2
        assert again.executed == 0 and again.cached == first.executed  # nothing recomputed
        assert again.report is not None and again.report.key == status.report.key
        # A run from cache: its own time, all of it overhead — and it erases no earlier attempt.
        assert again.overhead_seconds > 0 and again.overhead_fraction == 1.0
        assert attempts_of(store, first.run_id) == [1, 2]
        assert store.get_json(attempt_prefix(first.run_id, 1) + "summary.json")["executed_steps"] == first.executed
        latest = store.get_json(f"runs/{first.run_id}/summary.json")
        assert (latest["attempt"], latest["executed_steps"], latest["last_succeeded_attempt"]) == (2, 0, 2)

        # A failed (here: cancelled) attempt hides no report.
        stop = threading.Event()
        stop.set()
        third = manager.run(plan, cancel=stop, recompute=["segment_train"])
        assert third.state == common_pb2.JOB_STATE_CANCELLED and third.attempt == 3 and third.report is None
        assert load_status(store, first.run_id).state == common_pb2.JOB_STATE_CANCELLED
        assert load_report_status(store, first.run_id).report.key == status.report.key
        (listed,) = [r for r in list_runs(store) if r["run_id"] == first.run_id]
        assert (listed["attempt"], listed["state"], listed["last_succeeded_attempt"]) == (3, "JOB_STATE_CANCELLED", 2)
        assert export_report(store, first.run_id, Path(store.root).parent / "exported").name == "index.html"
    finally:
        manager.close()
    # An orchestrator that keeps no finished run in memory answers for it from the store.
    forgetful = RunManager(store, ServiceAddresses(services.addresses), retention=Retention(max_finished=0, max_age_seconds=0))
    try:
        replay = forgetful.run(plan)
        assert replay.run_id == first.run_id and replay.executed == 0
        assert forgetful.held() == []
        stored = forgetful.status(replay.run_id)
        assert stored.state == SUCCEEDED and stored.report.key == status.report.key
        assert sorted(s.key for s in stored.steps) == sorted(s.key for s in status.steps)
        assert [e.run_state for e in forgetful.watch(replay.run_id, 0, lambda: True)] == [SUCCEEDED]
    finally:
        forgetful.close()
    # Changing one setting recomputes only what depends on it.
    changed = parse_plan(tiny_plan(seeds=[0, 1], evaluation={"n_bootstrap": 150, "overlay_images": 2}))
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        third = manager.run(changed)
        kinds = {s.kind for s in manager.status(third.run_id).steps if not s.cached}
        assert kinds == {"evaluate", "report"}
    finally:
        manager.close()


def test_orchestrator_service_over_grpc(shared: tuple[FileStore, EmbeddedServices]) -> None:
    store, services = shared
    spec = ";".join(f"{name}={','.join(addrs)}" for name, addrs in services.addresses.items())
    text = yaml.safe_dump(tiny_plan(name="remote", arms=[{"name": "only-real", "real": 6}]))
    with running_server(build_orchestrator, "orchestrator", store, extra={"services": spec, "max_parallel_steps": 4}) as (_runtime, channel):
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        dry = stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=text, dry_run=True))
        dry_status = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=dry.id))
        assert [s.kind for s in dry_status.steps] == ["dataset", "split", "segment_train", "predict", "evaluate", "report"]
        ref = stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=text))
        assert ref.id == dry.id and ref.plan_name == "remote"
        assert stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=text)).id == ref.id  # idempotent
        kinds_seen = set()
        for event in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id=ref.id), timeout=600):
            if event.step.key:
                kinds_seen.add(event.step.kind)
            if event.run_state in (SUCCEEDED, common_pb2.JOB_STATE_FAILED) and not event.step.key:
                break
        status = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=ref.id))
        assert status.state == SUCCEEDED, status.error.message
        assert kinds_seen >= {"segment_train", "evaluate", "report"}
        assert status.report.key

        with pytest.raises(grpc.RpcError) as bad:
            stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=yaml.safe_dump(tiny_plan(arms=[{"name": "x", "real": 0}]))))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "arms[0].real" in bad.value.details()
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetRun(orchestrator_pb2.GetRunRequest(run_id="0" * 16))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_killed_segmenter_resumes_from_checkpoint(tmp_path: Path) -> None:
    """SIGKILL the segmenter after its first evaluation's checkpoint; a new process on the same port
    picks the job up (the dispatcher retries) and training resumes instead of restarting."""
    store = FileStore(tmp_path / "store")
    services = start_embedded(store.url, tmp_path / "logs")
    plan = parse_plan(
        tiny_plan(
            name="killme",
            arms=[{"name": "real", "real": 12}],
            segmenter={"config": {"architecture": "maskrcnn_resnet18_fpn", "epochs": 4, "batch_size": 4, "lr": 0.01}},
        )
    )
    manager = RunManager(store, ServiceAddresses(services.addresses))
    messages: list[str] = []
    killed = threading.Event()
    try:
        prepared = manager.prepare(plan)
        train_key = [s.key for s in prepared.graph.steps if s.kind == "segment_train"][0]

        def watch(tracker) -> None:  # type: ignore[no-untyped-def]
            def follow() -> None:
                for event in tracker.watch():
                    if event.step.key == train_key:
                        messages.append(event.step.message)
                        # Kill once the first evaluation finished (its checkpoint is in the store).
                        if not killed.is_set() and "(evaluation 1) done" in event.step.message:
                            assert any(k.endswith("epoch-0000.pt") for k in store.list("jobs/"))
                            killed.set()
                            address = services.addresses["segmenter"][0]
                            services.processes["segmenter"].send_signal(signal.SIGKILL)
                            services.processes["segmenter"].wait()
                            port = address.rsplit(":", 1)[1]
                            import subprocess
                            import sys

                            log = open(tmp_path / "logs" / "segmenter-restarted.log", "ab")
                            services.processes["segmenter"] = subprocess.Popen(
                                [sys.executable, "-m", "services.segmenter", "--host", "127.0.0.1", "--port", port, "--metrics-port", "-1", "--store", store.url],
                                stdout=log,
                                stderr=subprocess.STDOUT,
                            )

            threading.Thread(target=follow, daemon=True).start()

        summary = manager.run(plan, on_start=watch)
        assert killed.is_set(), f"segmenter never finished its first evaluation; messages: {messages[-5:]}"
        assert summary.state == SUCCEEDED, summary.failed
        assert any(m.startswith("resumed after iteration") for m in messages), messages
    finally:
        manager.close()
        services.stop()


def test_recompute_forces_kinds_downstream_and_on_the_service(shared: tuple[FileStore, EmbeddedServices]) -> None:
    store, services = shared
    plan = parse_plan(tiny_plan(name="force", arms=[{"name": "real", "real": 6}]))
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        first = manager.run(plan)
        assert first.state == SUCCEEDED, first.failed
        prepared = manager.prepare(plan, ["evaluate"])
        assert {s.kind for s in prepared.graph.steps if s.key in prepared.forced} == {"evaluate", "report"}
        assert {prepared.why(s.key) for s in prepared.graph.steps if s.kind == "predict"} == {"cached"}
        # Without their step records, the steps run, but the evaluator answers from its stored jobs.
        for step in prepared.graph.of_kind("evaluate"):
            store.delete(step_cache_key(step.key))
        before = evaluator_results(store)
        plain = manager.run(plan)
        assert plain.executed == 1 and {s["kind"] for s in plain.steps if not s["cached"]} == {"evaluate"}
        assert evaluator_results(store) == before  # nothing evaluated again
        # Forced: evaluated again by the evaluator, and the report after it; nothing upstream.
        forced = manager.run(plan, recompute=["evaluate"])
        assert forced.state == SUCCEEDED, forced.failed
        assert {s["kind"] for s in forced.steps if not s["cached"]} == {"evaluate", "report"} and forced.forced == 2
        after = evaluator_results(store)
        rewritten = {job for job in before if after.get(job) != before[job]}
        # This run's evaluation and report jobs (no other run's) were computed again by the evaluator.
        assert sorted(kind for job, (kind, _) in before.items() if job in rewritten) == ["evaluator.Evaluate", "evaluator.Report"]
        with pytest.raises(InvalidArgument, match="--recompute gan_train: this plan has no such step kind"):
            manager.prepare(plan, ["gan_train"])
    finally:
        manager.close()


def test_synthesis_reads_only_the_real_prefix_and_every_arm_trains_at_one_size(shared: tuple[FileStore, EmbeddedServices]) -> None:
    """Train split 40, arms with 20 real images: no other real image reaches foregrounds,
    backgrounds or GAN training; 96 px data at image_size 64: every arm trains and predicts at
    64, the metrics are computed on the 96 px test images; every arm takes the same steps."""
    store, services = shared
    plan = parse_plan(
        tiny_plan(
            name="prefix",
            dataset={"demo": {"count": 80, "seed": 5, "size": 96}},
            image_size=64,
            split={"train": 0.5, "val": 0.25, "test": 0.25, "seed": 0},
            compositor={"foregrounds": {"min_area": 16}, "backgrounds": {"dilate_px": 3}, "params": {"min_objects": 1, "max_objects": 2}, "workers": 1},
            segmenter={"budget": {"iterations": 2}, "config": {"architecture": "maskrcnn_resnet18_fpn", "batch_size": 4, "lr": 0.01}},
            arms=[{"name": "real", "real": 20}, {"name": "comp", "real": 20, "composite": 8}, {"name": "gan", "real": 20, "gan": 8}],
        )
    )
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        summary = manager.run(plan)
        assert summary.state == SUCCEEDED, summary.failed
        graph = manager.prepare(plan).graph
        result = {s.label: load_result(store, s.key) for s in graph.steps}
        split = Dataset.load(store, refs.dataset_output(result["split"]))
        train_ids = [int(r["id"]) for r in split.image_records("train")]
        assert len(train_ids) == 40
        prefix = set(nested_order(training_order_seed(plan), split.id, "train", train_ids)[:20])
        # The synthesis dataset: exactly the prefix, records unchanged, provenance naming the parent.
        subset = Dataset.load(store, refs.dataset_output(result["real prefix 20 for synthesis"]))
        assert {int(r["id"]) for r in subset.image_records("train")} == prefix and len(subset) == 20
        assert subset.provenance["parents"] == [split.id] and subset.provenance["params"]["subset"]["image_ids"] == sorted(prefix)
        fg = store.get_json(refs.output(result["foregrounds"], "foregrounds").key)
        bg = store.get_json(refs.output(result["backgrounds"], "backgrounds").key)
        assert {f["source_image_id"] for f in fg["foregrounds"]} <= prefix and fg["foregrounds"]
        assert {b["source_image_id"] for b in bg["backgrounds"]} <= prefix and bg["backgrounds"]
        assert result["train GAN"].attributes["dataset"] == subset.id
        # Every arm trains on the same 20 real images, at 64 px, for the same 2 steps.
        for arm in ("real", "comp", "gan"):
            record = store.get_json(refs.output(result[f"train arm={arm} seed=0"], "training_record").key)
            members = {i for s, i in record["training_set"]["members"] if s == 0}
            assert members == prefix, arm
            assert (record["model"]["min_size"], record["model"]["max_size"]) == (64, 64)
            assert {tuple(s) for s in record["model"]["input_sizes"]["train"]} == {(64, 64)}
            assert record["budget"]["iterations_run"] == 2
            predictions = store.get_json(refs.output(result[f"predict arm={arm} seed=0"], "predictions").key)
            assert predictions["export_threshold"] == 0.05
            assert {tuple(p["segmentation"]["size"]) for p in predictions["results"]} <= {(96, 96)}
            evaluation = store.get_json(refs.output(result[f"evaluate arm={arm} seed=0"], "evaluation").key)
            assert evaluation["n_images"] == 20
        composite = Dataset.load(store, refs.dataset_output(result["compose composites"]))
        gan = Dataset.load(store, refs.dataset_output(result["generate GAN images"]))
        assert {(r["width"], r["height"]) for r in composite.image_records() + gan.image_records()} == {(64, 64)}
        assert {(r["width"], r["height"]) for r in split.image_records("test")} == {(96, 96)}
    finally:
        manager.close()


def evaluator_results(store: FileStore) -> dict[str, tuple[str, int]]:
    """Every evaluator job with a stored result: its kind and when its result was written."""
    out = {}
    for key in store.list("jobs/"):
        if key.endswith("/result.pb"):
            job = key.split("/")[1]
            kind = store.get_json(f"jobs/{job}/job.json")["kind"]
            if kind.startswith("evaluator."):
                out[job] = (kind, (Path(store.root) / key).stat().st_mtime_ns)
    return out


def load_result(store: FileStore, key: str) -> common_pb2.JobResult:
    result = common_pb2.JobResult()
    result.ParseFromString(store.get_record(step_cache_key(key)))
    return result


def test_asking_for_more_real_images_than_there_are_is_an_input_error(shared: tuple[FileStore, EmbeddedServices], tmp_path: Path) -> None:
    store, services = shared
    spec = ";".join(f"{name}={','.join(addrs)}" for name, addrs in services.addresses.items())
    too_many = tiny_plan(name="greedy", arms=[{"name": "real", "real": 5000}])
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(too_many))
    # Unknown data (a demo dataset not made yet): the segmenter refuses it at run time, exit 2.
    assert main(["run", str(path), "--store", store.url, "--services", spec, "--no-progress"]) == 2
    # Now the split is in the store, so a dry run finds it before anything runs.
    with pytest.raises(InvalidArgument, match=r"arms\[0\] \(real\) asks for 5000 real images; the train split of dataset \w+ has 12"):
        RunManager(store, ServiceAddresses(services.addresses)).prepare(parse_plan(too_many))
    assert main(["run", str(path), "--dry-run", "--store", store.url]) == 2
