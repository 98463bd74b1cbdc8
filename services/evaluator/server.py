"""EvaluatorService: a thin gRPC adapter over services.evaluator.core.

SubmitEvaluate, SubmitQuality and SubmitReport are jobs (idempotent: the same request names the same job
and a stored result is returned without recomputing); Compare is a plain RPC (it is fast).
Requests are validated before anything runs, so bad input is INVALID_ARGUMENT (a missing
object NOT_FOUND) on the call itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from services.common.config import config_from_proto
from services.common.datasets import Dataset, validate_split
from services.common.errors import InvalidArgument
from services.common.jobs import JobContext, JobServicerMixin, job_id_for
from services.common.refs import add_output, object_ref, resolve_object
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore, canonical_json, validate_key
from services.evaluator.config import CompareConfig, EvalConfig, QualityConfig, ReportConfig
from services.evaluator.core.coco import GroundTruth, predictions_from_results
from services.evaluator.core.compare import compare_evaluations
from services.evaluator.core.evaluate import evaluate, headline_metrics
from services.evaluator.core.features import check_feature_space, decode_features
from services.evaluator.core.provenance import parse_provenance
from services.evaluator.core.quality import SourceInput, assess_quality, check_source_label
from services.evaluator.core.quality import headline_metrics as quality_metrics
from services.evaluator.core.report_inputs import INTERNAL, check_label
from services.evaluator.core.report_quality import parse_quality
from services.evaluator.core.reports import (
    ImageSet,
    Report,
    RunInput,
    build_report,
    check_runs,
)
from services.evaluator.core.sources import truth_from_dataset
from synthaug.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc

log = logging.getLogger(__name__)

SERVICE = "evaluator"
SERVICE_NAME = evaluator_pb2.DESCRIPTOR.services_by_name["EvaluatorService"].full_name
EVALUATE_KIND = "evaluator.Evaluate"
REPORT_KIND = "evaluator.Report"
QUALITY_KIND = "evaluator.Quality"
MAX_RUNS = 500
MAX_QUALITY_SOURCES = 100
#: Request fields that are inputs, not settings (the rest fill the config dataclasses).
EVALUATE_INPUTS = ("truth", "split", "predictions")
COMPARE_INPUTS = ("a", "b", "seed")
REPORT_INPUTS = ("runs", "truth", "split", "title", "prefix", "seed", "test_sets", "contact_sources", "provenance_json",
                 "quality")
QUALITY_INPUTS = ("features", "feature_space", "sources", "seed")


@dataclass(frozen=True)
class _RunSource:
    """One ArmRun with its objects resolved to store keys (checked on submit)."""

    run: evaluator_pb2.ArmRun
    what: str
    evaluation: str
    predictions: str | None
    training_record: str | None


def _has_ref(message: Any, name: str) -> bool:
    return message.HasField(name) and bool(getattr(message, name).key)


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

    # -- Quality (job) ----------------------------------------------------------------------

    def SubmitQuality(self, request: evaluator_pb2.QualityRequest, context: Any) -> common_pb2.JobRef:
        what = "QualityRequest"
        config = config_from_proto(QualityConfig, request, exclude=QUALITY_INPUTS)
        space = check_feature_space(request.feature_space, f"{what}.feature_space")
        if not request.HasField("features"):
            raise InvalidArgument(f"{what}.features: an object reference is required")
        features_key = resolve_object(self.store, request.features, f"{what}.features", verify=True)
        if not request.sources:
            raise InvalidArgument(f"{what}.sources: at least one synthetic source is required")
        if len(request.sources) > MAX_QUALITY_SOURCES:
            raise InvalidArgument(f"{what}.sources: at most {MAX_QUALITY_SOURCES}, got {len(request.sources)}")
        fidelity: list[str | None] = []
        seen: set[str] = set()
        for i, src in enumerate(request.sources):
            where = f"{what}.sources[{i}]"
            label = check_source_label(src.label, f"{where}.label")
            if label in seen:
                raise InvalidArgument(f"{where}.label {label!r} appears twice")
            seen.add(label)
            fidelity.append(resolve_object(self.store, src.mask_fidelity, f"{where}.mask_fidelity", verify=True)
                            if _has_ref(src, "mask_fidelity") else None)

        def run(ctx: JobContext) -> common_pb2.JobResult:
            ctx.progress(0.01, "loading features")
            features = decode_features(self.store.get_bytes(features_key, request.features.sha256), f"{what}.features")
            if features.extractor != space:
                raise InvalidArgument(f"{what}.feature_space is {space!r}, the features were extracted with {features.extractor!r}")
            sources = [SourceInput(src.label, self._load_evaluation(key, f"{what}.sources[{i}].mask_fidelity") if key else None,
                                   key or "") for i, (src, key) in enumerate(zip(request.sources, fidelity))]
            ctx.check_cancelled()
            quality = assess_quality(features, sources, config, int(request.seed),
                                     lambda f, m: ctx.progress(0.02 + 0.95 * f, m))
            quality["features"] = {"key": features_key, "sha256": request.features.sha256, "model": features.model}
            info = self.store.put_blob(canonical_json(quality), ".json", "application/json")
            log.info("quality of %s in %s: %d sources at %d images each", features_key, space, len(sources),
                     quality["sample_size"])
            result = common_pb2.JobResult(metrics=quality_metrics(quality),
                                          attributes={"feature_space": space, "features": features_key})
            return add_output(result, "quality", object_ref(self.store, info))

        return self.jobs.submit(QUALITY_KIND, request, run)

    # -- Report (job) -----------------------------------------------------------------------

    def SubmitReport(self, request: evaluator_pb2.ReportRequest, context: Any) -> common_pb2.JobRef:
        what = "ReportRequest"
        config = config_from_proto(ReportConfig, request, exclude=REPORT_INPUTS)
        if len(request.runs) > MAX_RUNS:
            raise InvalidArgument(f"{what}.runs: at most {MAX_RUNS} runs, got {len(request.runs)}")
        check_runs([(run.arm, int(run.seed), run.test_set) for run in request.runs], config.baseline_arm, f"{what}.runs")
        prefix = request.prefix or f"reports/{job_id_for(REPORT_KIND, request)}/"
        if not prefix.endswith("/"):
            prefix += "/"
        validate_key(prefix + "index.html")
        test_sets = self._test_sets(request, what)
        contact = [self._images(src.dataset, src.split, f"{what}.contact_sources[{i}]")
                   for i, src in enumerate(self._contact_sources(request, what))]
        provenance = parse_provenance(request.provenance_json, f"{what}.provenance_json") if request.provenance_json else None
        with_truth = {label for label, (dataset, _) in test_sets.items() if dataset is not None}
        sources = [self._run_source(run, f"{what}.runs[{i}]", check_label(run.test_set, "test set") in with_truth)
                   for i, run in enumerate(request.runs)]
        quality_keys = [resolve_object(self.store, ref, f"{what}.quality[{i}]", verify=True)
                        for i, ref in enumerate(request.quality)]
        if not quality_keys:
            for i, arm_run in enumerate(request.runs):
                if arm_run.quality_source:
                    raise InvalidArgument(
                        f"{what}.runs[{i}].quality_source {arm_run.quality_source!r}: the request has no quality results")

        def run(ctx: JobContext) -> common_pb2.JobResult:
            truths = {label: truth_from_dataset(dataset, split) for label, (dataset, split) in test_sets.items() if dataset}
            records: dict[str, Any] = {}
            runs = []
            for n, source in enumerate(sources):
                ctx.progress(0.4 * n / len(sources), f"loading run {n + 1}/{len(sources)}")
                runs.append(self._load_run(source, truths.get(check_label(source.run.test_set, "test set")), records))
            ctx.check_cancelled()
            image_sets = [ImageSet(label, truths[label], dataset.load_image)
                          for label, (dataset, _) in test_sets.items() if dataset is not None]
            contact_sets = [ImageSet(src.label, truth_from_dataset(dataset, split), dataset.load_image)
                            for src, (dataset, split) in zip(request.contact_sources, contact)]
            quality = [parse_quality(self.store.get_json(key), f"{what}.quality[{i}] ({key})")
                       for i, key in enumerate(quality_keys)]
            ctx.progress(0.4, "tables, statistics and figures")
            report = build_report(runs, None, request.title, config=config, seed=int(request.seed),
                                  test_sets=image_sets, contact=contact_sets, provenance=provenance,
                                  quality=quality, quality_images=self._image_loader())
            ctx.progress(0.95, f"writing {len(report.files)} files under {prefix}")
            return self._store_report(report, prefix)

        return self.jobs.submit(REPORT_KIND, request, run)

    def _image_loader(self) -> Callable[[str, int], np.ndarray]:
        """(dataset id, image id) → RGB image, datasets loaded once: the quality section's
        closest pairs name their images this way."""
        datasets: dict[str, Dataset] = {}

        def load(dataset_id: str, image_id: int) -> np.ndarray:
            if dataset_id not in datasets:
                datasets[dataset_id] = Dataset.load(self.store, dataset_id)
            dataset = datasets[dataset_id]
            return dataset.load_image(dataset.record(image_id))

        return load

    def _images(self, ref: common_pb2.DatasetRef, split: str, where: str) -> tuple[Dataset, str]:
        """A dataset and split the report draws images from, checked: it exists and the split has images."""
        split = validate_split(split, f"{where}.split")
        dataset = Dataset.load(self.store, ref)
        if not dataset.image_records(split):
            raise InvalidArgument(f"{where}: dataset {dataset.id} has no images in split {split!r}")
        return dataset, split

    def _test_sets(self, request: evaluator_pb2.ReportRequest, what: str) -> dict[str, tuple[Dataset | None, str]]:
        """Label → (truth dataset or None, split) of every test set the runs name. truth/split
        are the internal one's; each of test_sets is named by a run and named once."""
        out: dict[str, tuple[Dataset | None, str]] = {}
        split = validate_split(request.split, f"{what}.split")
        if request.HasField("truth") and (request.truth.id or request.truth.name):
            out[INTERNAL] = self._images(request.truth, split, f"{what}.truth")
        named = {check_label(run.test_set, "test set") for run in request.runs}
        for i, ts in enumerate(request.test_sets):
            where = f"{what}.test_sets[{i}]"
            label = check_label(ts.label, f"{where}.label")
            if not ts.label or label == INTERNAL:
                raise InvalidArgument(f"{where}.label: the internal test set is {what}.truth/split, not a test_sets entry")
            if label in out:
                raise InvalidArgument(f"{where}.label {label!r} appears twice")
            if label not in named:
                raise InvalidArgument(f"{where}: no run names test set {label!r}")
            has_truth = ts.HasField("truth") and bool(ts.truth.id or ts.truth.name)
            out[label] = self._images(ts.truth, ts.split, f"{where}.truth") if has_truth else (None, ts.split)
        for i, run in enumerate(request.runs):
            label = check_label(run.test_set, "test set")
            if label != INTERNAL and label not in out:
                raise InvalidArgument(f"{what}.runs[{i}].test_set {label!r} is not among {what}.test_sets")
        return out

    @staticmethod
    def _contact_sources(request: evaluator_pb2.ReportRequest, what: str) -> list[evaluator_pb2.ContactSource]:
        seen: set[str] = set()
        for i, src in enumerate(request.contact_sources):
            if not src.label:
                raise InvalidArgument(f"{what}.contact_sources[{i}].label is empty")
            if src.label in seen:
                raise InvalidArgument(f"{what}.contact_sources[{i}].label {src.label!r} appears twice")
            if not src.HasField("dataset"):
                raise InvalidArgument(f"{what}.contact_sources[{i}].dataset is required")
            seen.add(src.label)
        return list(request.contact_sources)

    def _run_source(self, run: evaluator_pb2.ArmRun, where: str, with_truth: bool) -> _RunSource:
        """Check one ArmRun's counts and objects before the job starts."""
        for name in ("real_count", "composite_count", "gan_count"):
            if getattr(run, name) < 0:
                raise InvalidArgument(f"{where}.{name} must be ≥ 0, got {getattr(run, name)}")
        if not run.HasField("evaluation"):
            raise InvalidArgument(f"{where}.evaluation is required")
        on = f", test set {run.test_set}" if run.test_set and run.test_set != INTERNAL else ""
        what = f"{where} ({run.arm}, seed {run.seed}{on})"

        def key(name: str) -> str:
            return resolve_object(self.store, getattr(run, name), f"{what}.{name}", verify=True)

        return _RunSource(run, what, key("evaluation"),
                          key("predictions") if with_truth and _has_ref(run, "predictions") else None,
                          key("training_record") if _has_ref(run, "training_record") else None)

    def _load_run(self, source: _RunSource, truth: GroundTruth | None, records: dict[str, Any]) -> RunInput:
        """One run's objects; `records` caches training records by key (one training serves
        the runs of its arm and seed on every test set)."""
        run = source.run
        evaluation = self._load_evaluation(source.evaluation, f"{source.what}.evaluation")
        preds = None
        if truth is not None and source.predictions is not None:
            preds = predictions_from_results(self.store.get_json(source.predictions), truth, source.predictions)
        record = None
        if source.training_record is not None:
            if source.training_record not in records:
                records[source.training_record] = self.store.get_json(source.training_record)
            record = records[source.training_record]
        return RunInput(run.arm, int(run.seed), evaluation, preds, record, int(run.real_count), int(run.composite_count),
                        int(run.gan_count), check_label(run.test_set, "test set"), run.quality_source)

    def _store_report(self, report: Report, prefix: str) -> common_pb2.JobResult:
        """Write the files under `prefix`, index.html last: it is what a reader opens, and it
        names the others. The result lists them in the report's order (index.html first)."""
        names = [n for n in report.files if n != "index.html"] + ["index.html"]
        refs = {name: object_ref(self.store, self.store.put_bytes(prefix + name, report.files[name], report.content_type(name)))
                for name in names}
        result = common_pb2.JobResult(
            attributes={"notes": "\n".join(report.notes), "warnings": "\n".join(report.warnings), "prefix": prefix},
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
