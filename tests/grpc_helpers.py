"""Start real servers on loopback for tests."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import grpc

from services.common.client import open_channel, wait_until_serving
from services.common.runtime import ServerConfig, ServiceRuntime
from services.common.store import ObjectStore


def loopback_config(service: str, **overrides: object) -> ServerConfig:
    """Loopback, any free port, metrics on a free port, short grace."""
    cfg = ServerConfig(service=service, host="127.0.0.1", port=0, metrics_port=0, grace_seconds=5.0, max_concurrent_jobs=2, log_json=False)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@contextlib.contextmanager
def running_server(
    build: Callable[[ServerConfig, ObjectStore], ServiceRuntime],
    service: str,
    store: ObjectStore,
    **overrides: object,
) -> Iterator[tuple[ServiceRuntime, grpc.Channel]]:
    """A started server and a channel to it; stopped (and the channel closed) afterwards."""
    runtime = build(loopback_config(service, **overrides), store)
    port = runtime.start()
    channel = open_channel(f"127.0.0.1:{port}")
    try:
        wait_until_serving(channel, timeout=30)
        yield runtime, channel
    finally:
        channel.close()
        runtime.stop(grace=1.0)
