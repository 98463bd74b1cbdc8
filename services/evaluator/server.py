"""EvaluatorService: a thin gRPC adapter over services.evaluator.core.

SubmitEvaluate and SubmitReport are jobs (idempotent: the same request names the same job
and a stored result is returned without recomputing); Compare is a plain RPC (it is fast).
Requests are validated before anything runs, so bad input is INVALID_ARGUMENT (a missing
object NOT_FOUND) on the call itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from services.common.config import config_from_proto
from services.common.datasets import Dataset, validate_split
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin, job_id_for
from services.common.refs import add_output, object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore, canonical_json, validate_key
from services.evaluator.config import CompareConfig, EvalConfig, ReportConfig
from services.evaluator.core.coco import GroundTruth, predictions_from_results
from services.evaluator.core.compare import compare_evaluations
from services.evaluator.core.evaluate import evaluate, headline_metrics
from services.evaluator.core.reports import Report, RunInput, build_report, check_runs
from services.evaluator.core.sources import truth_from_dataset
from synthaug.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "evaluator"
SERVICE_NAME = evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name
EVALUATE_KIND = "evaluator.Evaluate"
REPORT_KIND = "evaluator.Report"
MAX_RUNS = 500
#: Request fields that are inputs, not settings (the rest fill the config dataclasses).
EVALUATE_INPUTS = ("truth", "split", "predictions")
COMPARE_INPUTS = ("a", "b", "seed")
REPORT_INPUTS = ("runs", "truth", "split", "title", "prefix", "seed")


@dataclass(frozen=True)
class _RunSource:
    """One ArmRun with its objects resolved to store keys (checked on submit)."""

    run: evaluator_pb2.ArmRun
    what: str
    evaluation: str
    predictions: str | None
    training_record: str | None


def _has_ref(run: evaluator_pb2.ArmRun, name: str) -> bool:
    return run.HasField(name) and bool(getattr(run, name).key)


class EvaluatorServicer(JobServicerMixin, evaluator_pb2_grpc.EvaluatorServiceServicer):
    def __init__(self, runtime: ServiceRuntime):
        self.store: ObjectStore = runtime.store
        self.jobs = runtime.jobs

    # -- Evaluate (job) ---------------------------------------------------------------------

    def SubmitEvaluate(self, request: evaluator_pb2.EvaluateRequest, context: Any) -> common_pb2.JobRef:
        config = config_from_proto(EvalConfig, request, exclude=EVALUATE_INPUTS)
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
            log.info("evaluated %s: %d images, mean IoU %.4f", pred_key, evaluation["n_images"], evaluation["mean_iou"])
            result = common_pb2.JobResult(
                metrics=headline_metrics(evaluation),
                attributes={"truth_dataset": dataset.id, "split": split, "predictions": pred_key,
                            "images_without_prediction": str(len(evaluation["images_without_prediction"]))},
            )
            return add_output(result, "evaluation", object_ref(self.store, info))

        return self.jobs.submit(EVALUATE_KIND, request, run)

    # -- Compare ----------------------------------------------------------------------------

    def _load_evaluation(self, ref: common_pb2.ObjectRef | str, what: str) -> dict[str, Any]:
        key = ref if isinstance(ref, str) else resolve_object(self.store, ref, what, verify=True)
        obj = self.store.get_json(key)
        if not isinstance(obj, dict) or not isinstance(obj.get("per_image"), list):
            raise InvalidArgument(f"{what}: {key!r} is not an evaluation JSON")
        return obj

    def Compare(self, request: evaluator_pb2.CompareRequest, context: Any) -> evaluator_pb2.CompareResponse:
        config = config_from_proto(CompareConfig, request, exclude=COMPARE_INPUTS)
        a = self._load_evaluation(request.a, "CompareRequest.a")
        b = self._load_evaluation(request.b, "CompareRequest.b")
        c = compare_evaluations(a, b, config.metric, config.n_bootstrap, int(request.seed))
        return evaluator_pb2.CompareResponse(
            n_images=c.n_images, mean_difference=c.mean_difference, ci_low=c.ci_low, ci_high=c.ci_high,
            p_value=c.p_value, metric=c.metric, mean_a=c.mean_a, mean_b=c.mean_b, statistic=c.statistic,
        )

    # -- Report (job) -----------------------------------------------------------------------

    def SubmitReport(self, request: evaluator_pb2.ReportRequest, context: Any) -> common_pb2.JobRef:
        what = "ReportRequest"
        config = config_from_proto(ReportConfig, request, exclude=REPORT_INPUTS)
        if len(request.runs) > MAX_RUNS:
            raise InvalidArgument(f"{what}.runs: at most {MAX_RUNS} runs, got {len(request.runs)}")
        check_runs([(run.arm, int(run.seed)) for run in request.runs], config.baseline_arm, f"{what}.runs")
        split = validate_split(request.split, f"{what}.split")
        prefix = request.prefix or f"reports/{job_id_for(REPORT_KIND, request)}/"
        if not prefix.endswith("/"):
            prefix += "/"
        validate_key(prefix + "index.html")
        dataset: Dataset | None = None
        if request.HasField("truth") and (request.truth.id or request.truth.name):
            dataset = Dataset.load(self.store, request.truth)
        sources = [self._run_source(run, f"{what}.runs[{i}]", dataset is not None) for i, run in enumerate(request.runs)]

        def run(ctx: JobContext) -> common_pb2.JobResult:
            truth = truth_from_dataset(dataset, split) if dataset is not None else None
            runs = []
            for n, source in enumerate(sources):
                ctx.progress(0.5 * n / len(sources), f"loading run {n + 1}/{len(sources)}")
                runs.append(self._load_run(source, truth))
            ctx.progress(0.5, "drawing tables and charts")
            report = build_report(runs, truth, request.title, config=config, seed=int(request.seed),
                                  load_image=dataset.load_image if dataset is not None else None)
            ctx.progress(0.95, f"writing {len(report.files)} files under {prefix}")
            return self._store_report(report, prefix)

        return self.jobs.submit(REPORT_KIND, request, run)

    def _run_source(self, run: evaluator_pb2.ArmRun, where: str, with_truth: bool) -> _RunSource:
        """Check one ArmRun's counts and objects before the job starts."""
        for name in ("real_count", "composite_count", "gan_count"):
            if getattr(run, name) < 0:
                raise InvalidArgument(f"{where}.{name} must be ≥ 0, got {getattr(run, name)}")
        if not run.HasField("evaluation"):
            raise InvalidArgument(f"{where}.evaluation is required")
        what = f"{where} ({run.arm}, seed {run.seed})"

        def key(name: str) -> str:
            return resolve_object(self.store, getattr(run, name), f"{what}.{name}", verify=True)

        return _RunSource(run, what, key("evaluation"),
                          key("predictions") if with_truth and _has_ref(run, "predictions") else None,
                          key("training_record") if _has_ref(run, "training_record") else None)

    def _load_run(self, source: _RunSource, truth: GroundTruth | None) -> RunInput:
        run = source.run
        evaluation = self._load_evaluation(source.evaluation, f"{source.what}.evaluation")
        preds = None
        if truth is not None and source.predictions is not None:
            preds = predictions_from_results(self.store.get_json(source.predictions), truth, source.predictions)
        record = self.store.get_json(source.training_record) if source.training_record is not None else None
        return RunInput(run.arm, int(run.seed), evaluation, preds, record,
                        int(run.real_count), int(run.composite_count), int(run.gan_count))

    def _store_report(self, report: Report, prefix: str) -> common_pb2.JobResult:
        """Write the files under `prefix`, index.html last: it is what a reader opens, and it
        names the others. The result lists them in the report's order (index.html first)."""
        names = [n for n in report.files if n != "index.html"] + ["index.html"]
        refs = {name: object_ref(self.store, self.store.put_bytes(prefix + name, report.files[name], report.content_type(name)))
                for name in names}
        result = common_pb2.JobResult(attributes={"notes": "\n".join(report.notes), "prefix": prefix},
                                      metrics={"files": float(len(refs))})
        for name in report.files:
            if name == "index.html":
                add_output(result, "index", refs[name])
            else:
                result.objects.append(refs[name])
        return result


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.add(evaluator_pb2_grpc.add_EvaluatorServiceServicer_to_server, EvaluatorServicer(runtime), SERVICE_NAME)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, SERVICE, argv)
