"""OrchestratorService: submit plans, watch, list and inspect runs, cancel them, fetch their
reports and push datasets, over gRPC.

So the CLI on a laptop can drive an orchestrator running in a cluster next to the services,
without access to the cluster's object store (orchestrator/transfer.py).
Like every server it binds 127.0.0.1 unless SYNTHAUG_HOST says otherwise, and serves TLS and
checks the bearer token as the runtime's settings say (services/common/security.py); as the
services' client it presents the same token, and SYNTHAUG_TLS_CA / SYNTHAUG_TLS_CLIENT_CERT,
to them (orchestrator/dispatch.py).
"""
from __future__ import annotations

import argparse
import os
from typing import Iterator

import grpc

from orchestrator.metrics import OrchestratorMetrics
from orchestrator.plan import load_plan_text
from orchestrator.runs import RunManager, validate_run_id
from orchestrator.settings import parse_addresses
from orchestrator.transfer import receive_dataset, report_chunks
from services.common.errors import InvalidArgument
from services.common.events import Retention
from services.common.runtime import ServerConfig, ServiceRuntime, serve
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc

SERVICE_NAME = "synthaug.v1.OrchestratorService"


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    def __init__(self, runs: RunManager):
        self.runs = runs

    def SubmitPlan(self, request: orchestrator_pb2.SubmitPlanRequest, context: grpc.ServicerContext) -> orchestrator_pb2.RunRef:
        if not request.plan_yaml.strip():
            raise InvalidArgument("plan_yaml is empty")
        plan = load_plan_text(request.plan_yaml, "submitted plan")
        if plan.dataset.import_ is not None:
            raise InvalidArgument(
                "dataset.import reads local files, which a remote orchestrator cannot see: import them on your machine "
                "(`synthaug import … --name NAME`), send the dataset (`synthaug dataset push NAME --orchestrator ADDR`) "
                "and use dataset: {name: NAME}"
            )
        for i, test_set in enumerate(plan.test_sets):
            if test_set.dataset.import_ is not None:
                raise InvalidArgument(
                    f"test_sets[{i}] ({test_set.label}): dataset.import reads local files, which a remote orchestrator cannot "
                    "see: import them on your machine, `synthaug dataset push NAME --orchestrator ADDR`, and name the dataset"
                )
        if plan.split.group_csv:
            raise InvalidArgument(
                "split.group_csv reads a local file, which a remote orchestrator cannot see: import with --metadata/--group-by "
                "and use split.existing"
            )
        return self.runs.submit(plan, dry_run=request.dry_run, recompute=list(request.recompute))

    def GetRun(self, request: orchestrator_pb2.GetRunRequest, context: grpc.ServicerContext) -> orchestrator_pb2.RunStatus:
        return self.runs.status(validate_run_id(request.run_id))

    def WatchRun(self, request: orchestrator_pb2.WatchRunRequest, context: grpc.ServicerContext) -> Iterator[orchestrator_pb2.RunEvent]:
        yield from self.runs.watch(validate_run_id(request.run_id), request.after_sequence, context.is_active)

    def CancelRun(self, request: orchestrator_pb2.CancelRunRequest, context: grpc.ServicerContext) -> orchestrator_pb2.RunStatus:
        return self.runs.cancel(validate_run_id(request.run_id))

    def ListRuns(self, request: orchestrator_pb2.ListRunsRequest, context: grpc.ServicerContext) -> orchestrator_pb2.ListRunsResponse:
        if request.limit < 0:
            raise InvalidArgument(f"limit must be ≥ 0, got {request.limit}")
        return orchestrator_pb2.ListRunsResponse(runs=self.runs.list_runs(request.limit))

    def FetchReport(self, request: orchestrator_pb2.FetchReportRequest, context: grpc.ServicerContext) -> Iterator[orchestrator_pb2.FileChunk]:
        yield from report_chunks(self.runs.store, validate_run_id(request.run_id), list(request.paths))

    def PushDataset(self, request_iterator: Iterator[orchestrator_pb2.PushDatasetChunk], context: grpc.ServicerContext) -> common_pb2.DatasetRef:
        return receive_dataset(self.runs.store, request_iterator)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--services", default=None, help="compositor=H:P,...;gan=H:P;... (default: SYNTHAUG_<NAME>_ADDR; none = embedded)")
    parser.add_argument("--max-parallel-steps", type=int, default=int(os.environ.get("SYNTHAUG_MAX_PARALLEL_STEPS", "8")))
    parser.add_argument(
        "--keep-finished-runs", type=int, default=int(os.environ.get("SYNTHAUG_KEEP_FINISHED_RUNS", str(Retention.max_finished))),
        help="finished runs kept in memory; older ones answer from the store [$SYNTHAUG_KEEP_FINISHED_RUNS]",
    )
    parser.add_argument(
        "--keep-finished-runs-seconds", type=float,
        default=float(os.environ.get("SYNTHAUG_KEEP_FINISHED_RUNS_SECONDS", str(Retention.max_age_seconds))),
        help="seconds a finished run stays in memory [$SYNTHAUG_KEEP_FINISHED_RUNS_SECONDS]",
    )


def build(config: ServerConfig, store: ObjectStore | None = None) -> ServiceRuntime:
    runtime = ServiceRuntime(config, store)
    try:
        addresses = parse_addresses(config.extra.get("services"))
    except InvalidArgument as exc:
        raise SystemExit(str(exc)) from None
    runs = RunManager(
        runtime.store,
        addresses,
        OrchestratorMetrics(runtime.registry),
        max_parallel=int(config.extra.get("max_parallel_steps", 8)),
        store_url=config.store_url,
        retention=Retention(
            max_finished=int(config.extra.get("keep_finished_runs", Retention.max_finished)),
            max_age_seconds=float(config.extra.get("keep_finished_runs_seconds", Retention.max_age_seconds)),
        ),
    )
    runtime.add(orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, OrchestratorServicer(runs), SERVICE_NAME)
    runtime.on_stop(runs.close)
    return runtime


def main(argv: list[str] | None = None) -> int:
    return serve(build, "orchestrator", argv, add_arguments=add_arguments)
