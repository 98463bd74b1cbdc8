"""`synthaug evaluate`: outputs, exit codes, folder and COCO inputs."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from services.common.datasets import masks_to_rle
from services.common.imageio import write_png
from services.evaluator import cli

S = 16


def run(argv, capsys):
    parser = argparse.ArgumentParser(prog="synthaug")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def mask(y0, y1, x0, x1, value=255, dtype=np.uint8):
    m = np.zeros((S, S), dtype)
    m[y0:y1, x0:x1] = value
    return m


@pytest.fixture()
def folders(tmp_path):
    t, p = tmp_path / "truth", tmp_path / "pred"
    t.mkdir(); p.mkdir()
    write_png(t / "a_segmentation.png", mask(0, 8, 0, 8))
    write_png(t / "b_segmentation.png", mask(0, 8, 0, 16))
    write_png(t / "c_segmentation.png", mask(4, 12, 4, 12))
    write_png(p / "a.png", mask(0, 8, 0, 8, 1))  # IoU 1
    write_png(p / "b.png", mask(0, 8, 0, 8, 1))  # IoU 0.5
    # c: no prediction → empty → IoU 0, reported
    return t, p


def test_json_output_by_hand(folders, capsys):
    t, p = folders
    code, out, err = run(["--truth", str(t), "--pred", str(p), "--json", "--n-bootstrap", "200"], capsys)
    assert code == 0
    ev = json.loads(out)
    for key in ("n_images", "mean_iou", "std_iou", "mean_f1", "std_f1", "es", "thresholded_jaccard", "per_image"):
        assert key in ev
    assert ev["n_images"] == 3
    assert [(r["image"], r["iou"]) for r in ev["per_image"]] == [("a", 1.0), ("b", 0.5), ("c", 0.0)]
    assert [r["f1"] for r in ev["per_image"]] == pytest.approx([1.0, 2 / 3, 0.0])
    assert ev["mean_iou"] == pytest.approx(0.5)
    assert ev["std_iou"] == pytest.approx(0.5)
    assert ev["es"] == pytest.approx((0.5 + (1 + 2 / 3) / 3) / 2)
    assert ev["thresholded_jaccard"] == pytest.approx(1 / 3)
    assert ev["images_without_prediction"] == ["c"]
    assert "1 of 3 truth images have no prediction" in err and ": c" in err


def test_text_summary(folders, capsys, tmp_path):
    t, p = folders
    out_file = tmp_path / "ev.json"
    code, out, _ = run(["--truth", str(t), "--pred", str(p), "--n-bootstrap", "200", "--output", str(out_file)], capsys)
    assert code == 0 and "IoU" in out and "95% CI" in out and "mask AP" in out
    assert json.loads(out_file.read_text())["n_images"] == 3


def test_size_mismatch_exits_2_naming_image(folders, capsys):
    t, p = folders
    write_png(p / "b.png", np.zeros((S + 1, S), np.uint8))
    code, out, err = run(["--truth", str(t), "--pred", str(p), "--json"], capsys)
    assert code == 2 and out == ""
    assert "b.png" in err and "size" in err


def test_missing_inputs_and_bad_threshold_exit_2(folders, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SYNTHAUG_STORE", raising=False)
    t, p = folders
    code, _, err = run(["--truth", str(tmp_path / "nope"), "--pred", str(p)], capsys)
    assert code == 2 and "nope" in err
    code, _, err = run(["--truth", str(t), "--pred", str(p), "--score-threshold", "2"], capsys)
    assert code == 2 and "score_threshold" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run(["--truth", str(t), "--pred", str(bad)], capsys)
    assert code == 2 and "bad.json" in err


def test_coco_truth_and_segmenter_results_with_score_threshold(tmp_path, capsys):
    m1, m2 = mask(0, 8, 0, 8) > 0, mask(8, 16, 8, 16) > 0
    coco = {"images": [{"id": 7, "file_name": "x.jpg", "height": S, "width": S, "split": "test"},
                       {"id": 9, "file_name": "y.jpg", "height": S, "width": S, "split": "train"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "segmentation": masks_to_rle(m1[None])[0], "iscrowd": 0},
                            {"id": 2, "image_id": 9, "category_id": 1, "segmentation": masks_to_rle(m2[None])[0], "iscrowd": 0}],
            "categories": [{"id": 1, "name": "lesion"}]}
    (tmp_path / "truth.json").write_text(json.dumps(coco))
    results = {"results": [
        {"image_id": 7, "category_id": 1, "segmentation": masks_to_rle(m1[None])[0], "score": 0.9, "bbox": [0, 0, 8, 8]},
        {"image_id": 7, "category_id": 1, "segmentation": masks_to_rle(m2[None])[0], "score": 0.2, "bbox": [8, 8, 8, 8]},
    ], "score_threshold": 0.05, "mask_threshold": 0.5}
    (tmp_path / "res.json").write_text(json.dumps(results))
    base = ["--truth", str(tmp_path / "truth.json"), "--pred", str(tmp_path / "res.json"), "--split", "test", "--json", "--n-bootstrap", "200"]
    code, out, _ = run(base, capsys)
    ev = json.loads(out)
    assert code == 0 and ev["n_images"] == 1 and ev["mean_iou"] == 1.0
    code, out, _ = run(base + ["--score-threshold", "0"], capsys)
    assert json.loads(out)["mean_iou"] == pytest.approx(0.5)
