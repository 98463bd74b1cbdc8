"""OrchestratorService over real loopback gRPC and real stores, without the four services:
listing runs, fetching reports, pushing datasets, recompute in SubmitPlan."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import grpc
import pytest
import yaml

from ingest.demo_data import DemoConfig, register_demo
from ingest.importers.pipeline import ImportOptions
from orchestrator.server import build as build_orchestrator
from orchestrator.transfer import CHUNK_BYTES, chunks_of, collect, dataset_chunks, write_report
from services.common.datasets import Dataset, manifest_key, registered_id
from services.common.store import FileStore
from synthaug.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from tests.grpc_helpers import running_server
from tests.integration.conftest import tiny_plan
from tests.run_records import recorded_run

S = common_pb2


@pytest.fixture()
def orchestrator(tmp_path: Path) -> Iterator[tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub]]:
    store = FileStore(tmp_path / "remote-store")
    with running_server(build_orchestrator, "orchestrator", store) as (_runtime, channel):
        yield store, orchestrator_pb2_grpc.OrchestratorServiceStub(channel)


def test_list_runs_newest_first_with_running_ones(orchestrator: tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub]) -> None:
    store, stub = orchestrator
    assert list(stub.ListRuns(orchestrator_pb2.ListRunsRequest()).runs) == []
    first = recorded_run(store, "first", started=1_000.0, finished=True)
    second = recorded_run(store, "second", started=2_000.0, finished=False, done_steps=1)
    # A dry run is nothing to list.
    stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=yaml.safe_dump(tiny_plan(name="dry")), dry_run=True))
    runs = list(stub.ListRuns(orchestrator_pb2.ListRunsRequest()).runs)
    assert [(r.run.id, r.run.plan_name, r.state) for r in runs] == [(second, "second", S.JOB_STATE_RUNNING), (first, "first", S.JOB_STATE_SUCCEEDED)]
    assert (runs[0].steps_done, runs[0].finished) == (1, 0.0)
    assert (runs[1].steps_done, runs[1].finished, runs[1].executed, runs[1].attempt) == (runs[1].steps_total, 1_012.5, runs[1].steps_total, 1)
    assert [r.run.id for r in stub.ListRuns(orchestrator_pb2.ListRunsRequest(limit=1)).runs] == [second]
    with pytest.raises(grpc.RpcError) as bad:
        stub.ListRuns(orchestrator_pb2.ListRunsRequest(limit=-1))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_fetch_report_streams_every_file_checked_or_only_those_asked(
    orchestrator: tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub], tmp_path: Path
) -> None:
    store, stub = orchestrator
    big = os.urandom(CHUNK_BYTES * 2 + 17)  # three chunks
    files = {"index.html": b"<html>report</html>", "results.csv": b"arm,test_set\nreal,internal\n", "figures/curves.png": big}
    run_id = recorded_run(store, "reported", started=5.0, finished=True, report=files)
    chunks = list(stub.FetchReport(orchestrator_pb2.FetchReportRequest(run_id=run_id)))
    assert sum(1 for c in chunks if c.path == "figures/curves.png") == 3
    assert [c.last for c in chunks if c.path == "figures/curves.png"] == [False, False, True]
    written = write_report(chunks, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == sorted(files)
    assert all((tmp_path / "out" / name).read_bytes() == data for name, data in files.items())

    only = collect(stub.FetchReport(orchestrator_pb2.FetchReportRequest(run_id=run_id, paths=["results.csv", "absent.csv"])))
    assert only == {"results.csv": files["results.csv"]}

    running = recorded_run(store, "running", started=6.0, finished=False)
    for run, code, words in ((running, grpc.StatusCode.NOT_FOUND, "no report yet (state running)"),
                             ("0" * 16, grpc.StatusCode.NOT_FOUND, "not found"),
                             ("nope", grpc.StatusCode.INVALID_ARGUMENT, "invalid run id")):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.FetchReport(orchestrator_pb2.FetchReportRequest(run_id=run)))
        assert err.value.code() == code and words in err.value.details()


def test_a_corrupted_chunk_is_refused_where_it_lands(tmp_path: Path) -> None:
    chunks = list(chunks_of("index.html", b"<html>report</html>"))
    chunks[-1].data = b"<html>tampered</html>"
    with pytest.raises(Exception, match="index.html: received bytes hash to"):
        write_report(chunks, tmp_path / "out")
    assert not (tmp_path / "out" / "index.html").exists()
    with pytest.raises(Exception, match="unsafe path"):
        write_report(chunks_of("../escape.html", b"x"), tmp_path / "out")
    assert not (tmp_path / "escape.html").exists()


@pytest.fixture()
def local_dataset(tmp_path: Path) -> tuple[FileStore, str]:
    store = FileStore(tmp_path / "local-store")
    summary = register_demo(store, 6, 1, DemoConfig(size=32), ImportOptions(name="lesions"))
    return store, summary.dataset_id


def test_push_dataset_copies_it_with_its_id_and_name(
    orchestrator: tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub], local_dataset: tuple[FileStore, str]
) -> None:
    remote, stub = orchestrator
    local, dataset_id = local_dataset
    ref = stub.PushDataset(dataset_chunks(local, "lesions"))
    assert (ref.id, ref.name, ref.num_images) == (dataset_id, "lesions", 6)
    assert registered_id(remote, "lesions") == dataset_id
    pushed, original = Dataset.load(remote, "lesions"), Dataset.load(local, dataset_id)
    assert pushed.manifest == original.manifest
    for record in original.image_records():
        assert remote.get_bytes(record["key"], expect_sha256=record["sha256"]) == local.get_bytes(record["key"])
    assert stub.PushDataset(dataset_chunks(local, dataset_id)).id == dataset_id  # again: the same dataset


def test_a_push_with_a_bad_image_or_a_missing_one_registers_nothing(
    orchestrator: tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub], local_dataset: tuple[FileStore, str]
) -> None:
    remote, stub = orchestrator
    local, dataset_id = local_dataset

    def manifest_only() -> Iterator[orchestrator_pb2.PushDatasetChunk]:
        for message in dataset_chunks(local, dataset_id):
            if message.WhichOneof("part") == "file" and message.file.path.startswith("blobs/"):
                return
            yield message

    with pytest.raises(grpc.RpcError) as missing:
        stub.PushDataset(manifest_only())
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "6 image(s) of the manifest did not arrive" in missing.value.details()
    assert registered_id(remote, "lesions") is None and not remote.exists(manifest_key(dataset_id))

    def tampered() -> Iterator[orchestrator_pb2.PushDatasetChunk]:
        for i, message in enumerate(dataset_chunks(local, dataset_id)):
            if message.WhichOneof("part") == "file" and message.file.path.startswith("blobs/") and i == 3:
                data = bytes([message.file.data[0] ^ 1]) + message.file.data[1:]
                (chunk,) = chunks_of(message.file.path, data)
                message = orchestrator_pb2.PushDatasetChunk(file=chunk)
            yield message

    with pytest.raises(grpc.RpcError) as bad:
        stub.PushDataset(tampered())
    assert bad.value.code() == grpc.StatusCode.DATA_LOSS and "do not hash to the sha256 its manifest records" in bad.value.details()
    assert registered_id(remote, "lesions") is None and not remote.exists(manifest_key(dataset_id))

    with pytest.raises(grpc.RpcError) as headless:
        stub.PushDataset(iter([orchestrator_pb2.PushDatasetChunk(file=next(chunks_of("dataset.json", b"{}")))]))
    assert headless.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "first message must be the header" in headless.value.details()


def test_a_pushed_name_that_names_another_dataset_needs_replace(
    orchestrator: tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub], local_dataset: tuple[FileStore, str]
) -> None:
    remote, stub = orchestrator
    local, dataset_id = local_dataset
    other = register_demo(remote, 3, 2, DemoConfig(size=32), ImportOptions(name="lesions")).dataset_id
    with pytest.raises(grpc.RpcError) as taken:
        stub.PushDataset(dataset_chunks(local, dataset_id))
    assert taken.value.code() == grpc.StatusCode.INVALID_ARGUMENT and f"already names dataset {other}" in taken.value.details()
    assert registered_id(remote, "lesions") == other
    assert stub.PushDataset(dataset_chunks(local, dataset_id, replace=True)).id == dataset_id
    assert registered_id(remote, "lesions") == dataset_id


def test_submit_plan_passes_recompute_to_the_run(orchestrator: tuple[FileStore, orchestrator_pb2_grpc.OrchestratorServiceStub]) -> None:
    _store, stub = orchestrator
    text = yaml.safe_dump(tiny_plan(name="again"))
    ref = stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=text, dry_run=True, recompute=["evaluate", "report"]))
    assert ref.plan_name == "again"
    with pytest.raises(grpc.RpcError) as bad:
        stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=text, dry_run=True, recompute=["evaluat"]))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--recompute evaluat: this plan has no such step kind" in bad.value.details()
