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

from orchestrator.launcher import EmbeddedServices, start_embedded, start_service, wait_serving
from orchestrator.plan import parse_plan
from orchestrator.runs import RunManager
from orchestrator.server import build as build_orchestrator
from orchestrator.settings import ServiceAddresses
from services.common.events import Retention
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
            assert reg.get_sample_value("synthaug_evaluation_score", {"plan": "tiny", "arm": arm, "metric": "mean_iou"}) is not None
        assert reg.get_sample_value("synthaug_step_duration_seconds_count", {"plan": "tiny", "kind": "segment_train"}) == 4

        again = manager.run(plan)
        assert again.run_id == first.run_id
        assert again.executed == 0 and again.cached == first.executed  # nothing recomputed
        assert again.report is not None and again.report.key == status.report.key
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
    """SIGKILL the segmenter after its first epoch checkpoint; a new process on the same port
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
                        # Kill once the first epoch finished (its checkpoint is in the store).
                        if not killed.is_set() and "epoch 1/4 done" in event.step.message:
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
        assert killed.is_set(), f"segmenter never finished epoch 1; messages: {messages[-5:]}"
        assert summary.state == SUCCEEDED, summary.failed
        assert any(m.startswith("resumed after epoch") for m in messages), messages
    finally:
        manager.close()
        services.stop()
