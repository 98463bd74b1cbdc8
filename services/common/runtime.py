"""The gRPC runtime every synthaug server runs on.

One place for what each service would otherwise get slightly different: health
(NOT_SERVING → SERVING when ready → NOT_SERVING while draining), reflection (v1 and
v1alpha), Prometheus metrics with a /metrics port (RPCs, jobs, and the process: CPU,
memory, open files), the exception → status mapping (clients never see a traceback),
message-size limits, SIGTERM graceful shutdown, and configuration from flags and
environment.

Safe by default for a port someone else can reach: servers bind 127.0.0.1 unless told
otherwise (containers set SYNTHAUG_HOST=0.0.0.0); TLS, mutual TLS and a bearer token are one
setting each (services/common/security.py) and apply to every RPC but health; every Submit*
request is held to the deployment's request limits (services/common/limits.py) and refused
with RESOURCE_EXHAUSTED while the replica's job queue is full. A server started by another
process (the embedded launcher passes --parent-pid) stops when that process dies, however it
died, so nothing is left running with nobody to use it.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, PlatformCollector, ProcessCollector, start_http_server

from services.common.errors import InvalidArgument, ResourceExhausted, SynthaugError
from services.common.events import Retention
from services.common.jobs import JobManager
from services.common.limits import ENV_VARS as LIMIT_ENV_VARS
from services.common.limits import RequestLimits
from services.common.logs import configure_logging
from services.common.security import SERVER_ENV_VARS, ServerSecurity
from services.common.store import ObjectStore, open_store, read_secret

log = logging.getLogger(__name__)

#: gRPC and /metrics ports of each service; deploy/ is held to these by tests.
DEFAULT_PORTS = {"orchestrator": 50050, "compositor": 50051, "gan": 50052, "segmenter": 50053, "evaluator": 50054}
DEFAULT_METRICS_PORTS = {"orchestrator": 9150, "compositor": 9151, "gan": 9152, "segmenter": 9153, "evaluator": 9154}
#: Jobs one replica runs at once: one per GPU for the GPU services.
DEFAULT_CONCURRENT_JOBS = {"orchestrator": 4, "compositor": 2, "gan": 1, "segmenter": 1, "evaluator": 2}
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Jobs a replica holds waiting for a slot before it answers RESOURCE_EXHAUSTED.
DEFAULT_MAX_QUEUED_JOBS = 64
#: Loopback unless told otherwise: nothing is exposed by accident.
DEFAULT_HOST = "127.0.0.1"
#: Seconds a server whose parent died gives its jobs to stop before it exits regardless.
PARENT_GONE_GRACE_SECONDS = 3.0

#: Every environment variable the runtime reads (deploy/ tests hold manifests to this list).
ENV_VARS = (
    "SYNTHAUG_HOST",
    "SYNTHAUG_PORT",
    "SYNTHAUG_METRICS_PORT",
    "SYNTHAUG_STORE",
    "SYNTHAUG_MAX_MESSAGE_BYTES",
    "SYNTHAUG_MAX_WORKERS",
    "SYNTHAUG_MAX_CONCURRENT_JOBS",
    "SYNTHAUG_GRACE_SECONDS",
    "SYNTHAUG_DRAIN_SECONDS",
    "SYNTHAUG_LOG_LEVEL",
    "SYNTHAUG_LOG_FORMAT",
    "SYNTHAUG_KEEP_FINISHED_JOBS",
    "SYNTHAUG_KEEP_FINISHED_JOBS_SECONDS",
    "SYNTHAUG_MAX_QUEUED_JOBS",
    "SYNTHAUG_HEALTH_PORT",
    "SYNTHAUG_PARENT_PID",
    *SERVER_ENV_VARS,
    *LIMIT_ENV_VARS,
)


@dataclass
class ServerConfig:
    service: str
    host: str = DEFAULT_HOST
    port: int = 0
    #: Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 disables it.
    metrics_port: int = -1
    store_url: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_workers: int = 16
    max_concurrent_jobs: int = 1
    #: Seconds in-flight RPCs get to finish on shutdown.
    grace_seconds: float = 30.0
    #: Seconds of NOT_SERVING before the listener closes, so load balancers stop routing.
    drain_seconds: float = 0.0
    log_level: str = "INFO"
    log_json: bool = True
    #: Finished jobs kept in memory (count, seconds); older ones answer from the store.
    keep_finished_jobs: int = 256
    keep_finished_jobs_seconds: float = 3600.0
    #: Jobs waiting for a slot before Submit* answers RESOURCE_EXHAUSTED; 0 = no bound.
    max_queued_jobs: int = DEFAULT_MAX_QUEUED_JOBS
    #: TLS, mutual TLS and the bearer token (default: none of them).
    security: ServerSecurity = field(default_factory=ServerSecurity)
    #: Port serving grpc.health.v1 alone, in plaintext, for probes that cannot do TLS; -1 = off.
    health_port: int = -1
    #: Bounds on epochs, batch size, counts and image size in Submit* requests.
    limits: RequestLimits = field(default_factory=RequestLimits)
    #: Stop when the process with this id is no longer our parent (set by the launcher).
    parent_pid: int | None = None
    #: Service-specific flags (added by `add_arguments`).
    extra: dict[str, Any] = field(default_factory=dict)


def _env_default(env: Mapping[str, str], name: str, default: Any, cast: Callable[[str], Any]) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise SystemExit(f"environment variable {name}={raw!r} is not a valid {cast.__name__}") from None


def parse_config(
    service: str,
    argv: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> ServerConfig:
    """Flags override environment variables, which override the service's defaults."""
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(prog=f"python -m services.{service}", description=f"synthaug {service} gRPC server")
    p.add_argument("--host", default=_env_default(env, "SYNTHAUG_HOST", DEFAULT_HOST, str),
                   help=f"bind address of gRPC and /metrics (default {DEFAULT_HOST}; 0.0.0.0 = every interface) [$SYNTHAUG_HOST]")
    p.add_argument("--port", type=int, default=_env_default(env, "SYNTHAUG_PORT", DEFAULT_PORTS.get(service, 0), int),
                   help="gRPC port, 0 = any free [$SYNTHAUG_PORT]")
    p.add_argument(
        "--metrics-port", type=int, default=_env_default(env, "SYNTHAUG_METRICS_PORT", DEFAULT_METRICS_PORTS.get(service, -1), int),
        help="Prometheus /metrics port; 0 = any free, -1 = off [$SYNTHAUG_METRICS_PORT]",
    )
    p.add_argument("--store", default=env.get("SYNTHAUG_STORE") or None,
                   help="object store URL: file://ROOT or s3://BUCKET?endpoint=HOST:PORT [$SYNTHAUG_STORE]")
    p.add_argument("--max-message-bytes", type=int, default=_env_default(env, "SYNTHAUG_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES, int))
    p.add_argument("--max-workers", type=int, default=_env_default(env, "SYNTHAUG_MAX_WORKERS", 16, int), help="RPC handler threads")
    p.add_argument(
        "--max-concurrent-jobs", type=int, default=_env_default(env, "SYNTHAUG_MAX_CONCURRENT_JOBS", DEFAULT_CONCURRENT_JOBS.get(service, 1), int)
    )
    p.add_argument("--grace-seconds", type=float, default=_env_default(env, "SYNTHAUG_GRACE_SECONDS", 30.0, float))
    p.add_argument("--drain-seconds", type=float, default=_env_default(env, "SYNTHAUG_DRAIN_SECONDS", 0.0, float))
    p.add_argument("--keep-finished-jobs", type=int, default=_env_default(env, "SYNTHAUG_KEEP_FINISHED_JOBS", 256, int),
                   help="finished jobs kept in memory; older ones answer from the store [$SYNTHAUG_KEEP_FINISHED_JOBS]")
    p.add_argument("--keep-finished-jobs-seconds", type=float, default=_env_default(env, "SYNTHAUG_KEEP_FINISHED_JOBS_SECONDS", 3600.0, float),
                   help="seconds a finished job stays in memory [$SYNTHAUG_KEEP_FINISHED_JOBS_SECONDS]")
    p.add_argument("--max-queued-jobs", type=int, default=_env_default(env, "SYNTHAUG_MAX_QUEUED_JOBS", DEFAULT_MAX_QUEUED_JOBS, int),
                   help="jobs waiting for a slot before Submit answers RESOURCE_EXHAUSTED; 0 = no bound [$SYNTHAUG_MAX_QUEUED_JOBS]")
    p.add_argument("--tls-cert", default=env.get("SYNTHAUG_TLS_CERT") or None,
                   help="server certificate (PEM); with --tls-key: serve TLS only [$SYNTHAUG_TLS_CERT]")
    p.add_argument("--tls-key", default=env.get("SYNTHAUG_TLS_KEY") or None, help="server private key (PEM) [$SYNTHAUG_TLS_KEY]")
    p.add_argument("--tls-client-ca", default=env.get("SYNTHAUG_TLS_CLIENT_CA") or None,
                   help="CA (PEM) that must have signed client certificates: mutual TLS [$SYNTHAUG_TLS_CLIENT_CA]")
    p.add_argument("--auth-token-file", default=None,
                   help="file holding the bearer token every RPC but health must carry [$SYNTHAUG_AUTH_TOKEN, else the file $SYNTHAUG_AUTH_TOKEN_FILE]")
    p.add_argument("--health-port", type=int, default=_env_default(env, "SYNTHAUG_HEALTH_PORT", -1, int),
                   help="also serve grpc.health.v1 alone, in plaintext, on this port (probes cannot do TLS); 0 = any free, -1 = off [$SYNTHAUG_HEALTH_PORT]")
    p.add_argument("--parent-pid", type=int, default=_env_default(env, "SYNTHAUG_PARENT_PID", None, int),
                   help="stop when this process is no longer our parent (set by the embedded launcher) [$SYNTHAUG_PARENT_PID]")
    p.add_argument("--log-level", default=_env_default(env, "SYNTHAUG_LOG_LEVEL", "INFO", str))
    p.add_argument("--log-format", choices=("json", "text"), default=_env_default(env, "SYNTHAUG_LOG_FORMAT", "json", str))
    if add_arguments is not None:
        add_arguments(p)
    ns = vars(p.parse_args(argv))
    token_file = ns.pop("auth_token_file")
    try:
        token = read_secret({"SYNTHAUG_AUTH_TOKEN_FILE": token_file}, "SYNTHAUG_AUTH_TOKEN") if token_file else read_secret(env, "SYNTHAUG_AUTH_TOKEN")
        security = ServerSecurity(cert_file=ns.pop("tls_cert") or None, key_file=ns.pop("tls_key") or None,
                                  client_ca_file=ns.pop("tls_client_ca") or None, token=token)
        limits = RequestLimits.from_env(env)
    except InvalidArgument as exc:
        raise SystemExit(f"{service}: {exc}") from None
    return ServerConfig(
        service=service,
        host=ns.pop("host"),
        port=ns.pop("port"),
        metrics_port=ns.pop("metrics_port"),
        store_url=ns.pop("store"),
        max_message_bytes=ns.pop("max_message_bytes"),
        max_workers=ns.pop("max_workers"),
        max_concurrent_jobs=ns.pop("max_concurrent_jobs"),
        grace_seconds=ns.pop("grace_seconds"),
        drain_seconds=ns.pop("drain_seconds"),
        log_level=ns.pop("log_level"),
        log_json=ns.pop("log_format") == "json",
        keep_finished_jobs=ns.pop("keep_finished_jobs"),
        keep_finished_jobs_seconds=ns.pop("keep_finished_jobs_seconds"),
        max_queued_jobs=ns.pop("max_queued_jobs"),
        security=security,
        health_port=ns.pop("health_port"),
        limits=limits,
        parent_pid=ns.pop("parent_pid"),
        extra=ns,
    )


class GrpcMetrics:
    """The go-grpc-prometheus metric names, so existing dashboards and alerts apply."""

    def __init__(self, registry: CollectorRegistry):
        self.started = Counter("grpc_server_started", "RPCs started on the server", ["grpc_service", "grpc_method"], registry=registry)
        self.handled = Counter("grpc_server_handled", "RPCs completed on the server", ["grpc_service", "grpc_method", "grpc_code"], registry=registry)
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "RPC handling time",
            ["grpc_service", "grpc_method"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
        )


def register_process_metrics(registry: CollectorRegistry) -> None:
    """CPU seconds, resident memory, open and maximum file descriptors, start time
    (process_*), the Python version (python_info) and garbage collection (python_gc_*): what
    prometheus_client's global registry carries, on the runtime's own registry (one per
    server, so several servers in one test process do not collide). The process metrics read
    /proc and are absent where there is none."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)


#: Reflection's stable service (grpcurl, Postman and other current clients ask it first);
#: grpcio-reflection serves v1alpha only (grpc/grpc#38576), and older clients ask that.
REFLECTION_V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_reflection_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Put grpc/reflection/v1/reflection.proto into `pool`, so reflection can describe its
    own v1 service. v1 is v1alpha under another package name, field for field, so the
    descriptor is v1alpha's with the package (and the type names that carry it) renamed."""
    try:
        pool.FindFileByName(_REFLECTION_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    alpha, v1 = proto.package, REFLECTION_V1_SERVICE.rpartition(".")[0]

    def renamed(type_name: str) -> str:
        return type_name.replace(f".{alpha}.", f".{v1}.")

    proto.name, proto.package = _REFLECTION_V1_FILE, v1
    proto.ClearField("options")
    for message in proto.message_type:
        for f in message.field:
            if f.HasField("type_name"):
                f.type_name = renamed(f.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = renamed(method.input_type), renamed(method.output_type)
    pool.AddSerializedFile(proto.SerializeToString())


def enable_reflection(server: grpc.Server, service_names: list[str]) -> None:
    """Serve reflection as grpc.reflection.v1 and v1alpha, both listing `service_names`, the
    health service and themselves. One servicer answers both: the two protocols' messages are
    the same on the wire, so v1 is the v1alpha servicer behind a handler of v1's name."""
    _add_reflection_v1_descriptor(descriptor_pool.Default())
    health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
    servicer = reflection.ReflectionServicer([*service_names, health_name, reflection.SERVICE_NAME, REFLECTION_V1_SERVICE])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    v1_handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1_SERVICE, {"ServerReflectionInfo": v1_handler}),))


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


#: What a caller without the right token is told (never whether the token was close).
UNAUTHENTICATED_MESSAGE = "missing or wrong bearer token: set SYNTHAUG_AUTH_TOKEN or SYNTHAUG_AUTH_TOKEN_FILE to this deployment's token"


class _ServerInterceptor(grpc.ServerInterceptor):
    """For every RPC of every service: checks the caller's token, admits Submit* requests
    (limits, queue bound), maps exceptions to status codes and records metrics."""

    def __init__(self, metrics: GrpcMetrics, service: str, security: ServerSecurity | None = None,
                 admit: Callable[[str, Any], None] | None = None):
        self.metrics = metrics
        self.service = service
        self.security = security or ServerSecurity()
        self.admit = admit

    def _status_for(self, exc: BaseException, method: str) -> tuple[grpc.StatusCode, str]:
        """The status an exception maps to; unexpected ones are logged with their traceback."""
        if isinstance(exc, SynthaugError):
            return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL), str(exc)
        ref = uuid.uuid4().hex[:12]
        log.error("%s failed (ref %s)", method, ref, exc_info=exc, extra={"service": self.service, "method": method})
        return grpc.StatusCode.INTERNAL, f"internal error in {self.service} (ref {ref}; details in the server log)"

    @staticmethod
    def _code_of(context: grpc.ServicerContext) -> str:
        code = context.code() if hasattr(context, "code") else None
        return code.name if isinstance(code, grpc.StatusCode) else "OK"

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        grpc_service, grpc_method = _split_method(details.method)
        metrics = self.metrics
        authorized = self.security.authorized(details.method, details.invocation_metadata)
        admit = self.admit if grpc_method.startswith("Submit") else None

        def record(code: str, start: float) -> None:
            metrics.handled.labels(grpc_service, grpc_method, code).inc()
            metrics.seconds.labels(grpc_service, grpc_method).observe(time.perf_counter() - start)

        def fail(context: grpc.ServicerContext, exc: Exception, start: float) -> None:
            """The one error path of every RPC shape: record the code, abort with its status."""
            if self._code_of(context) != "OK":  # the handler called context.abort() itself
                record(self._code_of(context), start)
                raise exc
            status, message = self._status_for(exc, details.method)
            record(status.name, start)
            context.abort(status, message)

        def refuse(context: grpc.ServicerContext, start: float) -> None:
            record("UNAUTHENTICATED", start)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)

        def wrap_unary(behavior: Callable[..., Any], unary_request: bool) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                metrics.started.labels(grpc_service, grpc_method).inc()
                start = time.perf_counter()
                if not authorized:
                    refuse(context, start)
                try:
                    if admit is not None and unary_request:
                        admit(grpc_method, request)
                    response = behavior(request, context)
                except Exception as exc:
                    fail(context, exc, start)
                record(self._code_of(context), start)
                return response

            return wrapped

        def wrap_stream(behavior: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                metrics.started.labels(grpc_service, grpc_method).inc()
                start = time.perf_counter()
                if not authorized:
                    refuse(context, start)
                try:
                    yield from behavior(request, context)
                except GeneratorExit:  # the client went away
                    record("CANCELLED", start)
                    raise
                except Exception as exc:
                    fail(context, exc, start)
                record(self._code_of(context), start)

            return wrapped

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary, True), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary, False), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


class ServiceRuntime:
    """A configured gRPC server with health, reflection, metrics, a store and a job manager."""

    def __init__(self, config: ServerConfig, store: ObjectStore | None = None):
        self.config = config
        self.service = config.service
        self.store = store if store is not None else open_store(config.store_url)
        self.registry = CollectorRegistry()
        register_process_metrics(self.registry)
        self.metrics = GrpcMetrics(self.registry)
        self.jobs = JobManager(self.store, config.service, config.max_concurrent_jobs, registry=self.registry,
                               retention=Retention(config.keep_finished_jobs, config.keep_finished_jobs_seconds))
        options = [
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
            # Clients keep long job streams alive with pings (client.KEEPALIVE_MS); accept them.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_ping_strikes", 0),
        ]
        self.limits = config.limits
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{config.service}-rpc"),
            interceptors=[_ServerInterceptor(self.metrics, config.service, config.security, self.admit)],
            options=options,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # Health alone, in plaintext, for probes that cannot do TLS (the same servicer: one truth).
        self._health_server: grpc.Server | None = None
        if config.health_port >= 0:
            self._health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{config.service}-health"))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        self.health_port: int | None = None
        self._service_names: list[str] = []
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []

    def admit(self, method: str, request: Any) -> None:
        """Called with every Submit* request before its handler: InvalidArgument when a setting
        is over the deployment's limits, ResourceExhausted while the job queue is full."""
        self.limits.check_request(request, f"{method} request")
        bound = self.config.max_queued_jobs
        if bound > 0:
            queued = self.registry.get_sample_value("synthaug_jobs_queued", {"service": self.service}) or 0.0
            if queued >= bound:
                raise ResourceExhausted(f"{self.service} has {int(queued)} jobs queued, its limit (SYNTHAUG_MAX_QUEUED_JOBS={bound}); "
                                        "retry later or on another replica")

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Run `callback` while stopping, after jobs stop and before the listener closes."""
        self._on_stop.append(callback)

    def add(self, add_servicer: Callable[[Any, grpc.Server], None], servicer: Any, full_service_name: str) -> None:
        add_servicer(servicer, self.server)
        self._service_names.append(full_service_name)
        self.health.set(full_service_name, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _set_health(self, status: int) -> None:
        self.health.set("", status)
        for name in self._service_names:
            self.health.set(name, status)

    def start(self, ready: bool = True) -> int:
        """Bind and serve; health is SERVING only when `ready` (or after mark_ready())."""
        enable_reflection(self.server, self._service_names)
        address = f"{self.config.host}:{self.config.port}"
        try:
            credentials = self.config.security.credentials()
        except InvalidArgument as exc:
            raise SystemExit(f"{self.service}: {exc}") from None
        self.port = self.server.add_insecure_port(address) if credentials is None else self.server.add_secure_port(address, credentials)
        if self.port == 0:
            raise SystemExit(f"cannot bind gRPC port {address}")
        self.server.start()
        if self._health_server is not None:
            health_address = f"{self.config.host}:{self.config.health_port}"
            self.health_port = self._health_server.add_insecure_port(health_address)
            if self.health_port == 0:
                raise SystemExit(f"cannot bind health port {health_address}")
            self._health_server.start()
        if self.config.metrics_port >= 0:
            server, _thread = start_http_server(self.config.metrics_port, addr=self.config.host, registry=self.registry)
            self._metrics_server = server
            self.metrics_port = server.server_port
        log.info("%s listening on %s:%d (%s; metrics %s; health port %s)", self.service, self.config.host, self.port,
                 self.config.security.describe(), self.metrics_port, self.health_port, extra={"service": self.service})
        if ready:
            self.mark_ready()
        return self.port

    def mark_ready(self) -> None:
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING, wait drain_seconds, stop jobs, then close with a grace period."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            log.info("%s draining", self.service, extra={"service": self.service})
            if self.config.drain_seconds > 0:
                time.sleep(self.config.drain_seconds)
            grace = self.config.grace_seconds if grace is None else grace
            self.jobs.shutdown(timeout=grace)
            for callback in self._on_stop:
                try:
                    callback()
                except Exception:  # keep stopping: one failed hook must not leave the port open
                    log.exception("%s: stop hook failed", self.service)
            self.server.stop(grace).wait()
            if self._health_server is not None:
                self._health_server.stop(0).wait()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
            self._stopped.set()
            log.info("%s stopped", self.service, extra={"service": self.service})

    def wait(self) -> None:
        """Block until stopped; SIGTERM / SIGINT trigger a graceful stop (main thread only)."""
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, _frame: Any) -> None:
                log.info("%s received %s", self.service, signal.Signals(signum).name, extra={"service": self.service})
                threading.Thread(target=self.stop, name="shutdown", daemon=True).start()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        self._stopped.wait()

    def exit_with_parent(self, parent_pid: int, interval: float = 0.5) -> threading.Thread:
        """Stop, then exit the process, once `parent_pid` is no longer our parent.

        For servers another process started (the embedded launcher): when it dies, even by
        SIGKILL, we are re-parented and notice within `interval`. Jobs get a short grace to
        stop at a checkpoint (they resume when submitted again); then the process exits even
        if one of them ignores cancellation, and takes its own worker processes (DataLoader
        workers) along when it leads its process group, as the launcher arranges.
        os.getppid() is polled rather than PR_SET_PDEATHSIG used, because that signal follows
        the *thread* that started us: an orchestrator that launches services from a run's
        worker thread would lose them when that thread ends."""

        def exit_now(code: int) -> None:
            logging.shutdown()
            if os.getpgrp() == os.getpid():  # our own process group: nothing of ours stays behind
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(code)

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(interval)
            log.warning("%s: parent process %d is gone; stopping", self.service, parent_pid, extra={"service": self.service})
            grace = min(self.config.grace_seconds, PARENT_GONE_GRACE_SECONDS)
            deadline = threading.Timer(2 * grace + 1.0, exit_now, args=(1,))  # a job that ignores cancellation
            deadline.daemon = True
            deadline.start()
            self.stop(grace=grace)
            exit_now(0)  # job threads still winding down must not keep us alive

        thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
        thread.start()
        return thread


def serve(
    build: Callable[[ServerConfig], ServiceRuntime],
    service: str,
    argv: list[str] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """The body of every server's main(): config, logging, build, start, wait for SIGTERM."""
    config = parse_config(service, argv, add_arguments=add_arguments)
    configure_logging(config.log_level, config.log_json)
    runtime = build(config)
    if config.parent_pid is not None:
        runtime.exit_with_parent(config.parent_pid)
    runtime.start()
    runtime.wait()
    return 0
