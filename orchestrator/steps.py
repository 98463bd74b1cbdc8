"""What each step kind does: local work (dataset, split, subset, test_set, filter) or a service job.

Each executor turns a step's parameters and its dependencies' results into one request
(or one local call) and returns a StepOutput; the runner handles caching, concurrency,
progress and failures around it. Dependencies' results are read by role (the roles each
service RPC documents; local steps produce dataset_outputs["dataset"]), never by position.

The code of a step kind (`code_digests`, part of every step key): for a service kind, the
service's code (services/common/code_digest.py: its package and the project modules it
imports); for a local kind, the project modules its executor uses. In both cases also the
source of its executor here and of the module-level helpers it calls (transitively) — the
code that turns a step into a request decides what the service computes as much as the
service does. Editing one executor recomputes the steps of its kind and what depends on
them; editing a helper recomputes every kind that calls it. How a step is run (StepContext:
dispatch, progress, timing) is not part of any digest: it cannot change a result.
"""
from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from orchestrator.dispatch import Dispatcher, JobOutcome
from orchestrator.graph import STEP_SERVICE, Step, check_counts
from orchestrator.plan import INTERNAL_TEST_SET, Plan
from services.common import refs
from services.common.code_digest import CodeDigest, CodeIndex, default_index
from services.common.config import config_to_proto
from services.common.datasets import Dataset
from services.common.errors import InvalidArgument, NotFound
from services.common.jobs import TERMINAL, recompute_metadata
from services.common.sampling import nested_order
from services.common.store import ObjectStore, canonical_json, sha256_bytes
from synthaug import CODE_VERSION
from synthaug.v1 import common_pb2, compositor_pb2, evaluator_pb2, gan_pb2, segmenter_pb2

if TYPE_CHECKING:
    from orchestrator.graph import Graph

Progress = Callable[[float, str, dict[str, float]], None]


@dataclass
class StepTimes:
    """When one step's phases happened: monotonic instants on the orchestrator's clock, and
    the time its job waited for a slot at the service (measured on the service's clock)."""

    #: The runner decided to run it (its dependencies succeeded; no record cached).
    decided: float
    #: An orchestrator thread took it up (before: waiting for one of --max-parallel threads).
    thread: float | None = None
    #: The service started computing it (for a local step: its executor started).
    started: float | None = None
    #: The service finished it (its final event arrived; a local step: its executor returned).
    computed: float | None = None
    #: Seconds its job was QUEUED at the service, waiting for a job slot.
    service_queue: float = 0.0
    #: Its result was handled: read back, checked, recorded in the store.
    recorded: float | None = None

    def breakdown(self) -> dict[str, float]:
        """queued (waiting for a slot, here or at the service), dispatch (deciding → the service
        starting it, less the waiting), compute, result (final event → record written)."""
        thread = self.thread if self.thread is not None else self.decided
        started = self.started if self.started is not None else thread
        computed = self.computed if self.computed is not None else started
        recorded = self.recorded if self.recorded is not None else computed
        waiting_here = max(0.0, thread - self.decided)
        waiting_there = min(max(0.0, self.service_queue), max(0.0, started - thread))
        queued = waiting_here + waiting_there
        return {
            "queued_seconds": queued,
            "dispatch_seconds": max(0.0, started - self.decided - queued),
            "compute_seconds": max(0.0, computed - started),
            "result_seconds": max(0.0, recorded - computed),
        }


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
    #: The whole graph (the report's provenance lists every step).
    graph: Graph | None = None
    #: The step's phases, filled as they happen.
    times: StepTimes = field(default_factory=lambda: StepTimes(time.monotonic()))
    #: Called once when the service starts the step (the runner shows it running from then).
    on_start: Callable[[], None] = lambda: None
    #: Compute afresh: the service must not answer from a stored job result.
    recompute: bool = False

    def started(self) -> None:
        """Mark the step started now (once)."""
        if self.times.started is None:
            self.times.started = time.monotonic()
            self.on_start()

    # Running a step is the context's business, not the executor's: the executors (and their
    # helpers in this module) are the code that decides what a step computes, and their source
    # is part of the step's code digest; these methods are not.

    def local_output(self, dataset: common_pb2.DatasetRef) -> StepOutput:
        """A local step's result: the dataset it produced, computed since `started()`."""
        self.times.computed = time.monotonic()
        started = self.times.started if self.times.started is not None else self.times.computed
        return StepOutput(refs.add_output(common_pb2.JobResult(), "dataset", dataset), self.times.computed - started)

    def job(self, service: str, submit: str, request: Any) -> StepOutput:
        """Run one service job; the step counts as started when the service starts the job."""
        queued_at: list[float] = []  # the service's clock

        def on_event(event: common_pb2.JobEvent) -> None:
            if event.state == common_pb2.JOB_STATE_QUEUED and not queued_at:
                queued_at.append(event.time)
            elif event.state == common_pb2.JOB_STATE_RUNNING:
                if self.times.started is None and queued_at:
                    self.times.service_queue = max(0.0, event.time - queued_at[0])
                self.started()
                self.progress(event.progress, event.message, dict(event.metrics))
            if event.state in TERMINAL:
                self.started()  # a stored result: it never ran, so it starts and ends now
                self.times.computed = time.monotonic()

        extra = {"metadata": recompute_metadata()} if self.recompute else {}
        outcome: JobOutcome = self.dispatcher[service].run_job(submit, request, on_event=on_event, cancel=self.cancel, **extra)
        if self.times.computed is None:
            self.started()
            self.times.computed = time.monotonic()
        return StepOutput(outcome.result, outcome.running_seconds, outcome.replica)


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


# --- local steps ---------------------------------------------------------------------------


def run_dataset(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    from ingest.importers.pipeline import ImportOptions

    ctx.started()
    params = step.params
    on_progress = lambda done, total: ctx.progress(done / max(total, 1), f"{done}/{total} images", {})  # noqa: E731
    options = ImportOptions(name="", size=None, split=None)
    if "name" in params:
        return ctx.local_output(Dataset.load(ctx.store, params["name"]).ref())
    if "demo" in params:
        from ingest.demo_data import DemoConfig, register_demo

        demo = params["demo"]
        summary = register_demo(ctx.store, demo["count"], demo["seed"], DemoConfig(size=demo["size"]), options=options, progress=on_progress)
    else:
        imp = params["import"]
        size = imp["size"]
        options = ImportOptions(name="", size=None if size == "keep" else size, split=None)
        if imp["format"] == "masks":
            from ingest.importers.masks import MaskOptions, import_masks

            masks = MaskOptions(pattern=imp["pattern"], min_area=imp["min_area"])
            summary = import_masks(ctx.store, imp["images"], imp["masks"], masks, options, progress=on_progress)
        else:
            from ingest.importers.coco import import_coco

            summary = import_coco(ctx.store, imp["annotations"], imp["images"], options, progress=on_progress)
    return ctx.local_output(Dataset.load(ctx.store, summary.dataset_id).ref())


#: Shared images named in a refusal (the count is always given).
SHARED_SHOWN = 20


def check_disjoint(label: str, test: Dataset, split: str, training: Dataset) -> None:
    """InvalidArgument when test set `label` (the `split` of `test`) has no images or shares an
    image, by content sha256, with the training dataset (any of its splits); the message
    names every pair's file names and ids (the first SHARED_SHOWN)."""
    records = test.image_records(split)
    if not records:
        raise InvalidArgument(f"test set {label!r}: dataset {test.name or test.id} has no images" + (f" in split {split!r}" if split else ""))
    by_sha: dict[str, dict[str, Any]] = {}
    for r in training.image_records():
        by_sha.setdefault(str(r["sha256"]), r)
    shared = [(r, by_sha[str(r["sha256"])]) for r in records if str(r["sha256"]) in by_sha]
    if shared:
        pairs = "; ".join(f"{t['file_name']} (id {t['id']}) = {d['file_name']} (id {d['id']})" for t, d in shared[:SHARED_SHOWN])
        more = f"; … and {len(shared) - SHARED_SHOWN} more" if len(shared) > SHARED_SHOWN else ""
        raise InvalidArgument(
            f"test set {label!r} shares {len(shared)} of its {len(records)} images with the training dataset "
            f"{training.name or training.id} (test image = training image): {pairs}{more}; remove them from the test set"
        )


def run_test_set(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    """Load or import an external test set as the dataset step would (`params["dataset"]` is
    graph.dataset_params of its spec) and refuse it when it shares an image with the training
    dataset; its dataset unchanged otherwise."""
    p = step.params
    loaded = run_dataset(Step("dataset", f"{step.label}: its data", p["dataset"]), {}, ctx)
    ref = refs.dataset_output(loaded.result, "dataset", step.label)
    check_disjoint(p["label"], Dataset.load(ctx.store, ref), p["split"], Dataset.load(ctx.store, _dataset(inputs, "training")))
    return ctx.local_output(ref)


def split_assignment(ds: Dataset, params: Mapping[str, Any]) -> dict[int, str]:
    """Image id → split, as the split step assigns them (its `params`; not for `existing`)."""
    from ingest.splits import SplitSpec, assign_splits, groups_for, read_groups

    group_by = params.get("group_column") or ""
    spec = SplitSpec(train=params["train"], val=params["val"], test=params["test"], seed=params["seed"], group_by=group_by)
    records = ds.image_records()
    keys = [Path(r["file_name"]).stem for r in records]
    groups = None
    if group_by:
        mapping = read_groups(params["group_csv"], params["id_column"], group_by)
        groups = groups_for(keys, mapping, params["group_csv"])
    return {r["id"]: s for r, s in zip(records, assign_splits(keys, spec, groups))}


def run_split(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    from ingest.splits import SplitSpec

    ctx.started()
    ds = Dataset.load(ctx.store, _dataset(inputs, "dataset"))
    p = step.params
    if p["existing"]:
        sizes = ds.split_sizes()
        for name in ("train", "val", "test"):
            if not sizes.get(name):
                raise InvalidArgument(f"split.existing: dataset {ds.name or ds.id} has no {name!r} images")
        return ctx.local_output(ds.ref())
    spec = SplitSpec(train=p["train"], val=p["val"], test=p["test"], seed=p["seed"], group_by=p.get("group_column") or "")
    return ctx.local_output(ds.with_splits(split_assignment(ds, p), spec.params()))


def synthesis_prefix(ds: Dataset, split: str, count: int, order_seed: int) -> list[int]:
    """The first `count` image ids of `split` in the arms' nested training order: the real
    images every arm with at least `count` real images trains on (services/common/sampling.py,
    the order the segmenter draws with)."""
    ids = [int(r["id"]) for r in ds.image_records(split)]
    if count > len(ids):
        raise InvalidArgument(f"synthesis.real ({count}) is more than the {len(ids)} images of split {split!r} of dataset {ds.name or ds.id}")
    return nested_order(order_seed, ds.id, split, ids)[:count]


def run_subset(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    """The real images synthesis may read: the first N of the arms' training order, as a
    dataset of their unchanged records (its provenance names the parent and the ids)."""
    ctx.started()
    p = step.params
    ds = Dataset.load(ctx.store, _dataset(inputs, "dataset"))
    ids = synthesis_prefix(ds, p["split"], p["count"], p["order_seed"])
    subset = ds.subset(ids, {"split": p["split"], "count": p["count"], "order_seed": p["order_seed"], "order": "services.common.sampling.nested_order"})
    return ctx.local_output(subset)


class DatasetReader:
    """Datasets as preparing a plan reads them: each manifest once. Pinning names, the count
    check and the disjointness check all need the plan's datasets (a real dataset's manifest
    is megabytes of JSON); one reader serves one preparation, not longer (a name may move)."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self._loaded: dict[str, Dataset] = {}  # by the name or id asked for, and by id

    def __call__(self, ref: common_pb2.DatasetRef | str) -> Dataset:
        """`Dataset.load(store, ref)`, once per dataset."""
        if isinstance(ref, common_pb2.DatasetRef):
            if ref.manifest.bucket:  # as Dataset.load checks it, on every call
                self.store.check_bucket(ref.manifest.bucket, "dataset")
            key = ref.id or ref.name
        else:
            key = ref
        dataset = self._loaded.get(key)
        if dataset is None:
            dataset = Dataset.load(self.store, ref)
            self._loaded[key] = self._loaded[dataset.id] = dataset
        return dataset


def known_dataset(store: ObjectStore, step: Step, read: DatasetReader | None = None) -> Dataset | None:
    """The dataset a dataset or test_set step gives, when known before the run: its record is
    cached, or it names a stored dataset. None otherwise (demo data, an import not done)."""
    from orchestrator.runner import load_cached

    read = read or DatasetReader(store)
    cached = load_cached(store, step)
    if cached is not None:
        return read(refs.dataset_output(cached, "dataset", f"step {step.label}"))
    params = step.params["dataset"] if step.kind == "test_set" else step.params
    if "name" not in params:
        return None
    try:
        return read(params["name"])
    except NotFound:
        return None


def known_train_size(store: ObjectStore, graph: Graph, read: DatasetReader | None = None) -> tuple[int, str] | None:
    """The size of the plan's train split and what it is of, when that is known before the
    run: the split step's record is cached, or the dataset is known (its split is computed
    here, as the split step would). None otherwise."""
    from orchestrator.runner import load_cached

    read = read or DatasetReader(store)
    split = graph.of_kind("split")[0]
    cached = load_cached(store, split)
    if cached is not None:
        ds = read(refs.dataset_output(cached, "dataset", f"step {split.label}"))
    else:
        parent = known_dataset(store, graph.of_kind("dataset")[0], read)
        if parent is None:
            return None
        if split.params["existing"]:
            ds = parent
        else:
            assignment = split_assignment(parent, split.params)
            return sum(1 for s in assignment.values() if s == "train"), f"dataset {parent.name or parent.id}"
    return ds.split_sizes().get("train", 0), f"dataset {ds.name or ds.id}"


def check_known_counts(store: ObjectStore, graph: Graph, read: DatasetReader | None = None) -> None:
    """What the run would refuse, found before it starts where the data are known
    (`--dry-run` and prepare say so up front): InvalidArgument when the plan asks for more real
    images than its train split has, or when a test set shares an image with the training
    dataset (check_disjoint; a test set whose step is cached passed it already)."""
    from orchestrator.runner import load_cached

    read = read or DatasetReader(store)
    known = known_train_size(store, graph, read)
    if known is not None:
        check_counts(graph.plan, *known)
    test_steps = [s for s in graph.of_kind("test_set") if load_cached(store, s) is None]
    training = known_dataset(store, graph.of_kind("dataset")[0], read) if test_steps else None
    if training is None:
        return
    for step in test_steps:
        test = known_dataset(store, step, read)
        if test is not None:
            check_disjoint(step.params["label"], test, step.params["split"], training)


def pin_dataset_names(plan: Plan, store: ObjectStore, read: DatasetReader | None = None) -> Plan:
    """The plan with every dataset given by name (its own and its test sets') pinned to the
    dataset's current id, so step keys name content (a name moved to new data → new keys)."""
    specs = [plan.dataset, *(t.dataset for t in plan.test_sets)]
    if all(spec.name is None for spec in specs):
        return plan
    read = read or DatasetReader(store)
    plan = plan.model_copy(deep=True)
    for spec in [plan.dataset, *(t.dataset for t in plan.test_sets)]:
        if spec.name is not None:
            spec.name = read(spec.name).id
    return plan


# --- service steps -------------------------------------------------------------------------
# Requests carry every setting explicitly (config_to_proto), so a service runs exactly what the
# step's key names, whatever its own defaults are.


def run_foregrounds(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    req = config_to_proto(step.params["settings"], compositor_pb2.ExtractForegroundsRequest, dataset=_dataset(inputs, "dataset"), split="train")
    return ctx.job("compositor", "SubmitExtractForegrounds", req)


def run_backgrounds(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = config_to_proto(p["settings"], compositor_pb2.HarvestBackgroundsRequest, dataset=_dataset(inputs, "dataset"), split="train", seed=p["seed"])
    return ctx.job("compositor", "SubmitHarvestBackgrounds", req)


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
    return ctx.job("compositor", "SubmitCompose", req)


def run_gan_train(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = gan_pb2.GanTrainRequest(dataset=_dataset(inputs, "dataset"), split="train", config=config_to_proto(p["config"], gan_pb2.GanConfig), seed=p["seed"])
    return ctx.job("gan", "SubmitTrain", req)


def run_gan_generate(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = config_to_proto(
        p["settings"], gan_pb2.GanGenerateRequest, checkpoint=_output(inputs, "generator", "generator"), masks=_dataset(inputs, "masks"), seed=p["seed"]
    )
    return ctx.job("gan", "SubmitGenerate", req)


def run_segment_train(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    real = _dataset(inputs, "real")
    # One order seed for every source of every arm and seed: each takes a prefix of the same
    # nested order, so the real images are the same for every seed and include the synthesis
    # prefix.
    order = p["order_seed"]
    sources = [segmenter_pb2.TrainingSource(dataset=real, split="train", count=p["real"], order_seed=order)]
    if p["composite"]:
        sources.append(segmenter_pb2.TrainingSource(dataset=_dataset(inputs, "composite"), count=p["composite"], order_seed=order))
    if p["gan"]:
        sources.append(segmenter_pb2.TrainingSource(dataset=_dataset(inputs, "gan"), count=p["gan"], order_seed=order))
    req = segmenter_pb2.SegmenterTrainRequest(
        sources=sources,
        val_dataset=real,
        val_split="val",
        config=config_to_proto(p["config"], segmenter_pb2.SegmenterConfig),
        seed=p["seed"],
    )
    return ctx.job("segmenter", "SubmitTrain", req)


def run_predict(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    """The model's predictions on one test set (the internal test split or an external one):
    at the plan's image size (the model's input size), masks at each test image's stored size."""
    p = step.params
    req = config_to_proto(
        p["settings"], segmenter_pb2.PredictRequest, checkpoint=_output(inputs, "model", "model"), dataset=_dataset(inputs, "dataset"), split=p["split"]
    )
    return ctx.job("segmenter", "SubmitPredict", req)


def run_evaluate(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    p = step.params
    req = config_to_proto(
        p["settings"], evaluator_pb2.EvaluateRequest,
        truth=_dataset(inputs, "dataset"), split=p["split"], predictions=_output(inputs, "predictions", "predictions"),
    )
    return ctx.job("evaluator", "SubmitEvaluate", req)


def run_features(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    """Features of the real prefix, the internal test split and every synthetic pool, in the
    real-only model's space (its model file) or Inception-v3's (the plan's weights)."""
    p = step.params
    model = {"checkpoint": _output(inputs, "model", "model")} if "model" in inputs else {}
    req = config_to_proto(p["settings"], segmenter_pb2.FeaturesRequest, extractor=p["extractor"], weights=p["weights"], seed=p["order_seed"], **model)
    req.sets.extend(
        segmenter_pb2.FeatureSet(label=s["label"], dataset=_dataset(inputs, s["dep"]), split=s["split"], count=s["count"]) for s in p["sets"]
    )
    return ctx.job("segmenter", "SubmitFeatures", req)


def run_quality(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    """Every pool's quality in one feature space, each with its mask-fidelity evaluation."""
    p = step.params
    req = config_to_proto(p["settings"], evaluator_pb2.QualityRequest, features=_output(inputs, "features", "features"),
                          feature_space=p["feature_space"], seed=p["seed"])
    req.sources.extend(
        evaluator_pb2.QualitySource(label=label, mask_fidelity=_output(inputs, f"fidelity:{label}", "evaluation")) for label in p["sources"]
    )
    return ctx.job("evaluator", "SubmitQuality", req)


def ranking_scores(document: Any, by: str, source: str, pool: Dataset, what: str) -> dict[int, float]:
    """Image id → score (higher is better) of every image of `pool`: its mask-fidelity IoU
    (an evaluation JSON of the pool) or its realism against the real training images (a
    quality JSON with the pool as source `source`). InvalidArgument naming `what` when the
    ranking is not of this pool or misses an image."""
    if by == "mask_fidelity":
        if not isinstance(document, dict) or document.get("truth_dataset") != pool.id:
            raise InvalidArgument(f"{what}: the fidelity evaluation is not of dataset {pool.id}")
        scores = {int(row["image_id"]): float(row["iou"]) for row in document["per_image"]}
    else:
        rows = [r for r in (document.get("rows") or []) if r.get("label") == source] if isinstance(document, dict) else []
        if not rows or rows[0].get("dataset") != pool.id or source not in (document.get("per_image") or {}):
            raise InvalidArgument(f"{what}: the quality result has no source {source!r} of dataset {pool.id}")
        per_image = document["per_image"][source]
        scores = {int(i): float(r) for i, r in zip(per_image["image_id"], per_image["realism"])}
    missing = sorted({int(r["id"]) for r in pool.image_records()} - set(scores))
    if missing:
        raise InvalidArgument(f"{what}: the {by} ranking misses {len(missing)} images of dataset {pool.id} (e.g. ids {missing[:5]})")
    return scores


def top_ranked(scores: Mapping[int, float], count: int) -> list[int]:
    """The `count` best image ids: highest score first, ties by ascending id."""
    return [i for i, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:count]]


def filter_candidates(pool: Dataset, candidates: int, order_seed: int) -> list[int]:
    """The images a filter ranks: the first `candidates` of the pool's nested order (the
    prefix an unfiltered arm takes its images from, services/common/sampling.py)."""
    ids = [int(r["id"]) for r in pool.image_records()]
    if candidates > len(ids):
        raise InvalidArgument(f"dataset {pool.id} has {len(ids)} images, fewer than the {candidates} a filter ranks")
    return nested_order(order_seed, pool.id, "", ids)[:candidates]


def run_filter(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    """A filtered arm's synthetic data: of the first ceil(count / keep) images of its source's
    pool (filter_candidates), the best `count` by the ranking (mask fidelity or realism, from
    the real-only model of the arm's seed), as a subset dataset of their unchanged records;
    its provenance names the ranking."""
    ctx.started()
    p = step.params
    pool = Dataset.load(ctx.store, _dataset(inputs, "pool"))
    ranking = _output(inputs, "ranking", "evaluation" if p["by"] == "mask_fidelity" else "quality")
    scores = ranking_scores(ctx.store.get_json(ranking.key), p["by"], p["source"], pool, f"step {step.label}")
    candidates = filter_candidates(pool, p["candidates"], p["order_seed"])
    chosen = top_ranked({i: scores[i] for i in candidates}, p["count"])
    params = {"filter": {"by": p["by"], "keep": p["keep"], "count": p["count"], "candidates": p["candidates"], "order_seed": p["order_seed"],
                         "source": p["source"], "ranking": ranking.key, "lowest_kept_score": scores[chosen[-1]]}}
    return ctx.local_output(pool.subset(chosen, params))


#: Dataset roles of the report's provenance, by the kind of step that produced them.
DATASET_ROLES = {"dataset": "real", "split": "split", "subset": "synthesis_real", "compose": "", "gan_generate": "gan", "test_set": "test_set",
                 "filter": "filtered"}


def provenance(graph: Graph, results: Mapping[str, common_pb2.JobResult], run_id: str) -> dict[str, Any]:
    """The run's provenance for the report (format synthaug.provenance/1, see
    services/evaluator/core/provenance.py): every step with its key and code digest, the
    datasets the numbers rest on, the synthesis prefix, the arms and the budget."""
    plan = graph.plan
    steps = []
    for s in graph.steps:
        entry: dict[str, Any] = {"label": s.label, "kind": s.kind, "key": s.key, "code_digest": s.code_digest}
        if s.arm:
            entry["arm"] = s.arm
        if s.seed is not None:
            entry["seed"] = s.seed
        if s.test_set:
            entry["test_set"] = s.test_set
        steps.append(entry)
    datasets = []
    for s in graph.steps:
        if s.kind not in DATASET_ROLES or s.key not in results:
            continue
        ref = refs.dataset_output(results[s.key], "dataset", f"step {s.label}")
        role = DATASET_ROLES[s.kind] or str(s.params.get("role", "composite"))
        entry = {"role": role, "id": ref.id, "step": s.label}
        if ref.name:
            entry["name"] = ref.name
        if s.kind == "test_set":
            entry["label"] = s.test_set
        elif s.kind == "filter":
            entry["label"] = s.params["source"]
        datasets.append(entry)
    plan_json = plan.model_dump(mode="json", by_alias=True)
    return {
        "format": "synthaug.provenance/1",
        "run_id": run_id,
        "plan": plan.name,
        "plan_sha256": sha256_bytes(canonical_json(plan_json)),
        "code_version": CODE_VERSION,
        "steps": steps,
        "datasets": datasets,
        "synthesis": {"real": plan.synthesis_real},
        "arms": [{"name": a.name, "real": a.real, "composite": a.composite, "gan": a.gan, "segmenter": dict(a.segmenter),
                  **({"filter": a.filter.model_dump()} if a.filter is not None else {})} for a in plan.arms],
        "quality": quality_provenance(graph),
        "budget": plan.budget.describe(),
        "image_size": plan.image_size,
        "export_threshold": plan.evaluation.export_threshold,
        "test_sets": [{"label": t.label, "split": t.split} for t in plan.test_sets],
        "internal_test": plan.internal_test,
    }


def quality_provenance(graph: Graph) -> dict[str, Any]:
    """What the report's quality section rests on, or why there is none."""
    plan = graph.plan
    report = graph.of_kind("report")[0]
    steps = {role.partition(":")[2]: dep for role, dep in report.deps.items() if role.startswith("quality:")}
    if not steps:
        return {"skipped": plan.quality_note}
    real = plan.real_only_arm
    assert real is not None
    out: dict[str, Any] = {
        "feature_spaces": list(steps),
        "model": {"arm": real.name, "seed": plan.seeds[0]},
        "real_train": "the synthesis prefix (the real images the synthetic data derive from)",
        "real_test": "the internal test split",
        "sources": list(next(iter(steps.values())).params["sources"]),
        "steps": {space: s.label for space, s in steps.items()},
    }
    if not plan.quality.inception_weights:
        out["note"] = "no Inception weights supplied (quality.inception_weights); task-aware segmenter features only"
    return out


def contact_sources(graph: Graph, results: Mapping[str, common_pb2.JobResult]) -> list[evaluator_pb2.ContactSource]:
    """The training data the report's contact sheet samples: the real train split, the
    composites, the GAN images (of the first GAN when there is one per seed)."""
    out = []
    split = graph.of_kind("split")[0]
    if split.key in results:
        out.append(evaluator_pb2.ContactSource(label="real", dataset=refs.dataset_output(results[split.key], "dataset", f"step {split.label}"), split="train"))
    composites = [s for s in graph.of_kind("compose") if s.params.get("role") == "composite"]
    for label, steps in (("composite", composites), ("gan", graph.of_kind("gan_generate"))):
        if steps and steps[0].key in results:
            out.append(evaluator_pb2.ContactSource(label=label, dataset=refs.dataset_output(results[steps[0].key], "dataset", f"step {steps[0].label}")))
    return out


def report_request(
    step: Step, inputs: Inputs, results: Mapping[str, common_pb2.JobResult], prefix: str, graph: Graph | None = None, run_id: str = ""
) -> evaluator_pb2.ReportRequest:
    """The evaluator's ReportRequest: one ArmRun per evaluated (arm, seed, test set), with the
    predictions and training record behind each evaluation (the report reads each arm's
    optimiser steps and images seen from it); the internal test split as truth/split (when
    the plan has one) and every external test set as a TestSet (label, its dataset, split),
    read from the evaluations' inputs; with the graph, also the run's provenance and the
    contact sheet's sources."""
    arms = {a["name"]: a for a in step.params["arms"]}
    runs = []
    external: dict[str, evaluator_pb2.TestSet] = {}
    internal = False
    for role, ev_step in sorted(step.deps.items()):
        if not role.startswith("evaluation"):
            continue
        predict = ev_step.deps["predictions"]
        train = predict.deps["model"]
        arm = arms[ev_step.arm]
        label = ev_step.test_set or INTERNAL_TEST_SET
        if label == INTERNAL_TEST_SET:
            internal = True
        elif label not in external:
            source = ev_step.deps["dataset"]
            truth = refs.dataset_output(results[source.key], "dataset", f"step {source.label}")
            external[label] = evaluator_pb2.TestSet(label=label, truth=truth, split=ev_step.params["split"])
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
                test_set=label,
            )
        )
    where = {"truth": _dataset(inputs, "dataset"), "split": "test"} if internal else {}
    request = config_to_proto(step.params["settings"], evaluator_pb2.ReportRequest, title=step.params["title"], prefix=prefix, **where)
    sources = {(arm, seed): label for arm, seed, label in step.params.get("quality_sources", [])}
    for run in runs:
        run.quality_source = sources.get((run.arm, run.seed), "")
    request.runs.extend(runs)
    request.quality.extend(_output(inputs, role, "quality") for role in step.deps if role.startswith("quality:"))
    request.test_sets.extend(external.values())
    if graph is not None:
        request.provenance_json = canonical_json(provenance(graph, results, run_id)).decode("utf-8")
        request.contact_sources.extend(contact_sources(graph, results))
    return request


def run_report(step: Step, inputs: Inputs, ctx: StepContext) -> StepOutput:
    request = report_request(step, inputs, ctx.results, prefix=f"runs/{ctx.run_id}/report", graph=ctx.graph, run_id=ctx.run_id)
    out = ctx.job("evaluator", "SubmitReport", request)
    refs.output(out.result, "index", "the evaluator's report")  # the run's report link: required
    return out


#: What runs each step kind: the orchestrator itself (dataset, split, subset, test_set, filter) or a
#: service job. Mask fidelity is a prediction and an evaluation like any other (the same
#: executors), kept as kinds of its own so that it is timed, shown and recomputed apart.
EXECUTORS: dict[str, Executor] = {
    "dataset": run_dataset,
    "split": run_split,
    "subset": run_subset,
    "test_set": run_test_set,
    "foregrounds": run_foregrounds,
    "backgrounds": run_backgrounds,
    "compose": run_compose,
    "gan_train": run_gan_train,
    "gan_generate": run_gan_generate,
    "segment_train": run_segment_train,
    "predict": run_predict,
    "evaluate": run_evaluate,
    "fidelity_predict": run_predict,
    "fidelity_evaluate": run_evaluate,
    "features": run_features,
    "quality": run_quality,
    "filter": run_filter,
    "report": run_report,
}


def kind_code_digests(index: CodeIndex) -> dict[str, CodeDigest]:
    """The code digest of every step kind under `index` (see the module docstring)."""
    here = Path(__file__)
    out = {}
    for kind, executor in EXECUTORS.items():
        parts, modules = index.function_parts(here, __name__, [executor.__name__])
        service = STEP_SERVICE[kind]
        if service != "local":
            modules |= set(index.service_roots(service))
            data = index.package_data(f"services.{service}")
        else:
            data = []
        out[kind] = index.digest(sorted(modules), data, extra=parts)
    return out


@functools.lru_cache(maxsize=1)
def code_digests() -> dict[str, CodeDigest]:
    """The code digest of every step kind in this process (computed once)."""
    return kind_code_digests(default_index())
