"""EvaluatorService: a thin gRPC adapter over services.evaluator.core.

SubmitEvaluate is a job (idempotent: the same request names the same job and a stored
result is returned without recomputing); Compare and Report are plain RPCs. Requests are
validated before anything runs, so bad input is INVALID_ARGUMENT on the call itself.
"""
from __future__ import annotations

import logging
from typing import Any

from services.common.datasets import Dataset, validate_split
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin, job_id_for
from services.common.refs import object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore, canonical_json, validate_key
from services.evaluator.core.coco import GroundTruth, predictions_from_results
from services.evaluator.core.compare import check_metric, compare_evaluations
from services.evaluator.core.evaluate import DEFAULT_SCORE_THRESHOLD, EvalConfig, evaluate, headline_metrics
from services.evaluator.core.reports import RunInput, build_report
from services.evaluator.core.sources import truth_from_dataset
from services.evaluator.core.stats import DEFAULT_BOOTSTRAP
from synthaug.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "evaluator"
SERVICE_NAME = evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name
EVALUATE_KIND = "evaluator.Evaluate"
DEFAULT_OVERLAY_IMAGES = 6
MAX_OVERLAY_IMAGES = 24
MAX_RUNS = 500


def _n_bootstrap(value: int, what: str) -> int:
    if value == 0:
        return DEFAULT_BOOTSTRAP
    if not 100 <= value <= 100_000:
        raise InvalidArgument(f"{what}.n_bootstrap must be in [100, 100000] (0 = {DEFAULT_BOOTSTRAP}), got {value}")
    return value



def eval_config(request: evaluator_pb2.EvaluateRequest) -> EvalConfig:
    config = EvalConfig(
        score_threshold=request.score_threshold if request.HasField("score_threshold") else DEFAULT_SCORE_THRESHOLD,
        mask_threshold=request.mask_threshold if request.HasField("mask_threshold") else None,
        n_bootstrap=_n_bootstrap(request.n_bootstrap, "EvaluateRequest"),
        seed=int(request.seed),
    )
    try:
        config.validate()
    except InvalidArgument as exc:
        raise InvalidArgument(f"EvaluateRequest: {exc}") from None
    return config


class EvaluatorServicer(JobServicerMixin, evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, runtime: ServiceRuntime):
        self.store: ObjectStore = runtime.store
        self.jobs = runtime.jobs

    # -- Evaluate (job) ---------------------------------------------------------------------

    def SubmitEvaluate(self, request: evaluator_pb2.EvaluateRequest, context: Any) -> common_pb2.JobRef:
        config = eval_config(request)
        split = validate_split(request.split, "EvaluateRequest.split")
        if not request.HasField("truth"):
            raise InvalidArgument("EvaluateRequest.truth: a dataset reference is required")
        if not request.HasField("predictions"):
            raise InvalidArgument("EvaluateRequest.predictions: an object reference is required")
        dataset = Dataset.load(self.store, request.truth)
        if not dataset.image_records(split):
            raise InvalidArgument(f"EvaluateRequest.truth: dataset {dataset.id} has no images in split {split!r}")
        pred_key = resolve_object(self.store, request.predictions, "EvaluateRequest.predictions", verify=True)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            ctx.progress(0.02, "loading truth and predictions")
            truth = truth_from_dataset(dataset, split)
            preds = predictions_from_results(self.store.get_json(pred_key), truth, pred_key)
            ctx.check_cancelled()
            evaluation = evaluate(truth, preds, config, lambda f, m: ctx.progress(0.05 + 0.9 * f, m), pred_key)
            evaluation.update({"truth_dataset": dataset.id, "split": split, "predictions_sha256": request.predictions.sha256})
            info = self.store.put_blob(canonical_json(evaluation), ".json", "application/json")
            metrics = headline_metrics(evaluation)
            log.info("evaluated %s: %d images, mean IoU %.4f", pred_key, evaluation["n_images"], evaluation["mean_iou"])
            return common_pb2.JobResult(
                objects=[object_ref(self.store, info)],
                metrics=metrics,
                attributes={"truth_dataset": dataset.id, "split": split, "predictions": pred_key,
                            "images_without_prediction": str(len(evaluation["images_without_prediction"]))},
            )

        return self.jobs.submit(EVALUATE_KIND, request, run)

    # -- Compare ----------------------------------------------------------------------------

    def _load_evaluation(self, ref: common_pb2.ObjectRef, what: str) -> dict[str, Any]:
        key = resolve_object(self.store, ref, what, verify=True)
        obj = self.store.get_json(key)
        if not isinstance(obj, dict) or not isinstance(obj.get("per_image"), list):
            raise InvalidArgument(f"{what}: {key!r} is not an evaluation JSON")
        return obj

    def Compare(self, request: evaluator_pb2.CompareRequest, context: Any) -> evaluator_pb2.CompareResponse:
        metric = check_metric(request.metric)
        n_boot = _n_bootstrap(request.n_bootstrap, "CompareRequest")
        a = self._load_evaluation(request.a, "CompareRequest.a")
        b = self._load_evaluation(request.b, "CompareRequest.b")
        c = compare_evaluations(a, b, metric, n_boot, int(request.seed))
        return evaluator_pb2.CompareResponse(
            n_images=c.n_images, mean_difference=c.mean_difference, ci_low=c.ci_low, ci_high=c.ci_high,
            p_value=c.p_value, metric=c.metric, mean_a=c.mean_a, mean_b=c.mean_b, statistic=c.statistic,
        )

    # -- Report -----------------------------------------------------------------------------

    def Report(self, request: evaluator_pb2.ReportRequest, context: Any) -> evaluator_pb2.ReportResponse:
        if not request.runs:
            raise InvalidArgument("ReportRequest.runs: at least one run is required")
        if len(request.runs) > MAX_RUNS:
            raise InvalidArgument(f"ReportRequest.runs: at most {MAX_RUNS} runs, got {len(request.runs)}")
        overlay = DEFAULT_OVERLAY_IMAGES if request.overlay_images == 0 else max(0, request.overlay_images)
        if overlay > MAX_OVERLAY_IMAGES:
            raise InvalidArgument(f"ReportRequest.overlay_images must be ≤ {MAX_OVERLAY_IMAGES}, got {overlay}")
        n_boot = _n_bootstrap(request.n_bootstrap, "ReportRequest")
        split = validate_split(request.split, "ReportRequest.split")
        prefix = request.prefix or f"reports/{job_id_for('evaluator.Report', request)}/"
        if not prefix.endswith("/"):
            prefix += "/"
        validate_key(prefix + "index.html")
        for i, run in enumerate(request.runs):
            if not run.arm:
                raise InvalidArgument(f"ReportRequest.runs[{i}].arm is empty")
            for name, value in (("real_count", run.real_count), ("composite_count", run.composite_count), ("gan_count", run.gan_count)):
                if value < 0:
                    raise InvalidArgument(f"ReportRequest.runs[{i}].{name} must be ≥ 0, got {value}")
            if not run.HasField("evaluation"):
                raise InvalidArgument(f"ReportRequest.runs[{i}].evaluation is required")

        dataset: Dataset | None = None
        truth: GroundTruth | None = None
        if request.HasField("truth") and (request.truth.id or request.truth.name):
            dataset = Dataset.load(self.store, request.truth)
            truth = truth_from_dataset(dataset, split)
        runs = []
        for i, run in enumerate(request.runs):
            what = f"ReportRequest.runs[{i}] ({run.arm}, seed {run.seed})"
            evaluation = self._load_evaluation(run.evaluation, f"{what}.evaluation")
            preds = None
            if truth is not None and run.HasField("predictions") and run.predictions.key:
                key = resolve_object(self.store, run.predictions, f"{what}.predictions", verify=True)
                preds = predictions_from_results(self.store.get_json(key), truth, key)
            record = None
            if run.HasField("training_record") and run.training_record.key:
                key = resolve_object(self.store, run.training_record, f"{what}.training_record", verify=True)
                record = self.store.get_json(key)
            runs.append(RunInput(run.arm, int(run.seed), evaluation, preds, record,
                                 int(run.real_count), int(run.composite_count), int(run.gan_count)))
        report = build_report(
            runs, truth, request.title or "synthaug report", overlay,
            load_image=dataset.load_image if dataset is not None else None,
            baseline=request.baseline_arm or None, n_bootstrap=n_boot, seed=int(request.seed),
        )
        # index.html is written last: it is what a reader opens, and it names the others.
        names = [n for n in report.files if n != "index.html"] + ["index.html"]
        refs = {}
        for name in names:
            info = self.store.put_bytes(prefix + name, report.files[name], report.content_type(name))
            refs[name] = object_ref(self.store, info)
        return evaluator_pb2.ReportResponse(files=[refs[n] for n in report.files], notes=report.notes)


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server, EvaluatorServicer(runtime), SERVICE_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
