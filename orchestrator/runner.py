"""Run a step graph: cache lookups, concurrency, progress, failures, cancellation.

Finished steps are recorded in the store as `steps/<key>.pb` (a JobResult), the step's commit
point: a re-run of the plan, on any machine that sees the store, skips them (unless forced:
`--recompute`). A step whose dependencies failed is skipped; independent steps (other arms)
still run, so one bad arm does not throw away the others' training.

A step is QUEUED until the service starts it (waiting for one of --max-parallel threads here,
or for a job slot at the service) and RUNNING from then on, so its duration is its service
time. Every step's time splits into queued, dispatch (deciding to run it → the service
starting it, less the waiting), compute and result (the job's end → its record written);
dispatch + result summed over the run is the orchestration overhead.

A run keeps every attempt: `runs/<id>/attempts/<n>/` holds each attempt's summary.json and
status.pb; `runs/<id>/summary.json` and `status.pb` are the latest attempt's, and
`runs/<id>/succeeded.json` points at the latest attempt that succeeded (its report), so a
failed re-run never hides a report and a cached re-run never erases the record of the
attempt that computed the steps.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from orchestrator.dispatch import Dispatcher
from orchestrator.graph import Graph, Step
from orchestrator.metrics import THROUGHPUT_NAMES, OrchestratorMetrics, loss_components, quality_figures
from orchestrator.steps import EXECUTORS, StepContext, StepOutput, StepTimes
from services.common import refs
from services.common.errors import USER_ERROR_CODES, IntegrityError, JobCancelled, NotFound, SynthaugError
from services.common.events import EventLog
from services.common.jobs import TERMINAL
from services.common.store import ObjectStore, canonical_json, sha256_bytes
from synthaug.v1 import common_pb2, orchestrator_pb2

log = logging.getLogger(__name__)

S = common_pb2
MAX_EVENTS = 10_000


def step_cache_key(step_key: str) -> str:
    return f"steps/{step_key}.pb"


def run_status_key(run_id: str) -> str:
    return f"runs/{run_id}/status.pb"


def run_summary_key(run_id: str) -> str:
    """The latest attempt's summary."""
    return f"runs/{run_id}/summary.json"


def succeeded_key(run_id: str) -> str:
    """Points at the latest attempt that succeeded: {"attempt", "report", "summary", "status"}."""
    return f"runs/{run_id}/succeeded.json"


def attempt_prefix(run_id: str, attempt: int) -> str:
    return f"runs/{run_id}/attempts/{attempt:04d}/"


def attempts_of(store: ObjectStore, run_id: str) -> list[int]:
    """The attempt numbers of a run so far, ascending."""
    found = set()
    for key in store.list(f"runs/{run_id}/attempts/"):
        number = key.split("/")[3]
        if number.isdigit():
            found.add(int(number))
    return sorted(found)


def run_id_for(graph: Graph) -> str:
    """The run of a plan is named by its content: the same plan is the same run. (Step keys
    carry the code digests, so the same plan on changed code is another run.)"""
    payload = {"plan": graph.plan.model_dump(mode="json", by_alias=True), "steps": [s.key for s in graph.steps]}
    return sha256_bytes(canonical_json(payload))[:16]


def load_cached(store: ObjectStore, step: Step) -> common_pb2.JobResult | None:
    """The step's stored record, None when there is none or it is corrupt (then the step is
    computed again, and its new record replaces the bad one)."""
    try:
        data = store.get_record(step_cache_key(step.key))
    except NotFound:
        return None
    except IntegrityError:
        log.warning("step %s: its cached record is corrupt; computing it again", step.label, exc_info=True)
        return None
    result = common_pb2.JobResult()
    result.ParseFromString(data)
    return result


@dataclass
class StepRecord:
    step: Step
    state: common_pb2.JobState = S.JOB_STATE_QUEUED
    progress: float = 0.0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    #: Forced (--recompute): never answered from a record or a stored job result.
    forced: bool = False
    #: Handed to a thread to run (it stays QUEUED until the service starts it).
    submitted: bool = False
    started: float | None = None  # when the service started it (monotonic)
    finished: float | None = None
    compute: tuple[float, float] | None = None  # (start, end) of real compute, monotonic clock
    result: common_pb2.JobResult | None = None
    replica: str = ""
    times: StepTimes | None = None
    #: Seconds spent looking up and reading the step's cached record.
    lookup_seconds: float = 0.0
    #: The error code of a failed step (INVALID_ARGUMENT, …).
    error_code: str = ""

    def timing(self) -> dict[str, float]:
        """queued, dispatch, compute and result seconds (a cached step: its lookup is its result time)."""
        if self.times is None:
            return {"queued_seconds": 0.0, "dispatch_seconds": 0.0, "compute_seconds": 0.0, "result_seconds": self.lookup_seconds}
        return self.times.breakdown()

    def proto(self) -> orchestrator_pb2.StepStatus:
        s = self.step
        return orchestrator_pb2.StepStatus(
            key=s.key,
            kind=s.kind,
            arm=s.arm,
            seed=s.seed or 0,
            state=self.state,
            progress=self.progress,
            message=self.message,
            metrics=self.metrics,
            depends_on=[d.key for d in s.deps.values()],
            cached=self.cached,
            replica=self.replica,
            label=s.label,
        )


class RunTracker:
    """The observable state of one run: step records, an event log, persistence to the store."""

    def __init__(self, store: ObjectStore, graph: Graph, run_id: str, metrics: OrchestratorMetrics | None = None):
        self.store = store
        self.graph = graph
        self.run_id = run_id
        self.plan_name = graph.plan.name
        self.metrics = metrics
        self.records = {s.key: StepRecord(s) for s in graph.steps}
        self.state = S.JOB_STATE_QUEUED
        self.error = ""
        #: Code of a failure outside any step (the run could not start), for failure_code().
        self.error_code = ""
        self.report: common_pb2.ObjectRef | None = None
        self.started = time.monotonic()
        self.wall_seconds = 0.0
        # A bounded log: a watcher that falls more than MAX_EVENTS behind skips to the recent ones.
        self.events: EventLog[orchestrator_pb2.RunEvent] = EventLog(MAX_EVENTS)
        self._last_persist = 0.0

    @property
    def ref(self) -> orchestrator_pb2.RunRef:
        return orchestrator_pb2.RunRef(id=self.run_id, plan_name=self.plan_name)

    @property
    def finished(self) -> bool:
        """The run's final event was sent: nothing about it changes any more."""
        return self.events.finished

    def update(self, record: StepRecord | None, persist: bool = True) -> None:
        """Announce a step's change (or, with None, the run's); a run-level update in a terminal
        state is the run's final event."""
        final = record is None and self.state in TERMINAL
        if final:
            persist = True
        if final or persist:
            self._persist()
        with self.events.cond:
            def event(sequence: int) -> orchestrator_pb2.RunEvent:
                out = orchestrator_pb2.RunEvent(run=self.ref, sequence=sequence, run_state=self.state, time=time.time())
                if record is not None:
                    out.step.CopyFrom(record.proto())
                return out

            self.events.append(event, final=final)
        if self.metrics is not None:
            counts: dict[int, int] = {}
            for r in self.records.values():
                counts[r.state] = counts.get(r.state, 0) + 1
            for state in (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED):
                self.metrics.steps.labels(self.plan_name, S.JobState.Name(state)).set(counts.get(state, 0))
        if not persist and time.monotonic() - self._last_persist > 2.0:
            self._persist()

    def _persist(self) -> None:
        """Write the run's status to the store: what GetRun answers once the run left memory."""
        self._last_persist = time.monotonic()
        try:
            self.store.put_bytes(run_status_key(self.run_id), self.status().SerializeToString())
        except Exception:  # the status file is for observers; the run itself goes on
            log.warning("run %s: could not write its status to the store", self.run_id, exc_info=True)

    def status(self) -> orchestrator_pb2.RunStatus:
        st = orchestrator_pb2.RunStatus(run=self.ref, state=self.state, steps=[r.proto() for r in self.records.values()])
        if self.error:
            st.error.CopyFrom(S.JobError(code=self.failure_code(), message=self.error))
        if self.report is not None:
            st.report.CopyFrom(self.report)
        return st

    def failure_code(self) -> str:
        """The code of a failed run: the failures' own when every one is the caller's to fix
        (the plan or its data must change: the CLI exits 2), else INTERNAL."""
        codes = [r.error_code or "INTERNAL" for r in self.records.values() if r.state == S.JOB_STATE_FAILED]
        if self.error_code:
            codes.append(self.error_code)
        return codes[0] if codes and all(c in USER_ERROR_CODES for c in codes) else "INTERNAL"

    def watch(self, after: int = 0, is_active: Callable[[], bool] = lambda: True) -> Iterator[orchestrator_pb2.RunEvent]:
        """Events after `after` until the run's final event (or the watcher goes away)."""
        return self.events.watch(after, is_active)

    def compute_union(self) -> float:
        """Seconds during which at least one step was computing."""
        spans = sorted(r.compute for r in self.records.values() if r.compute is not None)
        total, cur_start, cur_end = 0.0, None, None
        for start, end in spans:
            if cur_end is None or start > cur_end:
                if cur_end is not None:
                    total += cur_end - cur_start  # type: ignore[operator]
                cur_start, cur_end = start, end
            else:
                cur_end = max(cur_end, end)
        if cur_end is not None:
            total += cur_end - cur_start  # type: ignore[operator]
        return total


@dataclass
class RunSummary:
    run_id: str
    state: common_pb2.JobState
    wall_seconds: float
    #: Wall time during which at least one step was computing.
    compute_seconds: float
    executed: int
    cached: int
    failed: list[str]
    report: common_pb2.ObjectRef | None
    attempt: int = 0
    forced: int = 0
    #: Every step's timing and outcome (summary.json "steps").
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: A failed step's error says the plan or its data must change (CLI exit 2).
    input_error: bool = False

    def _total(self, name: str) -> float:
        return float(sum(s[name] for s in self.steps))

    @property
    def step_seconds(self) -> float:
        """Summed over steps: dispatch + compute + result (waiting for a slot excluded)."""
        return self._total("dispatch_seconds") + self._total("compute_seconds") + self._total("result_seconds")

    @property
    def overhead_seconds(self) -> float:
        """Orchestration overhead summed over steps: dispatch and result handling (for a cached
        step, reading its record)."""
        return self._total("dispatch_seconds") + self._total("result_seconds")

    @property
    def overhead_fraction(self) -> float:
        """overhead_seconds / step_seconds (0 when no step took any time)."""
        total = self.step_seconds
        return self.overhead_seconds / total if total > 0 else 0.0

    def document(self, plan: str) -> dict[str, Any]:
        """summary.json: the attempt's outcome and where its time went."""
        return {
            "run_id": self.run_id,
            "plan": plan,
            "attempt": self.attempt,
            "state": S.JobState.Name(self.state),
            "wall_seconds": self.wall_seconds,
            "compute_seconds": self.compute_seconds,
            "step_seconds": self.step_seconds,
            "queued_seconds": self._total("queued_seconds"),
            "dispatch_seconds": self._total("dispatch_seconds"),
            "result_seconds": self._total("result_seconds"),
            "overhead_seconds": self.overhead_seconds,
            "overhead_fraction": self.overhead_fraction,
            "executed_steps": self.executed,
            "cached_steps": self.cached,
            "forced_steps": self.forced,
            "failed": self.failed,
            "input_error": self.input_error,
            "report": self.report.key if self.report else "",
            "steps": self.steps,
        }


class Runner:
    def __init__(self, store: ObjectStore, dispatcher: Dispatcher, metrics: OrchestratorMetrics | None = None, max_parallel: int = 8):
        self.store = store
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.max_parallel = max_parallel

    def run(self, tracker: RunTracker, cancel: threading.Event | None = None) -> RunSummary:
        cancel = cancel or threading.Event()
        graph = tracker.graph
        plan = graph.plan
        run_id = tracker.run_id
        attempt = (attempts_of(self.store, run_id) or [0])[-1] + 1
        self.store.put_json(attempt_prefix(run_id, attempt) + "started.json", {"attempt": attempt, "time": time.time()})  # claims the number
        self.store.put_json(f"runs/{run_id}/plan.json", plan.model_dump(mode="json", by_alias=True))
        tracker.state = S.JOB_STATE_RUNNING
        tracker.started = time.monotonic()
        if self.metrics:
            self.metrics.runs_active.labels(plan.name).inc()
        tracker.update(None)
        results: dict[str, common_pb2.JobResult] = {}
        failed: list[str] = []
        counts = {"executed": 0, "cached": 0}
        try:
            self._schedule(tracker, cancel, results, failed, counts)
        finally:
            if self.metrics:
                self.metrics.runs_active.labels(plan.name).dec()
        executed, cached = counts["executed"], counts["cached"]
        tracker.wall_seconds = time.monotonic() - tracker.started
        if cancel.is_set():
            tracker.state = S.JOB_STATE_CANCELLED
        elif failed:
            tracker.state = S.JOB_STATE_FAILED
            tracker.error = "; ".join(failed)
        else:
            tracker.state = S.JOB_STATE_SUCCEEDED
        report_result = results.get(graph.of_kind("report")[0].key)
        if report_result is not None:
            tracker.report = refs.output(report_result, "index", "the report step's result")
        steps = [self._step_summary(r) for r in tracker.records.values()]
        summary = RunSummary(
            run_id, tracker.state, tracker.wall_seconds, tracker.compute_union(), executed, cached, failed, tracker.report,
            attempt=attempt, forced=sum(1 for r in tracker.records.values() if r.forced and r.state == S.JOB_STATE_SUCCEEDED),
            steps=steps, input_error=tracker.state == S.JOB_STATE_FAILED and tracker.failure_code() in USER_ERROR_CODES,
        )
        self._record(tracker, summary)
        if self.metrics:
            self.metrics.runs.labels(plan.name, S.JobState.Name(tracker.state)).inc()
            self.metrics.overhead.labels(plan.name).set(summary.overhead_fraction)
            self.metrics.overhead_seconds.labels(plan.name).set(summary.overhead_seconds)
        tracker.update(None)
        return summary

    @staticmethod
    def _step_summary(rec: StepRecord) -> dict[str, Any]:
        s = rec.step
        out: dict[str, Any] = {
            "label": s.label, "kind": s.kind, "key": s.key, "code_digest": s.code_digest, "arm": s.arm, "seed": s.seed,
            "test_set": s.test_set, "state": S.JobState.Name(rec.state), "cached": rec.cached, "forced": rec.forced, "replica": rec.replica,
        }
        out.update(rec.timing())
        return out

    def _record(self, tracker: RunTracker, summary: RunSummary) -> None:
        """Keep this attempt: its summary and status, the run's latest pointers, and the
        pointer to the latest successful attempt (only moved by a success)."""
        run_id, plan = tracker.run_id, tracker.plan_name
        prefix = attempt_prefix(run_id, summary.attempt)
        document = summary.document(plan)
        succeeded = summary.state == S.JOB_STATE_SUCCEEDED
        pointer = {"attempt": summary.attempt, "report": document["report"], "summary": prefix + "summary.json", "status": prefix + "status.pb"}
        if not succeeded:
            try:
                pointer = self.store.get_json(succeeded_key(run_id))
            except NotFound:
                pointer = {}
        document["last_succeeded_attempt"] = pointer.get("attempt", 0)
        document["last_succeeded_report"] = pointer.get("report", "")
        document["attempts"] = summary.attempt
        status = tracker.status().SerializeToString()
        self.store.put_bytes(prefix + "status.pb", status)
        self.store.put_json(prefix + "summary.json", document)
        if succeeded:
            self.store.put_json(succeeded_key(run_id), pointer)
        self.store.put_json(run_summary_key(run_id), document)

    def _schedule(
        self,
        tracker: RunTracker,
        cancel: threading.Event,
        results: dict[str, common_pb2.JobResult],
        failed: list[str],
        counts: dict[str, int],
    ) -> None:
        """Start every step whose dependencies succeeded, as threads allow, until none is left."""
        graph = tracker.graph
        records = tracker.records
        futures: dict[Future[StepOutput], StepRecord] = {}
        with ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="step") as pool:
            try:
                while True:
                    progressed = False
                    for step in graph.steps:
                        rec = records[step.key]
                        if rec.state != S.JOB_STATE_QUEUED or rec.submitted:
                            continue
                        dep_states = [records[d.key].state for d in step.deps.values()]
                        if any(s in (S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED) for s in dep_states) or cancel.is_set():
                            rec.state = S.JOB_STATE_CANCELLED
                            rec.message = "cancelled" if cancel.is_set() else "skipped: a step it depends on failed"
                            tracker.update(rec)
                            progressed = True
                            continue
                        if not all(s == S.JOB_STATE_SUCCEEDED for s in dep_states):
                            continue
                        looked_up = time.monotonic()
                        hit = None if rec.forced else load_cached(self.store, step)
                        if hit is not None:
                            rec.lookup_seconds = time.monotonic() - looked_up
                            rec.state, rec.cached, rec.progress, rec.result, rec.message = S.JOB_STATE_SUCCEEDED, True, 1.0, hit, "cached"
                            results[step.key] = hit
                            counts["cached"] += 1
                            self._finished(tracker, rec)
                            progressed = True
                            continue
                        rec.cached = False
                        rec.submitted = True
                        rec.times = StepTimes(decided=looked_up)
                        rec.message = "queued: waiting for a free slot"
                        tracker.update(rec)
                        inputs = {role: results[d.key] for role, d in step.deps.items()}
                        futures[pool.submit(self._execute, tracker, rec, inputs, dict(results), cancel)] = rec
                        progressed = True
                    if not futures:
                        if progressed:
                            continue
                        break
                    done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                    for fut in done:
                        rec = futures.pop(fut)
                        try:
                            out = fut.result()
                            result, rec.replica = out.result, out.replica
                            # The step's commit point: written only once its outputs exist.
                            self.store.put_record(step_cache_key(rec.step.key), result.SerializeToString(deterministic=True))
                            rec.result = result
                            results[rec.step.key] = result
                            rec.state, rec.progress, rec.message = S.JOB_STATE_SUCCEEDED, 1.0, "done"
                            counts["executed"] += 1
                        except JobCancelled as exc:
                            rec.state, rec.message = S.JOB_STATE_CANCELLED, str(exc)
                        except Exception as exc:  # a failed step fails its run, never the orchestrator
                            cancelled = cancel.is_set()
                            rec.state = S.JOB_STATE_CANCELLED if cancelled else S.JOB_STATE_FAILED
                            rec.message = str(exc) if isinstance(exc, SynthaugError) else f"{type(exc).__name__}: {exc}"
                            rec.error_code = str(getattr(exc, "code", "INTERNAL")) if isinstance(exc, SynthaugError) else "INTERNAL"
                            if not isinstance(exc, SynthaugError):
                                log.exception("step %s crashed", rec.step.label)
                            if not cancelled:
                                failed.append(f"{rec.step.label}: {rec.message}")
                        rec.finished = time.monotonic()
                        times = rec.times
                        if times is not None:
                            times.recorded = rec.finished
                            if rec.started is None and times.started is not None:
                                rec.started = times.started
                            if times.started is not None and times.computed is not None and rec.state == S.JOB_STATE_SUCCEEDED:
                                rec.compute = (times.started, times.computed)
                        self._finished(tracker, rec)
            except BaseException:
                # Ctrl-C or a crash of the scheduler: cancel the jobs in flight before the pool
                # waits for their threads.
                cancel.set()
                raise

    def _execute(
        self,
        tracker: RunTracker,
        rec: StepRecord,
        inputs: dict[str, common_pb2.JobResult],
        results: dict[str, common_pb2.JobResult],
        cancel: threading.Event,
    ) -> StepOutput:
        step = rec.step
        plan = tracker.graph.plan
        assert rec.times is not None
        rec.times.thread = time.monotonic()
        if step.service != "local":
            rec.message = f"queued: submitted to the {step.service}"
            tracker.update(rec, persist=False)

        def progress(fraction: float, message: str, metrics: dict[str, float]) -> None:
            rec.progress = fraction
            if message:
                rec.message = message
            if metrics:
                rec.metrics = metrics
                if self.metrics:
                    for component, value in loss_components(metrics).items():
                        self.metrics.training_loss.labels(plan.name, step.arm, step.kind, component).set(value)
                    for name in THROUGHPUT_NAMES:
                        if name in metrics:
                            self.metrics.throughput.labels(plan.name, step.arm, step.kind).set(metrics[name])
            tracker.update(rec, persist=False)

        def started() -> None:
            """The service (or the local executor) started the step: it runs from now."""
            rec.state = S.JOB_STATE_RUNNING
            rec.started = rec.times.started if rec.times is not None else time.monotonic()
            rec.message = "running"
            tracker.update(rec)

        ctx = StepContext(
            self.store, self.dispatcher, plan, progress, cancel, results, tracker.run_id,
            graph=tracker.graph, times=rec.times, on_start=started, recompute=rec.forced,
        )
        return EXECUTORS[step.kind](step, inputs, ctx)

    def _finished(self, tracker: RunTracker, rec: StepRecord) -> None:
        tracker.update(rec)
        if not self.metrics:
            return
        plan = tracker.plan_name
        kind = rec.step.kind
        self.metrics.steps_finished.labels(plan, kind, S.JobState.Name(rec.state), str(rec.cached).lower()).inc()
        if rec.cached or rec.state != S.JOB_STATE_SUCCEEDED or rec.result is None:
            return
        timing = rec.timing()
        if rec.started is not None and rec.finished is not None:
            # From the service starting it: waiting for a slot is not step time.
            self.metrics.step_seconds.labels(plan, kind).observe(rec.finished - rec.started)
        self.metrics.step_queued_seconds.labels(plan, kind).observe(timing["queued_seconds"])
        if kind in ("compose", "gan_generate"):
            self.metrics.images.labels(plan, kind).inc(refs.dataset_output(rec.result, "dataset", f"step {rec.step.label}").num_images)
        if kind == "evaluate":
            self._score(tracker, rec)
        if kind == "quality" and rec.step.key in {d.key for d in tracker.graph.of_kind("report")[0].deps.values()}:
            space = str(rec.step.params["feature_space"])
            for (source, metric), value in quality_figures(dict(rec.result.metrics)).items():
                self.metrics.quality.labels(plan, space, source, metric).set(value)

    def _score(self, tracker: RunTracker, rec: StepRecord) -> None:
        """The mean of each metric over the seeds of this evaluation's arm and test set so far."""
        assert self.metrics is not None
        arm, test_set = rec.step.arm, rec.step.test_set
        done = [
            r for r in tracker.records.values()
            if r.step.kind == "evaluate" and r.step.arm == arm and r.step.test_set == test_set and r.result is not None
        ]
        names = set().union(*(r.result.metrics.keys() for r in done))  # type: ignore[union-attr]
        for name in names:
            values = [r.result.metrics[name] for r in done if name in r.result.metrics]  # type: ignore[union-attr]
            self.metrics.score.labels(tracker.plan_name, arm, test_set, name).set(sum(values) / len(values))
