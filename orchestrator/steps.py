"""What each step kind does: local work (dataset, split) or a service job.

Each executor turns a step's parameters and its dependencies' results into one request
(or one local call) and returns a JobResult; the runner handles caching, concurrency,
progress and failures around it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from google.protobuf import json_format

from orchestrator.dispatch import Dispatcher, JobOutcome
from orchestrator.graph import Step
from orchestrator.plan import Plan
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, compositor_pb2, evaluator_pb2, gan_pb2, segmenter_pb2

Progress = Callable[[float, str, dict[str, float]], None]

BACKGROUND_METHODS = {
    "inpaint_telea": compositor_pb2.BACKGROUND_METHOD_INPAINT_TELEA,
    "inpaint_ns": compositor_pb2.BACKGROUND_METHOD_INPAINT_NS,
    "crop": compositor_pb2.BACKGROUND_METHOD_CROP,
}


@dataclass
class StepContext:
    store: ObjectStore
    dispatcher: Dispatcher
    plan: Plan
    progress: Progress
    cancel: threading.Event


@dataclass
class StepOutput:
    result: common_pb2.JobResult
    #: Seconds of real compute (a service job's RUNNING time, or a local step's run time).
    compute_seconds: float
    #: The replica that ran it.
    replica: str = ""


def _dataset(inputs: dict[str, common_pb2.JobResult], role: str) -> common_pb2.DatasetRef:
    result = inputs[role]
    if not result.datasets:
        raise InvalidArgument(f"step input {role!r} produced no dataset")
    return result.datasets[0]


def _object(inputs: dict[str, common_pb2.JobResult], role: str, index: int = 0) -> common_pb2.ObjectRef:
    result = inputs[role]
    if len(result.objects) <= index:
        raise InvalidArgument(f"step input {role!r} produced no object #{index}")
    return result.objects[index]


def _job(ctx: StepContext, service: str, submit: str, request: Any) -> StepOutput:
    def on_event(event: common_pb2.JobEvent) -> None:
        if event.state == common_pb2.JOB_STATE_RUNNING:
            ctx.progress(event.progress, event.message, dict(event.metrics))

    outcome: JobOutcome = ctx.dispatcher[service].run_job(submit, request, on_event=on_event, cancel=ctx.cancel)
    return StepOutput(outcome.result, outcome.running_seconds, outcome.replica)


# --- local steps ---------------------------------------------------------------------------


def run_dataset(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> common_pb2.JobResult:
    from services.common.importers.pipeline import ImportOptions

    params = step.params
    on_progress = lambda done, total: ctx.progress(done / max(total, 1), f"{done}/{total} images", {})  # noqa: E731
    options = ImportOptions(name="", size=None, split=None)
    if "name" in params:
        ref = Dataset.load(ctx.store, params["name"]).ref()
        return common_pb2.JobResult(datasets=[ref])
    if "demo" in params:
        from services.common.demo_data import DemoConfig, register_demo

        demo = params["demo"]
        summary = register_demo(ctx.store, demo["count"], demo["seed"], DemoConfig(size=demo["size"]), options=options, progress=on_progress)
    else:
        imp = params["import"]
        size = params.get("image_size")
        options = ImportOptions(name="", size=None if size == "keep" else (size or 256), split=None)
        if imp["format"] == "masks":
            from services.common.importers.masks import MaskOptions, import_masks

            summary = import_masks(ctx.store, imp["images"], imp["masks"], MaskOptions(pattern=imp["pattern"], min_area=imp["min_area"]), options, progress=on_progress)
        else:
            from services.common.importers.coco import import_coco

            summary = import_coco(ctx.store, imp["annotations"], imp["images"], options, progress=on_progress)
    return common_pb2.JobResult(datasets=[Dataset.load(ctx.store, summary.dataset_id).ref()])


def run_split(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> common_pb2.JobResult:
    from services.common.splits import SplitSpec, assign_splits, groups_for, read_groups

    ds = Dataset.load(ctx.store, _dataset(inputs, "dataset"))
    p = step.params
    if p["existing"]:
        sizes = ds.split_sizes()
        for name in ("train", "val", "test"):
            if not sizes.get(name):
                raise InvalidArgument(f"split.existing: dataset {ds.name or ds.id} has no {name!r} images")
        return common_pb2.JobResult(datasets=[ds.ref()])
    group_by = p.get("group_column") or ""
    spec = SplitSpec(train=p["train"], val=p["val"], test=p["test"], seed=p["seed"], group_by=group_by)
    records = ds.image_records()
    keys = [Path(r["file_name"]).stem for r in records]
    groups = None
    if group_by:
        mapping = read_groups(p["group_csv"], p["id_column"], group_by)
        groups = groups_for(keys, mapping, p["group_csv"])
    assignment = assign_splits(keys, spec, groups)
    ref = ds.with_splits({r["id"]: s for r, s in zip(records, assignment)}, spec.params())
    return common_pb2.JobResult(datasets=[ref])


# --- service steps -------------------------------------------------------------------------


def run_foregrounds(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    req = compositor_pb2.ExtractForegroundsRequest(
        dataset=_dataset(inputs, "dataset"), split="train", min_area=step.params["min_area"], feather_sigma=step.params["feather_sigma"]
    )
    return _job(ctx, "compositor", "SubmitExtractForegrounds", req)


def run_backgrounds(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    p = step.params
    req = compositor_pb2.HarvestBackgroundsRequest(
        dataset=_dataset(inputs, "dataset"),
        split="train",
        method=BACKGROUND_METHODS[p["method"]],
        dilate_px=p["dilate_px"],
        max_backgrounds=p["max_backgrounds"],
        seed=p["seed"],
    )
    return _job(ctx, "compositor", "SubmitHarvestBackgrounds", req)


def run_compose(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    p = step.params
    params = json_format.ParseDict(p["params"], compositor_pb2.ComposeParams())
    req = compositor_pb2.ComposeRequest(
        foregrounds=_object(inputs, "foregrounds"),
        backgrounds=_object(inputs, "backgrounds"),
        count=p["count"],
        seed=p["seed"],
        params=params,
        workers=ctx.plan.compositor.workers,
        name="",
    )
    return _job(ctx, "compositor", "SubmitCompose", req)


def run_gan_train(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    config = json_format.ParseDict(step.params["config"], gan_pb2.GanConfig())
    req = gan_pb2.GanTrainRequest(dataset=_dataset(inputs, "dataset"), split="train", config=config, seed=step.params["seed"])
    return _job(ctx, "gan", "SubmitTrain", req)


def run_gan_generate(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    p = step.params
    req = gan_pb2.GanGenerateRequest(
        checkpoint=_object(inputs, "generator"),
        masks=_dataset(inputs, "masks"),
        seed=p["seed"],
        no_dropout=p["no_dropout"],
        batchnorm=p["batchnorm"],
        resize=True,
        count=p["count"],
    )
    return _job(ctx, "gan", "SubmitGenerate", req)


def run_segment_train(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    p = step.params
    real = _dataset(inputs, "real")
    sources = [segmenter_pb2.TrainingSource(dataset=real, split="train", count=p["real"])]
    if p["composite"]:
        sources.append(segmenter_pb2.TrainingSource(dataset=_dataset(inputs, "composite"), count=p["composite"]))
    if p["gan"]:
        sources.append(segmenter_pb2.TrainingSource(dataset=_dataset(inputs, "gan"), count=p["gan"]))
    req = segmenter_pb2.SegmenterTrainRequest(
        sources=sources,
        val_dataset=real,
        val_split="val",
        config=json_format.ParseDict(p["config"], segmenter_pb2.SegmenterConfig()),
        seed=p["seed"],
    )
    return _job(ctx, "segmenter", "SubmitTrain", req)


def run_predict(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    p = step.params
    req = segmenter_pb2.PredictRequest(
        checkpoint=_object(inputs, "model"),
        dataset=_dataset(inputs, "dataset"),
        split="test",
        score_threshold=p["score_threshold"],
        mask_threshold=p["mask_threshold"],
        batch_size=p["batch_size"],
    )
    return _job(ctx, "segmenter", "SubmitPredict", req)


def run_evaluate(step: Step, inputs: dict[str, common_pb2.JobResult], ctx: StepContext) -> StepOutput:
    p = step.params
    req = evaluator_pb2.EvaluateRequest(
        truth=_dataset(inputs, "dataset"),
        split="test",
        predictions=_object(inputs, "predictions"),
        score_threshold=p["score_threshold"],
        mask_threshold=p["mask_threshold"],
        n_bootstrap=p["n_bootstrap"],
        seed=p["seed"],
    )
    return _job(ctx, "evaluator", "SubmitEvaluate", req)


def report_request(step: Step, inputs: dict[str, common_pb2.JobResult], results: dict[str, common_pb2.JobResult], prefix: str) -> evaluator_pb2.ReportRequest:
    """The evaluator's ReportRequest: one ArmRun per evaluated (arm, seed)."""
    arms = {a["name"]: a for a in step.params["arms"]}
    runs = []
    for role, ev_step in sorted(step.deps.items()):
        if not role.startswith("evaluation"):
            continue
        predict = ev_step.deps["predictions"]
        train = predict.deps["model"]
        arm = arms[ev_step.arm]
        train_result = results[train.key]
        runs.append(
            evaluator_pb2.ArmRun(
                arm=ev_step.arm,
                seed=ev_step.seed or 0,
                evaluation=results[ev_step.key].objects[0],
                predictions=results[predict.key].objects[0],
                training_record=train_result.objects[1] if len(train_result.objects) > 1 else common_pb2.ObjectRef(),
                real_count=arm["real"],
                composite_count=arm["composite"],
                gan_count=arm["gan"],
            )
        )
    return evaluator_pb2.ReportRequest(
        runs=runs,
        truth=_dataset(inputs, "dataset"),
        split="test",
        title=step.params["title"],
        prefix=prefix,
        overlay_images=step.params["overlay_images"],
    )


SERVICE_EXECUTORS: dict[str, Callable[[Step, dict[str, common_pb2.JobResult], StepContext], StepOutput]] = {
    "foregrounds": run_foregrounds,
    "backgrounds": run_backgrounds,
    "compose": run_compose,
    "gan_train": run_gan_train,
    "gan_generate": run_gan_generate,
    "segment_train": run_segment_train,
    "predict": run_predict,
    "evaluate": run_evaluate,
}

LOCAL_EXECUTORS: dict[str, Callable[[Step, dict[str, common_pb2.JobResult], StepContext], common_pb2.JobResult]] = {
    "dataset": run_dataset,
    "split": run_split,
}
