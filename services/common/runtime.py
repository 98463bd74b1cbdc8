"""The gRPC runtime every synthaug server runs on.

One place for what each service would otherwise get slightly different: health
(NOT_SERVING → SERVING when ready → NOT_SERVING while draining), reflection, Prometheus
metrics with a /metrics port, the exception → status mapping (clients never see a
traceback), message-size limits, SIGTERM graceful shutdown, and configuration from flags
and environment.
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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from services.common.errors import SynthaugError
from services.common.events import Retention
from services.common.jobs import JobManager
from services.common.logs import configure_logging
from services.common.store import ObjectStore, open_store

log = logging.getLogger(__name__)

#: gRPC and /metrics ports of each service; deploy/ is held to these by tests.
DEFAULT_PORTS = {"orchestrator": 50050, "compositor": 50051, "gan": 50052, "segmenter": 50053, "evaluator": 50054}
DEFAULT_METRICS_PORTS = {"orchestrator": 9150, "compositor": 9151, "gan": 9152, "segmenter": 9153, "evaluator": 9154}
#: Jobs one replica runs at once: one per GPU for the GPU services.
DEFAULT_CONCURRENT_JOBS = {"orchestrator": 4, "compositor": 2, "gan": 1, "segmenter": 1, "evaluator": 2}
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

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
)


@dataclass
class ServerConfig:
    service: str
    host: str = "0.0.0.0"
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
    p.add_argument("--host", default=_env_default(env, "SYNTHAUG_HOST", "0.0.0.0", str), help="bind address [$SYNTHAUG_HOST]")
    p.add_argument("--port", type=int, default=_env_default(env, "SYNTHAUG_PORT", DEFAULT_PORTS.get(service, 0), int), help="gRPC port, 0 = any free [$SYNTHAUG_PORT]")
    p.add_argument(
        "--metrics-port", type=int, default=_env_default(env, "SYNTHAUG_METRICS_PORT", DEFAULT_METRICS_PORTS.get(service, -1), int),
        help="Prometheus /metrics port; 0 = any free, -1 = off [$SYNTHAUG_METRICS_PORT]",
    )
    p.add_argument("--store", default=env.get("SYNTHAUG_STORE") or None, help="object store URL: file://ROOT or s3://BUCKET?endpoint=HOST:PORT [$SYNTHAUG_STORE]")
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
    p.add_argument("--log-level", default=_env_default(env, "SYNTHAUG_LOG_LEVEL", "INFO", str))
    p.add_argument("--log-format", choices=("json", "text"), default=_env_default(env, "SYNTHAUG_LOG_FORMAT", "json", str))
    if add_arguments is not None:
        add_arguments(p)
    ns = vars(p.parse_args(argv))
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


def _split_method(full: str) -> tuple[str, str]:
    service, _, method = full.lstrip("/").partition("/")
    return service, method


class _ServerInterceptor(grpc.ServerInterceptor):
    """Maps exceptions to status codes and records metrics, for every RPC of every service."""

    def __init__(self, metrics: GrpcMetrics, service: str):
        self.metrics = metrics
        self.service = service

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

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None], details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        grpc_service, grpc_method = _split_method(details.method)
        metrics = self.metrics

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

        def wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
            def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
                metrics.started.labels(grpc_service, grpc_method).inc()
                start = time.perf_counter()
                try:
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
            return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


class ServiceRuntime:
    """A configured gRPC server with health, reflection, metrics, a store and a job manager."""

    def __init__(self, config: ServerConfig, store: ObjectStore | None = None):
        self.config = config
        self.service = config.service
        self.store = store if store is not None else open_store(config.store_url)
        self.registry = CollectorRegistry()
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
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix=f"{config.service}-rpc"),
            interceptors=[_ServerInterceptor(self.metrics, config.service)],
            options=options,
        )
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_server: Any = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._on_stop: list[Callable[[], None]] = []

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
        reflection.enable_server_reflection([*self._service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], self.server)
        address = f"{self.config.host}:{self.config.port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise SystemExit(f"cannot bind gRPC port {address}")
        self.server.start()
        if self.config.metrics_port >= 0:
            server, _thread = start_http_server(self.config.metrics_port, addr=self.config.host, registry=self.registry)
            self._metrics_server = server
            self.metrics_port = server.server_port
        log.info("%s listening on %s:%d (metrics %s)", self.service, self.config.host, self.port, self.metrics_port, extra={"service": self.service})
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


def serve(build: Callable[[ServerConfig], ServiceRuntime], service: str, argv: list[str] | None = None, add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The body of every server's main(): config, logging, build, start, wait for SIGTERM."""
    config = parse_config(service, argv, add_arguments=add_arguments)
    configure_logging(config.log_level, config.log_json)
    runtime = build(config)
    runtime.start()
    runtime.wait()
    return 0
