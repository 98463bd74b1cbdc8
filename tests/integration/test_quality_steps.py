"""Synthetic-data quality and filtering end to end, over real service processes.

A tiny plan with a real-only, a composite, a GAN and two filtered arms runs: the real-only
model's FPN features and mask fidelity give a quality result per pool (with the real-vs-real
floor), the report has its "Synthetic data quality" section, and each filtered arm trains on
exactly the best-ranked images of its candidates (mask fidelity; realism against the real
training images).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry

from orchestrator.graph import Graph, training_order_seed
from orchestrator.launcher import EmbeddedServices, start_embedded
from orchestrator.plan import parse_plan
from orchestrator.runner import RunSummary
from orchestrator.runs import RunManager
from orchestrator.settings import ServiceAddresses
from services.common import refs
from services.common.datasets import Dataset
from services.common.sampling import nested_order
from services.common.store import FileStore
from synthaug.v1 import common_pb2
from tests.integration.conftest import step_result, tiny_plan

SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED
PLAN = tiny_plan(
    name="quality",
    dataset={"demo": {"count": 32, "seed": 3, "size": 64}},
    # Low enough that the barely trained real-only model's detections reach the fidelity IoU.
    evaluation={"n_bootstrap": 100, "overlay_images": 2, "score_threshold": 0.1},
    quality={"nearest_k": 3, "kid_subsets": 20},
    arms=[
        {"name": "real", "real": 12},
        {"name": "comp", "real": 12, "composite": 16},
        {"name": "gan", "real": 12, "gan": 12},
        # ceil(8 / 0.6) = 14 candidates of the 16 composites; ceil(6 / 0.5) = 12 GAN images.
        {"name": "comp-fid", "real": 12, "composite": 8, "filter": {"by": "mask_fidelity", "keep": 0.6}},
        {"name": "gan-real", "real": 12, "gan": 6, "filter": {"by": "realism", "keep": 0.5}},
    ],
)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FileStore, RunSummary, Graph, CollectorRegistry]]:
    root = tmp_path_factory.mktemp("quality")
    store = FileStore(root / "store")
    services: EmbeddedServices = start_embedded(store.url, root / "logs")
    manager = RunManager(store, ServiceAddresses(services.addresses))
    try:
        plan = parse_plan(PLAN)
        summary = manager.run(plan)
        assert summary.state == SUCCEEDED, summary.failed
        yield store, summary, manager.prepare(plan).graph, manager.metrics.registry
    finally:
        manager.close()
        services.stop()



def only(graph: Graph, kind: str, **where: Any) -> Any:
    (found,) = [s for s in graph.steps if s.kind == kind and all(s.params.get(k) == v for k, v in where.items())]
    return found


def report_file(store: FileStore, summary: RunSummary, name: str) -> bytes:
    assert summary.report is not None
    return store.get_bytes(summary.report.key.rsplit("/", 1)[0] + "/" + name)


def trained_on(store: FileStore, graph: Graph, arm: str, source: int) -> tuple[str, list[int]]:
    """The dataset and the image ids of source `source` of an arm's training set."""
    (train,) = [s for s in graph.of_kind("segment_train") if s.arm == arm]
    record = store.get_json(refs.output(step_result(store, train.key), "training_record").key)
    dataset = record["training_set"]["sources"][source]["dataset"]
    return dataset, sorted(i for s, i in record["training_set"]["members"] if s == source)


@pytest.mark.slow
def test_every_pool_gets_quality_figures_and_the_report_its_section(ran: tuple[FileStore, RunSummary, Graph, CollectorRegistry]) -> None:
    store, summary, graph, registry = ran
    quality_step = only(graph, "quality", feature_space="segmenter_fpn")
    quality = store.get_json(refs.output(step_result(store, quality_step.key), "quality").key)
    assert quality["feature_space"] == "segmenter_fpn" and quality["dim"] == 128  # the light model's FPN channels
    assert [r["label"] for r in quality["rows"]] == ["real-vs-real", "composite", "gan"]
    pools = {"composite": only(graph, "compose", role="composite"), "gan": graph.of_kind("gan_generate")[0]}
    subset = refs.dataset_output(step_result(store, graph.of_kind("subset")[0].key), "dataset")
    # Against the real images the synthetic data derive from (the 12-image prefix) and the test split.
    assert quality["real"]["train"] == {"dataset": subset.id, "n_images": 12} and quality["real"]["test"]["n_images"] == 8
    assert quality["sample_size"] == 6  # half the real prefix
    for row in quality["rows"][1:]:
        pool = Dataset.load(store, refs.dataset_output(step_result(store, pools[row["label"]].key), "dataset"))
        assert row["dataset"] == pool.id and row["n_images"] == len(pool) == {"composite": 16, "gan": 12}[row["label"]]
        assert quality["per_image"][row["label"]]["image_id"] == [r["id"] for r in pool.image_records()]
        fidelity = row["mask_fidelity"]
        assert fidelity["n_images"] == len(pool) and fidelity["truth_dataset"] == pool.id and 0.0 <= fidelity["mean_iou"] <= 1.0
        # Prometheus: the report's figures per source.
        labels = {"plan": "quality", "feature_space": "segmenter_fpn", "source": row["label"]}
        assert registry.get_sample_value("synthaug_synthetic_quality", {**labels, "metric": "fd_test"}) == row["vs_test"]["fd"]
        assert registry.get_sample_value("synthaug_synthetic_quality", {**labels, "metric": "mask_fidelity"}) == fidelity["mean_iou"]
    # The report: a quality table per feature space (one here), the closest pairs, the gain figure.
    page = report_file(store, summary, "index.html").decode()
    assert "Synthetic data quality" in page and "Feature space: segmenter_fpn" in page
    rows = list(csv.DictReader(io.StringIO(report_file(store, summary, "quality.csv").decode())))
    assert [(r["feature_space"], r["label"]) for r in rows] == [("segmenter_fpn", label) for label in ("real-vs-real", "composite", "gan")]
    assert report_file(store, summary, "quality_gain_segmenter_fpn.png").startswith(b"\x89PNG")
    prov = json.loads(report_file(store, summary, "provenance.json"))
    assert prov["quality"]["model"] == {"arm": "real", "seed": 0} and "no Inception weights" in prov["quality"]["note"]


@pytest.mark.slow
def test_filtered_arms_train_on_exactly_the_best_ranked_candidates(ran: tuple[FileStore, RunSummary, Graph, CollectorRegistry]) -> None:
    store, _summary, graph, _registry = ran
    order_seed = training_order_seed(graph.plan)

    def candidates(pool: Dataset, n: int) -> list[int]:
        return nested_order(order_seed, pool.id, "", [r["id"] for r in pool.image_records()])[:n]

    # Mask fidelity: the real-only model's per-image IoU on the 14 candidate composites; the best 8.
    fid = only(graph, "filter", by="mask_fidelity")
    composites = Dataset.load(store, refs.dataset_output(step_result(store, fid.deps["pool"].key), "dataset"))
    evaluation = store.get_json(refs.output(step_result(store, fid.deps["ranking"].key), "evaluation").key)
    assert evaluation["truth_dataset"] == composites.id and evaluation["split"] == ""
    iou = {int(r["image_id"]): float(r["iou"]) for r in evaluation["per_image"]}
    expected = sorted(sorted(candidates(composites, 14), key=lambda i: (-iou[i], i))[:8])
    dataset, ids = trained_on(store, graph, "comp-fid", 1)
    assert ids == expected and Dataset.load(store, dataset).provenance["parents"] == [composites.id]
    # The unfiltered arm draws from the same pool, in its nested order.
    assert trained_on(store, graph, "comp", 1) == (composites.id, sorted(candidates(composites, 16)))

    # Realism against the real training images, from the quality result; the best 6 of 12.
    real = only(graph, "filter", by="realism")
    gan = Dataset.load(store, refs.dataset_output(step_result(store, real.deps["pool"].key), "dataset"))
    quality = store.get_json(refs.output(step_result(store, real.deps["ranking"].key), "quality").key)
    per_image = quality["per_image"]["gan"]
    realism = dict(zip(per_image["image_id"], per_image["realism"]))
    expected = sorted(sorted(candidates(gan, 12), key=lambda i: (-realism[i], i))[:6])
    dataset, ids = trained_on(store, graph, "gan-real", 1)
    assert ids == expected and len(ids) == 6
    assert Dataset.load(store, dataset).provenance["params"]["subset"]["filter"]["by"] == "realism"
