"""SegmenterService end to end over loopback gRPC with the S3 (moto) store."""
from __future__ import annotations

import copy
import io
import json
from typing import Iterator

import grpc
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from services.common.client import wait_job
from services.common.datasets import Dataset, DatasetWriter
from services.common.refs import output
from services.common.sampling import nested_order
from services.common.store import ObjectStore, open_store
from services.segmenter.core.models import ModelSpec, build_model
from services.segmenter.server import build
from synthaug.v1 import common_pb2, segmenter_pb2_grpc
from synthaug.v1 import segmenter_pb2 as pb
from tests.grpc_helpers import running_server
from tests.unit.segmenter_shapes import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATEGORY = 5  # a COCO id that is not 1: labels must map to 1..K and back


@pytest.fixture()
def served(s3_env: str) -> Iterator[tuple[ObjectStore, segmenter_pb2_grpc.SegmenterServiceStub]]:
    store = open_store(s3_env)
    with running_server(build, "segmenter", store) as (_runtime, channel):
        yield store, segmenter_pb2_grpc.SegmenterServiceStub(channel)


def shapes_dataset(store: ObjectStore, n_train: int, n_val: int, name: str) -> Dataset:
    writer = DatasetWriter(store, "real", [{"id": CATEGORY, "name": "lesion"}], name=name, seed=0)
    for i in range(n_train + n_val):
        ex = make_example(i + 1, 64, seed=3, category_ids=(CATEGORY,))
        writer.add(ex.image, ex.masks, ex.category_ids.tolist(), f"img{i:03d}.png",
                   split="train" if i < n_train else "val")
    ref = writer.finish()
    return Dataset.load(store, ref.id)


def light_config(**kw) -> pb.SegmenterConfig:
    base = dict(architecture="maskrcnn_resnet18_fpn", epochs=3, batch_size=4, lr=0.02, warmup_iters=10,
                grad_clip=10.0, num_workers=0)
    base.update(kw)
    return pb.SegmenterConfig(**base)


@pytest.mark.slow
def test_train_and_predict_end_to_end(served) -> None:  # type: ignore[no-untyped-def]
    store, stub = served
    ds = shapes_dataset(store, 16, 4, "shapes")
    request = pb.SegmenterTrainRequest(
        sources=[pb.TrainingSource(dataset=ds.ref(), split="train", count=12, order_seed=11)],
        val_dataset=ds.ref(), val_split="val", config=light_config(), seed=3)
    events: list[common_pb2.JobEvent] = []
    job = stub.SubmitTrain(request)
    result = wait_job(stub, job, timeout=600, on_event=events.append)
    model_ref, record_ref = output(result, "model"), output(result, "training_record")
    assert list(result.objects) == [model_ref, record_ref]
    record = json.loads(store.get_bytes(record_ref.key))
    assert [e["epoch"] for e in record["epochs"]] == [0, 1, 2]
    assert record["training_set"]["num_images"] == 12
    assert len({tuple(m) for m in record["training_set"]["members"]}) == 12
    # The first 12 of the split's nested order with the source's order seed — the prefix the
    # orchestrator computes with the same function for the synthetic sources.
    train_ids = [r["id"] for r in ds.image_records("train")]
    assert [i for _, i in record["training_set"]["members"]] == sorted(nested_order(11, ds.id, "train", train_ids)[:12])
    assert record["training_set"]["sources"][0]["order_seed"] == 11
    assert record["budget"] == {"mode": "epochs", "iterations": 9, "iterations_run": 9, "images_seen": 36,
                                "batch_size": 4, "world_size": 1, "eval_every": 3, "real_fraction": None,
                                "images_seen_by_source": [36]}
    assert [e["iteration"] for e in record["epochs"]] == [3, 6, 9]
    assert result.metrics["iterations_run"] == 9 and result.metrics["images_seen"] == 36
    assert record["categories"] == [{"id": CATEGORY, "name": "lesion"}]
    assert result.metrics["best_epoch"] == record["best_epoch"]
    assert result.metrics["val_iou"] == record["epochs"][record["best_epoch"]]["val"]["iou"]
    streamed = [e.metrics for e in events if "val/iou" in e.metrics]
    assert len(streamed) == 3 and all("loss/loss_objectness" in m and "images_per_s" in m for m in streamed)
    # Checkpoints for resume live under the job's work prefix (last and best epochs only).
    work = store.list(f"jobs/{job.id}/work/")
    assert f"jobs/{job.id}/work/epoch-0002.pt" in work and len(work) <= 2
    # The model file loads with weights_only=True.
    obj = torch.load(io.BytesIO(store.get_bytes(model_ref.key)), weights_only=True)
    assert obj["spec"]["min_size"] == 64 and obj["spec"]["num_classes"] == 2

    # Same request → same job, answered from the store.
    again = stub.SubmitTrain(request)
    assert again.id == job.id
    assert output(stub.GetJob(common_pb2.GetJobRequest(job_id=job.id)).result, "model").key == model_ref.key

    pred = wait_job(stub, stub.SubmitPredict(pb.PredictRequest(
        checkpoint=model_ref, dataset=ds.ref(), split="val", export_threshold=0.05, batch_size=3)), timeout=300)
    doc = json.loads(store.get_bytes(output(pred, "predictions").key))
    assert doc["dataset"] == ds.id and doc["split"] == "val"
    assert (doc["export_threshold"], doc["detections_per_image"], doc["mask_threshold"]) == (0.05, 100, 0.5)
    results = doc["results"]
    assert pred.metrics["num_results"] == len(results) > 0
    val_ids = {r["id"] for r in ds.image_records("val")}
    assert {r["image_id"] for r in results} <= val_ids
    assert all(r["category_id"] == CATEGORY and r["score"] >= 0.05 for r in results)
    for r in results:
        m = mask_utils.decode(r["segmentation"])
        assert m.shape == (64, 64)
    # The manifest is COCO: evaluate the results against it with pycocotools.
    gt = COCO()
    gt.dataset = copy.deepcopy(ds.manifest)
    gt.dataset["images"] = [r for r in gt.dataset["images"] if r["id"] in val_ids]
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["image_id"] in val_ids]
    gt.createIndex()
    ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert np.isfinite(ev.stats[0]) and ev.stats[0] >= 0


def _code(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code(), info.value.details()


def test_bad_input_is_invalid_argument_naming_the_problem(served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store, stub = served
    monkeypatch.delenv("SYNTHAUG_WEIGHTS_DIR", raising=False)
    ds = shapes_dataset(store, 6, 2, "small")
    src = pb.TrainingSource(dataset=ds.ref(), split="train", count=4)

    def train(config=None, sources=None):  # type: ignore[no-untyped-def]
        return pb.SegmenterTrainRequest(sources=sources or [src], config=config or light_config())

    code, msg = _code(stub.SubmitTrain, train(light_config(architecture="unet")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "architecture 'unet'" in msg
    code, msg = _code(stub.SubmitTrain, train(sources=[pb.TrainingSource(dataset=ds.ref(), split="train", count=7)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "count = 7" in msg and "only 6 images" in msg

    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name="unlabelled")
    for i in range(3):
        writer.add(np.zeros((32, 32, 3), np.uint8), np.zeros((0, 32, 32), bool), [], f"e{i}.png", split="train")
    empty = Dataset.load(store, writer.finish().id)
    code, msg = _code(stub.SubmitTrain, train(sources=[pb.TrainingSource(dataset=empty.ref(), split="train", count=2)]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no annotations" in msg

    # Weights from the store whose backbone does not fit the light model.
    foreign = build_model(ModelSpec("maskrcnn_resnet50_fpn", 2, 64, 64)).state_dict()
    buf = io.BytesIO()
    torch.save(foreign, buf)
    store.put_bytes("weights/r50.pt", buf.getvalue())
    code, msg = _code(stub.SubmitTrain, train(light_config(weights="store:weights/r50.pt")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "do not fit" in msg
    code, msg = _code(stub.SubmitTrain, train(light_config(weights="store:weights/missing.pt")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "missing.pt" in msg
    code, msg = _code(stub.SubmitTrain, train(light_config(weights="NoSuchWeights.V9")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "NoSuchWeights" in msg
    code, msg = _code(stub.SubmitTrain, train(light_config(weights="file:../../etc/passwd")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside SYNTHAUG_WEIGHTS_DIR" in msg
    code, msg = _code(stub.SubmitTrain, train(light_config(weights="file:r50.pt")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "file weights are disabled" in msg
    code, msg = _code(stub.SubmitTrain, train(light_config(epochs=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "SegmenterConfig.epochs must be ≥ 1, got 0" in msg
    code, msg = _code(stub.SubmitTrain, train(light_config(real_fraction=0.5)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "real_fraction = 0.5" in msg and "no synthetic images" in msg

    code, _ = _code(stub.SubmitPredict, pb.PredictRequest(
        checkpoint=common_pb2.ObjectRef(key="blobs/none.pt"), dataset=ds.ref(), split="val"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = _code(stub.SubmitPredict, pb.PredictRequest(
        checkpoint=common_pb2.ObjectRef(key="weights/r50.pt"), dataset=ds.ref(), split="val", mask_threshold=1.5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "PredictConfig.mask_threshold" in msg
