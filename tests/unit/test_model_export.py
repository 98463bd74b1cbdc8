"""`synthaug model export` and `synthaug predict`: one weights-only file with everything a
prediction needs, and folder predictions that score exactly as the plan's own predictions."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ingest.demo_data import CATEGORIES, DemoConfig, register_demo
from orchestrator.graph import build_graph
from orchestrator.plan import parse_plan
from orchestrator.runner import RunTracker, run_id_for, run_status_key, run_summary_key, step_cache_key
from services.common import refs
from services.common.config import config_from_mapping
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.imageio import read_mask, write_png
from services.common.refs import add_output, object_ref
from services.common.store import FileStore, canonical_json
from services.evaluator.config import EvalConfig
from services.evaluator.core.evaluate import evaluate
from services.evaluator.core.sources import load_predictions, truth_from_dataset
from services.segmenter.config import PredictConfig
from services.segmenter.core.checkpoints import model_file
from services.segmenter.core.export import EXPORT_FORMAT, Thresholds, export_model, read_export
from services.segmenter.core.folder import by_image, instance_map
from services.segmenter.core.models import ModelSpec, build_model
from services.segmenter.core.predictor import encode_rle, load_model_file
from synthaug.v1 import common_pb2
from tests.integration.conftest import model_cli, tiny_plan

SIZE = 64
#: Scores of the untrained network below lie around 0.3–0.55: this threshold keeps some.
THRESHOLD = 0.45



@pytest.fixture(scope="module")
def network() -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    spec = ModelSpec("maskrcnn_resnet18_fpn", num_classes=2, min_size=SIZE, max_size=SIZE)
    return spec, build_model(spec).state_dict()


@pytest.fixture(scope="module")
def exported(network: tuple[ModelSpec, dict[str, torch.Tensor]]) -> bytes:
    spec, state = network
    raw = model_file(state, spec.to_dict(), CATEGORIES, {"best_epoch": 3, "iteration": 12, "val": {"iou": 0.25}})
    return export_model(raw, "model", Thresholds(export=0.05, score=0.5, mask=0.5), PredictConfig(batch_size=2),
                        {"run_id": "0123456789abcdef", "arm": "real", "seed": 0, "datasets": [{"role": "real", "id": "d" * 32}]})


@pytest.fixture()
def model_path(tmp_path: Path, exported: bytes) -> Path:
    path = tmp_path / "model.synthaug"
    path.write_bytes(exported)
    return path


def leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        assert all(isinstance(k, str) for k in obj)
        for v in obj.values():
            yield from leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from leaves(v)
    else:
        yield obj


def test_an_export_is_one_weights_only_file_of_plain_values(model_path: Path, network: tuple[ModelSpec, dict[str, torch.Tensor]]) -> None:
    spec, state = network
    obj = torch.load(model_path, weights_only=True, map_location="cpu")
    assert all(isinstance(v, (torch.Tensor, str, int, float, bool, type(None))) for v in leaves(obj))
    assert obj["format"] == EXPORT_FORMAT and obj["image_size"] == SIZE
    assert obj["thresholds"] == {"export": 0.05, "score": 0.5, "mask": 0.5}
    assert obj["predict"] == {"detections_per_image": 100, "batch_size": 2}
    assert obj["spec"]["architecture"] == "maskrcnn_resnet18_fpn" and obj["categories"] == CATEGORIES
    assert obj["provenance"]["datasets"] == [{"role": "real", "id": "d" * 32}] and obj["extra"]["best_epoch"] == 3
    assert obj["model"].keys() == state.keys() and all(torch.equal(obj["model"][k], state[k]) for k in state)
    info = read_export(model_path.read_bytes(), "m")
    assert (info.image_size, info.thresholds, info.batch_size, info.spec) == (SIZE, Thresholds(0.05, 0.5, 0.5), 2, spec)
    assert info.predict_config() == PredictConfig(export_threshold=0.05, detections_per_image=100, mask_threshold=0.5, batch_size=2)
    # The segmenter's own loader reads it as a model file (so it is also a PredictRequest.checkpoint).
    loaded = load_model_file(model_path.read_bytes(), "m", torch.device("cpu"))
    assert loaded.spec == spec and [c["id"] for c in loaded.category_map.categories] == [1]


def test_what_is_not_an_export_is_refused_by_name(network: tuple[ModelSpec, dict[str, torch.Tensor]]) -> None:
    spec, state = network
    raw = model_file(state, spec.to_dict(), CATEGORIES)
    with pytest.raises(InvalidArgument, match="run.pt is not a synthaug model export .* `synthaug model export` writes one"):
        read_export(raw, "run.pt")
    with pytest.raises(InvalidArgument, match="junk is not a readable weights-only torch file"):
        read_export(b"not torch", "junk")
    with pytest.raises(InvalidArgument, match=r"export \(0.6\) is above score \(0.5\)"):
        export_model(raw, "m", Thresholds(0.6, 0.5, 0.5), PredictConfig(), {})
    with pytest.raises(InvalidArgument, match=r"provenance.when: a datetime cannot be stored"):
        import datetime

        export_model(raw, "m", Thresholds(0.05, 0.5, 0.5), PredictConfig(), {"when": datetime.datetime.now()})


def square(h: int, w: int, y0: int, x0: int, side: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y0 + side, x0:x0 + side] = True
    return m


def test_instance_maps_hold_the_union_and_the_higher_score_wins() -> None:
    a, b, c = square(20, 30, 2, 2, 10), square(20, 30, 6, 6, 10), square(20, 30, 0, 20, 5)
    results = [{"image_id": 1, "score": s, "segmentation": encode_rle(m)} for s, m in ((0.6, b), (0.9, a), (0.3, c))]
    kept = by_image(results, 0.5)[1]
    assert [r["score"] for r in kept] == [0.9, 0.6]  # c is below the threshold
    ids = instance_map(kept, 20, 30)
    assert ids.dtype == np.uint8 and np.array_equal(ids > 0, a | b)
    assert (ids[a] == 1).all() and (ids[b & ~a] == 2).all()  # on the overlap, the 0.9 detection
    many = [{"image_id": 1, "score": 1 - i / 1000, "segmentation": encode_rle(square(20, 30, 0, 0, 1))} for i in range(300)]
    assert instance_map(many, 20, 30).dtype == np.uint16


def folder_of(store: FileStore, ds: Dataset, folder: Path) -> Path:
    """The dataset's stored image files, under their names."""
    folder.mkdir(parents=True)
    for r in ds.image_records():
        (folder / r["file_name"]).write_bytes(store.get_bytes(r["key"]))
    return folder


def per_image_iou(ev: dict[str, Any]) -> dict[str, float]:
    return {row["image"]: row["iou"] for row in ev["per_image"]}


def test_png_predictions_score_exactly_as_the_coco_results_at_each_images_size(tmp_path: Path, model_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    ds = Dataset.load(store, register_demo(store, 4, 3, DemoConfig(size=80)).dataset_id)  # 80 px images, a 64 px model
    images = folder_of(store, ds, tmp_path / "images")
    assert model_cli("predict", "--model", str(model_path), "--images", str(images), "--out", str(tmp_path / "png"),
               "--score-threshold", str(THRESHOLD), "--device", "cpu", "--no-progress") == 0
    assert model_cli("predict", "--model", str(model_path), "--images", str(images), "--out", str(tmp_path / "coco"),
               "--format", "coco", "--device", "cpu", "--no-progress") == 0
    names = sorted(r["file_name"] for r in ds.image_records())
    assert sorted(p.name for p in (tmp_path / "png").glob("*.png")) == names
    results = json.loads((tmp_path / "coco" / "results.json").read_text())
    assert all(r["score"] >= 0.05 for r in results) and any(r["score"] >= THRESHOLD for r in results)
    drawn = 0
    for name in names:
        ids = read_mask(tmp_path / "png" / name)
        assert ids.shape == (80, 80)  # the image's own size
        assert np.array_equal(read_mask(tmp_path / "png" / "union" / name), np.where(ids > 0, 255, 0))
        drawn += int(ids.max())
    info = json.loads((tmp_path / "png" / "info.json").read_text())
    assert (info["images"], info["score_threshold"], info["output"]) == (4, THRESHOLD, "png")
    assert info["detections"] == sum(1 for r in results if r["score"] >= THRESHOLD) and drawn > 0
    # Scored by the evaluator: the PNG folder (every instance drawn) and the COCO results at the
    # same score threshold give the same IoU on every image.
    truth = truth_from_dataset(ds)
    coco = tmp_path / "coco-with-images.json"
    coco.write_text(json.dumps({"images": json.loads((tmp_path / "coco" / "images.json").read_text())["images"], "results": results}))
    cfg = config_from_mapping(EvalConfig, {"score_threshold": THRESHOLD, "n_bootstrap": 100, "coco_ap": False})
    from_png = per_image_iou(evaluate(truth, load_predictions(tmp_path / "png", truth), cfg))
    from_coco = per_image_iou(evaluate(truth, load_predictions(coco, truth), cfg))
    assert from_png.keys() == set(names) and from_png == from_coco


def test_coco_results_load_in_pycocotools(tmp_path: Path, model_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (64, 64), "b.jpg": (90, 70), "c.png": (40, 100)}.items():
        write_png(images / name, rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) if name.endswith(".png") else \
            images.joinpath(name).write_bytes(_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    out = tmp_path / "out"
    assert model_cli("predict", "--model", str(model_path), "--images", str(images), "--out", str(out), "--format", "coco", "--device", "cpu", "--no-progress") == 0
    gt = COCO(str(out / "images.json"))
    res = gt.loadRes(str(out / "results.json"))
    results = json.loads((out / "results.json").read_text())
    assert len(res.getAnnIds()) == len(results) > 0
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt.dataset["images"]}
    assert sorted(im["file_name"] for im in gt.dataset["images"]) == ["a.png", "b.jpg", "c.png"]
    assert sizes == {1: (64, 64), 2: (90, 70), 3: (40, 100)}
    for ann in res.dataset["annotations"]:
        assert tuple(ann["segmentation"]["size"]) == sizes[ann["image_id"]] and 0.05 <= ann["score"] <= 1
        assert mask_utils.decode(res.annToRLE(ann)).shape == sizes[ann["image_id"]]


def _jpeg(image: np.ndarray) -> bytes:
    from services.common.imageio import encode_jpeg

    return encode_jpeg(image)


def test_unreadable_images_are_all_named_and_nothing_is_written(tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "good.png", np.zeros((32, 32, 3), dtype=np.uint8))
    (images / "notes.png").write_text("not an image")
    (images / "cut.jpg").write_bytes(_jpeg(np.full((64, 64, 3), 128, dtype=np.uint8))[:200])
    out = tmp_path / "sub" / "out"
    assert model_cli("predict", "--model", str(model_path), "--images", str(images), "--out", str(out), "--no-progress") == 2
    err = capsys.readouterr().err
    assert "2 of 3 images cannot be read (nothing was predicted)" in err and "notes.png" in err and "cut.jpg" in err
    assert "good.png" not in err
    assert not out.exists() and list(out.parent.iterdir()) == []  # no half-written or temporary folder
    # An existing non-empty output is never overwritten.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (images / "notes.png").unlink()
    (images / "cut.jpg").unlink()
    assert model_cli("predict", "--model", str(model_path), "--images", str(images), "--out", str(out), "--no-progress") == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["keep.txt"]
    assert model_cli("predict", "--model", str(tmp_path / "nope.synthaug"), "--images", str(images), "--out", str(tmp_path / "o2")) == 2
    assert "no such file, and not RUN_ID/ARM/SEED" in capsys.readouterr().err
    assert model_cli("predict", "--model", str(model_path), "--images", str(images), "--out", str(tmp_path / "o3"), "--score-threshold", "0.01") == 2
    assert "--score-threshold must be in [0.05, 1]" in capsys.readouterr().err


# --- from a run in the store ---------------------------------------------------------------------


def fake_run(store: FileStore, network: tuple[ModelSpec, dict[str, torch.Tensor]], finished: bool = True) -> tuple[str, Any]:
    """A run as the orchestrator leaves it (plan.json, status, summary, the training step's record
    with the segmenter's model and training record), without training anything."""
    plan = parse_plan(tiny_plan(
        arms=[{"name": "real", "real": 8}],
        evaluation={"n_bootstrap": 100, "export_threshold": 0.02, "score_threshold": 0.4},
        segmenter={"config": {"architecture": "maskrcnn_resnet18_fpn", "epochs": 1, "batch_size": 4}, "predict": {"mask_threshold": 0.6, "batch_size": 2}},
    ))
    graph = build_graph(plan)
    run_id = run_id_for(graph)
    store.put_json(f"runs/{run_id}/plan.json", plan.model_dump(mode="json", by_alias=True))
    store.put_bytes(run_status_key(run_id), RunTracker(store, graph, run_id).status().SerializeToString())
    train = graph.of_kind("segment_train")[0]
    store.put_json(run_summary_key(run_id), {"steps": [{"key": s.key, "code_digest": s.code_digest} for s in graph.steps]})
    if finished:
        spec, state = network
        model = store.put_blob(model_file(state, spec.to_dict(), CATEGORIES, {"best_epoch": 0}), "pt")
        record = {"best_epoch": 0, "val_set": {"name": "dataset v split val"},
                  "training_set": {"sources": [{"dataset": "a" * 32, "kind": "real", "split": "train", "count": 8}]}}
        rec = store.put_blob(canonical_json(record), "json")
        result = add_output(add_output(common_pb2.JobResult(), "model", object_ref(store, model)), "training_record", object_ref(store, rec))
        store.put_record(step_cache_key(train.key), result.SerializeToString(deterministic=True))
    return run_id, train


def test_model_export_takes_the_runs_weights_thresholds_and_provenance(tmp_path: Path, network: tuple[ModelSpec, dict[str, torch.Tensor]],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    store = FileStore(tmp_path / "store")
    run_id, train = fake_run(store, network)
    out = tmp_path / "m.synthaug"
    assert model_cli("model", "export", run_id, "--arm", "real", "--seed", "0", "--out", str(out), "--store", store.url) == 0
    model_key = refs.output(load_cached_record(store, train.key), "model").key
    assert f"it is {model_key} (a PredictRequest.checkpoint" in capsys.readouterr().out
    info = read_export(out.read_bytes(), "m")
    assert info.thresholds == Thresholds(export=0.02, score=0.4, mask=0.6) and (info.batch_size, info.image_size) == (2, 64)
    p = info.provenance
    assert (p["run_id"], p["plan"], p["arm"], p["seed"], p["step_key"], p["code_digest"]) == (run_id, "tiny", "real", 0, train.key, train.code_digest)
    assert p["datasets"] == [{"role": "real", "id": "a" * 32, "split": "train", "count": 8}] and p["model"] == model_key
    state = torch.load(io.BytesIO(out.read_bytes()), weights_only=True)["model"]
    assert all(torch.equal(state[k], v) for k, v in network[1].items())
    # What the run lacks is named; an existing file is kept.
    assert model_cli("model", "export", run_id, "--arm", "comp", "--seed", "0", "--out", str(tmp_path / "x"), "--store", store.url) == 2
    assert f"run {run_id} has no arm 'comp' with seed 0 (its trained arms: real seed 0)" in capsys.readouterr().err
    assert model_cli("model", "export", run_id, "--arm", "real", "--seed", "0", "--out", str(out), "--store", store.url) == 2
    assert "exists; give another file or --force" in capsys.readouterr().err
    assert model_cli("model", "export", "f" * 16, "--arm", "real", "--seed", "0", "--out", str(tmp_path / "y"), "--store", store.url) == 2
    # --model RUN_ID/ARM/SEED predicts with the run's model directly.
    images = tmp_path / "images"
    images.mkdir()
    write_png(images / "a.png", np.full((48, 48, 3), 90, dtype=np.uint8))
    assert model_cli("predict", "--model", f"{run_id}/real/0", "--images", str(images), "--out", str(tmp_path / "pred"), "--store", store.url,
               "--device", "cpu", "--no-progress") == 0
    pred = json.loads((tmp_path / "pred" / "info.json").read_text())
    assert pred["score_threshold"] == 0.4 and pred["model"]["run_id"] == run_id


def load_cached_record(store: FileStore, key: str) -> common_pb2.JobResult:
    result = common_pb2.JobResult()
    result.ParseFromString(store.get_record(step_cache_key(key)))
    return result


def test_a_training_that_has_not_finished_cannot_be_exported(tmp_path: Path, network: tuple[ModelSpec, dict[str, torch.Tensor]],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = FileStore(tmp_path / "store")
    run_id, train = fake_run(store, network, finished=False)
    assert model_cli("model", "export", run_id, "--arm", "real", "--seed", "0", "--out", str(tmp_path / "m"), "--store", store.url) == 2
    assert f"arm 'real' seed 0 has not finished training (step '{train.label}' has no record)" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
