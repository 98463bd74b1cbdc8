"""COCO AP from the pipeline is COCO AP: every exported detection counts, low scores included.

The evaluate step's request, as the orchestrator builds it from a plan, goes to a real
evaluator server over loopback gRPC; its mask AP must equal pycocotools' on the same
detections, and differ from the AP of the same detections truncated at score 0.5 (what
predicting at the pixel metrics' threshold used to export).
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ingest.demo_data import DemoConfig, register_demo
from orchestrator.graph import build_graph
from orchestrator.plan import parse_plan
from services.common.client import wait_job
from services.common.config import config_to_proto
from services.common.datasets import Dataset, masks_to_rle
from services.common.refs import object_ref, output
from services.common.store import ObjectStore, canonical_json
from services.evaluator.server import build as build_evaluator
from synthaug.v1 import evaluator_pb2, evaluator_pb2_grpc
from tests.grpc_helpers import running_server
from tests.unit.test_plan import BASE


def detections(ds: Dataset) -> list[dict]:
    """Per image: each lesion found, at scores 0.10-0.45 (true positives below 0.5), plus a
    confident false positive (score 0.9) in a corner no lesion covers."""
    out = []
    rng = np.random.default_rng(0)
    for record in ds.image_records():
        masks, labels, _ = ds.load_masks(record)
        for m, label in zip(masks, labels):
            out.append({"image_id": record["id"], "category_id": int(label), "segmentation": masks_to_rle(m[None])[0], "score": float(rng.uniform(0.10, 0.45))})
        union = masks.any(axis=0)
        fp = np.zeros_like(union)
        fp[:6, :6] = True
        fp &= ~union
        if fp.any():
            out.append({"image_id": record["id"], "category_id": 1, "segmentation": masks_to_rle(fp[None])[0], "score": 0.9})
    return out


def pycocotools_mask_ap(ds: Dataset, results: list[dict]) -> float:
    images = [{"id": r["id"], "height": r["height"], "width": r["width"]} for r in ds.image_records()]
    anns = []
    for a in ds.manifest["annotations"]:
        rle = {"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()}
        anns.append({**a, "id": len(anns) + 1, "area": float(mask_utils.area(rle)), "segmentation": rle})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": ds.categories}
        gt.createIndex()
        dt = gt.loadRes([{**r, "segmentation": {"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()}} for r in results])
        ev = COCOeval(gt, dt, "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def pipeline_mask_ap(store: ObjectStore, stub: evaluator_pb2_grpc.EvaluatorServiceStub, ds: Dataset, results: list[dict], plan: dict) -> float:
    graph = build_graph(parse_plan(plan))
    evaluate = graph.of_kind("evaluate")[0]
    info = store.put_blob(canonical_json({"results": results, "export_threshold": 0.05, "mask_threshold": 0.5}), ".json", "application/json")
    request = config_to_proto(evaluate.params["settings"], evaluator_pb2.EvaluateRequest, truth=ds.ref(), split="", predictions=object_ref(store, info))
    result = wait_job(stub, stub.SubmitEvaluate(request), timeout=120)
    evaluation = store.get_json(output(result, "evaluation").key)
    assert evaluation["metrics"]["iou"]["n"] == len(ds)
    return float(result.metrics["mask_ap"])


def test_ap_uses_every_exported_detection(file_store: ObjectStore) -> None:
    summary = register_demo(file_store, 6, 11, DemoConfig(size=64))
    ds = Dataset.load(file_store, summary.dataset_id)
    results = detections(ds)
    assert any(r["score"] < 0.5 for r in results) and any(r["score"] >= 0.5 for r in results)
    truncated = [r for r in results if r["score"] >= 0.5]
    plan = {**BASE, "evaluation": {"n_bootstrap": 100}}
    with running_server(build_evaluator, "evaluator", file_store) as (_runtime, channel):
        stub = evaluator_pb2_grpc.EvaluatorServiceStub(channel)
        full = pipeline_mask_ap(file_store, stub, ds, results, plan)
        cut = pipeline_mask_ap(file_store, stub, ds, truncated, plan)
    assert full == pytest.approx(pycocotools_mask_ap(ds, results), abs=1e-9)
    assert cut == pytest.approx(pycocotools_mask_ap(ds, truncated), abs=1e-9)
    # The low-score true positives are what AP is about: without them it collapses.
    assert full > 0.5 and cut < 0.1 and full != pytest.approx(cut)
