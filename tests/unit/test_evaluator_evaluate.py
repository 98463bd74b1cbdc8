"""Evaluation of predictions against truth: hand-computed per-image and aggregate values,
COCO AP, lesion-level counts, and reading mask folders / COCO files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from services.common.datasets import masks_to_rle
from services.common.errors import InvalidArgument
from services.common.imageio import write_png
from services.evaluator.config import EvalConfig
from services.evaluator.core.coco import (
    GroundTruth,
    Instance,
    encode_masks,
    match_instances,
    predictions_from_results,
)
from services.evaluator.core.evaluate import evaluate
from services.evaluator.core.sources import (
    instances_from_mask,
    load_predictions,
    load_truth,
    match_stem,
)

H = W = 20


def box(y0, y1, x0, x1, h=H, w=W):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def coco_truth(per_image: list[list[np.ndarray]], categories=None, labels=None) -> dict:
    images, anns = [], []
    for i, masks in enumerate(per_image, start=1):
        images.append({"id": i, "file_name": f"img{i}.png", "height": H, "width": W, "split": "test"})
        for j, rle in enumerate(masks_to_rle(np.stack(masks)) if masks else []):
            cat = labels[i - 1][j] if labels else 1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "segmentation": rle, "iscrowd": 0})
    return {"images": images, "annotations": anns, "categories": categories or [{"id": 1, "name": "lesion"}]}


def result(image_id, mask, score=0.9, cat=1):
    return {"image_id": image_id, "category_id": cat, "segmentation": masks_to_rle(mask[None])[0], "score": score}


CFG = EvalConfig(n_bootstrap=200, seed=0)


def test_hand_computed_images_and_aggregates():
    a = box(0, 10, 0, 10)  # 100 px
    truth = GroundTruth.from_coco(coco_truth([[a], [a], [a], [], []]))
    results = [
        result(1, a),  # perfect
        result(2, box(10, 20, 10, 20)),  # disjoint
        result(3, box(0, 10, 5, 15)),  # half overlap: tp 50, fp 50, fn 50
        # image 4: empty truth, no prediction → 1
        result(5, box(0, 2, 0, 2)),  # prediction on an empty image → 0
    ]
    ev = evaluate(truth, predictions_from_results(results, truth), CFG)
    ious = [r["iou"] for r in ev["per_image"]]
    f1s = [r["f1"] for r in ev["per_image"]]
    assert ious == pytest.approx([1, 0, 1 / 3, 1, 0])
    assert f1s == pytest.approx([1, 0, 0.5, 1, 0])
    assert ev["n_images"] == 5
    assert ev["mean_iou"] == pytest.approx((2 + 1 / 3) / 5)
    assert ev["mean_f1"] == pytest.approx(2.5 / 5)
    assert ev["std_iou"] == pytest.approx(np.std(ious, ddof=1))
    assert ev["es"] == pytest.approx((ev["mean_iou"] + ev["mean_f1"]) / 2)
    # Thresholded Jaccard: the 1/3 image counts as 0.
    assert ev["thresholded_jaccard"] == pytest.approx(2 / 5)
    assert ev["images_without_prediction"] == ["img4.png"]
    m = ev["metrics"]["iou"]
    assert m["ci_low"] <= m["mean"] <= m["ci_high"]
    # Lesion level: 3 lesions; matched at IoU ≥ 0.5: image 1 only; FPs: images 2, 3, 5.
    assert ev["lesion"]["n_truth"] == 3 and ev["lesion"]["n_matched"] == 1
    assert ev["lesion_recall"] == pytest.approx(1 / 3)
    assert ev["fp_per_image"] == pytest.approx(3 / 5)
    json.dumps(ev, allow_nan=False)


def test_score_threshold_and_overlapping_instances():
    a, b = box(0, 10, 0, 10), box(5, 15, 5, 15)  # 100 + 100 px, 25 shared
    truth = GroundTruth.from_coco(coco_truth([[a, b]]))
    preds = predictions_from_results([result(1, a, 0.9), result(1, b, 0.3)], truth)
    # Thesis behaviour (no threshold): the union of both predictions = the union of truth.
    ev0 = evaluate(truth, preds, EvalConfig(score_threshold=0.0, n_bootstrap=200))
    assert ev0["per_image"][0]["iou"] == 1.0
    ev = evaluate(truth, preds, EvalConfig(score_threshold=0.5, n_bootstrap=200))
    assert ev["per_image"][0]["iou"] == pytest.approx(100 / 175)
    assert ev["per_image"][0]["n_pred"] == 1
    assert ev["lesion"]["n_matched"] == 1 and ev["lesion"]["n_false_positives"] == 0


def test_perfect_predictions_give_ap_one_and_no_predictions_zero():
    masks = [[box(0, 8, 0, 8)], [box(2, 12, 3, 9), box(14, 19, 14, 19)], [box(5, 15, 5, 15)]]
    truth = GroundTruth.from_coco(coco_truth(masks))
    results = [result(i, m) for i, ms in enumerate(masks, start=1) for m in ms]
    ev = evaluate(truth, predictions_from_results(results, truth), CFG)
    assert ev["mask_ap"] == pytest.approx(1.0) and ev["mask_ap50"] == pytest.approx(1.0)
    assert ev["box_ap"] == pytest.approx(1.0)
    assert ev["lesion_recall"] == 1.0 and ev["fp_per_image"] == 0
    empty = evaluate(truth, predictions_from_results([], truth), CFG)
    assert empty["mask_ap"] == 0.0 and empty["mean_iou"] == 0.0
    assert len(empty["images_without_prediction"]) == 3


def test_mask_ap_matches_pycocotools_directly():
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    truth_masks, results = [], []
    for i in range(1, 9):
        y, x = rng.integers(0, 10, 2)
        t = box(y, y + 8, x, x + 8)
        truth_masks.append([t])
        dy, dx = rng.integers(-3, 4, 2)
        results.append(result(i, np.roll(t, (dy, dx), axis=(0, 1)), float(rng.random())))
    gt = coco_truth(truth_masks)
    truth = GroundTruth.from_coco(gt)
    ev = evaluate(truth, predictions_from_results(results, truth), CFG)
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        for a in gt["annotations"]:
            a["area"] = float(np.count_nonzero(truth_masks[a["image_id"] - 1][0]))
            a["bbox"] = [0, 0, 1, 1]
        c.dataset = gt
        c.createIndex()
        e = COCOeval(c, c.loadRes(results), "segm")
        e.evaluate(); e.accumulate(); e.summarize()
    assert ev["mask_ap"] == pytest.approx(e.stats[0])
    assert ev["mask_ap75"] == pytest.approx(e.stats[2])


def test_size_mismatch_names_image():
    truth = GroundTruth.from_coco(coco_truth([[box(0, 5, 0, 5)]]))
    bad = {"image_id": 1, "category_id": 1, "score": 1.0, "segmentation": masks_to_rle(np.ones((1, 10, 10), bool))[0]}
    with pytest.raises(InvalidArgument, match="img1.png"):
        predictions_from_results([bad], truth)


def test_wrapper_object_and_recorded_thresholds():
    truth = GroundTruth.from_coco(coco_truth([[box(0, 5, 0, 5)]]))
    wrapped = {"results": [result(1, box(0, 5, 0, 5))], "score_threshold": 0.05, "mask_threshold": 0.5}
    preds = predictions_from_results(wrapped, truth)
    assert preds.mask_threshold == 0.5 and preds.count() == 1
    ev = evaluate(truth, preds, CFG)
    assert ev["mask_threshold"] == 0.5 and ev["mean_iou"] == 1.0
    with pytest.raises(InvalidArgument, match="re-threshold"):
        evaluate(truth, preds, EvalConfig(mask_threshold=0.3, n_bootstrap=200))


def test_per_class_variant():
    a, b = box(0, 10, 0, 10), box(10, 20, 10, 20)
    cats = [{"id": 1, "name": "nevus"}, {"id": 2, "name": "melanoma"}]
    truth = GroundTruth.from_coco(coco_truth([[a, b]], cats, labels=[[1, 2]]))
    # Right pixels, wrong class for b: class-agnostic IoU 1, class 2 IoU 0.
    preds = predictions_from_results([result(1, a, cat=1), result(1, b, cat=1)], truth)
    ev = evaluate(truth, preds, CFG)
    assert ev["mean_iou"] == 1.0
    assert ev["per_class"]["1"]["metrics"]["iou"]["mean"] == pytest.approx(0.5)
    assert ev["per_class"]["2"]["metrics"]["iou"]["mean"] == 0.0
    assert ev["per_image"][0]["per_class"]["2"]["iou"] == 0.0


def test_match_instances_greedy_by_score():
    t = encode_masks(np.stack([box(0, 10, 0, 10)]))
    d = encode_masks(np.stack([box(0, 10, 0, 9), box(0, 10, 0, 10)]))
    m = match_instances([Instance(t[0], 1)], [Instance(d[0], 1, 0.4), Instance(d[1], 1, 0.9)])
    assert (m.n_truth, m.n_pred, m.n_matched, m.n_fp) == (1, 2, 1, 1)


def test_mask_folders_instance_ids_and_stems(tmp_path):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    truth_dir.mkdir(); pred_dir.mkdir()
    t1 = np.zeros((H, W), np.uint8); t1[0:10, 0:10] = 255  # binary {0,255}
    t2 = np.zeros((H, W), np.uint16); t2[0:5, 0:5] = 1; t2[10:15, 10:15] = 7  # two instances
    write_png(truth_dir / "a_segmentation.png", t1)
    write_png(truth_dir / "b_segmentation.png", t2)
    write_png(truth_dir / "c_segmentation.png", np.zeros((H, W), np.uint8))
    p1 = np.zeros((H, W), np.uint8); p1[0:10, 0:5] = 1
    write_png(pred_dir / "a.png", p1)
    write_png(pred_dir / "b.png", t2.astype(np.uint8))
    write_png(pred_dir / "zzz.png", p1)
    assert match_stem("ISIC_001_segmentation.png") == "ISIC_001"
    truth = load_truth(truth_dir)
    assert [len(truth.instances[r["id"]]) for r in truth.images] == [1, 2, 0]
    preds = load_predictions(pred_dir, truth)
    ev = evaluate(truth, preds, CFG)
    assert [r["image"] for r in ev["per_image"]] == ["a", "b", "c"]
    assert [r["iou"] for r in ev["per_image"]] == pytest.approx([0.5, 1.0, 1.0])
    assert ev["images_without_prediction"] == ["c"]
    assert ev["unmatched_predictions"] == ["zzz"]


def test_instances_from_mask():
    m = np.array([[0, 3, 3], [5, 0, 3]], np.uint8)
    inst = instances_from_mask(m)
    assert inst.shape == (2, 2, 3) and inst[0].sum() == 3 and inst[1].sum() == 1


def test_results_against_mask_folder_need_images(tmp_path):
    truth_dir = tmp_path / "truth"; truth_dir.mkdir()
    write_png(truth_dir / "a.png", box(0, 5, 0, 5).astype(np.uint8))
    truth = load_truth(truth_dir)
    res = tmp_path / "res.json"
    res.write_text(json.dumps([result(1, box(0, 5, 0, 5))]))
    with pytest.raises(InvalidArgument, match="images"):
        load_predictions(res, truth)
    res.write_text(json.dumps({"results": [result(42, box(0, 5, 0, 5))], "images": [{"id": 42, "file_name": "a.jpg"}]}))
    ev = evaluate(truth, load_predictions(res, truth), CFG)
    assert ev["mean_iou"] == 1.0
