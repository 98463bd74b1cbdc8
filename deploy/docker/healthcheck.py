"""Container health check: exit 0 when the local gRPC server reports SERVING, else 1.

Docker and compose healthchecks run this inside the container (Kubernetes uses its native
`grpc:` probes instead). It asks grpc.health.v1 for the whole server (service ""), which
every synthaug server sets NOT_SERVING until it is ready and again while it drains, so a
draining replica turns unhealthy before it closes its port. Only grpc and grpc_health,
which every image installs, are imported: the check starts fast and downloads nothing.

Health needs no bearer token (services/common/security.py). A TLS server is checked on
its plaintext health-only port, $SYNTHAUG_HEALTH_PORT (deploy/ sets it wherever TLS is on),
so the check needs no certificate.

Usage: python healthcheck.py [PORT | HOST:PORT]   (default 127.0.0.1:$SYNTHAUG_PORT)
"""
from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def target_from(argv: list[str], env: dict[str, str]) -> str:
    """HOST:PORT to check: the argument (a bare port means 127.0.0.1), else $SYNTHAUG_PORT;
    $SYNTHAUG_HEALTH_PORT, the plaintext health-only port, replaces the port when set."""
    value = argv[0] if argv else env.get("SYNTHAUG_PORT", "")
    if not value:
        raise SystemExit("healthcheck: give PORT or HOST:PORT, or set SYNTHAUG_PORT")
    target = value if ":" in value else f"127.0.0.1:{value}"
    health_port = env.get("SYNTHAUG_HEALTH_PORT", "")
    if health_port.isdigit() and int(health_port) > 0:
        target = f"{target.rpartition(':')[0]}:{health_port}"
    return target


def check(target: str, timeout: float = TIMEOUT_SECONDS) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"healthcheck: {target}: {exc.code().name}", file=sys.stderr)
            return False
    serving = response.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"healthcheck: {target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)}", file=sys.stderr)
    return serving


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return 0 if check(target_from(argv, dict(os.environ))) else 1


if __name__ == "__main__":
    sys.exit(main())
