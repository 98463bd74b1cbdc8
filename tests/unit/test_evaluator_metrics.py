"""Pixel metrics: hand-computed cases, conventions and agreement with pycocotools."""
from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from services.common.errors import InvalidArgument
from services.evaluator.core.metrics import (
    PixelScores,
    class_union,
    per_class_pixel_scores,
    pixel_scores,
    union_of_instances,
)


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_perfect_prediction_scores_one():
    m = box(8, 8, 2, 6, 2, 6)
    s = pixel_scores(m, m)
    assert isinstance(s, PixelScores)
    for v in s.as_dict().values():
        assert v.dtype == np.float64 and v.shape == () and v == 1.0


def test_disjoint_scores_zero():
    s = pixel_scores(box(8, 8, 0, 2, 0, 2), box(8, 8, 5, 8, 5, 8))
    assert s.iou == 0 and s.f1 == 0 and s.precision == 0 and s.recall == 0


def test_half_overlap_by_hand():
    # pred = columns 0..3, truth = columns 2..5 of a 4x8 image: tp = 8, fp = 8, fn = 8.
    pred = box(4, 8, 0, 4, 0, 4)
    truth = box(4, 8, 0, 4, 2, 6)
    s = pixel_scores(pred, truth)
    assert s.iou == pytest.approx(8 / 24)
    assert s.f1 == pytest.approx(16 / 32)
    assert s.precision == pytest.approx(0.5)
    assert s.recall == pytest.approx(0.5)
    # Per image F1 = 2·IoU / (1 + IoU): why ES carries no information beyond IoU.
    assert s.f1 == pytest.approx(2 * s.iou / (1 + s.iou))


def test_prediction_inside_truth():
    pred = box(10, 10, 0, 5, 0, 10)  # 50 px
    truth = box(10, 10, 0, 10, 0, 10)  # 100 px
    s = pixel_scores(pred, truth)
    assert s.iou == pytest.approx(0.5)
    assert s.precision == 1.0
    assert s.recall == pytest.approx(0.5)
    assert s.f1 == pytest.approx(100 / 150)


def test_empty_vs_empty_is_one():
    z = np.zeros((5, 5), dtype=bool)
    s = pixel_scores(z, z)
    assert (s.iou, s.f1, s.precision, s.recall) == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("pred_empty", [True, False])
def test_empty_vs_nonempty_is_zero(pred_empty):
    z = np.zeros((5, 5), dtype=bool)
    m = box(5, 5, 1, 3, 1, 3)
    pred, truth = (z, m) if pred_empty else (m, z)
    with np.errstate(all="raise"):  # no division by zero anywhere
        s = pixel_scores(pred, truth)
    assert (s.iou, s.f1, s.precision, s.recall) == (0.0, 0.0, 0.0, 0.0)


def test_batch_shapes_and_values():
    z = np.zeros((4, 4), dtype=bool)
    m = box(4, 4, 0, 2, 0, 4)
    pred = np.stack([m, z, z, m])
    truth = np.stack([m, z, m, z])
    with np.errstate(all="raise"):
        s = pixel_scores(pred, truth)
    assert s.iou.shape == (4,)
    np.testing.assert_array_equal(s.iou, [1, 1, 0, 0])
    np.testing.assert_array_equal(s.recall, [1, 1, 0, 0])


def test_uint8_masks_read_as_nonzero():
    m = box(6, 6, 1, 4, 1, 4).astype(np.uint8) * 255
    assert pixel_scores(m, m > 0).iou == 1.0


def test_shape_mismatch_raises():
    with pytest.raises(InvalidArgument, match="shape"):
        pixel_scores(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_union_of_overlapping_instances_counts_pixels_once():
    a = box(10, 10, 0, 6, 0, 6)  # 36 px
    b = box(10, 10, 3, 9, 3, 9)  # 36 px, 9 shared
    u = union_of_instances(np.stack([a, b]))
    assert u.dtype == bool and u.shape == (10, 10)
    assert u.sum() == 63
    s = pixel_scores(u, u)
    assert s.iou == 1.0


def test_union_score_threshold_and_mask_threshold():
    probs = np.zeros((3, 4, 4), dtype=np.float32)
    probs[0, 0, 0] = 0.9   # kept (score 0.8)
    probs[0, 0, 1] = 0.4   # below mask threshold
    probs[1, 1, 1] = 0.9   # instance below score threshold
    probs[2, 2, 2] = 0.5   # exactly at the mask threshold: kept (≥)
    scores = np.array([0.8, 0.3, 0.5])
    u = union_of_instances(probs, scores, score_threshold=0.5, mask_threshold=0.5)
    expected = np.zeros((4, 4), bool)
    expected[0, 0] = expected[2, 2] = True
    np.testing.assert_array_equal(u, expected)
    # No threshold (the thesis' behaviour): every instance counts.
    assert union_of_instances(probs, scores).sum() == 3


def test_union_of_no_instances_is_empty():
    u = union_of_instances(np.zeros((0, 7, 9), dtype=bool))
    assert u.shape == (7, 9) and not u.any()
    u = union_of_instances(np.zeros((2, 7, 9), np.float32), np.array([0.1, 0.2]), score_threshold=0.5)
    assert u.shape == (7, 9) and not u.any()


def test_union_validates_inputs():
    with pytest.raises(InvalidArgument, match="N×H×W"):
        union_of_instances(np.zeros((4, 4), bool))
    with pytest.raises(InvalidArgument, match="scores"):
        union_of_instances(np.zeros((2, 4, 4), bool), np.array([0.5]))


def test_agrees_with_pycocotools_mask_iou_on_random_masks():
    rng = np.random.default_rng(7)
    for density in (0.05, 0.3, 0.7):
        pred = rng.random((20, 32, 24)) < density
        truth = rng.random((20, 32, 24)) < density
        ours = pixel_scores(pred, truth).iou
        for i in range(20):
            rp = mask_utils.encode(np.asfortranarray(pred[i].astype(np.uint8)))
            rt = mask_utils.encode(np.asfortranarray(truth[i].astype(np.uint8)))
            ref = mask_utils.iou([rp], [rt], [0])[0, 0]
            assert ours[i] == pytest.approx(ref, abs=1e-12)


def test_per_class_variants():
    truth = np.array([[1, 1, 2, 0], [1, 1, 2, 0]])
    pred = np.array([[1, 0, 2, 2], [1, 0, 2, 2]])
    out = per_class_pixel_scores(pred, truth, [1, 2, 3])
    assert out[1].iou == pytest.approx(2 / 4)
    assert out[2].iou == pytest.approx(2 / 4)
    assert out[3].iou == 1.0  # absent from both
    masks = np.stack([box(4, 4, 0, 2, 0, 2), box(4, 4, 2, 4, 2, 4), box(4, 4, 0, 1, 3, 4)])
    u = class_union(masks, np.array([1, 2, 1]), 1)
    assert u.sum() == 5
