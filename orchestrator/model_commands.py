"""`synthaug model export` and `synthaug predict`: a trained model used outside its plan.

    synthaug model export RUN_ID --arm ARM --seed S --out model.synthaug [--store URL]
    synthaug predict --model FILE|RUN_ID/ARM/SEED --images DIR --out DIR
                     [--format png|coco] [--score-threshold T] [--device D] [--store URL]

`model export` writes one self-contained file (services/segmenter/core/export.py): the best
evaluation's weights of that arm and seed, its architecture, categories and image size, the
plan's export, score and mask thresholds, and its provenance (run, plan, arm, seed, the
training datasets' ids, the training step's key and code digest); `torch.load(FILE,
weights_only=True)` reads it. `predict` predicts every image of a folder at the model's
image size and writes, at each image's own size, instance-id PNGs and their binary union
(`--format png`, the default: `synthaug evaluate --truth … --pred OUT` scores them exactly
as the plan's evaluation did) or COCO results (`--format coco`), all or nothing
(services/segmenter/core/folder.py). Exit codes: 0 ok; 2 the caller's to fix (an unknown
run, arm or seed; a training not finished; unreadable images, every one named; an existing
--out); 1 failure. torch is imported only when a command runs.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from services.common import refs
from services.common.cli_support import guarded
from services.common.errors import InvalidArgument, NotFound
from services.common.files import write_atomically
from services.common.store import ObjectStore, open_store
from synthaug import CODE_VERSION
from synthaug.v1 import common_pb2

#: `--model RUN_ID/ARM/SEED` (arm names are [A-Za-z0-9._+-], never a slash).
RUN_MODEL = re.compile(r"^(?P<run>[0-9a-f]{16})/(?P<arm>[A-Za-z0-9][A-Za-z0-9._+-]{0,63})/(?P<seed>\d+)$")


def _train_step(store: ObjectStore, run_id: str, arm: str, seed: int) -> Any:
    """The run's segment_train step of (arm, seed) as its status lists it; NotFound naming the
    arms and seeds the run has otherwise."""
    from orchestrator.runs import load_status

    status = load_status(store, run_id)
    trains = [s for s in status.steps if s.kind == "segment_train"]
    for s in trains:
        if s.arm == arm and s.seed == seed:
            return s
    have = ", ".join(f"{s.arm} seed {s.seed}" for s in trains) or "none"
    raise NotFound(f"run {run_id} has no arm {arm!r} with seed {seed} (its trained arms: {have})")


def _code_digest(store: ObjectStore, run_id: str, key: str) -> str:
    """The code digest of step `key`, from the run's summaries (latest attempt first); "" when
    no attempt has finished yet (the step key, which hashes it, is in the provenance too)."""
    from orchestrator.runner import attempt_prefix, attempts_of, run_summary_key

    keys = [run_summary_key(run_id)] + [attempt_prefix(run_id, n) + "summary.json" for n in reversed(attempts_of(store, run_id))]
    for summary_key in keys:
        try:
            steps = store.get_json(summary_key).get("steps", [])
        except NotFound:
            continue
        for step in steps:
            if step.get("key") == key and step.get("code_digest"):
                return str(step["code_digest"])
    return ""


def _plan_settings(plan: dict[str, Any], run_id: str) -> tuple[dict[str, float], dict[str, int]]:
    """(thresholds, prediction settings) the run's plan (runs/<id>/plan.json) predicted and
    evaluated with: what orchestrator/graph.py sends to its predict and evaluate steps."""
    try:
        predict = plan["segmenter"]["predict"]
        thresholds = {
            "export": float(plan["evaluation"]["export_threshold"]),
            "score": float(plan["evaluation"]["evaluate"]["score_threshold"]),
            "mask": float(predict["mask_threshold"]),
        }
        settings = {"detections_per_image": int(predict["detections_per_image"]), "batch_size": int(predict["batch_size"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"run {run_id}: its stored plan lacks the prediction settings ({exc!r})") from None
    return thresholds, settings


def export_from_run(store: ObjectStore, run_id: str, arm: str, seed: int) -> bytes:
    """The export (services/segmenter/core/export.py) of the model arm `arm` trained with
    `seed` in run `run_id`: the segmenter's model output (the best evaluation's weights), the
    plan's thresholds, and the provenance."""
    from orchestrator.runner import step_cache_key
    from orchestrator.runs import validate_run_id
    from services.segmenter.config import PredictConfig
    from services.segmenter.core.export import Thresholds, export_model

    validate_run_id(run_id)
    step = _train_step(store, run_id, arm, seed)
    try:
        data = store.get_record(step_cache_key(step.key))
    except NotFound:
        raise NotFound(f"run {run_id}: arm {arm!r} seed {seed} has not finished training (step {step.label!r} has no record)") from None
    result = common_pb2.JobResult()
    result.ParseFromString(data)
    what = f"step {step.label}"
    model_ref, record_ref = refs.output(result, "model", what), refs.output(result, "training_record", what)
    model = store.get_bytes(refs.resolve_object(store, model_ref, f"{what} model", verify=True), expect_sha256=model_ref.sha256)
    record = store.get_json(refs.resolve_object(store, record_ref, f"{what} training record", verify=True))
    plan = store.get_json(f"runs/{run_id}/plan.json")
    thresholds, settings = _plan_settings(plan, run_id)
    sources = (record.get("training_set") or {}).get("sources") or []
    provenance = {
        "run_id": run_id,
        "plan": str(plan.get("name", "")),
        "arm": arm,
        "seed": seed,
        "step_key": step.key,
        "code_digest": _code_digest(store, run_id, step.key),
        "model": model_ref.key,
        "training_record": record_ref.key,
        "datasets": [
            {"role": str(s.get("kind", "")), "id": str(s.get("dataset", "")), "split": str(s.get("split", "")), "count": int(s.get("count", 0))}
            for s in sources
        ],
        "validation": str((record.get("val_set") or {}).get("name", "")),
        "best_epoch": int(record.get("best_epoch", -1)),
        "exported_by": f"synthaug {CODE_VERSION}",
    }
    predict = PredictConfig(export_threshold=thresholds["export"], mask_threshold=thresholds["mask"], **settings)
    return export_model(model, f"{what} model {model_ref.key}", Thresholds(**thresholds), predict, provenance)


def write_output(path: Path, data: bytes, force: bool) -> None:
    """Write the --out file whole or not at all; an existing one only with --force."""
    if path.is_dir():
        raise InvalidArgument(f"--out {path} is a folder")
    if path.exists() and not force:
        raise InvalidArgument(f"--out {path} exists; give another file or --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    data = export_from_run(store, args.run, args.arm, args.seed)
    out = Path(args.out)
    write_output(out, data, args.force)
    from services.segmenter.core.export import read_export

    key = read_export(data, str(out)).provenance["model"]
    sys.stdout.write(f"model of run {args.run} arm {args.arm} seed {args.seed} exported to {out} ({len(data) / 2**20:.1f} MiB); "
                     f"in the store ({store.url}) it is {key} (a PredictRequest.checkpoint for the segmenter's SubmitPredict)\n")
    return 0


def model_bytes(spec: str, store_url: str | None) -> tuple[bytes, str]:
    """(the export, what to call it) for `--model`: an export file, or RUN_ID/ARM/SEED of a
    run in the store (exported in memory)."""
    path = Path(spec)
    if path.is_file():
        return path.read_bytes(), f"model file {path}"
    match = RUN_MODEL.match(spec)
    if match is None:
        raise NotFound(f"--model {spec}: no such file, and not RUN_ID/ARM/SEED (16 hex digits/arm name/seed)")
    run, arm, seed = match["run"], match["arm"], int(match["seed"])
    return export_from_run(open_store(store_url), run, arm, seed), f"run {run} arm {arm} seed {seed}"


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from services.segmenter.core.folder import predict_folder

    data, what = model_bytes(args.model, args.store)
    console = Console(stderr=True)
    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=args.no_progress)
    with bars:
        check = bars.add_task("reading images", total=None)
        run = bars.add_task("predicting", total=None, visible=False)

        def on_check(done: int, total: int) -> None:
            bars.update(check, completed=done, total=total)

        def on_predict(done: int, total: int) -> None:
            bars.update(check, visible=False)
            bars.update(run, completed=done, total=total, visible=True)

        out = predict_folder(data, what, args.images, args.out, args.format, args.score_threshold, args.device, on_check, on_predict)
    kind = "instance-id PNGs (and union/)" if out.format == "png" else "COCO results.json (with images.json)"
    sys.stdout.write(f"predicted {out.images} images: {out.detections} detections scoring ≥ {out.score_threshold:g} → {kind} in {out.out}\n")
    return 0


def register(subparsers: Any) -> None:
    store_help = "object store URL (default $SYNTHAUG_STORE or file://.synthaug/store)"
    p = subparsers.add_parser("model", help="export a trained model of a run as one self-contained file",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    e = actions.add_parser("export", help="write one arm × seed's best model, thresholds and provenance to a file")
    e.add_argument("run", help="run id (synthaug run / status print it)")
    e.add_argument("--arm", required=True, help="arm name")
    e.add_argument("--seed", required=True, type=int, help="training seed")
    e.add_argument("--out", required=True, help="file to write (e.g. model.synthaug)")
    e.add_argument("--force", action="store_true", help="replace an existing --out file")
    e.add_argument("--store", default=None, help=store_help)
    e.set_defaults(func=guarded(cmd_export, prog="synthaug model export"))

    p = subparsers.add_parser("predict", help="predict a folder of images with an exported model (PNG masks or COCO results)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported model file, or RUN_ID/ARM/SEED of a run in the store")
    p.add_argument("--images", required=True, help="folder of images (png, jpg, tif, bmp, webp), any size")
    p.add_argument("--out", required=True, help="new (or empty) folder for the predictions")
    p.add_argument("--format", choices=("png", "coco"), default="png",
                   help="png: instance-id and union PNGs per image (default); coco: COCO results JSON with RLE masks and scores")
    p.add_argument("--score-threshold", type=float, default=None,
                   help="keep detections scoring ≥ T (default: png the plan's score threshold, coco its export threshold)")
    p.add_argument("--device", default="", help="torch device, e.g. cpu or cuda:0 (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--store", default=None, help=store_help + "; for --model RUN_ID/ARM/SEED")
    p.set_defaults(func=guarded(cmd_predict, prog="synthaug predict"))
