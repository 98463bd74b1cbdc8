"""No orphans: killing `synthaug run` never leaves its embedded services running.

Real processes throughout: the CLI runs a tiny plan in embedded mode (it starts the four
services itself) and is killed while the segmenter trains. The services of that run are found
by their command line, which names the run's own store.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.conftest import REPO
from tests.integration.conftest import tiny_plan

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds processes through /proc")]

#: How long the services of a killed CLI may take to go (the issue's bound).
GONE_WITHIN_SECONDS = 10.0


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped yet, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def service_processes(store_root: Path) -> dict[int, str]:
    """pid → module of every live `python -m services.<name>` process serving this store
    (their DataLoader workers included: they share the command line)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        modules = [a for a in argv if a.startswith("services.")]
        if modules and any(str(store_root) in a for a in argv) and _alive(int(entry.name)):
            found[int(entry.name)] = modules[0]
    return found


def _segmenter_job_submitted(store_root: Path) -> bool:
    for job in store_root.glob("jobs/*/job.json"):
        try:
            if '"segmenter"' in job.read_text():
                return True
        except OSError:
            continue
    return False


@pytest.fixture()
def cli_mid_training(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, dict[int, str]]]:
    """`synthaug run` of a plan whose training takes far longer than the test, once the
    segmenter has its training job; with the service processes of that run."""
    store_root = tmp_path / "store"
    plan = tiny_plan(arms=[{"name": "real", "real": 8}],
                     segmenter={"config": {"architecture": "maskrcnn_resnet18_fpn", "batch_size": 2, "lr": 0.01},
                                "budget": {"iterations": 1_000_000}})
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(yaml.safe_dump(plan))
    stderr = open(tmp_path / "cli.stderr", "w+")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "run", str(plan_file), "--store", f"file://{store_root}", "--no-progress"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 300
        while not _segmenter_job_submitted(store_root):
            if proc.poll() is not None:
                stderr.seek(0)
                pytest.fail(f"synthaug run exited with {proc.returncode} before training started:\n{stderr.read()}")
            assert time.monotonic() < deadline, "the segmenter got no training job within 300 s"
            time.sleep(0.5)
        time.sleep(2.0)  # into the training loop
        services = service_processes(store_root)
        assert sorted(set(services.values())) == ["services.compositor", "services.evaluator", "services.gan", "services.segmenter"]
        yield proc, store_root, services
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in service_processes(store_root):  # never leave anything behind, whatever failed
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stderr.close()


def _wait_gone(store_root: Path) -> dict[int, str]:
    deadline = time.monotonic() + GONE_WITHIN_SECONDS
    while (left := service_processes(store_root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_sigkill_of_the_cli_mid_training_leaves_no_service_running(cli_mid_training: tuple[subprocess.Popen[str], Path, dict[int, str]]) -> None:
    proc, store_root, _services = cli_mid_training
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    left = _wait_gone(store_root)
    assert not left, f"still running {GONE_WITHIN_SECONDS:.0f} s after the CLI was killed: {left}"


def test_sigterm_of_the_cli_cancels_stops_the_services_and_exits_nonzero(cli_mid_training: tuple[subprocess.Popen[str], Path, dict[int, str]], tmp_path: Path) -> None:
    proc, store_root, _services = cli_mid_training
    proc.send_signal(signal.SIGTERM)
    returncode = proc.wait(timeout=120)  # the clean-up waits for the services to stop
    assert returncode == 128 + signal.SIGTERM
    assert "synthaug: terminated" in (tmp_path / "cli.stderr").read_text()
    assert not _wait_gone(store_root), "the CLI exited before its services stopped"
