"""External test sets end to end, and a trained model used outside its plan.

A tiny plan with two arms and two external test sets (demo data of other seeds, one at another
image size) runs over real service processes: every arm × seed is evaluated on the internal
split and on both test sets, the report has a table per test set; a test set that shares images
with the training data is refused, naming them; `synthaug model export` → `synthaug predict` →
`synthaug evaluate` gives the plan's own per-image IoU.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from pycocotools.coco import COCO

from orchestrator.cli import main
from orchestrator.graph import Graph
from orchestrator.launcher import EmbeddedServices, start_embedded
from orchestrator.plan import parse_plan
from orchestrator.runner import RunSummary
from orchestrator.runs import RunManager
from orchestrator.settings import ServiceAddresses
from services.common import refs
from services.common.datasets import Dataset
from services.common.store import FileStore
from synthaug.v1 import common_pb2
from tests.integration.conftest import model_cli, step_result, tiny_plan

SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED
TEST_SETS = [
    {"label": "big", "dataset": {"demo": {"count": 6, "seed": 7, "size": 96}}},  # another size: predicted at 64, scored at 96
    {"label": "other", "dataset": {"demo": {"count": 6, "seed": 11, "size": 64}}},
]
#: Low enough that the barely trained models' detections reach the pixel metrics.
SCORE_THRESHOLD = 0.1
PLAN = tiny_plan(
    name="ood",
    arms=[{"name": "real", "real": 8}, {"name": "less", "real": 4}],
    test_sets=TEST_SETS,
    evaluation={"n_bootstrap": 100, "overlay_images": 2, "score_threshold": SCORE_THRESHOLD},
)



@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileStore, EmbeddedServices, RunSummary, Graph]]:
    root = tmp_path_factory.mktemp("ood")
    store = FileStore(root / "store")
    services = start_embedded(store.url, root / "logs")
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        plan = parse_plan(PLAN)
        summary = manager.run(plan)
        assert summary.state == SUCCEEDED, summary.failed
        yield store, services, summary, manager.prepare(plan).graph
    finally:
        manager.close()
        services.stop()



def step(graph: Graph, kind: str, arm: str = "", test_set: str = "") -> Any:
    (found,) = [s for s in graph.steps if s.kind == kind and s.arm == arm and s.test_set == test_set]
    return found


def report_file(store: FileStore, summary: RunSummary, name: str) -> bytes:
    assert summary.report is not None
    return store.get_bytes(summary.report.key.rsplit("/", 1)[0] + "/" + name)


def test_every_arm_is_evaluated_on_each_test_set_with_a_table_each(ran: tuple[FileStore, EmbeddedServices, RunSummary, Graph]) -> None:
    store, _services, summary, graph = ran
    labels = [s["label"] for s in summary.steps]
    assert "test set big" in labels and "evaluate arm=less seed=0 test_set=other" in labels
    rows = list(csv.DictReader(io.StringIO(report_file(store, summary, "results.csv").decode())))
    assert {(r["arm"], r["test_set"]) for r in rows} == {(a, t) for a in ("real", "less") for t in ("internal", "big", "other")}
    assert {r["test_set"]: int(r["n_images"]) for r in rows} == {"internal": 6, "big": 6, "other": 6}
    domain = list(csv.DictReader(io.StringIO(report_file(store, summary, "domain_shift.csv").decode())))
    assert {(r["arm"], r["test_set"]) for r in domain} >= {("less", t) for t in ("internal", "big", "other")}
    for name in ("metrics_bar.png", "metrics_bar_big.png", "metrics_bar_other.png", "overlays_big.png", "overlays_other.png"):
        assert report_file(store, summary, name).startswith(b"\x89PNG"), name
    markdown = report_file(store, summary, "results.md").decode()
    assert "big" in markdown and "other" in markdown
    # Provenance names each test set's dataset.
    prov = json.loads(report_file(store, summary, "provenance.json"))
    sets = {d["label"]: d["id"] for d in prov["datasets"] if d["role"] == "test_set"}
    for label in ("big", "other"):
        assert sets[label] == refs.dataset_output(step_result(store, step(graph, "test_set", test_set=label).key)).id
    # The 96 px test set: predicted at the plan's 64 px, its masks (and metrics) at 96 px.
    predictions = store.get_json(refs.output(step_result(store, step(graph, "predict", "real", "big").key), "predictions").key)
    assert {tuple(p["segmentation"]["size"]) for p in predictions["results"]} == {(96, 96)}
    assert predictions["split"] == ""


def test_a_test_set_sharing_images_with_the_training_data_is_refused(ran: tuple[FileStore, EmbeddedServices, RunSummary, Graph]) -> None:
    store, services, _summary, _graph = ran
    dup = tiny_plan(name="ood", arms=[{"name": "real", "real": 8}],
                    test_sets=[{"label": "dup", "dataset": {"demo": {"count": 30, "seed": 3, "size": 64}}}])  # the training generator
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        summary = manager.run(parse_plan(dup))
    finally:
        manager.close()
    assert summary.state == common_pb2.JOB_STATE_FAILED and summary.input_error and summary.report is None
    (failure,) = summary.failed
    assert failure.startswith("test set dup: test set 'dup' shares 24 of its 30 images with the training dataset")
    assert "demo_000000.png (id 1) = demo_000000.png (id 1)" in failure
    assert {s["kind"] for s in summary.steps if s["state"] == "JOB_STATE_CANCELLED"} == {"predict", "evaluate", "report"}


def per_image_iou(evaluation: dict[str, Any]) -> dict[str, float]:
    return {row["image"]: row["iou"] for row in evaluation["per_image"]}


@pytest.mark.parametrize("test_set", ["internal", "big"])
def test_export_predict_evaluate_gives_the_plans_evaluation(ran: tuple[FileStore, EmbeddedServices, RunSummary, Graph], tmp_path: Path,
                                                            test_set: str) -> None:
    store, _services, summary, graph = ran
    model = tmp_path / "real.synthaug"
    assert model_cli("model", "export", summary.run_id, "--arm", "real", "--seed", "0", "--out", str(model), "--store", store.url) == 0
    # The test images as files, under their names.
    source = step(graph, "evaluate", "real", test_set).deps["dataset"]
    truth = Dataset.load(store, refs.dataset_output(step_result(store, source.key)))
    split = "test" if test_set == "internal" else ""
    images = tmp_path / "images"
    images.mkdir()
    for r in truth.image_records(split):
        (images / r["file_name"]).write_bytes(store.get_bytes(r["key"]))
    out = tmp_path / "pred"
    assert model_cli("predict", "--model", str(model), "--images", str(images), "--out", str(out), "--device", "cpu", "--no-progress") == 0
    scored = tmp_path / "evaluation.json"
    assert main(["evaluate", "--truth", truth.id, "--split", split, "--pred", str(out), "--store", store.url,
                 "--n-bootstrap", "100", "--output", str(scored)]) == 0
    plans = store.get_json(refs.output(step_result(store, step(graph, "evaluate", "real", test_set).key), "evaluation").key)
    ours = json.loads(scored.read_text())
    assert per_image_iou(ours) == pytest.approx(per_image_iou(plans), abs=1e-9)
    assert ours["metrics"]["iou"]["mean"] == pytest.approx(plans["metrics"]["iou"]["mean"], abs=1e-9)
    assert len(per_image_iou(ours)) == 6 and any(v > 0 for v in per_image_iou(ours).values())  # not a vacuous match
    # The same model as COCO results: loadable by pycocotools against its images.
    coco = tmp_path / "coco"
    assert model_cli("predict", "--model", f"{summary.run_id}/real/0", "--images", str(images), "--out", str(coco), "--format", "coco",
               "--store", store.url, "--device", "cpu", "--no-progress") == 0
    results = COCO(str(coco / "images.json")).loadRes(str(coco / "results.json"))
    plan_predictions = store.get_json(refs.output(step_result(store, step(graph, "predict", "real", test_set).key), "predictions").key)
    assert len(results.getAnnIds()) == len(plan_predictions["results"])  # every exported detection, as in the plan
