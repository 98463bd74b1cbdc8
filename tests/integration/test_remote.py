"""The README's compose sequence against loopback processes: the four services and an
orchestrator (`python -m orchestrator`), every RPC behind a bearer token, one file:// store
behind them. The user's side has no access to that store, as with compose: data is imported
into a local store and pushed through the orchestrator, the plan run, runs listed (a running
one too) and the report fetched, all with `synthaug … --orchestrator ADDR`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from orchestrator.cli import main
from orchestrator.launcher import EmbeddedServices, start_embedded, wait_serving
from services.common.client import open_channel
from services.common.datasets import registered_id
from services.common.security import ClientSecurity
from services.common.store import FileStore
from synthaug.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from tests.conftest import free_port
from tests.integration.conftest import tiny_plan

TOKEN = "remote-sequence-token"


@pytest.fixture()
def deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FileStore]]:
    """The orchestrator's address and its (server-side) store."""
    monkeypatch.setenv("SYNTHAUG_AUTH_TOKEN", TOKEN)  # the services, the orchestrator and the CLI
    store = FileStore(tmp_path / "server-store")
    services: EmbeddedServices = start_embedded(store.url, tmp_path / "logs")
    spec = ";".join(f"{name}={','.join(addrs)}" for name, addrs in services.addresses.items())
    port = free_port()
    log_path = tmp_path / "logs" / "orchestrator.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1", "--store", store.url,
             "--services", spec, "--max-parallel-steps", "4", "--parent-pid", str(os.getpid()), "--log-format", "text"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    address = f"127.0.0.1:{port}"
    try:
        wait_serving("orchestrator", proc, address, log_path, timeout=120, security=ClientSecurity(token=TOKEN))
        yield address, store
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        services.stop()


def wait_for_a_running_step(address: str, run_id: str, timeout: float = 300.0) -> None:
    """Until the orchestrator reports a step of `run_id` running (the CLI submits it)."""
    channel = open_channel(address)
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                status = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=run_id), timeout=10)
                if status.state == common_pb2.JOB_STATE_RUNNING and any(s.state == common_pb2.JOB_STATE_RUNNING for s in status.steps):
                    return
            except Exception:  # not submitted yet
                pass
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} never had a running step")
    finally:
        channel.close()


@pytest.mark.slow
def test_import_push_run_status_report_through_the_orchestrator(
    deployment: tuple[str, FileStore], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, server_store = deployment
    local = f"file://{tmp_path}/local-store"

    # 1. Import on the user's machine, then send the dataset through the orchestrator.
    assert main(["dataset", "demo", "--count", "24", "--seed", "3", "--size", "64", "--out", str(tmp_path / "data")]) == 0
    assert main(["import", "masks", "--images", str(tmp_path / "data" / "images"), "--masks", str(tmp_path / "data" / "masks"),
                 "--mask-type", "instance", "--size", "keep", "--split", "0.5,0.25,0.25", "--name", "lesions", "--store", local]) == 0
    capsys.readouterr()
    assert main(["dataset", "push", "lesions", "--orchestrator", address, "--store", local]) == 0
    assert "pushed dataset" in capsys.readouterr().out
    assert registered_id(server_store, "lesions") is not None

    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(tiny_plan(name="remote-seq", dataset={"name": "lesions"}, split={"existing": True},
                                             arms=[{"name": "real", "real": 8}])))
    # A plan the orchestrator refuses exits 2 (the caller's to fix), naming the problem.
    too_many = tmp_path / "too-many.yaml"
    too_many.write_text(yaml.safe_dump(tiny_plan(name="too-many", dataset={"name": "lesions"}, split={"existing": True},
                                                 arms=[{"name": "real", "real": 500}])))
    assert main(["run", str(too_many), "--orchestrator", address]) == 2
    assert "500" in capsys.readouterr().err

    # 2. Run; while it runs, `status` lists it as running.
    assert main(["run", str(plan), "--orchestrator", address, "--dry-run"]) == 0
    run_id = capsys.readouterr().out.split("run ", 1)[1].split()[0]
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(main(["run", str(plan), "--orchestrator", address])))
    runner.start()
    try:
        wait_for_a_running_step(address, run_id)
        assert main(["status", "--orchestrator", address]) == 0
    finally:
        runner.join(timeout=900)
    assert codes == [0]
    out = capsys.readouterr().out
    (listed,) = [line for line in out.splitlines() if run_id in line and "remote-seq" in line and "(plan" not in line]
    assert "running" in listed and "remote-seq" in listed
    assert f"run {run_id} (plan remote-seq) on {address}" in out
    # Not a terminal: plain progress lines as steps start and end, then the results table.
    assert any("started  train" in line for line in out.splitlines()) and any("done     train" in line for line in out.splitlines())
    assert f"run {run_id}: succeeded" in out and "Results (means over seeds" in out

    # 3. The list, the report.
    assert main(["status", "--orchestrator", address]) == 0
    (listed,) = [line for line in capsys.readouterr().out.splitlines() if run_id in line]
    assert "succeeded" in listed
    out_dir = tmp_path / "report"
    assert main(["report", run_id, "--orchestrator", address, "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert (out_dir / "index.html").is_file() and (out_dir / "results.csv").is_file()
    assert "<img" in (out_dir / "index.html").read_text() and f"report: {out_dir / 'index.html'}" in printed
    served = sorted(k.rsplit("/", 1)[1] for k in server_store.list(f"runs/{run_id}/report/"))
    assert sorted(p.name for p in out_dir.rglob("*") if p.is_file()) == served

    # 4. Without the token the orchestrator refuses, and the CLI says which setting to check.
    monkeypatch.delenv("SYNTHAUG_AUTH_TOKEN")
    assert main(["status", "--orchestrator", address]) == 1
    assert "SYNTHAUG_AUTH_TOKEN" in capsys.readouterr().err
