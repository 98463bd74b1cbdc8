"""JobManager keeps finished jobs in memory only within its retention bounds; the store answers
for them afterwards, the same way, for succeeded and failed jobs alike."""
from __future__ import annotations

from typing import Callable, Iterator

import grpc
import pytest

from services.common.client import wait_job
from services.common.errors import IntegrityError, InvalidArgument, NotFound
from services.common.events import Retention
from services.common.jobs import JobContext, JobManager, JobServicerMixin, recompute_metadata, result_key
from services.common.runtime import ServerConfig, ServiceRuntime
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, compositor_pb2, compositor_pb2_grpc
from tests.grpc_helpers import running_server

S = common_pb2


def request(seed: int) -> compositor_pb2.ComposeRequest:
    return compositor_pb2.ComposeRequest(count=1, seed=seed)


Factory = Callable[[Retention], JobManager]


def succeed(seed: int) -> Callable[[JobContext], common_pb2.JobResult]:
    def run(ctx: JobContext) -> common_pb2.JobResult:
        ctx.progress(0.5, "half", {"seed": float(seed)})
        return common_pb2.JobResult(metrics={"seed": float(seed)})

    return run


@pytest.fixture()
def manager_factory(file_store: ObjectStore) -> Iterator[Factory]:
    made: list[JobManager] = []

    def make(retention: Retention) -> JobManager:
        made.append(JobManager(file_store, "probe", max_concurrent=1, retention=retention))
        return made[-1]

    yield make
    for m in made:
        m.shutdown(timeout=5)


def test_only_the_newest_finished_jobs_stay_in_memory(manager_factory: Factory) -> None:
    jobs = manager_factory(Retention(max_finished=2, max_age_seconds=3600))
    refs = [jobs.submit("probe.Run", request(seed), succeed(seed)) for seed in range(4)]
    for ref in refs:
        assert jobs.wait(ref.id, timeout=30).state == S.JOB_STATE_SUCCEEDED
    assert sorted(jobs.held()) == sorted(r.id for r in refs[2:])
    # An evicted job answers from its stored result, with its kind, as a cache hit would.
    status = jobs.get(refs[0].id)
    assert status.state == S.JOB_STATE_SUCCEEDED and status.from_cache and status.progress == 1.0
    assert status.job.kind == "probe.Run" and status.result.metrics["seed"] == 0.0
    events = list(jobs.watch(refs[1].id))
    assert [(e.sequence, e.state) for e in events] == [(1, S.JOB_STATE_SUCCEEDED)]
    assert events[0].result.metrics["seed"] == 1.0
    assert list(jobs.watch(refs[1].id, after_sequence=1)) == []  # re-attaching after the end: nothing more
    # Reading them back keeps within the bound too.
    assert len(jobs.held()) == 2


def test_a_failed_job_answers_from_the_store_and_runs_again_when_resubmitted(manager_factory: Factory) -> None:
    jobs = manager_factory(Retention(max_finished=0, max_age_seconds=0))
    attempts: list[int] = []

    def flaky(ctx: JobContext) -> common_pb2.JobResult:
        attempts.append(1)
        if len(attempts) == 1:
            raise InvalidArgument("item 3 is empty")
        return common_pb2.JobResult(metrics={"attempts": float(len(attempts))})

    ref = jobs.submit("probe.Flaky", request(1), flaky)
    events = list(jobs.watch(ref.id))
    assert events[-1].state == S.JOB_STATE_FAILED and events[-1].error.message == "item 3 is empty"
    assert jobs.held() == []  # gone from memory by the time its final event was seen
    status = jobs.get(ref.id)
    assert status.state == S.JOB_STATE_FAILED
    assert (status.error.code, status.error.message) == ("INVALID_ARGUMENT", "item 3 is empty")
    assert [e.state for e in jobs.watch(ref.id)] == [S.JOB_STATE_FAILED]
    # The failure record is not a result: the same request runs again, and its result wins.
    assert jobs.submit("probe.Flaky", request(1), flaky).id == ref.id
    assert jobs.wait(ref.id, timeout=30).state == S.JOB_STATE_SUCCEEDED
    assert len(attempts) == 2
    assert jobs.get(ref.id).result.metrics["attempts"] == 2.0
    # A succeeded job is not run again, from memory or from the store.
    jobs.submit("probe.Flaky", request(1), flaky)
    assert jobs.wait(ref.id, timeout=30).state == S.JOB_STATE_SUCCEEDED and len(attempts) == 2


def test_unknown_job_is_not_found(manager_factory: Factory) -> None:
    jobs = manager_factory(Retention())
    with pytest.raises(NotFound, match="job 0{32} not found"):
        jobs.get("0" * 32)


def test_a_corrupt_stored_result_is_an_error_to_readers_and_work_to_a_submission(manager_factory: Factory, file_store: ObjectStore) -> None:
    jobs = manager_factory(Retention(max_finished=0, max_age_seconds=0))
    runs: list[int] = []

    def run(ctx: JobContext) -> common_pb2.JobResult:
        runs.append(1)
        return common_pb2.JobResult(metrics={"runs": float(len(runs))})

    ref = jobs.submit("probe.Run", request(7), run)
    assert jobs.wait(ref.id, timeout=30).state == S.JOB_STATE_SUCCEEDED
    file_store.put_bytes(result_key(ref.id), common_pb2.JobResult(metrics={"runs": 99.0}).SerializeToString())  # no envelope
    with pytest.raises(IntegrityError, match=result_key(ref.id)):
        jobs.get(ref.id)
    jobs.submit("probe.Run", request(7), run)
    assert jobs.wait(ref.id, timeout=30).state == S.JOB_STATE_SUCCEEDED
    assert len(runs) == 2 and jobs.get(ref.id).result.metrics["runs"] == 2.0


def counting_run(runs: list[bool], store: ObjectStore) -> Callable[[JobContext], common_pb2.JobResult]:
    """A job that notes whether the checkpoint of an earlier run was there, then writes one."""

    def run(ctx: JobContext) -> common_pb2.JobResult:
        checkpoint = ctx.work_prefix + "checkpoint"
        runs.append(store.exists(checkpoint))
        store.put_bytes(checkpoint, b"state")
        return common_pb2.JobResult(metrics={"runs": float(len(runs))})

    return run


def test_recompute_never_answers_from_the_stored_result(manager_factory: Factory, file_store: ObjectStore) -> None:
    jobs = manager_factory(Retention())
    runs: list[bool] = []
    run = counting_run(runs, file_store)
    ref = jobs.submit("probe.Run", request(3), run)
    assert jobs.wait(ref.id, timeout=30).state == S.JOB_STATE_SUCCEEDED
    assert jobs.submit("probe.Run", request(3), run).id == ref.id
    assert jobs.wait(ref.id, timeout=30).result.metrics["runs"] == 1.0 and runs == [False]  # reused
    # Forced: run again, from scratch (the finished job's checkpoints are gone), same id.
    assert jobs.submit("probe.Run", request(3), run, recompute=True).id == ref.id
    assert jobs.wait(ref.id, timeout=30).result.metrics["runs"] == 2.0
    assert runs == [False, False]
    # Another replica (a new manager on the same store) reads the new result.
    other = manager_factory(Retention())
    assert other.get(ref.id).result.metrics["runs"] == 2.0


class RecomputeProbe(JobServicerMixin, compositor_pb2_grpc.CompositorServiceServicer):
    """A job service whose Submit… honours the recompute metadata by inheritance alone."""

    def __init__(self, runtime: ServiceRuntime):
        self.jobs = runtime.jobs
        self.runs: list[bool] = []

    def SubmitCompose(self, request: compositor_pb2.ComposeRequest, context: grpc.ServicerContext) -> common_pb2.JobRef:
        return self.jobs.submit("probe.Compose", request, counting_run(self.runs, self.jobs.store))


def build_recompute_probe(config: ServerConfig, store: ObjectStore) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    runtime.probe = RecomputeProbe(runtime)  # type: ignore[attr-defined]
    runtime.add(compositor_pb2_grpc.add_CompositorServiceServicer_to_server, runtime.probe, "synthaug.v1.CompositorService")  # type: ignore[attr-defined]
    return runtime


def test_the_recompute_metadata_forces_a_job_over_grpc(file_store: ObjectStore) -> None:
    with running_server(build_recompute_probe, "compositor", file_store) as (runtime, channel):
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        req = compositor_pb2.ComposeRequest(count=1, seed=5)
        first = wait_job(stub, stub.SubmitCompose(req), timeout=30)
        again = wait_job(stub, stub.SubmitCompose(req), timeout=30)
        assert first.metrics["runs"] == again.metrics["runs"] == 1.0
        forced = wait_job(stub, stub.SubmitCompose(req, metadata=recompute_metadata()), timeout=30)
        assert forced.metrics["runs"] == 2.0 and runtime.probe.runs == [False, False]  # type: ignore[attr-defined]
        # The flag belongs to that call only.
        assert wait_job(stub, stub.SubmitCompose(req), timeout=30).metrics["runs"] == 2.0
