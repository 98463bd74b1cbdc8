"""Data-parallel training on CPU: two processes under torchrun (gloo), a file store in tmp.

The ranks train disjoint shares of the same step stream (the training record's per-rank
digests equal those of the stream's `rank_draws`), only rank 0 writes checkpoints and the
result, the result is the service's (a segmenter service on the same store answers the
request with it, without training), and a segmenter server started under torchrun trains
every job with all its ranks."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from services.common.client import open_channel, wait_job, wait_until_serving
from services.common.datasets import DatasetWriter
from services.common.jobs import job_id_for, result_key
from services.common.refs import output
from services.common.store import FileStore, ObjectStore
from services.segmenter.core.stream import TrainingStream, draws_digest
from services.segmenter.server import build
from synthaug.v1 import common_pb2, segmenter_pb2_grpc
from synthaug.v1 import segmenter_pb2 as pb
from tests.conftest import REPO, free_port
from tests.grpc_helpers import running_server
from tests.unit.segmenter_shapes import make_example

BATCH, ITERATIONS, EVAL_EVERY = 2, 4, 2


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def _dataset(store: ObjectStore) -> pb.SegmenterTrainRequest:
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name="shapes", seed=0)
    for i in range(10):
        ex = make_example(i + 1, 32, seed=3)
        writer.add(ex.image, ex.masks, ex.category_ids.tolist(), f"img{i:02d}.png", split="train" if i < 8 else "val")
    ref = writer.finish()
    config = pb.SegmenterConfig(architecture="maskrcnn_resnet18_fpn", iterations=ITERATIONS, eval_every=EVAL_EVERY,
                                batch_size=BATCH, lr=0.01, warmup_iters=0, grad_clip=10.0, num_workers=0)
    return pb.SegmenterTrainRequest(sources=[pb.TrainingSource(dataset=ref, split="train", count=8)],
                                    val_dataset=ref, val_split="val", config=config, seed=5)


def _check_shares(record: dict[str, Any], world: int) -> None:
    """Every evaluation's per-rank digests are those of the ranks' shares of the stream."""
    members = record["training_set"]["members"]
    stream = TrainingStream([True] * len(members), record["config"]["seed"], BATCH, world)
    assert record["world_size"] == record["budget"]["world_size"] == world
    start = 0
    for entry in record["epochs"]:
        shares = [[d for step in range(start, entry["iteration"]) for d in stream.rank_draws(step, r)] for r in range(world)]
        assert entry["draws"] == [{"rank": r, "images": len(shares[r]), "sha256": draws_digest(shares[r])}
                                  for r in range(world)]
        assert all(len(s) == BATCH * (entry["iteration"] - start) for s in shares)
        every = [d for s in shares for d in s]
        assert len(set(every)) == len(every)  # disjoint shares…
        assert sorted(every) == sorted(d for step in range(start, entry["iteration"]) for d in stream.draws(step))  # …of one stream
        start = entry["iteration"]
    assert start == ITERATIONS


def test_torchrun_job_trains_disjoint_shares_and_stores_the_services_result(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    request = _dataset(store)
    request_file = tmp_path / "request.json"
    request_file.write_text(json_format.MessageToJson(request))
    run = subprocess.run(
        _torchrun(2, "-m", "services.segmenter.torchrun_train", "--store", f"file://{tmp_path / 'store'}",
                  "--request", str(request_file)),
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    job_id = job_id_for("segmenter.Train", request)
    assert f"job {job_id} JOB_STATE_SUCCEEDED" in run.stdout

    # Only rank 0 wrote checkpoints (one per evaluation), and the result exactly once.
    writes = re.findall(r"rank (\d+) wrote checkpoint (epoch-\d+\.pt)", log)
    assert writes == [("0", "epoch-0000.pt"), ("0", "epoch-0001.pt")], log[-4000:]
    assert "rank 1: following rank 0" in log and "rank 1: stop" in log
    assert store.exists(result_key(job_id))

    stored = common_pb2.JobResult()
    stored.ParseFromString(store.get_record(result_key(job_id)))
    record = json.loads(store.get_bytes(output(stored, "training_record").key))
    _check_shares(record, world=2)
    assert record["job"] == job_id and stored.attributes["world_size"] == "2"

    # The service path: the same request is the same job, answered from the stored result.
    with running_server(build, "segmenter", store) as (_runtime, channel):
        stub = segmenter_pb2_grpc.SegmenterServiceStub(channel)
        ref = stub.SubmitTrain(request)
        assert ref.id == job_id
        assert wait_job(stub, ref, timeout=60) == stored
        status = stub.GetJob(common_pb2.GetJobRequest(job_id=job_id))
        assert status.message == "result from store"
        predict = stub.SubmitPredict(pb.PredictRequest(checkpoint=output(stored, "model"), dataset=request.val_dataset,
                                                       split="val"))
        predictions = json.loads(store.get_bytes(output(wait_job(stub, predict, timeout=120), "predictions").key))
        assert predictions["num_images"] == 2


def test_segmenter_server_under_torchrun_trains_each_job_on_every_rank(tmp_path: Path) -> None:
    """`synthaug run --services segmenter=HOST:PORT` against a DDP-launched segmenter: rank 0
    serves gRPC; a Train job submitted to it trains on both ranks."""
    store = FileStore(tmp_path / "store")
    request = _dataset(store)
    port = free_port()
    proc = subprocess.Popen(
        _torchrun(2, "-m", "services.segmenter", "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "-1",
                  "--store", f"file://{tmp_path / 'store'}", "--log-format", "text", "--grace-seconds", "5"),
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        channel = open_channel(f"127.0.0.1:{port}")
        wait_until_serving(channel, timeout=120)
        stub = segmenter_pb2_grpc.SegmenterServiceStub(channel)
        result = wait_job(stub, stub.SubmitTrain(request), timeout=600)
        record = json.loads(store.get_bytes(output(result, "training_record").key))
        _check_shares(record, world=2)
        channel.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            log, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
    assert "rank 1: following rank 0" in log and "rank 0: starting 1 followers" in log, log[-4000:]
    assert not re.findall(r"rank [1-9]\d* wrote checkpoint", log)
