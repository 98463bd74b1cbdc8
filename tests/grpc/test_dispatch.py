"""The orchestrator's dispatcher over real loopback replicas: spreading and failover."""
from __future__ import annotations

import threading
import time

import pytest

from orchestrator.dispatch import ServicePool, resolve
from services.common.errors import InvalidArgument
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, compositor_pb2
from tests.grpc.test_runtime import build_probe
from tests.grpc_helpers import loopback_config


def start(store: ObjectStore):  # type: ignore[no-untyped-def]
    runtime = build_probe(loopback_config("compositor", metrics_port=-1), store)
    runtime.start()
    return runtime


def test_job_moves_to_another_replica_when_its_replica_shuts_down(file_store: ObjectStore) -> None:
    a, b = start(file_store), start(file_store)
    try:
        a.probe.release.clear()  # type: ignore[attr-defined]  # the job on A waits until A stops
        pool = ServicePool("compositor", [f"127.0.0.1:{a.port}"], backoff=0.05)
        events: list[common_pb2.JobEvent] = []
        outcome: dict[str, object] = {}

        def run() -> None:
            outcome["result"] = pool.run_job("SubmitCompose", compositor_pb2.ComposeRequest(count=2, seed=11), on_event=events.append)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 10
        while not any(e.state == common_pb2.JOB_STATE_RUNNING for e in events):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pool.addresses.append(f"127.0.0.1:{b.port}")  # a second replica appears (kubectl scale)
        a.stop(grace=1.0)  # a rollout: A drains and cancels its job
        worker.join(timeout=30)
        assert not worker.is_alive()
        result = outcome["result"]
        assert result.replica == f"127.0.0.1:{b.port}" and result.attempts == 2  # type: ignore[attr-defined]
        assert result.result.metrics["count"] == 2  # type: ignore[attr-defined]
        pool.close()
    finally:
        a.stop(grace=1.0)
        b.stop(grace=1.0)


def test_jobs_spread_over_replicas(file_store: ObjectStore) -> None:
    a, b = start(file_store), start(file_store)
    try:
        for r in (a, b):
            r.probe.release.clear()  # type: ignore[attr-defined]
        pool = ServicePool("compositor", [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        replicas: list[str] = []
        threads = [
            threading.Thread(target=lambda s=s: replicas.append(pool.run_job("SubmitCompose", compositor_pb2.ComposeRequest(count=1, seed=s)).replica))
            for s in (1, 2)
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both submitted while neither finished: least-loaded picks both replicas
        for r in (a, b):
            r.probe.release.set()  # type: ignore[attr-defined]
        for t in threads:
            t.join(timeout=30)
        assert sorted(replicas) == sorted([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
        pool.close()
    finally:
        a.stop(grace=1.0)
        b.stop(grace=1.0)


def test_resolve() -> None:
    assert resolve("127.0.0.1:50051") == ["127.0.0.1:50051"]
    assert "127.0.0.1:7" in resolve("localhost:7")
    assert resolve("no-such-host.invalid:1") == []
    with pytest.raises(InvalidArgument, match="HOST:PORT"):
        resolve("just-a-host")


def test_user_errors_cross_grpc_with_their_message_and_code(file_store: ObjectStore) -> None:
    """FAILED_PRECONDITION / INVALID_ARGUMENT / NOT_FOUND keep the service's message, at submit
    and in a failed job, and the CLI exits 2 for them (the caller's to fix); INTERNAL stays 1."""
    import argparse

    from services.common.cli_support import guarded
    from services.common.client import JobFailed
    from services.common.errors import FailedPrecondition, NotFound

    runtime = start(file_store)
    pool = ServicePool("compositor", [f"127.0.0.1:{runtime.port}"], backoff=0.05)
    try:
        diverged = compositor_pb2.ExtractForegroundsRequest(min_area=3)
        with pytest.raises(JobFailed) as failed:
            pool.run_job("SubmitExtractForegrounds", diverged)
        assert failed.value.code == "FAILED_PRECONDITION"
        assert failed.value.status.error.message == "training diverged at epoch 2 (loss nan): lower the learning rate or enable grad_clip"
        cases = [
            (compositor_pb2.ExtractForegroundsRequest(split="precondition"), FailedPrecondition, "dataset 'x' has no masks yet: import them first"),
            (compositor_pb2.ExtractForegroundsRequest(split="missing"), NotFound, "dataset 'nope' not found"),
        ]
        for request, error, message in cases:
            with pytest.raises(error) as info:
                pool.run_job("SubmitExtractForegrounds", request)
            assert str(info.value) == f"compositor.SubmitExtractForegrounds: {message}"

        def exit_code(request: compositor_pb2.ExtractForegroundsRequest) -> int:
            return guarded(lambda _args: pool.run_job("SubmitExtractForegrounds", request) and 0)(argparse.Namespace())

        assert exit_code(diverged) == 2
        assert exit_code(compositor_pb2.ExtractForegroundsRequest(split="precondition")) == 2
        assert exit_code(compositor_pb2.ExtractForegroundsRequest(min_area=1)) == 2  # INVALID_ARGUMENT in the job
        assert exit_code(compositor_pb2.ExtractForegroundsRequest(min_area=2)) == 1  # a crash: INTERNAL
        pool.close()
    finally:
        runtime.stop(grace=1.0)
