"""Long-running operations as idempotent, resumable jobs.

A job's id is derived from (kind, canonical request bytes, the digest of the service's code —
services/common/code_digest.py): submitting the same request twice names the same job, on any
replica, and a changed service names new jobs, so no stored result outlives the code that
computed it. A finished job's result is written to
`jobs/<id>/result.pb` (the last thing a job writes), so another replica or a restarted server
returns it without recomputing. A job that failed or was cancelled leaves its final status in
`jobs/<id>/status.pb` (for status queries only: submitting the request again runs it again).
Work in progress (checkpoints) lives under `jobs/<id>/work/`, which is how a job killed with
its server resumes when it is submitted again.

Finished jobs stay in memory for a bounded time and number (`Retention`); after that, status
and watch requests are answered from those two store records.

A submission carrying the gRPC metadata `synthaug-recompute: 1` (`synthaug run --recompute`)
is never answered from a stored result: that result and the checkpoints that produced it are
discarded and the job runs again (a forced job interrupted midway resumes from its own new
checkpoints when submitted again, since by then no result is stored).
"""
from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge

from services.common.code_digest import service_digest
from services.common.errors import IntegrityError, InvalidArgument, JobCancelled, NotFound, SynthaugError, Unavailable, error_code
from services.common.events import EventLog, FinishedIndex, Retention
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2

log = logging.getLogger(__name__)

JOB_PREFIX = "jobs"
TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
MAX_EVENTS_KEPT = 1000

RunFn = Callable[["JobContext"], common_pb2.JobResult]

#: gRPC metadata key of a submission that must not be answered from a stored result.
RECOMPUTE_METADATA = "synthaug-recompute"
#: Whether the submission being handled in this thread carries RECOMPUTE_METADATA.
_recompute_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("synthaug_recompute", default=False)


def job_id_for(kind: str, request: Message, code_digest: str | None = None) -> str:
    """Deterministic id: the same request (field order, map order aside) to the same code →
    the same id. `code_digest` defaults to the digest of the code of the service named by
    the kind's prefix ("segmenter" for "segmenter.Train"; services/common/code_digest.py)."""
    digest = service_digest(kind.partition(".")[0]) if code_digest is None else code_digest
    h = hashlib.sha256()
    for part in (kind.encode(), digest.encode(), request.DESCRIPTOR.full_name.encode(), request.SerializeToString(deterministic=True)):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:32]


def recompute_metadata() -> tuple[tuple[str, str], ...]:
    """The metadata a client sends with a Submit… call that must compute afresh."""
    return ((RECOMPUTE_METADATA, "1"),)


def recompute_requested(context: Any) -> bool:
    """Whether a gRPC call's metadata asks for recomputation (False without metadata)."""
    metadata = getattr(context, "invocation_metadata", None)
    if metadata is None:
        return False
    return any(key == RECOMPUTE_METADATA and value in ("1", "true") for key, value in (metadata() or ()))


def result_key(job_id: str) -> str:
    return f"{JOB_PREFIX}/{job_id}/result.pb"


def failure_key(job_id: str) -> str:
    """Where a job that ended FAILED or CANCELLED leaves its final JobStatus."""
    return f"{JOB_PREFIX}/{job_id}/status.pb"


def validate_job_id(job_id: str) -> str:
    if len(job_id) != 32 or any(c not in "0123456789abcdef" for c in job_id):
        raise InvalidArgument(f"invalid job id {job_id!r}: expected 32 hex characters")
    return job_id


class JobContext:
    """What a running job sees: its id, the store, a work prefix, progress and cancellation."""

    def __init__(self, job: _Job, store: ObjectStore):
        self._job = job
        self.job_id = job.ref.id
        self.kind = job.ref.kind
        self.store = store
        self.work_prefix = f"{JOB_PREFIX}/{job.ref.id}/work/"

    @property
    def cancelled(self) -> bool:
        return self._job.cancel_requested.is_set()

    def check_cancelled(self) -> None:
        if self.cancelled:
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def progress(self, fraction: float, message: str = "", metrics: dict[str, float] | None = None) -> None:
        """Report progress (0..1) and named figures; raises JobCancelled when cancelled.

        Every report becomes an event (an epoch's losses must never be dropped), so callers
        report at a human rate: per epoch, per percent of a long loop, every few seconds."""
        self.check_cancelled()
        self._job.emit(common_pb2.JOB_STATE_RUNNING, min(max(float(fraction), 0.0), 1.0), message, metrics)


@dataclass
class _Job:
    ref: common_pb2.JobRef
    state: common_pb2.JobState = common_pb2.JOB_STATE_QUEUED
    progress: float = 0.0
    message: str = ""
    error: common_pb2.JobError | None = None
    result: common_pb2.JobResult | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    from_cache: bool = False
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    events: EventLog[common_pb2.JobEvent] = field(default_factory=lambda: EventLog(MAX_EVENTS_KEPT))

    @property
    def cond(self) -> threading.Condition:
        return self.events.cond

    def emit(self, state: common_pb2.JobState, progress: float | None = None, message: str = "", metrics: dict[str, float] | None = None) -> None:
        with self.cond:
            if self.state in TERMINAL and state != self.state:
                return  # a late progress or cancel note never reopens a finished job
            self.state = state
            if progress is not None:
                self.progress = progress
            if message:
                self.message = message
            self.updated_at = time.time()

            def event(sequence: int) -> common_pb2.JobEvent:
                out = common_pb2.JobEvent(
                    job=self.ref,
                    sequence=sequence,
                    state=state,
                    progress=self.progress,
                    message=message,
                    metrics={k: float(v) for k, v in (metrics or {}).items()},
                    time=self.updated_at,
                )
                if self.result is not None and state == common_pb2.JOB_STATE_SUCCEEDED:
                    out.result.CopyFrom(self.result)
                if self.error is not None:
                    out.error.CopyFrom(self.error)
                return out

            self.events.append(event, final=state in TERMINAL)

    def status(self) -> common_pb2.JobStatus:
        with self.cond:
            st = common_pb2.JobStatus(
                job=self.ref,
                state=self.state,
                progress=self.progress,
                message=self.message,
                created_at=self.created_at,
                updated_at=self.updated_at,
                from_cache=self.from_cache,
            )
            if self.error is not None:
                st.error.CopyFrom(self.error)
            if self.result is not None:
                st.result.CopyFrom(self.result)
            return st

    @classmethod
    def stored(cls, status: common_pb2.JobStatus) -> _Job:
        """A finished job as its store records describe it: one final event."""
        job = cls(
            ref=status.job,
            state=status.state,
            progress=status.progress,
            result=status.result if status.HasField("result") else None,
            error=status.error if status.HasField("error") else None,
            created_at=status.created_at or time.time(),
            from_cache=True,
        )
        job.emit(status.state, status.progress, status.message)
        return job


class JobManager:
    """Runs jobs in a bounded thread pool; persists their outcomes in the store."""

    def __init__(
        self,
        store: ObjectStore,
        service: str,
        max_concurrent: int = 1,
        registry: CollectorRegistry | None = None,
        retention: Retention | None = None,
    ):
        if max_concurrent < 1:
            raise InvalidArgument(f"max_concurrent must be ≥ 1, got {max_concurrent}")
        self.store = store
        self.service = service
        self._jobs: dict[str, _Job] = {}
        self._retained = FinishedIndex(retention)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix=f"{service}-job")
        self._closed = False
        registry = registry if registry is not None else CollectorRegistry()
        self._finished = Counter("synthaug_jobs_finished", "Jobs that reached a terminal state", ["service", "kind", "state"], registry=registry)
        self._running = Gauge("synthaug_jobs_running", "Jobs running now", ["service"], registry=registry)
        self._queued = Gauge("synthaug_jobs_queued", "Jobs waiting for a slot", ["service"], registry=registry)
        self._cache_hits = Counter("synthaug_jobs_cache_hits", "Submissions answered from a stored result", ["service", "kind"], registry=registry)

    # -- submission -------------------------------------------------------------------------

    def submit(self, kind: str, request: Message, run: RunFn, recompute: bool | None = None) -> common_pb2.JobRef:
        """Start (or find) the job for this request. Validate the request before calling.

        With `recompute` (default: what the gRPC call's metadata asks, see JobServicerMixin)
        a finished job is not reused: its stored result and checkpoints are discarded and it
        runs again; a job queued or running now is joined as usual."""
        job_id = job_id_for(kind, request)
        ref = common_pb2.JobRef(id=job_id, kind=kind)
        recompute = _recompute_requested.get() if recompute is None else recompute
        with self._lock:
            if self._closed:
                raise Unavailable(f"{self.service} is shutting down; submit to another replica")
            existing = self._jobs.get(job_id)
            if existing is not None and existing.state not in TERMINAL:
                return ref
            if existing is not None and existing.state == common_pb2.JOB_STATE_SUCCEEDED and not recompute:
                return ref
            if recompute:
                self._discard_result(job_id)
            stored = None if recompute else self._load_result(job_id, recompute_if_corrupt=True)
            if stored is not None:
                job = _Job.stored(common_pb2.JobStatus(job=ref, state=common_pb2.JOB_STATE_SUCCEEDED, progress=1.0, result=stored, message="result from store"))
                self._jobs[job_id] = job  # replaces a failed attempt another replica since redid
                self._hold(job)
                self._cache_hits.labels(self.service, kind).inc()
                return ref
            job = _Job(ref=ref)
            job.emit(common_pb2.JOB_STATE_QUEUED, 0.0, "queued")
            self._jobs[job_id] = job
            self._retained.discard(job_id)
            self._queued.labels(self.service).inc()
        try:
            self.store.put_json(f"{JOB_PREFIX}/{job_id}/job.json", {"kind": kind, "service": self.service, "request_type": request.DESCRIPTOR.full_name})
            self.store.put_bytes(f"{JOB_PREFIX}/{job_id}/request.pb", request.SerializeToString(deterministic=True))
            self._pool.submit(self._run, job, run)
        except BaseException:
            # Never leave a job QUEUED that nothing will run: the next submission starts afresh.
            with self._lock:
                if self._jobs.get(job_id) is job:
                    del self._jobs[job_id]
            self._queued.labels(self.service).dec()
            raise
        return ref

    def _discard_result(self, job_id: str) -> None:
        """Forget a finished job's stored result and work (a forced recomputation)."""
        if not self.store.exists(result_key(job_id)):
            return  # nothing finished: an interrupted forced run keeps its checkpoints
        log.info("job %s: recomputing as asked; its stored result and checkpoints are discarded", job_id)
        self.store.delete(result_key(job_id))
        for key in self.store.list(f"{JOB_PREFIX}/{job_id}/work/"):
            self.store.delete(key)

    def _hold(self, job: _Job) -> _Job:
        """Keep `job` in memory unless one with its id is there already (call under the lock);
        then drop the finished jobs beyond the retention bounds. Returns the job held."""
        job = self._jobs.setdefault(job.ref.id, job)
        if job.state in TERMINAL:
            self._retained.add(job.ref.id)
        for job_id in self._retained.expired():
            self._jobs.pop(job_id, None)
        return job

    def held(self) -> list[str]:
        """Ids of the jobs in memory now (running, queued, and recently finished)."""
        with self._lock:
            return list(self._jobs)

    def _load_result(self, job_id: str, recompute_if_corrupt: bool = False) -> common_pb2.JobResult | None:
        """The job's stored result (a self-checking record), None when there is none. A corrupt
        one is an IntegrityError naming its key, or, for a submission, work to do again."""
        try:
            data = self.store.get_record(result_key(job_id))
        except NotFound:
            return None
        except IntegrityError:
            if not recompute_if_corrupt:
                raise
            log.warning("job %s: its stored result is corrupt; running it again", job_id, exc_info=True)
            return None
        result = common_pb2.JobResult()
        result.ParseFromString(data)
        return result

    def _load_status(self, job_id: str) -> common_pb2.JobStatus | None:
        """A finished job's status from the store: its result, else its failure record."""
        result = self._load_result(job_id)
        if result is not None:
            try:
                kind = str(self.store.get_json(f"{JOB_PREFIX}/{job_id}/job.json").get("kind", ""))
            except NotFound:
                kind = ""
            self._cache_hits.labels(self.service, kind).inc()
            ref = common_pb2.JobRef(id=job_id, kind=kind)
            return common_pb2.JobStatus(job=ref, state=common_pb2.JOB_STATE_SUCCEEDED, progress=1.0, result=result, message="result from store")
        try:
            data = self.store.get_bytes(failure_key(job_id))
        except NotFound:
            return None
        status = common_pb2.JobStatus()
        status.ParseFromString(data)
        return status

    def _run(self, job: _Job, run: RunFn) -> None:
        self._queued.labels(self.service).dec()
        if job.cancel_requested.is_set():
            self._finish(job, common_pb2.JOB_STATE_CANCELLED, "cancelled before it started")
            return
        self._running.labels(self.service).inc()
        job.emit(common_pb2.JOB_STATE_RUNNING, 0.0, "running")
        try:
            result = run(JobContext(job, self.store))
            if not isinstance(result, common_pb2.JobResult):
                raise TypeError(f"job {job.ref.kind} returned {type(result).__name__}, not JobResult")
            # The stored result is the job's commit point: written last, read by every replica.
            self.store.put_record(result_key(job.ref.id), result.SerializeToString(deterministic=True))
            job.result = result
            self._finish(job, common_pb2.JOB_STATE_SUCCEEDED, "done", progress=1.0)
        except JobCancelled:
            self._finish(job, common_pb2.JOB_STATE_CANCELLED, "cancelled")
        except Exception as exc:  # every failure becomes a FAILED job with a mapped code
            code = error_code(exc)
            if isinstance(exc, SynthaugError):
                message = str(exc)
                log.warning("job %s (%s) failed: %s", job.ref.id, job.ref.kind, message)
            else:
                message = f"internal error ({type(exc).__name__}); see the {self.service} log for job {job.ref.id}"
                log.exception("job %s (%s) crashed", job.ref.id, job.ref.kind)
            job.error = common_pb2.JobError(code=code, message=message)
            self._finish(job, common_pb2.JOB_STATE_FAILED, message)
        finally:
            self._running.labels(self.service).dec()

    def _finish(self, job: _Job, state: common_pb2.JobState, message: str, progress: float | None = None) -> None:
        # Under the job's lock, so a watcher sees the final event only once the records that
        # answer for the job after it leaves memory are in place.
        with job.cond:
            job.emit(state, progress, message)
            if state != common_pb2.JOB_STATE_SUCCEEDED:
                # Status queries find it after it leaves memory; a new submission runs it again.
                try:
                    self.store.put_bytes(failure_key(job.ref.id), job.status().SerializeToString(deterministic=True))
                except Exception:  # the outcome is decided; this record is for observers only
                    log.warning("job %s: could not write its final status to the store", job.ref.id, exc_info=True)
            with self._lock:
                if self._jobs.get(job.ref.id) is job:
                    self._hold(job)
            self._finished.labels(self.service, job.ref.kind, common_pb2.JobState.Name(state)).inc()

    # -- queries ----------------------------------------------------------------------------

    def _find(self, job_id: str) -> _Job:
        validate_job_id(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            return job
        status = self._load_status(job_id)
        if status is None:
            raise NotFound(f"job {job_id} not found on this {self.service} replica")
        with self._lock:
            return self._hold(_Job.stored(status))

    def get(self, job_id: str) -> common_pb2.JobStatus:
        return self._find(job_id).status()

    def watch(self, job_id: str, after_sequence: int = 0, is_active: Callable[[], bool] = lambda: True, poll: float = 0.5) -> Iterator[common_pb2.JobEvent]:
        """Events after `after_sequence` until the terminal one (or the watcher goes away)."""
        yield from self._find(job_id).events.watch(after_sequence, is_active, poll)

    def wait(self, job_id: str, timeout: float | None = None) -> common_pb2.JobStatus:
        job = self._find(job_id)
        job.events.wait_finished(timeout)
        return job.status()

    def cancel(self, job_id: str) -> common_pb2.JobStatus:
        job = self._find(job_id)
        with job.cond:
            if job.state not in TERMINAL:
                job.cancel_requested.set()
                job.emit(job.state, None, "cancel requested")
        return job.status()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, cancel running ones (they resume from checkpoints elsewhere), wait."""
        with self._lock:
            self._closed = True
            jobs = [j for j in self._jobs.values() if j.state not in TERMINAL]
        for job in jobs:
            job.cancel_requested.set()
        deadline = time.monotonic() + timeout
        for job in jobs:
            job.events.wait_finished(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)


def _honouring_recompute(submit: Callable[..., Any]) -> Callable[..., Any]:
    """A Submit… handler that tells JobManager.submit whether its call asked to recompute."""

    @functools.wraps(submit)
    def handler(self: Any, request: Any, context: Any) -> Any:
        token = _recompute_requested.set(recompute_requested(context))
        try:
            return submit(self, request, context)
        finally:
            _recompute_requested.reset(token)

    return handler


class JobServicerMixin:
    """GetJob / WatchJob / CancelJob for any service whose servicer has `self.jobs`.

    Every `Submit…` method a subclass defines honours the recompute metadata
    (RECOMPUTE_METADATA): the subclass is wrapped once, when it is defined, so no service can
    forget it."""

    jobs: JobManager

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, method in list(vars(cls).items()):
            if name.startswith("Submit") and callable(method):
                setattr(cls, name, _honouring_recompute(method))

    def GetJob(self, request: common_pb2.GetJobRequest, context: object) -> common_pb2.JobStatus:
        return self.jobs.get(request.job_id)

    def WatchJob(self, request: common_pb2.WatchJobRequest, context: object) -> Iterator[common_pb2.JobEvent]:
        is_active = getattr(context, "is_active", lambda: True)
        yield from self.jobs.watch(request.job_id, request.after_sequence, is_active)

    def CancelJob(self, request: common_pb2.CancelJobRequest, context: object) -> common_pb2.JobStatus:
        return self.jobs.cancel(request.job_id)
