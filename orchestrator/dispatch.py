"""Dispatch jobs over every replica of a service.

A service is a list of addresses; an entry may be a DNS name that resolves to several pods (a
headless Service), and it is resolved again before each dispatch, so replicas added with
`kubectl scale` get work without a restart. Jobs go to the replica with the fewest jobs in
flight from this orchestrator. When a replica dies mid-job, the same request goes to another
replica (or the same one once it is back) with backoff: job ids derive from the request, so
the new replica finds the job's checkpoints in the store and resumes instead of restarting.

Channels are secured as the environment says (services/common/security.py: TLS, client
certificate, bearer token) unless the caller passes a ClientSecurity. A replica is dialled
by IP, so its certificate is checked against the name it was resolved from.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import grpc
from google.protobuf.message import Message

from services.common.client import TERMINAL, JobFailed, open_channel
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, SynthaugError
from services.common.security import ClientSecurity
from synthaug.v1 import common_pb2, compositor_pb2_grpc, evaluator_pb2_grpc, gan_pb2_grpc, segmenter_pb2_grpc

log = logging.getLogger(__name__)

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "compositor": compositor_pb2_grpc.CompositorServiceStub,
    "gan": gan_pb2_grpc.GanServiceStub,
    "segmenter": segmenter_pb2_grpc.SegmenterServiceStub,
    "evaluator": evaluator_pb2_grpc.EvaluatorServiceStub,
}

#: gRPC codes that mean "this replica is gone or overloaded", not "your request is wrong".
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)


class ServiceUnavailable(SynthaugError):
    code = "UNAVAILABLE"


class _StreamLost(Exception):
    """The event stream ended before the job did."""


@dataclass
class JobOutcome:
    result: common_pb2.JobResult
    #: Seconds the job spent RUNNING, measured on the orchestrator's clock.
    running_seconds: float
    replica: str
    attempts: int


def host_of(address: str) -> str:
    """The host part of `host:port` (brackets of an IPv6 literal removed)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"service address {address!r}: expected HOST:PORT")
    return host.strip("[]")


def resolve(address: str) -> list[str]:
    """`host:port` → one `ip:port` per address the name resolves to (IPv4 and IPv6)."""
    host = host_of(address)
    port = address.rpartition(":")[2]
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    out = []
    for family, _type, _proto, _name, sockaddr in infos:
        ip = sockaddr[0]
        entry = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
        if entry not in out:
            out.append(entry)
    return out


@dataclass
class _Replica:
    address: str
    channel: grpc.Channel
    stub: Any
    in_flight: int = 0
    down_until: float = 0.0


@dataclass
class ServicePool:
    """All replicas of one service, as seen now."""

    service: str
    addresses: list[str]
    attempts: int = 6
    backoff: float = 0.5
    max_backoff: float = 15.0
    #: How channels are secured; None = from the environment.
    security: ClientSecurity | None = None
    _replicas: dict[str, _Replica] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def replicas(self) -> list[str]:
        return list(self._resolved())

    def _resolved(self) -> dict[str, str]:
        """Every replica's `ip:port` → the host name it was resolved from."""
        found: dict[str, str] = {}
        for address in self.addresses:
            for entry in resolve(address):
                found.setdefault(entry, host_of(address))
        return found

    def _pick(self) -> _Replica:
        resolved = self._resolved()
        current = list(resolved)
        if not current:
            raise ServiceUnavailable(f"no replica of {self.service} resolves from {self.addresses}")
        with self._lock:
            for address in current:
                if address not in self._replicas:
                    channel = open_channel(address, security=self.security, server_name=resolved[address])
                    self._replicas[address] = _Replica(address, channel, STUBS[self.service](channel))
            now = time.monotonic()
            live = [self._replicas[a] for a in current if self._replicas[a].down_until <= now] or [self._replicas[a] for a in current]
            best = min(r.in_flight for r in live)
            replica = random.choice([r for r in live if r.in_flight == best])
            replica.in_flight += 1
            return replica

    def _release(self, replica: _Replica, failed: bool) -> None:
        with self._lock:
            replica.in_flight -= 1
            if failed:
                replica.down_until = time.monotonic() + self.backoff * 4

    def run_job(
        self,
        submit: str,
        request: Message,
        on_event: Callable[[common_pb2.JobEvent], None] | None = None,
        cancel: threading.Event | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> JobOutcome:
        """Submit a job, follow it to the end, fail over on lost replicas. JobFailed on failure.

        `metadata` travels with the Submit call (e.g. the recompute flag, services.common.jobs).

        Lost means: unreachable, no replica resolves, the event stream broke, or the replica
        cancelled the job itself while shutting down (a rollout, a scale-down). The same
        request then goes to a replica again, which resumes from the job's checkpoints.
        """
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            replica: _Replica | None = None
            lost = False
            try:
                replica = self._pick()
                outcome = self._follow(replica, submit, request, on_event, cancel, metadata)
                outcome.attempts = attempt
                return outcome
            except (grpc.RpcError, _StreamLost, ServiceUnavailable) as exc:
                code = exc.code() if isinstance(exc, grpc.RpcError) else grpc.StatusCode.UNAVAILABLE
                cancelled_here = cancel is not None and cancel.is_set()
                # A stream CANCELLED that we did not cancel: the replica closed it while stopping.
                lost = code in RETRYABLE or (code == grpc.StatusCode.CANCELLED and not cancelled_here)
                if not lost or attempt == self.attempts or cancelled_here:
                    if isinstance(exc, grpc.RpcError):
                        raise _as_error(self.service, submit, exc) from None
                    raise ServiceUnavailable(f"{self.service}: {exc or 'job stream kept breaking'} (after {attempt} attempts)") from None
                where = replica.address if replica is not None else "(no replica)"
                log.warning("%s replica %s lost during %s (%s); retrying in %.1fs", self.service, where, submit, code.name, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
            finally:
                if replica is not None:
                    self._release(replica, failed=lost)
        raise AssertionError("unreachable")

    def _follow(
        self,
        replica: _Replica,
        submit: str,
        request: Message,
        on_event: Callable[[common_pb2.JobEvent], None] | None,
        cancel: threading.Event | None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> JobOutcome:
        stub = replica.stub
        ref = getattr(stub, submit)(request, timeout=120, metadata=tuple(metadata) or None)
        running_since: float | None = None
        running = 0.0
        stream = stub.WatchJob(common_pb2.WatchJobRequest(job_id=ref.id))
        if cancel is not None:
            def watch_cancel() -> None:
                while not cancel.wait(0.2):
                    if stream.done():
                        return
                if stream.done():
                    return
                try:
                    stub.CancelJob(common_pb2.CancelJobRequest(job_id=ref.id), timeout=10)
                except grpc.RpcError as exc:
                    log.warning("cancel of job %s failed: %s", ref.id, exc.code().name)

            threading.Thread(target=watch_cancel, name=f"cancel-{ref.id[:8]}", daemon=True).start()
        try:
            for event in stream:
                now = time.monotonic()
                if event.state == common_pb2.JOB_STATE_RUNNING and running_since is None:
                    running_since = now
                if event.state in TERMINAL and running_since is not None:
                    running += now - running_since
                    running_since = None
                if on_event is not None:
                    try:
                        on_event(event)
                    except Exception:  # progress display is best-effort; the job goes on
                        log.exception("progress callback failed for job %s", ref.id)
                if event.state in TERMINAL:
                    break
        finally:
            stream.cancel()
        status = stub.GetJob(common_pb2.GetJobRequest(job_id=ref.id), timeout=30)
        if status.state == common_pb2.JOB_STATE_SUCCEEDED:
            return JobOutcome(status.result, running, replica.address, 1)
        if status.state not in TERMINAL:
            raise _StreamLost(f"event stream of job {ref.id} ended early on {replica.address}")
        if status.state == common_pb2.JOB_STATE_CANCELLED and not (cancel is not None and cancel.is_set()):
            raise _StreamLost(f"{replica.address} cancelled job {ref.id} (shutting down)")
        raise JobFailed(status)

    def close(self) -> None:
        with self._lock:
            for r in self._replicas.values():
                r.channel.close()
            self._replicas.clear()


#: Errors that cross gRPC as themselves: the message the service wrote, the class the CLI maps.
_CARRIED: dict[grpc.StatusCode, type[SynthaugError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def _as_error(service: str, method: str, exc: grpc.RpcError) -> SynthaugError:
    code = exc.code()
    message = f"{service}.{method}: {exc.details()}"
    if code in _CARRIED:
        return _CARRIED[code](message)
    if code in RETRYABLE:
        return ServiceUnavailable(f"{service}: no replica answered ({code.name}: {exc.details()})")
    err = SynthaugError(message)
    err.code = code.name
    return err


class Dispatcher:
    """One pool per service."""

    def __init__(self, addresses: dict[str, list[str]], security: ClientSecurity | None = None):
        missing = [s for s in STUBS if not addresses.get(s)]
        if missing:
            raise InvalidArgument(f"no address for service(s) {missing}")
        security = ClientSecurity.from_env() if security is None else security
        self.pools = {s: ServicePool(s, list(addresses[s]), security=security) for s in STUBS}

    def __getitem__(self, service: str) -> ServicePool:
        return self.pools[service]

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
