"""Reports: table values, valid PNG/SVG/PDF/HTML/CSV files, logistic fit, training records,
comparisons. (The helpers here build the runs tests/unit/test_report_*.py use too.)"""
from __future__ import annotations

import base64
import csv
import io
import re

import numpy as np
import pytest

from services.common.datasets import masks_to_rle
from services.common.errors import InvalidArgument
from services.evaluator.config import EvalConfig, ReportConfig
from services.evaluator.core.coco import GroundTruth, predictions_from_results
from services.evaluator.core.compare import compare_evaluations
from services.evaluator.core.evaluate import evaluate
from services.evaluator.core.report_rows import Stats, results_rows
from services.evaluator.core.reports import (
    RunInput,
    build_report,
    fit_logistic,
    logistic,
    parse_training_record,
)
from services.evaluator.core.stats import bootstrap_ci

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
S = 48
#: (arm, real, composite, gan, prediction shift in px): bigger shifts, worse predictions.
ARMS = [("real", 1000, 0, 0, 5), ("comp-2k", 1000, 2000, 0, 3), ("comp-14k", 1000, 14000, 0, 2),
        ("gan-2k", 1000, 0, 2000, 4), ("gan-14k", 1000, 0, 14000, 3), ("comp-6k", 1000, 6000, 0, 2)]


def make_truth(n: int, rng: np.random.Generator) -> tuple[GroundTruth, list[np.ndarray]]:
    images, anns, masks = [], [], []
    yy, xx = np.mgrid[:S, :S]
    for i in range(1, n + 1):
        cy, cx, r = rng.integers(14, 34), rng.integers(14, 34), rng.integers(6, 12)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        masks.append(m)
        images.append({"id": i, "file_name": f"im{i:03d}.png", "height": S, "width": S})
        anns.append({"id": i, "image_id": i, "category_id": 1, "segmentation": masks_to_rle(m[None])[0], "iscrowd": 0})
    return GroundTruth.from_coco({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]}), masks


def noisy_predictions(truth: GroundTruth, masks, shift: int, rng: np.random.Generator):
    results = []
    for rec, m in zip(truth.images, masks):
        dy, dx = rng.integers(-shift, shift + 1, 2)
        p = np.roll(m, (int(dy), int(dx)), axis=(0, 1))
        results.append({"image_id": rec["id"], "category_id": 1, "segmentation": masks_to_rle(p[None])[0], "score": 0.9})
    return predictions_from_results(results, truth)


def training_record(seed: int) -> dict:
    return {"epochs": [{"epoch": e, "losses": {"loss_mask": 1.0 / e + 0.01 * seed, "loss_classifier": 0.5 / e},
                        "val": {"iou": 0.5 + 0.04 * e, "f1": 0.6 + 0.03 * e}} for e in range(1, 6)]}


def make_runs(truth: GroundTruth, masks, arms, seeds, rng: np.random.Generator, test_set: str = "internal",
              records: dict | None = None, extra_shift: int = 0) -> list[RunInput]:
    """One RunInput per arm × seed on `truth`; `records[(arm, seed)]` is the training record
    (default: training_record(seed))."""
    cfg = EvalConfig(n_bootstrap=200)
    out = []
    for arm, real, comp, gan, shift in arms:
        for seed in seeds:
            preds = noisy_predictions(truth, masks, shift + extra_shift, rng)
            record = (records or {}).get((arm, seed), training_record(seed))
            out.append(RunInput(arm, seed, evaluate(truth, preds, cfg), preds, record, real, comp, gan, test_set))
    return out


@pytest.fixture(scope="module")
def runs():
    rng = np.random.default_rng(0)
    truth, masks = make_truth(12, rng)
    return truth, make_runs(truth, masks, ARMS, (0, 1), rng)


def test_report_files_are_valid(runs, tmp_path):
    truth, rs = runs
    report = build_report(rs, truth, "test report", config=ReportConfig(overlay_images=4, n_bootstrap=200))
    names = list(report.files)
    assert names[:2] == ["index.html", "results.md"]
    for stem in ("metrics_bar", "es_vs_ratio", "overlays", "validation_curves", "training_losses"):
        for ext in ("png", "svg", "pdf"):
            assert f"{stem}.{ext}" in report.files, f"{stem}.{ext}"
    for name in ("results.csv", "results.tex", "comparisons.csv", "comparisons.tex", "per_seed.csv", "per_image.csv",
                 "budget.csv"):
        assert name in report.files, name
    assert "domain_shift.csv" not in report.files  # one test set: nothing to set against
    assert "provenance.json" not in report.files and "contact_sheet.png" not in report.files  # none given
    for name, data in report.files.items():
        if name.endswith(".png"):
            assert data.startswith(PNG_MAGIC) and len(data) > 5000
        elif name.endswith(".pdf"):
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
        elif name.endswith(".svg"):
            assert b"<svg" in data[:2000] and data.rstrip().endswith(b"</svg>")
    page = report.files["index.html"].decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    pngs = [n for n in names if n.endswith(".png")]
    assert len(embedded) == len(pngs)
    assert all(base64.b64decode(e).startswith(PNG_MAGIC) for e in embedded)
    assert "src=\"http" not in page  # self-contained
    assert "{{" not in page and "{%" not in page  # the template rendered completely
    rows = list(csv.DictReader(io.StringIO(report.files["results.csv"].decode())))
    assert [r["arm"] for r in rows] == ["real", "comp-2k", "comp-14k", "gan-2k", "gan-14k", "comp-6k"]
    assert {r["test_set"] for r in rows} == {"internal"}
    real_evs = [r.evaluation for r in rs if r.arm == "real"]
    assert float(rows[0]["mean_iou"]) == pytest.approx(np.mean([e["mean_iou"] for e in real_evs]))
    assert float(rows[0]["iou_ci_low"]) <= float(rows[0]["mean_iou"]) <= float(rows[0]["iou_ci_high"])
    md = report.files["results.md"].decode()
    assert "| Mean IoU | IoU 95% CI (images) | IoU 95% CI (seeds) | IoU per seed |" in md and "Wilcoxon" in md
    # The headline (results) table comes before everything else.
    assert md.index("## Results") < md.index("### Paired comparisons") < md.index("## Per-seed results")
    for name in pngs:  # for looking at
        (tmp_path / name).write_bytes(report.files[name])


def test_single_seed_row_has_image_ci_and_no_seed_ci(runs):
    _, rs = runs
    one = [r for r in rs if r.seed == 0][:1]
    (row,) = results_rows("internal", one, Stats(n_bootstrap=300, seed=4))
    ious = [x["iou"] for x in one[0].evaluation["per_image"]]
    assert row["mean_iou"] == pytest.approx(one[0].evaluation["mean_iou"])
    assert row["iou_ci"] == bootstrap_ci(ious, 300, 4, method="bca")  # BCa over images
    assert row["iou_seed_ci"] is None and row["mask_ap_seed_ci"] is None  # no interval from one seed
    assert row["iou_per_seed"] == [one[0].evaluation["mean_iou"]]


def test_logistic_fit_recovers_parameters():
    f = np.array([0, 0.5, 1, 2, 4, 6, 8, 14], dtype=float)
    y = logistic(f, 0.8, 0.9, 1.5)
    params, reason = fit_logistic(f, y)
    assert reason == ""
    assert params == pytest.approx([0.8, 0.9, 1.5], rel=1e-3)
    assert fit_logistic([0, 2, 2], [0.5, 0.6, 0.6])[0] is None


def test_compare_evaluations_paired(runs):
    _, rs = runs
    a = next(r.evaluation for r in rs if r.arm == "comp-6k")
    b = next(r.evaluation for r in rs if r.arm == "real")
    c = compare_evaluations(a, b, "iou", n_bootstrap=300)
    diff = np.array([x["iou"] for x in a["per_image"]]) - np.array([x["iou"] for x in b["per_image"]])
    assert c.n_images == 12 and c.mean_difference == pytest.approx(diff.mean())
    assert c.ci_low <= c.mean_difference <= c.ci_high
    with pytest.raises(InvalidArgument, match="metric"):
        compare_evaluations(a, b, "accuracy")
    shorter = dict(b, per_image=b["per_image"][:-1])
    with pytest.raises(InvalidArgument, match="different test images"):
        compare_evaluations(a, shorter)


def test_training_record_validation():
    epochs = parse_training_record(training_record(0))
    assert len(epochs) == 5 and epochs[0]["epoch"] == 1 and epochs[0]["iteration"] is None
    with pytest.raises(InvalidArgument, match="epochs"):
        parse_training_record({"loss": [1, 2]})
    with pytest.raises(InvalidArgument, match="epoch entry 0"):
        parse_training_record({"epochs": [{"losses": {"a": "x"}}]})
    with pytest.raises(InvalidArgument, match="epoch entry 1: iteration must be an integer"):
        parse_training_record({"epochs": [{"iteration": 10}, {"iteration": "ten"}]})


def test_report_rejects_duplicate_runs(runs):
    _, rs = runs
    with pytest.raises(InvalidArgument, match="twice"):
        build_report([rs[0], rs[0]])
    with pytest.raises(InvalidArgument, match=r"runs\[1\].arm is empty"):
        build_report([rs[0], RunInput("", 0, rs[0].evaluation)])
    with pytest.raises(InvalidArgument, match="baseline arm 'nope' is not among the runs' arms"):
        build_report(rs[:1], config=ReportConfig(baseline_arm="nope"))
    with pytest.raises(InvalidArgument, match="ReportConfig.overlay_images must be in"):
        build_report(rs[:1], config=ReportConfig(overlay_images=-1))


def test_no_overlay_grid_with_zero_rows_and_a_chosen_baseline(runs):
    truth, rs = runs
    report = build_report(rs[:4], truth, config=ReportConfig(overlay_images=0, baseline_arm="comp-2k", n_bootstrap=200))
    assert "overlays.png" not in report.files and "validation_curves.png" in report.files
    md = report.files["results.md"].decode()
    assert md.startswith("# synthaug report\n")  # the default title
    assert "| real | internal | comp-2k | iou |" in md  # real compared with the chosen baseline
