"""What each step kind does: local work (dataset, split) or a service job.

Each executor turns a step's parameters and its dependencies' results into one request
(or one local call) and returns a StepOutput; the runner handles caching, concurrency,
progress and failures around it. Dependencies' results are read by role (the roles each
service RPC documents; local steps produce dataset_outputs["dataset"]), never by position.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from orchestrator.dispatch import Dispatcher, JobOutcome
from orchestrator.graph import Step
from orchestrator.plan import Plan
from services.common import refs
from services.common.config import config_to_proto
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, compositor_pb2, evaluator_pb2, gan_pb2, segmenter_pb2

Progress = Callable[[float, str, dict[str, float]], None]


@dataclass
class StepContext:
    store: ObjectStore
    dispatcher: Dispatcher
    plan: Plan
    progress: Progress
    cancel: threading.Event
    #: Results of every step finished so far in this run, by step key (the report reads the
    #: training records and predictions behind each evaluation it depends on).
    results: Mapping[str, common_pb2.JobResult]
    run_id: str


@dataclass
class StepOutput:
    result: common_pb2.JobResult
    #: Seconds of real compute (a service job's RUNNING time, or a local step's run time).
    compute_seconds: float
    #: The replica that ran it.
    replica: str = ""


Inputs = dict[str, common_pb2.JobResult]
Executor = Callable[[Step, Inputs, StepContext], StepOutput]


def _dataset(inputs: Inputs, dep: str) -> common_pb2.DatasetRef:
    """The dataset produced by the step this one depends on as `dep`."""
    return refs.dataset_output(inputs[dep], "dataset", f"step input {dep!r}")


def _output(inputs: Inputs, dep: str, role: str) -> common_pb2.ObjectRef:
    """The object produced under `role` by the step this one depends on as `dep`."""
    return refs.output(inputs[dep], role, f"step input {dep!r}")


def _local_output(dataset: common_pb2.DatasetRef, started: float) -> StepOutput:
    return StepOutput(refs.add_output(common_pb2.JobResult(), "dataset", dataset), time.monotonic() - started)


def _job(ctx: StepContext, service: str, submit: str, request: Any) -> StepOutput:
    def on_event(event: common_pb2.JobEvent) -> None:
        if event.state == common_pb2.JOB_STATE_RUNNING:
            ctx.progress(event.progress, event.message, dict(event.metrics))

    outcome: JobOutcome = ctx.dispatcher[service].run_job(submit, request, on_event=on_event, cancel=ctx.cancel)
    return StepOutput(outcome.result, outcome.running_seconds, outcome.replica)


# --- local steps ---------------------------------------------------------------------------


def run_dataset(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    from services.common.importers.pipeline import ImportOptions

    started = time.monotonic()
    params = step.params
    on_progress = lambda done, total: ctx.progress(done / max(total, 1), f"{done}/{total} images", {})  # noqa: E731
    options = ImportOptions(name="", size=None, split=None)
    if "name" in params:
        return _local_output(Dataset.load(ctx.store, params["name"]).ref(), started)
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
    return _local_output(Dataset.load(ctx.store, summary.dataset_id).ref(), started)


def run_split(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    from services.common.splits import SplitSpec, assign_splits, groups_for, read_groups

    started = time.monotonic()
    ds = Dataset.load(ctx.store, _dataset(inputs, "dataset"))
    p = step.params
    if p["existing"]:
        sizes = ds.split_sizes()
        for name in ("train", "val", "test"):
            if not sizes.get(name):
                raise InvalidArgument(f"split.existing: dataset {ds.name or ds.id} has no {name!r} images")
        return _local_output(ds.ref(), started)
    group_by = p.get("group_column") or ""
    spec = SplitSpec(train=p["train"], val=p["val"], test=p["test"], seed=p["seed"], group_by=group_by)
    records = ds.image_records()
    keys = [Path(r["file_name"]).stem for r in records]
    groups = None
    if group_by:
        mapping = read_groups(p["group_csv"], p["id_column"], group_by)
        groups = groups_for(keys, mapping, p["group_csv"])
    assignment = assign_splits(keys, spec, groups)
    return _local_output(ds.with_splits({r["id"]: s for r, s in zip(records, assignment)}, spec.params()), started)


# --- service steps -------------------------------------------------------------------------
# Requests carry every setting explicitly (config_to_proto), so a service runs exactly what the
# step's key names, whatever its own defaults are.


def run_foregrounds(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    req = config_to_proto(step.params["settings"], compositor_pb2.ExtractForegroundsRequest, dataset=_dataset(inputs, "dataset"), split="train")
    return _job(ctx, "compositor", "SubmitExtractForegrounds", req)


def run_backgrounds(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = config_to_proto(p["settings"], compositor_pb2.HarvestBackgroundsRequest, dataset=_dataset(inputs, "dataset"), split="train", seed=p["seed"])
    return _job(ctx, "compositor", "SubmitHarvestBackgrounds", req)


def run_compose(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = compositor_pb2.ComposeRequest(
        foregrounds=_output(inputs, "foregrounds", "foregrounds"),
        backgrounds=_output(inputs, "backgrounds", "backgrounds"),
        count=p["count"],
        seed=p["seed"],
        params=config_to_proto(p["params"], compositor_pb2.ComposeParams),
        workers=ctx.plan.compositor.workers,
        name="",
    )
    return _job(ctx, "compositor", "SubmitCompose", req)


def run_gan_train(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = gan_pb2.GanTrainRequest(dataset=_dataset(inputs, "dataset"), split="train", config=config_to_proto(p["config"], gan_pb2.GanConfig), seed=p["seed"])
    return _job(ctx, "gan", "SubmitTrain", req)


def run_gan_generate(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = config_to_proto(
        p["settings"], gan_pb2.GanGenerateRequest, checkpoint=_output(inputs, "generator", "generator"), masks=_dataset(inputs, "masks"), seed=p["seed"]
    )
    return _job(ctx, "gan", "SubmitGenerate", req)


def run_segment_train(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
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
        config=config_to_proto(p["config"], segmenter_pb2.SegmenterConfig),
        seed=p["seed"],
    )
    return _job(ctx, "segmenter", "SubmitTrain", req)


def run_predict(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    req = config_to_proto(
        step.params["settings"], segmenter_pb2.PredictRequest, checkpoint=_output(inputs, "model", "model"), dataset=_dataset(inputs, "dataset"), split="test"
    )
    return _job(ctx, "segmenter", "SubmitPredict", req)


def run_evaluate(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    req = config_to_proto(
        step.params["settings"], evaluator_pb2.EvaluateRequest, truth=_dataset(inputs, "dataset"), split="test", predictions=_output(inputs, "predictions", "predictions")
    )
    return _job(ctx, "evaluator", "SubmitEvaluate", req)


def report_request(step: Step, inputs: Inputs, results: Mapping[str, common_pb2.JobResult], prefix: str) -> evaluator_pb2.ReportRequest:
    """The evaluator's ReportRequest: one ArmRun per evaluated (arm, seed), with the
    predictions and training record behind each evaluation."""
    arms = {a["name"]: a for a in step.params["arms"]}
    runs = []
    for role, ev_step in sorted(step.deps.items()):
        if not role.startswith("evaluation"):
            continue
        predict = ev_step.deps["predictions"]
        train = predict.deps["model"]
        arm = arms[ev_step.arm]
        runs.append(
            evaluator_pb2.ArmRun(
                arm=ev_step.arm,
                seed=ev_step.seed or 0,
                evaluation=refs.output(results[ev_step.key], "evaluation", f"step {ev_step.label}"),
                predictions=refs.output(results[predict.key], "predictions", f"step {predict.label}"),
                training_record=refs.output(results[train.key], "training_record", f"step {train.label}"),
                real_count=arm["real"],
                composite_count=arm["composite"],
                gan_count=arm["gan"],
            )
        )
    request = config_to_proto(step.params["settings"], evaluator_pb2.ReportRequest, truth=_dataset(inputs, "dataset"), split="test", title=step.params["title"], prefix=prefix)
    request.runs.extend(runs)
    return request


def run_report(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    request = report_request(step, inputs, ctx.results, prefix=f"runs/{ctx.run_id}/report")
    out = _job(ctx, "evaluator", "SubmitReport", request)
    refs.output(out.result, "index", "the evaluator's report")  # the run's report link: required
    return out


#: What runs each step kind: the orchestrator itself (dataset, split) or a service job.
EXECUTORS: dict[str, Executor] = {
    "dataset": run_dataset,
    "split": run_split,
    "foregrounds": run_foregrounds,
    "backgrounds": run_backgrounds,
    "compose": run_compose,
    "gan_train": run_gan_train,
    "gan_generate": run_gan_generate,
    "segment_train": run_segment_train,
    "predict": run_predict,
    "evaluate": run_evaluate,
    "report": run_report,
}
