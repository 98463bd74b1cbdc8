"""Segmenter core: sampling, augmentation, losses, learning, resume, checkpoints, prediction."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from services.common.errors import InvalidArgument
from services.evaluator.core.metrics import pixel_scores, union_of_instances
from services.segmenter.config import PredictConfig, SegmenterConfig
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.data import (
    AugmentConfig,
    CategoryMap,
    EpochSampler,
    Example,
    InMemorySource,
    TrainingDataset,
    augment,
    masks_to_boxes,
    sample_training_set,
)
from services.segmenter.core.maskrcnn import LOSS_NAMES
from services.segmenter.core.models import ModelSpec, build_model, load_state_dict_into
from services.segmenter.core.predictor import load_model_file, pixel_validation, predict
from services.segmenter.core.trainer import Interrupted, Trainer
from services.segmenter.weights import WEIGHTS_DIR_ENV
from tests.unit.segmenter_shapes import make_source

LIGHT = "maskrcnn_resnet18_fpn"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- training-set membership ---------------------------------------------------------------

def test_training_set_counts_and_membership_are_exact():
    a = make_source("a", 100, size=16, seed=1)
    b = make_source("b", 30, size=16, seed=2, first_id=1000)
    items = sample_training_set([(a, 100), (b, 7)], seed=5)
    assert len(items) == 107 and len(set(items)) == 107
    assert sorted(i for s, i in items if s == 0) == list(range(1, 101))  # every one of the 100
    chosen_b = [i for s, i in items if s == 1]
    assert len(chosen_b) == 7 and set(chosen_b) <= set(b.image_ids())
    assert sample_training_set([(a, 100), (b, 7)], seed=5) == items  # seeded
    assert sample_training_set([(a, 100), (b, 7)], seed=6) != items

    # The thesis' dataset class mapped every index ≥ 80 to a random index < 80: the images
    # actually served must be exactly the members, all 107 of them.
    ds = TrainingDataset([a, b], items, CategoryMap(a.categories), None, seed=0)
    served = [(s, int(ds[k][1]["image_id"])) for k, (s, _) in enumerate(items)]
    assert served == items


def test_training_set_refuses_more_than_available_and_repeats():
    a = make_source("a", 10, size=16)
    with pytest.raises(InvalidArgument, match=r"sources\[0\].count = 11 .* only 10 images"):
        sample_training_set([(a, 11)], seed=0)
    with pytest.raises(InvalidArgument, match=r"count must be ≥ 1"):
        sample_training_set([(a, 0)], seed=0)
    with pytest.raises(InvalidArgument, match="repeats"):
        sample_training_set([(a, 2), (a, 3)], seed=0)


def test_epoch_sampler_is_a_seeded_permutation_split_over_ranks():
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    assert sorted(e0) == list(range(10)) and list(s) != e0
    ranks = [EpochSampler(10, 3, rank=r, world_size=3) for r in range(3)]
    parts = [list(r) for r in ranks]
    assert all(len(p) == 4 for p in parts)
    assert set(sum(parts, [])) == set(range(10))


def test_category_ids_map_to_contiguous_labels_and_back():
    cmap = CategoryMap([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}])
    assert cmap.num_classes == 3
    assert cmap.to_labels(np.array([3, 7, 7])).tolist() == [1, 2, 2]
    assert cmap.to_category_ids(np.array([2, 1])).tolist() == [7, 3]
    with pytest.raises(InvalidArgument, match="category id 5"):
        cmap.to_labels(np.array([5]))


# -- augmentation ----------------------------------------------------------------------------

def test_augmentation_moves_image_masks_and_boxes_together():
    ex = make_source("x", 1, size=64, seed=4, max_objects=2).examples[0]
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0)
    colours = {tuple(ex.image[m][0]) for m in ex.masks}
    for k in range(12):
        image, masks = augment(ex.image, ex.masks, cfg, np.random.default_rng(k))
        assert image.shape == ex.image.shape and masks.shape == ex.masks.shape and masks.dtype == bool
        # Pixels under every mask are still the object's pixels (nearest-neighbour masks
        # can disagree with the bilinear image only on a 1-px border, so erode first).
        inner = masks & np.roll(masks, 1, 1) & np.roll(masks, -1, 1) & np.roll(masks, 1, 2) & np.roll(masks, -1, 2)
        for m in inner:
            if m.sum() > 10:
                assert np.abs(image[m].astype(int).mean(0) - ex.image[ex.masks.any(0)].astype(int).mean(0)).max() < 40
        boxes = masks_to_boxes(masks[masks.reshape(2, -1).any(1)] if masks.shape[0] == 2 else masks)
        for b, m in zip(boxes, masks[masks.reshape(masks.shape[0], -1).any(1)]):
            ys, xs = np.nonzero(m)
            assert b.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert colours  # fixture sanity


def test_augmentation_is_deterministic_per_seed_epoch_index():
    src = make_source("x", 4, size=32)
    ds = TrainingDataset([src], [(0, i) for i in src.image_ids()], CategoryMap(src.categories), AugmentConfig(), seed=9)
    a = ds[2]
    b = ds[2]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a[0])


# -- model, losses, weights -------------------------------------------------------------------

def test_all_five_losses_present_and_finite():
    torch.manual_seed(0)
    src = make_source("x", 2, size=64)
    ds = TrainingDataset([src], [(0, 1), (0, 2)], CategoryMap(src.categories), None, seed=0)
    model = build_model(ModelSpec(LIGHT, 2, 64, 64))
    model.train()
    images, targets = zip(*[ds[0], ds[1]])
    losses = model(list(images), list(targets))
    assert set(losses) == set(LOSS_NAMES)
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())


def test_model_resize_follows_dataset_size_without_upsampling():
    model = build_model(ModelSpec(LIGHT, 2, 96, 96))
    batch, _ = model.transform([torch.rand(3, 96, 96)])
    assert batch.image_sizes == [(96, 96)]


def test_state_dict_loading_reinitialises_heads_and_names_mismatches():
    src = build_model(ModelSpec(LIGHT, 4, 64, 64)).state_dict()
    spec = ModelSpec(LIGHT, 2, 64, 64)
    dst = build_model(spec)
    heads = spec.registered.class_heads
    with pytest.raises(InvalidArgument, match="shape mismatches"):
        load_state_dict_into(dst, src, "store:x.pt")  # without the architecture's heads: refused
    skipped = load_state_dict_into(dst, src, "store:x.pt", heads)
    assert skipped and all(k.startswith("roi_heads.") for k in skipped)
    assert torch.equal(dst.state_dict()["backbone.body.conv1.weight"], src["backbone.body.conv1.weight"])
    bad = dict(src)
    bad["backbone.body.conv1.weight"] = torch.zeros(3, 3)
    with pytest.raises(InvalidArgument, match=r"weights file:w.pt do not fit.*backbone.body.conv1.weight"):
        load_state_dict_into(dst, bad, "file:w.pt", heads)
    r50 = {k: v for k, v in list(src.items())[:5]}
    with pytest.raises(InvalidArgument, match="missing keys"):
        load_state_dict_into(dst, r50, "file:partial.pt", heads)


def test_unknown_architecture_and_bad_config_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="architecture 'unet'"):
        SegmenterConfig(architecture="unet").validate()
    with pytest.raises(InvalidArgument, match="SegmenterConfig.optimizer"):
        SegmenterConfig(optimizer="lbfgs").validate()


def test_source_without_annotations_is_rejected(tmp_path):
    ex = Example(1, np.zeros((32, 32, 3), np.uint8), np.zeros((0, 32, 32), bool), np.zeros(0, np.int64))
    empty = InMemorySource("empty", [{"id": 1, "name": "lesion"}], [ex])
    with pytest.raises(InvalidArgument, match="empty.*no annotations"):
        Trainer(SegmenterConfig(architecture=LIGHT), [(empty, 1)], None, ck.DirectoryCheckpointIO(tmp_path))


def test_last_checkpoint_is_chosen_by_epoch_number(tmp_path):
    io_ = ck.DirectoryCheckpointIO(tmp_path)
    for e in (10, 2, 9):
        io_.write(ck.epoch_name(e), b"x")
    io_.write("notes.txt", b"")
    assert ck.checkpoint_epochs(io_) == [2, 9, 10]
    with pytest.raises(InvalidArgument, match="not a readable weights-only"):
        ck.from_bytes(b"junk", "checkpoint epoch-0010.pt")


# -- training: resume, learning, prediction ------------------------------------------------

def _cfg(**kw) -> SegmenterConfig:
    base = dict(architecture=LIGHT, epochs=6, batch_size=4, lr=0.02, warmup_iters=10, grad_clip=10.0,
                num_workers=0, seed=1)
    base.update(kw)
    return SegmenterConfig(**base)


@pytest.mark.slow
def test_resume_continues_with_identical_losses(tmp_path):
    train = make_source("t", 12, size=48, seed=11)
    val = make_source("v", 2, size=48, seed=12)
    cfg = _cfg(epochs=2, batch_size=4)
    full = Trainer(cfg, [(train, 8)], val, ck.DirectoryCheckpointIO(tmp_path / "full")).run()

    def crash_after_first(epoch: int, _entry: dict) -> None:
        if epoch == 0:
            raise Interrupted("killed")

    work = ck.DirectoryCheckpointIO(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        Trainer(cfg, [(train, 8)], val, work, on_epoch_end=crash_after_first).run()
    assert ck.checkpoint_epochs(work) == [0]
    resumed = Trainer(cfg, [(train, 8)], val, work).run()

    assert [e["losses"] for e in resumed.record["epochs"]] == [e["losses"] for e in full.record["epochs"]]
    assert resumed.record["steps"] == full.record["steps"]
    assert [e["val"] for e in resumed.record["epochs"]] == [e["val"] for e in full.record["epochs"]]
    # Only the last and the best checkpoints are kept.
    assert set(ck.checkpoint_epochs(work)) == {1, resumed.record["best_epoch"]}
    # A different configuration never resumes silently from someone else's checkpoints.
    with pytest.raises(InvalidArgument, match="another configuration"):
        Trainer(_cfg(epochs=2, lr=0.01), [(train, 8)], val, work).run()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    train = make_source("train", 32, size=64, seed=1)
    val = make_source("val", 8, size=64, seed=2, first_id=501)
    events: list[tuple[float, str, dict | None]] = []
    result = Trainer(_cfg(), [(train, 32)], val, ck.DirectoryCheckpointIO(tmp_path_factory.mktemp("ck")),
                     progress=lambda f, m, x: events.append((f, m, x))).run()
    return result, train, val, events


@pytest.mark.slow
def test_training_raises_val_iou_well_above_untrained(trained):
    result, train, val, events = trained
    torch.manual_seed(1)
    untrained = build_model(ModelSpec(LIGHT, 2, 64, 64))
    before = pixel_validation(untrained, val, torch.device("cpu"), 4, 0.5, 0.5)["iou"]
    rec = result.record
    best = rec["epochs"][rec["best_epoch"]]["val"]["iou"]
    assert best == max(e["val"]["iou"] for e in rec["epochs"])
    assert best > 0.5 and best > before + 0.4, (before, [e["val"] for e in rec["epochs"]])
    # Record shape (the evaluator draws loss curves from it) and streamed metrics.
    json.dumps(rec)
    for e in rec["epochs"]:
        assert set(LOSS_NAMES) <= set(e["losses"]) and all(np.isfinite(list(e["losses"].values())))
        assert e["images_per_s"] > 0 and {"iou", "f1", "precision", "recall"} <= set(e["val"])
    assert rec["training_set"]["num_images"] == 32
    epoch_events = [x for f, m, x in events if m.endswith("done")]
    assert len(epoch_events) == 6 and "val/iou" in epoch_events[-1] and "loss/loss_mask" in epoch_events[-1]


@pytest.mark.slow
def test_prediction_is_coco_results_that_round_trip_through_pycocotools(trained):
    result, _train, val, _ = trained
    loaded = load_model_file(result.model_file, "model", torch.device("cpu"))
    results = predict(loaded, val, torch.device("cpu"), PredictConfig(score_threshold=0.5, mask_threshold=0.5, batch_size=3))
    assert results and all(r["category_id"] == 1 and r["score"] >= 0.5 for r in results)

    gt = COCO()
    anns, aid = [], 1
    for ex in val.examples:
        for m in ex.masks:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": aid, "image_id": ex.image_id, "category_id": 1, "segmentation": rle,
                         "area": float(m.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
            aid += 1
    gt.dataset = {"images": [{"id": e.image_id, "height": 64, "width": 64} for e in val.examples],
                  "annotations": anns, "categories": val.categories}
    gt.createIndex()
    dt = gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] > 0.3  # AP@0.5 of a model with val IoU > 0.5

    # The RLE masks rebuild the same pixel IoU as validation computed from probabilities.
    ious = []
    for ex in val.examples:
        mine = [r for r in results if r["image_id"] == ex.image_id]
        masks = np.stack([mask_utils.decode(r["segmentation"]) for r in mine]) if mine else np.zeros((0, 64, 64), np.uint8)
        assert masks.shape[1:] == (64, 64)
        ious.append(float(pixel_scores(union_of_instances(masks), union_of_instances(ex.masks)).iou))
    best_val = result.record["epochs"][result.record["best_epoch"]]["val"]["iou"]
    assert np.mean(ious) == pytest.approx(best_val, abs=1e-9)


def test_target_of_an_image_without_instances_is_empty_not_an_error() -> None:
    from services.segmenter.core.data import make_target

    target = make_target(np.zeros((0, 16, 24), dtype=bool), np.zeros(0, dtype=np.int64), 7)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 16, 24) and int(target["image_id"]) == 7
    masks = np.zeros((2, 16, 24), dtype=bool)
    masks[1, 3:5, 4:9] = True  # instance 0 is empty (pushed out by augmentation): dropped
    target = make_target(masks, np.array([1, 2]), 1)
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[4.0, 3.0, 9.0, 5.0]]


def test_smaller_counts_take_a_prefix_so_arms_are_nested() -> None:
    a = make_source("a", 60, size=16, seed=3)
    b = make_source("b", 30, size=16, seed=4)
    small = {img for _, img in sample_training_set([(a, 20)], seed=9)}
    large = {img for _, img in sample_training_set([(a, 45)], seed=9)}
    assert len(small) == 20 and len(large) == 45 and small < large
    # A source draws the same images wherever it stands in the list.
    alone = [img for _, img in sample_training_set([(b, 10)], seed=9)]
    second = [img for src, img in sample_training_set([(a, 5), (b, 10)], seed=9) if src == 1]
    assert alone == second


def test_file_weights_are_confined_to_the_weights_dir_on_the_trainer_path(tmp_path, monkeypatch) -> None:
    """Regression: the trainer opened `file:PATH` weights wherever PATH pointed. Every path
    that opens weights goes through services/segmenter/weights.py now."""
    train = make_source("t", 4, size=32)
    io_ = ck.DirectoryCheckpointIO(tmp_path / "ck")
    torch.manual_seed(0)
    weights = build_model(ModelSpec(LIGHT, 2, 32, 32)).state_dict()
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(weights, folder / "w.pt")
    (tmp_path / "outside.pt").write_bytes((folder / "w.pt").read_bytes())
    (folder / "link.pt").symlink_to(tmp_path / "outside.pt")

    def trainer(spec: str) -> Trainer:
        return Trainer(_cfg(epochs=1, weights=spec), [(train, 4)], None, io_)

    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    with pytest.raises(InvalidArgument, match="file weights are disabled"):
        trainer("file:w.pt")
    with pytest.raises(InvalidArgument, match="outside"):
        trainer(f"file:{tmp_path / 'outside.pt'}")  # absolute: refused before anything is read
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    for escaping in ("file:../outside.pt", f"file:{tmp_path / 'outside.pt'}", "file:sub/../../outside.pt", "file:link.pt"):
        with pytest.raises(InvalidArgument, match="outside"):
            trainer(escaping)
    with pytest.raises(InvalidArgument, match="missing.pt"):
        trainer("file:missing.pt")
    with pytest.raises(InvalidArgument, match="store weights need an object store"):
        trainer("store:weights/w.pt")  # the trainer alone has no store to read them from
    loaded = trainer("file:w.pt")._build_model().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_train_request_config_takes_the_request_seed_over_the_defaults() -> None:
    from services.segmenter.core.train_request import train_config
    from synthaug.v1 import segmenter_pb2 as pb

    cfg = train_config(pb.SegmenterTrainRequest(config=pb.SegmenterConfig(architecture=LIGHT, patience=0), seed=7))
    assert cfg == SegmenterConfig(architecture=LIGHT, seed=7)
    with pytest.raises(InvalidArgument, match=r"SegmenterConfig.batch_size must be ≥ 1, got 0"):
        train_config(pb.SegmenterTrainRequest(config=pb.SegmenterConfig(batch_size=0)))
