"""The shared gRPC runtime and job mechanism, over real loopback gRPC.

A small servicer for CompositorService's RPC shapes exercises the runtime: it is the runtime
under test here, not the compositor.
"""
from __future__ import annotations

import functools
import threading
import time
import urllib.request
from typing import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.client import JobFailed, health_status, open_channel, wait_job
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.events import Retention
from services.common.jobs import JobContext, JobManager, JobServicerMixin, job_id_for, result_key
from services.common.runtime import ServerConfig, ServiceRuntime, parse_config
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, compositor_pb2, compositor_pb2_grpc
from tests.grpc_helpers import loopback_config, running_server

SERVICE = "synthaug.v1.CompositorService"


class ProbeServicer(JobServicerMixin, compositor_pb2_grpc.CompositorServiceServicer):
    """Compose: counted work with progress; ExtractForegrounds: raises what `split` asks for."""

    def __init__(self, runtime: ServiceRuntime):
        self.jobs = runtime.jobs
        self.runs = 0
        self.release = threading.Event()
        self.release.set()

    def SubmitCompose(self, request: compositor_pb2.ComposeRequest, context: grpc.ServicerContext) -> common_pb2.JobRef:
        if request.count < 1:
            raise InvalidArgument(f"count must be ≥ 1, got {request.count}")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            self.runs += 1
            for i in range(request.count):
                while not self.release.wait(0.05):
                    ctx.check_cancelled()
                ctx.progress((i + 1) / request.count, f"item {i + 1}", {"items": i + 1.0})
            return common_pb2.JobResult(attributes={"name": request.name}, metrics={"count": request.count})

        return self.jobs.submit("probe.Compose", request, run)

    def SubmitExtractForegrounds(self, request: compositor_pb2.ExtractForegroundsRequest, context: grpc.ServicerContext) -> common_pb2.JobRef:
        if request.split == "missing":
            raise NotFound("dataset 'nope' not found")
        if request.split == "crash":
            raise RuntimeError("secret internal detail")
        if request.split == "abort":
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied")
        if request.split == "precondition":
            raise FailedPrecondition("dataset 'x' has no masks yet: import them first")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            if request.min_area == 3:
                raise FailedPrecondition("training diverged at epoch 2 (loss nan): lower the learning rate or enable grad_clip")
            raise InvalidArgument("foreground 3 is empty") if request.min_area == 1 else ZeroDivisionError("boom")

        return self.jobs.submit("probe.Extract", request, run)


def build_probe(config: ServerConfig, store: ObjectStore, retention: Retention | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    if retention is not None:
        runtime.jobs = JobManager(store, config.service, config.max_concurrent_jobs, retention=retention)
    servicer = ProbeServicer(runtime)
    runtime.add(compositor_pb2_grpc.add_CompositorServiceServicer_to_server, servicer, SERVICE)
    runtime.probe = servicer  # type: ignore[attr-defined]
    return runtime


@pytest.fixture()
def server(file_store: ObjectStore) -> Iterator[tuple[ServiceRuntime, grpc.Channel]]:
    with running_server(build_probe, "compositor", file_store) as pair:
        yield pair


def metric(runtime: ServiceRuntime, name: str, labels: dict[str, str]) -> float:
    value = runtime.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_same_request_same_job_and_result(server: tuple[ServiceRuntime, grpc.Channel]) -> None:
    runtime, channel = server
    stub = compositor_pb2_grpc.CompositorServiceStub(channel)
    req = compositor_pb2.ComposeRequest(count=3, seed=7, name="x")
    a = stub.SubmitCompose(req)
    b = stub.SubmitCompose(compositor_pb2.ComposeRequest(name="x", seed=7, count=3))
    assert a.id == b.id == job_id_for("probe.Compose", req)
    events: list[common_pb2.JobEvent] = []
    result = wait_job(stub, a, timeout=30, on_event=events.append)
    assert result.attributes["name"] == "x" and result.metrics["count"] == 3
    assert runtime.probe.runs == 1  # type: ignore[attr-defined]
    progress = [e.progress for e in events if e.state == common_pb2.JOB_STATE_RUNNING and e.metrics]
    assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [e.sequence for e in events] == sorted({e.sequence for e in events})
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED and events[-1].result.attributes["name"] == "x"
    # A different request is a different job.
    assert stub.SubmitCompose(compositor_pb2.ComposeRequest(count=3, seed=8, name="x")).id != a.id


def test_result_reused_after_restart_without_recompute(file_store: ObjectStore) -> None:
    req = compositor_pb2.ComposeRequest(count=2, seed=1)
    with running_server(build_probe, "compositor", file_store) as (runtime, channel):
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        ref = stub.SubmitCompose(req)
        wait_job(stub, ref, timeout=30)
        assert runtime.probe.runs == 1  # type: ignore[attr-defined]
    assert file_store.exists(result_key(ref.id))
    with running_server(build_probe, "compositor", file_store) as (runtime2, channel2):
        stub2 = compositor_pb2_grpc.CompositorServiceStub(channel2)
        # Another replica / a restarted server knows the job by id alone ...
        status = stub2.GetJob(common_pb2.GetJobRequest(job_id=ref.id))
        assert status.state == common_pb2.JOB_STATE_SUCCEEDED and status.from_cache
        assert status.job.kind == "probe.Compose"
        # ... and a resubmission returns the stored result without running anything.
        ref2 = stub2.SubmitCompose(req)
        assert ref2.id == ref.id
        assert wait_job(stub2, ref2, timeout=10).metrics["count"] == 2
        assert runtime2.probe.runs == 0  # type: ignore[attr-defined]
        assert metric(runtime2, "synthaug_jobs_cache_hits_total", {"service": "compositor", "kind": "probe.Compose"}) == 1


def test_finished_jobs_leave_memory_and_answer_from_the_store(file_store: ObjectStore) -> None:
    """A server that keeps no finished job in memory still answers GetJob and WatchJob."""
    forgetful = functools.partial(build_probe, retention=Retention(max_finished=0, max_age_seconds=0))
    with running_server(forgetful, "compositor", file_store) as (runtime, channel):
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        ref = stub.SubmitCompose(compositor_pb2.ComposeRequest(count=2, seed=5, name="kept"))
        events: list[common_pb2.JobEvent] = []
        assert wait_job(stub, ref, timeout=30, on_event=events.append).attributes["name"] == "kept"
        assert [e.state for e in events][-1] == common_pb2.JOB_STATE_SUCCEEDED
        assert runtime.jobs.held() == []
        status = stub.GetJob(common_pb2.GetJobRequest(job_id=ref.id))
        assert status.state == common_pb2.JOB_STATE_SUCCEEDED and status.job.kind == "probe.Compose"
        assert status.result.metrics["count"] == 2
        replay = list(stub.WatchJob(common_pb2.WatchJobRequest(job_id=ref.id)))
        assert [e.state for e in replay] == [common_pb2.JOB_STATE_SUCCEEDED] and replay[0].result.attributes["name"] == "kept"
        # A failed job, too: its final status, error code and message come from the store.
        with pytest.raises(JobFailed):
            wait_job(stub, stub.SubmitExtractForegrounds(compositor_pb2.ExtractForegroundsRequest(min_area=1)), timeout=10)
        assert runtime.jobs.held() == []
        failed_id = job_id_for("probe.Extract", compositor_pb2.ExtractForegroundsRequest(min_area=1))
        failed = stub.GetJob(common_pb2.GetJobRequest(job_id=failed_id))
        assert failed.state == common_pb2.JOB_STATE_FAILED
        assert (failed.error.code, failed.error.message) == ("INVALID_ARGUMENT", "foreground 3 is empty")
        assert runtime.probe.runs == 1  # type: ignore[attr-defined]  # nothing recomputed to answer


def test_cancel_running_job(server: tuple[ServiceRuntime, grpc.Channel]) -> None:
    runtime, channel = server
    stub = compositor_pb2_grpc.CompositorServiceStub(channel)
    runtime.probe.release.clear()  # type: ignore[attr-defined]
    ref = stub.SubmitCompose(compositor_pb2.ComposeRequest(count=5, seed=3))
    deadline = time.monotonic() + 10
    while stub.GetJob(common_pb2.GetJobRequest(job_id=ref.id)).state != common_pb2.JOB_STATE_RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stub.CancelJob(common_pb2.CancelJobRequest(job_id=ref.id))
    with pytest.raises(JobFailed) as info:
        wait_job(stub, ref, timeout=10)
    assert info.value.status.state == common_pb2.JOB_STATE_CANCELLED
    assert not runtime.store.exists(result_key(ref.id))
    # A cancelled job runs again when resubmitted.
    runtime.probe.release.set()  # type: ignore[attr-defined]
    assert stub.SubmitCompose(compositor_pb2.ComposeRequest(count=5, seed=3)).id == ref.id
    assert wait_job(stub, ref, timeout=10).metrics["count"] == 5


def test_error_mapping_and_metrics(server: tuple[ServiceRuntime, grpc.Channel]) -> None:
    runtime, channel = server
    stub = compositor_pb2_grpc.CompositorServiceStub(channel)
    cases = [
        (lambda: stub.SubmitCompose(compositor_pb2.ComposeRequest(count=0)), grpc.StatusCode.INVALID_ARGUMENT, "count must be ≥ 1, got 0"),
        (lambda: stub.SubmitExtractForegrounds(compositor_pb2.ExtractForegroundsRequest(split="missing")), grpc.StatusCode.NOT_FOUND, "dataset 'nope' not found"),
        (lambda: stub.SubmitExtractForegrounds(compositor_pb2.ExtractForegroundsRequest(split="abort")), grpc.StatusCode.PERMISSION_DENIED, "denied"),
        (lambda: stub.GetJob(common_pb2.GetJobRequest(job_id="0" * 32)), grpc.StatusCode.NOT_FOUND, "not found"),
        (lambda: stub.GetJob(common_pb2.GetJobRequest(job_id="../x")), grpc.StatusCode.INVALID_ARGUMENT, "invalid job id"),
    ]
    for call, code, text in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == code
        assert text in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitExtractForegrounds(compositor_pb2.ExtractForegroundsRequest(split="crash"))
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in info.value.details() and "Traceback" not in info.value.details()
    labels = {"grpc_service": SERVICE, "grpc_method": "SubmitExtractForegrounds"}
    assert metric(runtime, "grpc_server_handled_total", {**labels, "grpc_code": "INTERNAL"}) == 1
    assert metric(runtime, "grpc_server_handled_total", {**labels, "grpc_code": "NOT_FOUND"}) == 1
    assert metric(runtime, "grpc_server_handled_total", {**labels, "grpc_code": "PERMISSION_DENIED"}) == 1
    assert metric(runtime, "grpc_server_handled_total", {"grpc_service": SERVICE, "grpc_method": "SubmitCompose", "grpc_code": "INVALID_ARGUMENT"}) == 1
    assert metric(runtime, "grpc_server_handling_seconds_count", labels) == 3


def test_failed_job_carries_mapped_code(server: tuple[ServiceRuntime, grpc.Channel]) -> None:
    runtime, channel = server
    stub = compositor_pb2_grpc.CompositorServiceStub(channel)
    with pytest.raises(JobFailed) as bad:
        wait_job(stub, stub.SubmitExtractForegrounds(compositor_pb2.ExtractForegroundsRequest(min_area=1)), timeout=10)
    assert bad.value.status.error.code == "INVALID_ARGUMENT"
    assert bad.value.status.error.message == "foreground 3 is empty"
    with pytest.raises(JobFailed) as crash:
        wait_job(stub, stub.SubmitExtractForegrounds(compositor_pb2.ExtractForegroundsRequest(min_area=2)), timeout=10)
    assert crash.value.status.error.code == "INTERNAL"
    assert "boom" not in crash.value.status.error.message
    assert metric(runtime, "synthaug_jobs_finished_total", {"service": "compositor", "kind": "probe.Extract", "state": "JOB_STATE_FAILED"}) == 2


def test_metrics_endpoint_serves_counters(server: tuple[ServiceRuntime, grpc.Channel]) -> None:
    runtime, channel = server
    stub = compositor_pb2_grpc.CompositorServiceStub(channel)
    wait_job(stub, stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, seed=99)), timeout=10)
    body = urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_port}/metrics", timeout=5).read().decode()
    assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="SubmitCompose",grpc_service="synthaug.v1.CompositorService"} 1.0' in body
    assert "synthaug_jobs_finished_total" in body
    # The process itself: what an operator graphs next to the RPCs (CPU, memory, files).
    samples = {line.split(" ")[0]: float(line.split(" ")[1]) for line in body.splitlines() if line.startswith("process_")}
    assert samples["process_cpu_seconds_total"] > 0
    assert samples["process_resident_memory_bytes"] > 10 * 2**20  # a Python with grpc loaded
    assert samples["process_open_fds"] >= 3  # stdin/out/err at least, plus the listeners
    assert samples["process_open_fds"] <= samples["process_max_fds"]
    assert "python_info{" in body and "python_gc_collections_total" in body


def _list_services(channel: grpc.Channel, method: str) -> set[str]:
    """Service names a reflection service lists, asked at `method` (the full RPC path)."""
    call = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    responses = list(call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    return {s.name for s in responses[0].list_services_response.service}


def test_reflection_answers_v1_and_v1alpha(server: tuple[ServiceRuntime, grpc.Channel]) -> None:
    """Current clients (grpcurl, Postman) ask grpc.reflection.v1 first, older ones v1alpha.
    grpcio-reflection has no v1 stubs, so v1 is called raw: its messages are v1alpha's on
    the wire (same fields, same numbers; only the proto package differs)."""
    from google.protobuf import descriptor_pb2

    _runtime, channel = server
    v1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
    v1alpha = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    expected = {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
    assert _list_services(channel, v1) == expected
    assert _list_services(channel, v1alpha) == expected
    # v1 describes itself, as grpcurl's `describe` asks: its own file, under its own package.
    call = channel.stream_stream(v1, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    [answer] = call(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection")]), timeout=10)
    assert not answer.HasField("error_response"), answer.error_response.error_message
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in answer.file_descriptor_response.file_descriptor_proto]
    own = next(f for f in files if f.package == "grpc.reflection.v1")
    assert own.name == "grpc/reflection/v1/reflection.proto"
    [method] = [m for svc in own.service if svc.name == "ServerReflection" for m in svc.method]
    assert (method.name, method.input_type, method.output_type, method.client_streaming, method.server_streaming) == (
        "ServerReflectionInfo", ".grpc.reflection.v1.ServerReflectionRequest", ".grpc.reflection.v1.ServerReflectionResponse", True, True)
    # ... and the services it lists, through the same protocol.
    [svc] = call(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)]), timeout=10)
    names = {descriptor_pb2.FileDescriptorProto.FromString(b).name for b in svc.file_descriptor_response.file_descriptor_proto}
    assert "synthaug/v1/compositor.proto" in names


def test_health_transitions_and_reflection(file_store: ObjectStore) -> None:
    runtime = build_probe(loopback_config("compositor", drain_seconds=1.0), file_store)
    port = runtime.start(ready=False)
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        assert health_status(channel) == "NOT_SERVING"
        assert health_status(channel, SERVICE) == "NOT_SERVING"
        runtime.mark_ready()
        assert health_status(channel) == "SERVING"
        assert health_status(channel, SERVICE) == "SERVING"
        with pytest.raises(grpc.RpcError) as info:
            health_status(channel, "no.such.Service")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in responses[0].list_services_response.service}
        assert SERVICE in names and "grpc.health.v1.Health" in names
        stopper = threading.Thread(target=runtime.stop)
        stopper.start()
        time.sleep(0.3)  # inside drain_seconds: still answering, but NOT_SERVING
        assert health_status(channel) == "NOT_SERVING"
        stopper.join(timeout=30)
        assert not stopper.is_alive()
    finally:
        channel.close()
        runtime.stop()


def test_message_size_limit(file_store: ObjectStore) -> None:
    with running_server(build_probe, "compositor", file_store, max_message_bytes=1024) as (runtime, channel):
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, name="x" * 4096))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_config_flags_override_environment() -> None:
    env = {"SYNTHAUG_PORT": "6000", "SYNTHAUG_STORE": "file:///env", "SYNTHAUG_LOG_FORMAT": "text", "SYNTHAUG_MAX_CONCURRENT_JOBS": "3"}
    cfg = parse_config("segmenter", ["--port", "7000"], env)
    assert cfg.port == 7000 and cfg.store_url == "file:///env" and not cfg.log_json and cfg.max_concurrent_jobs == 3
    default = parse_config("segmenter", [], {})
    assert default.port == 50053 and default.metrics_port == 9153 and default.max_concurrent_jobs == 1
    with pytest.raises(SystemExit):
        parse_config("segmenter", [], {"SYNTHAUG_PORT": "not-a-port"})


def test_sigterm_stops_a_server_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A real process: SIGTERM → graceful stop → exit code 0."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, free_port

    port = free_port()
    code = (
        "import sys; from tests.grpc.test_runtime import build_probe;"
        "from services.common.runtime import serve, ServiceRuntime;"
        "from services.common.store import open_store;"
        "sys.exit(serve(lambda cfg: build_probe(cfg, open_store(cfg.store_url)), 'compositor', sys.argv[1:]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1", "--store", f"file://{tmp_path}"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        from services.common.client import wait_until_serving

        wait_until_serving(channel, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert '"message": "compositor stopped"' in proc.stderr.read()
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()


def test_bind_loopback_by_default() -> None:
    """Nothing is exposed by accident: every service binds 127.0.0.1 unless told otherwise."""
    for service in ("orchestrator", "compositor", "gan", "segmenter", "evaluator"):
        assert parse_config(service, [], {}).host == "127.0.0.1"
    assert ServerConfig(service="x").host == "127.0.0.1"
    assert parse_config("gan", [], {"SYNTHAUG_HOST": "0.0.0.0"}).host == "0.0.0.0"


def test_request_limits_refuse_oversized_requests(file_store: ObjectStore) -> None:
    from services.common.limits import RequestLimits

    limits = RequestLimits(max_images=5)
    with running_server(build_probe, "compositor", file_store, limits=limits) as (runtime, channel):
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitCompose(compositor_pb2.ComposeRequest(count=6, seed=1))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == ("SubmitCompose request.count = 6 is over this deployment's limit of 5 "
                                        "(SYNTHAUG_MAX_IMAGES; raise it there if this is intended)")
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, params=compositor_pb2.ComposeParams(output_size=100_000)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "request.params.output_size = 100000" in info.value.details()
        assert "SYNTHAUG_MAX_IMAGE_SIZE" in info.value.details()
        assert runtime.probe.runs == 0  # type: ignore[attr-defined]
        assert wait_job(stub, stub.SubmitCompose(compositor_pb2.ComposeRequest(count=5, seed=1)), timeout=30).metrics["count"] == 5
    config = parse_config("segmenter", [], {"SYNTHAUG_MAX_EPOCHS": "40", "SYNTHAUG_MAX_BATCH_SIZE": "8"})
    assert (config.limits.max_epochs, config.limits.max_batch_size) == (40, 8)
    with pytest.raises(SystemExit, match="SYNTHAUG_MAX_EPOCHS"):
        parse_config("segmenter", [], {"SYNTHAUG_MAX_EPOCHS": "lots"})


def test_queue_is_bounded(file_store: ObjectStore) -> None:
    """Beyond max_queued_jobs waiting jobs a replica answers RESOURCE_EXHAUSTED (the
    dispatcher retries that elsewhere or later); a resubmission once it drained is accepted."""
    with running_server(build_probe, "compositor", file_store, max_concurrent_jobs=1, max_queued_jobs=1) as (runtime, channel):
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        runtime.probe.release.clear()  # type: ignore[attr-defined]
        running = stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, seed=1))
        deadline = time.monotonic() + 10
        while stub.GetJob(common_pb2.GetJobRequest(job_id=running.id)).state != common_pb2.JOB_STATE_RUNNING:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        queued = stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, seed=2))
        assert stub.GetJob(common_pb2.GetJobRequest(job_id=queued.id)).state == common_pb2.JOB_STATE_QUEUED
        with pytest.raises(grpc.RpcError) as info:
            stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, seed=3))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "SYNTHAUG_MAX_QUEUED_JOBS=1" in info.value.details()
        runtime.probe.release.set()  # type: ignore[attr-defined]
        for ref in (running, queued):
            wait_job(stub, ref, timeout=30)
        third = stub.SubmitCompose(compositor_pb2.ComposeRequest(count=1, seed=3))
        assert wait_job(stub, third, timeout=30).metrics["count"] == 1
        assert runtime.probe.runs == 3  # type: ignore[attr-defined]


def test_server_exits_when_its_parent_dies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A server started with --parent-pid stops by itself when that process is SIGKILLed."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, free_port

    port = free_port()
    pid_file = tmp_path / "server.pid"
    server = (
        "import os, sys; from tests.grpc.test_runtime import build_probe;"
        "from services.common.runtime import serve;"
        "from services.common.store import open_store;"
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid()));"
        "sys.exit(serve(lambda cfg: build_probe(cfg, open_store(cfg.store_url)), 'compositor', sys.argv[1:]))"
    )
    # The parent starts the server, tells it its pid, and waits forever (until killed).
    parent = (
        "import os, subprocess, sys, time;"
        f"subprocess.Popen([sys.executable, '-c', {server!r}, '--port', '{port}', '--metrics-port', '-1',"
        f" '--store', {'file://' + str(tmp_path / 'store')!r}, '--parent-pid', str(os.getpid())]);"
        "time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=REPO)
    channel = open_channel(f"127.0.0.1:{port}")
    server_pid = 0
    try:
        from services.common.client import wait_until_serving

        wait_until_serving(channel, timeout=60)
        server_pid = int(pid_file.read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _alive(server_pid):
            assert time.monotonic() < deadline, "the server outlived its parent"
            time.sleep(0.1)
    finally:
        channel.close()
        if proc.poll() is None:
            proc.kill()
        if server_pid and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by init, counts as gone)."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
