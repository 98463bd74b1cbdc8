"""The CPU image, built and run for real. Opt-in: SYNTHAUG_TEST_IMAGES=1 (skipped otherwise).

    SYNTHAUG_TEST_IMAGES=1 .venv/bin/python -m pytest -q tests/integration/test_images.py

Needs docker or podman (scripts/container-engine.sh picks one) and, the first time, root and
debootstrap to build the local base image (scripts/build-base-image.sh): about 3 minutes for
the base and 3 for the image on a 2-core machine, seconds once cached. It builds
synthaug/compositor:VERSION with scripts/build-images.sh, exactly as `make images` does, and
runs it as compose and Kubernetes do: read-only root filesystem, /tmp a tmpfs, every
capability dropped, as the image's own user. Then: health SERVING (also through the image's
own healthcheck script), /metrics with RPC and process metrics, no torch in the image, and
SIGTERM → "stopped" and exit 0 within the grace period, not a SIGKILL at its end.

The container shares the host's network (no port publishing, which rootless or sandboxed
engines may lack) and binds 127.0.0.1 on free ports, so nothing is reachable from outside.
"""
from __future__ import annotations

import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from services.common.client import health_status, open_channel, wait_until_serving
from tests.conftest import free_port

pytestmark = pytest.mark.skipif(os.environ.get("SYNTHAUG_TEST_IMAGES") != "1",
                                reason="builds and runs container images: opt in with SYNTHAUG_TEST_IMAGES=1")

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
SERVICE = "compositor"
#: Seconds the server gets to stop after SIGTERM before the engine kills it.
GRACE_SECONDS = 20
#: A CPU image with torch (let alone CUDA's libraries) would be several times this.
MAX_IMAGE_BYTES = 1_000_000_000
BUILD_TIMEOUT_SECONDS = 3600


def engine_output(*args: str) -> str:
    proc = subprocess.run([str(SCRIPTS / "container-engine.sh"), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_cpu_image_builds_and_serves_read_only_as_uid_1000() -> None:
    engine = engine_output("name").strip()
    run_flags = engine_output("run-flags").split()
    image = f"synthaug/{SERVICE}:{version()}"

    build = subprocess.run([str(SCRIPTS / "build-images.sh"), SERVICE], cwd=ROOT, capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_SECONDS)
    assert build.returncode == 0, f"build-images.sh {SERVICE} failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    size = int(subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True,
                              check=True, timeout=60).stdout.strip())
    assert size < MAX_IMAGE_BYTES, f"{image} is {size / 1e6:.0f} MB"

    port, metrics_port = free_port(), free_port()
    name = f"synthaug-image-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [engine, "run", "--detach", "--name", name, *run_flags, "--network", "host",
         "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "--env", "SYNTHAUG_HOST=127.0.0.1", "--env", f"SYNTHAUG_PORT={port}", "--env", f"SYNTHAUG_METRICS_PORT={metrics_port}",
         "--env", "SYNTHAUG_STORE=file:///tmp/store", "--env", f"SYNTHAUG_GRACE_SECONDS={GRACE_SECONDS // 2}",
         image],
        check=True, capture_output=True, timeout=120,
    )

    def in_container(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([engine, "exec", name, *command], capture_output=True, text=True, timeout=60)

    channel = open_channel(f"127.0.0.1:{port}")
    try:
        wait_until_serving(channel, timeout=120)
        assert health_status(channel) == "SERVING"
        assert health_status(channel, "synthaug.v1.CompositorService") == "SERVING"
        # The image's own health check (what compose's healthcheck runs) agrees.
        check = in_container("python", "/opt/synthaug/healthcheck.py", str(port))
        assert check.returncode == 0, check.stderr
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        for metric in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "grpc_server_started_total"):
            assert metric in body, f"/metrics lacks {metric}"
        # Who and what runs: the image's non-root user, no torch, a root filesystem that refuses writes.
        assert in_container("id", "-u").stdout.strip() == "1000"
        no_torch = in_container("python", "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)")
        assert no_torch.returncode == 0, "the CPU image carries torch"
        assert in_container("touch", "/opt/venv/written").returncode != 0
        assert in_container("touch", "/tmp/written").returncode == 0

        stop = subprocess.run([engine, "stop", "--time", str(GRACE_SECONDS), name], capture_output=True, text=True, timeout=GRACE_SECONDS + 60)
        assert stop.returncode == 0, stop.stderr
        exit_code = subprocess.run([engine, "inspect", "--format", "{{.State.ExitCode}}", name], capture_output=True, text=True,
                                   check=True, timeout=60).stdout.strip()
        logs = subprocess.run([engine, "logs", name], capture_output=True, text=True, timeout=60)
        assert exit_code == "0", f"exit code {exit_code} after SIGTERM (137: killed at the end of the grace):\n{logs.stderr[-2000:]}"
        assert f'"message": "{SERVICE} stopped"' in logs.stdout + logs.stderr
    finally:
        channel.close()
        subprocess.run([engine, "rm", "--force", name], capture_output=True, timeout=120)
