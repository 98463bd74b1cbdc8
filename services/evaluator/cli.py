"""`synthaug evaluate`: score any model's output against ground truth.

    synthaug evaluate --truth T --pred P [--score-threshold S] [--json]

T is a mask folder (instance-id or binary PNGs), a COCO instances JSON (a synthaug
dataset.json is one) or, with --store, a dataset id or name. P is a mask folder matched by
file stem, a COCO results JSON (list, or the segmenter's {"results": [...]} object), a COCO
instances JSON, or, with --store, the key of a results object. Exit codes: 0 ok, 2 bad input
(the message names the item, e.g. the image whose prediction has the wrong size), 1 failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from services.common.cli_support import guarded
from services.common.config import config_from_mapping
from services.common.errors import NotFound
from services.evaluator.config import EvalConfig
from services.evaluator.core.coco import (
    GroundTruth,
    Predictions,
    predictions_from_results,
)
from services.evaluator.core.evaluate import evaluate
from services.evaluator.core.sources import (
    load_predictions,
    load_truth,
    truth_from_dataset,
)

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score predictions against ground truth (IoU, F1, ES, thresholded Jaccard, COCO AP, CIs)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--truth", required=True, help="mask folder, COCO instances JSON, or (with --store) dataset id/name")
    p.add_argument("--pred", required=True, help="mask folder, COCO results JSON, COCO instances JSON, or (with --store) object key")
    # Settings default to None here: unset flags take EvalConfig's defaults (the only copy).
    p.add_argument("--score-threshold", type=float, default=None,
                   help=f"instances with score ≥ S enter the per-image union "
                        f"(default {EvalConfig.score_threshold}; 0 = all, as the thesis did)")
    p.add_argument("--split", default="", help="split of a COCO/dataset truth to score (default: all images)")
    p.add_argument("--n-bootstrap", type=int, default=None,
                   help=f"bootstrap resamples for CIs (default {EvalConfig.n_bootstrap})")
    p.add_argument("--seed", type=int, default=None, help=f"bootstrap seed (default {EvalConfig.seed})")
    p.add_argument("--no-coco-ap", action="store_true", help="skip COCO mask/box AP")
    p.add_argument("--store", default=None, help="object store URL for dataset ids/names and object keys [$SYNTHAUG_STORE]")
    p.add_argument("--output", type=Path, default=None, help="also write the full evaluation JSON to this file")
    p.add_argument("--json", action="store_true", help="print the evaluation as JSON instead of a summary")
    p.set_defaults(func=handle_evaluate)


def _store(args: argparse.Namespace):
    url = args.store or os.environ.get("SYNTHAUG_STORE")
    if not url:
        return None
    from services.common.store import open_store

    return open_store(url)


def _load(args: argparse.Namespace) -> tuple[GroundTruth, Predictions]:
    truth_path, pred_path = Path(args.truth), Path(args.pred)
    store = None
    if truth_path.exists():
        truth = load_truth(truth_path, args.split)
    else:
        store = _store(args)
        if store is None:
            raise NotFound(f"--truth {args.truth}: no such file or folder (give --store to name a dataset)")
        from services.common.datasets import Dataset

        truth = truth_from_dataset(Dataset.load(store, args.truth), args.split)
    if pred_path.exists():
        return truth, load_predictions(pred_path, truth)
    store = store or _store(args)
    if store is None:
        raise NotFound(f"--pred {args.pred}: no such file or folder")
    return truth, predictions_from_results(store.get_json(args.pred), truth, args.pred)


def _summary(ev: dict[str, Any]) -> str:
    m = ev["metrics"]
    lines = [f"images: {ev['n_images']}   score threshold: {ev['score_threshold']}   truth: {ev['truth']}"]
    for key, label in (("iou", "IoU"), ("f1", "F1 (Dice)"), ("precision", "precision"), ("recall", "recall"),
                       ("es", "ES = (IoU+F1)/2"), ("thresholded_jaccard", "thresholded Jaccard (0.65)")):
        s = m[key]
        lines.append(f"  {label:<28} {s['mean']:.4f}  ± {s['std']:.4f} (std)   95% CI [{s['ci_low']:.4f}, {s['ci_high']:.4f}]   median {s['median']:.4f}")
    def fmt(x: Any) -> str:
        return "–" if x is None else f"{x:.4f}"
    lines.append(f"  mask AP {fmt(ev['mask_ap'])}  AP50 {fmt(ev['mask_ap50'])}  AP75 {fmt(ev['mask_ap75'])}   "
                 f"box AP {fmt(ev['box_ap'])}  AP50 {fmt(ev['box_ap50'])}  AP75 {fmt(ev['box_ap75'])}")
    les = ev["lesion"]
    lines.append(f"  lesion recall @IoU {les['iou_threshold']}: {fmt(les['recall'])} ({les['n_matched']}/{les['n_truth']})   "
                 f"false positives / image: {les['fp_per_image']:.3f}")
    return "\n".join(lines) + "\n"


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The flags that were given, over EvalConfig's defaults (validated)."""
    given = {"score_threshold": args.score_threshold, "n_bootstrap": args.n_bootstrap, "seed": args.seed}
    values = {name: value for name, value in given.items() if value is not None}
    if args.no_coco_ap:
        values["coco_ap"] = False
    return config_from_mapping(EvalConfig, values)


def _evaluate(args: argparse.Namespace) -> int:
    config = eval_config(args)
    truth, preds = _load(args)
    ev = evaluate(truth, preds, config, predictions_source=str(args.pred))
    text = json.dumps(ev, indent=1, allow_nan=False)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
    missing = ev["images_without_prediction"]
    if missing:
        shown = ", ".join(missing[:10]) + ("…" if len(missing) > 10 else "")
        sys.stderr.write(f"synthaug evaluate: {len(missing)} of {ev['n_images']} truth images have no prediction "
                         f"(scored as empty predictions): {shown}\n")
    if ev["unmatched_predictions"]:
        sys.stderr.write(f"synthaug evaluate: {len(ev['unmatched_predictions'])} predictions name no truth image "
                         f"(ignored): {', '.join(ev['unmatched_predictions'][:10])}\n")
    for w in ev["warnings"]:
        sys.stderr.write(f"synthaug evaluate: warning: {w}\n")
    sys.stdout.write(text + "\n" if args.json else _summary(ev))
    return 0


handle_evaluate = guarded(_evaluate, prog="synthaug evaluate")
