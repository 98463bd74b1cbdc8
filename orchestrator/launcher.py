"""Embedded mode: start the four services as local processes on loopback ports.

Real gRPC and real processes, no containers: what runs on a laptop is what runs in a
cluster. Each service logs to its own file; a service that dies on start-up is reported with
the end of its log.

Nothing outlives the process that started it: each service gets --parent-pid and stops by
itself once that process is gone (even after SIGKILL; see ServiceRuntime.exit_with_parent);
`EmbeddedServices.stop` is the graceful path (Ctrl-C and SIGTERM of the CLI end there). Each
service leads its own process group, so a terminal's Ctrl-C reaches the CLI alone. The services bind 127.0.0.1 and speak
plaintext (TLS settings meant for remote servers are not passed on); a bearer token in the
environment (SYNTHAUG_AUTH_TOKEN[_FILE]) is passed on and `security` sends it.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.settings import SERVICES
from services.common.client import health_status, open_channel
from services.common.errors import SynthaugError
from services.common.security import SERVER_ENV_VARS, ClientSecurity
from services.common.store import read_secret

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_security(env: dict[str, str] | None = None) -> ClientSecurity:
    """How this process reaches the services it starts: plaintext on loopback, with the
    bearer token of `env` (default os.environ) if one is set there."""
    return ClientSecurity(token=read_secret(os.environ if env is None else env, "SYNTHAUG_AUTH_TOKEN"))


@dataclass
class EmbeddedServices:
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    log_dir: Path = Path(".")
    #: How to reach them (for the Dispatcher): plaintext, with the token they were given.
    security: ClientSecurity = field(default_factory=embedded_security)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every service (graceful: jobs stop at a checkpoint), then wait."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for name, proc in self.processes.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()

    def __enter__(self) -> EmbeddedServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def service_env(extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an embedded service: ours, less the server TLS settings (they are
    for servers others reach; an embedded one is on loopback and reached by us alone), plus
    `extra_env`."""
    tls_only = set(SERVER_ENV_VARS) - {"SYNTHAUG_AUTH_TOKEN", "SYNTHAUG_AUTH_TOKEN_FILE"}
    return {**{k: v for k, v in os.environ.items() if k not in tls_only}, **(extra_env or {})}


def start_service(name: str, store_url: str, log_dir: Path, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    env = service_env(extra_env)
    cmd = [sys.executable, "-m", f"services.{name}", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1", "--store", store_url,
           "--parent-pid", str(os.getpid())]
    with open(log_path, "ab") as logf:
        # Its own process group: the terminal's Ctrl-C reaches the CLI alone, which stops the
        # services in order (EmbeddedServices.stop); and a service whose parent died can end
        # its whole group, worker processes included.
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"127.0.0.1:{port}"


def wait_serving(name: str, proc: subprocess.Popen[bytes], address: str, log_path: Path, timeout: float,
                 security: ClientSecurity | None = None) -> None:
    channel = open_channel(address, security=embedded_security() if security is None else security)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise SynthaugError(f"{name} exited with code {proc.returncode} on start-up; end of {log_path}:\n{_tail(log_path)}")
            try:
                if health_status(channel, timeout=1.0) == "SERVING":
                    return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise SynthaugError(f"{name} not SERVING after {timeout:.0f} s; end of {log_path}:\n{_tail(log_path)}")
            time.sleep(0.2)
    finally:
        channel.close()


def start_embedded(store_url: str, log_dir: str | Path, services: tuple[str, ...] = SERVICES, timeout: float = 180.0) -> EmbeddedServices:
    """Start `services` and wait until every one is SERVING."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    embedded = EmbeddedServices(log_dir=log_dir)
    for name in services:
        proc, address = start_service(name, store_url, log_dir)
        embedded.processes[name] = proc
        embedded.addresses[name] = [address]
    try:
        with ThreadPoolExecutor(len(services)) as pool:
            list(pool.map(lambda n: wait_serving(n, embedded.processes[n], embedded.addresses[n][0], log_dir / f"{n}.log", timeout,
                                                 embedded.security), services))
    except BaseException:
        embedded.stop(timeout=10)
        raise
    log.info("embedded services up: %s", {k: v[0] for k, v in embedded.addresses.items()})
    return embedded
