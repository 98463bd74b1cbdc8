"""Client-side helpers shared by the orchestrator, the CLI and tests."""
from __future__ import annotations

import time
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import SynthaugError
from services.common.jobs import TERMINAL
from services.common.runtime import DEFAULT_MAX_MESSAGE_BYTES
from services.common.security import ClientSecurity
from synthaug.v1 import common_pb2


class JobFailed(SynthaugError):
    """A job ended FAILED or CANCELLED; carries the job's status."""

    def __init__(self, status: common_pb2.JobStatus):
        self.status = status
        self.code = status.error.code or "INTERNAL"
        state = common_pb2.JobState.Name(status.state)
        super().__init__(f"job {status.job.id} ({status.job.kind}) ended {state}: {status.error.message or status.message}")


#: HTTP/2 keepalive: a job's event stream can be idle for an hour; a replica on a dead node
#: must still be noticed (the servers allow pings this often, see runtime.py).
KEEPALIVE_MS = 30_000


def open_channel(
    address: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    security: ClientSecurity | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to `address` with synthaug's limits and keepalive, secured as `security`
    says (default: from the environment, see security.py): TLS when a CA is configured, the
    bearer token on every call. `server_name` is the name the server's certificate must
    carry when `address` is not it (a replica dialled by IP); SYNTHAUG_TLS_SERVER_NAME wins."""
    security = ClientSecurity.from_env() if security is None else security
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    credentials = security.channel_credentials()
    if credentials is None:
        return security.secure(grpc.insecure_channel(address, options=options))
    name = security.server_name or server_name
    if name:
        options.append(("grpc.ssl_target_name_override", name))
    return security.secure(grpc.secure_channel(address, credentials, options=options))


def health_status(channel: grpc.Channel, service: str = "", timeout: float = 5.0) -> str:
    """'SERVING', 'NOT_SERVING', ... for `service` ('' = the whole server)."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def wait_until_serving(channel: grpc.Channel, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if health_status(channel, timeout=2.0) == "SERVING":
                return
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"server not SERVING after {timeout:.0f} s")
        time.sleep(0.1)


def wait_job(
    stub: Any,
    ref: common_pb2.JobRef,
    timeout: float | None = None,
    on_event: Callable[[common_pb2.JobEvent], None] | None = None,
) -> common_pb2.JobResult:
    """Follow a job's events (re-attaching if the stream breaks); its result, or JobFailed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    after = 0
    while True:
        remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            for event in stub.WatchJob(common_pb2.WatchJobRequest(job_id=ref.id, after_sequence=after), timeout=remaining):
                after = event.sequence
                if on_event is not None:
                    on_event(event)
                if event.state in TERMINAL:
                    break
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {ref.id} not finished within {timeout} s") from None
            time.sleep(0.2)
            continue
        status = stub.GetJob(common_pb2.GetJobRequest(job_id=ref.id), timeout=30)
        if status.state == common_pb2.JOB_STATE_SUCCEEDED:
            return status.result
        if status.state in TERMINAL:
            raise JobFailed(status)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {ref.id} not finished within {timeout} s")
