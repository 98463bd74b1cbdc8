"""Evaluator benchmark: pixel-metric throughput at 256 px on one core, the time of a full
evaluation (per-image metrics, lesion matching, bootstrap, COCO mask + box AP) of 1000 images,
and with --report the time of a full report (7 arms × 3 seeds × 2 test sets: statistics,
tables, figures in PNG/SVG/PDF).

    .venv/bin/python bench/bench_evaluator.py [--images 1000] [--isic PATH] [--report] [--json PATH]

Uses ISIC 2018 masks (resized to 256 px) when present, else procedural masks. Predictions
are the truth masks shifted and eroded/dilated by a few pixels plus a spurious blob on
some images, so that the numbers reflect realistic, imperfect predictions.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from services.common.datasets import masks_to_rle
from services.common.imageio import read_mask, resize_mask
from services.evaluator.config import EvalConfig, ReportConfig
from services.evaluator.core.coco import GroundTruth, coco_ap, predictions_from_results
from services.evaluator.core.evaluate import evaluate
from services.evaluator.core.metrics import pixel_scores, union_of_instances
from services.evaluator.core.reports import RunInput, build_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Results, load_note

SIZE = 256
DEFAULT_ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic2018-256"


def truth_masks(n: int, isic: Path) -> tuple[np.ndarray, str]:
    files = sorted((isic / "train" / "masks").glob("*.png")) + sorted((isic / "val" / "masks").glob("*.png"))
    if len(files) >= n:
        masks = np.stack([resize_mask(read_mask(f), SIZE) > 0 for f in files[:n]])
        return masks, f"ISIC 2018 masks ({isic})"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.zeros((n, SIZE, SIZE), bool)
    for i in range(n):
        cy, cx = rng.integers(60, 196, 2)
        ry, rx = rng.integers(20, 80, 2)
        out[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return out, "procedural ellipses (ISIC data absent)"


def perturb(masks: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    out = np.empty_like(masks)
    for i, m in enumerate(masks):
        m8 = m.astype(np.uint8)
        m8 = cv2.dilate(m8, kernel) if rng.random() < 0.5 else cv2.erode(m8, kernel)
        out[i] = np.roll(m8, tuple(int(v) for v in rng.integers(-8, 9, 2)), axis=(0, 1)) > 0
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--isic", type=Path, default=DEFAULT_ISIC)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--report", action="store_true", help="also time a full report of 7 arms × 3 seeds × 2 test sets")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    res = Results("evaluator")
    n = args.images
    truth, source = truth_masks(n, args.isic)
    pred = perturb(truth)
    print(f"== evaluator (data: {n} images at {SIZE}×{SIZE} px, {source}; one core (OMP/BLAS threads = 1); {load_note()})")
    cond = f"{n} masks at {SIZE} px ({source.split(' (')[0]}), 1 core, best of {args.repeats}; {load_note()}"

    # 1. Dense pixel metrics, batched (what the segmenter's validation calls).
    t = best_of(lambda: pixel_scores(pred, truth), args.repeats)
    s = pixel_scores(pred, truth)
    res.add(f"pixel_scores, batch of {n}", n / t, "images/s", f"{cond}; mean IoU {s.iou.mean():.4f}")
    t = best_of(lambda: [pixel_scores(pred[i], truth[i]) for i in range(n)], args.repeats)
    res.add("pixel_scores, one image per call", n / t, "images/s", cond)
    inst = np.stack([pred, np.roll(pred, 5, axis=1), np.zeros_like(pred)], axis=1).astype(np.float32) * 0.9
    scores = np.array([0.9, 0.6, 0.1], np.float32)
    t = best_of(lambda: [pixel_scores(union_of_instances(inst[i], scores, 0.5), truth[i]) for i in range(n)], args.repeats)
    res.add("union of 3 float instances + scores, then pixel_scores", n / t, "images/s", cond)

    # 2. The evaluation from COCO structures (RLE), as the service runs it.
    rng = np.random.default_rng(2)
    images = [{"id": i + 1, "file_name": f"{i:05d}.png", "height": SIZE, "width": SIZE} for i in range(n)]
    t_rle = masks_to_rle(truth)
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "segmentation": t_rle[i], "iscrowd": 0} for i in range(n)]
    gt = GroundTruth.from_coco({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "lesion"}]})
    p_rle = masks_to_rle(pred)
    spur = np.zeros((1, SIZE, SIZE), bool)
    spur[0, 5:25, 5:25] = True
    spur_rle = masks_to_rle(spur)[0]
    results = []
    for i in range(n):
        results.append({"image_id": i + 1, "category_id": 1, "segmentation": p_rle[i], "score": float(rng.uniform(0.5, 1))})
        if rng.random() < 0.3:
            results.append({"image_id": i + 1, "category_id": 1, "segmentation": spur_rle, "score": float(rng.uniform(0, 0.6))})
    preds = predictions_from_results(results, gt)
    print(f"predictions: {len(results)} instances")
    cfg = EvalConfig(coco_ap=False, n_bootstrap=2000)
    t = best_of(lambda: evaluate(gt, preds, cfg), args.repeats)
    res.add("evaluate() without COCO AP", t, "s", f"{cond}; {len(results)} predicted instances, 2000 bootstrap resamples")
    t0 = time.perf_counter()
    ap = coco_ap(gt, preds)
    t_ap = time.perf_counter() - t0
    res.add("COCO mask + box AP", t_ap, "s", f"{cond.replace(f', best of {args.repeats}', ', once')}; "
            f"mask AP {ap['segm']['AP']:.4f}, box AP {ap['bbox']['AP']:.4f}")
    t0 = time.perf_counter()
    ev = evaluate(gt, preds, EvalConfig(n_bootstrap=2000))
    t_all = time.perf_counter() - t0
    res.add("full evaluate() with COCO AP", t_all, "s",
            f"{cond.replace(f', best of {args.repeats}', ', once')}; 2000 bootstrap resamples; mean IoU {ev['mean_iou']:.4f} "
            f"[{ev['metrics']['iou']['ci_low']:.4f}, {ev['metrics']['iou']['ci_high']:.4f}], ES {ev['es']:.4f}")
    if args.report:
        bench_report(res, gt, truth)
    res.finish(args.json)


def bench_report(res: Results, gt: GroundTruth, truth: np.ndarray) -> None:
    """A thesis-sized study's report: 7 arms × 3 seeds × 2 test sets (the same images twice)."""
    arms = [("real", 1000, 0, 0), ("comp-2k", 1000, 2000, 0), ("comp-14k", 1000, 14000, 0), ("gan-2k", 1000, 0, 2000),
            ("gan-14k", 1000, 0, 14000), ("hybrid-2k", 1000, 1000, 1000), ("hybrid-14k", 1000, 7000, 7000)]
    cfg = EvalConfig(n_bootstrap=2000, coco_ap=False)
    runs = []
    for a, (arm, real, comp, gan) in enumerate(arms):
        for seed in range(3):
            preds = predictions_from_results(
                [{"image_id": i + 1, "category_id": 1, "segmentation": r, "score": 0.9}
                 for i, r in enumerate(masks_to_rle(perturb(truth, seed=100 * a + seed)))], gt)
            ev = evaluate(gt, preds, cfg)
            runs += [RunInput(arm, seed, ev, preds, None, real, comp, gan, label) for label in ("internal", "external")]
    t0 = time.perf_counter()
    report = build_report(runs, config=ReportConfig(overlay_images=0))
    t = time.perf_counter() - t0
    size = sum(len(v) for v in report.files.values()) / 1e6
    res.add("build_report", t, "s", f"7 arms × 3 seeds × 2 test sets × {len(gt.images)} images, no overlays: "
            f"{len(report.files)} files, {size:.1f} MB; {load_note()}")


if __name__ == "__main__":
    main()
