"""One data-parallel Train job under torchrun, without a server (see core/train_job.py).

    torchrun --standalone --nproc_per_node=NUM_GPUS -m services.segmenter.torchrun_train \\
        --store s3://bucket?endpoint=minio:9000 --request train-request.json

The request is a SegmenterTrainRequest in protobuf JSON. Rank 0 runs it as the job the
segmenter service would (same job id, checkpoints under ``jobs/<id>/work/`` so a restarted
launch resumes, the same result persisted under ``jobs/<id>/``), the other ranks follow.
Any segmenter replica on the same store then answers that request with this result instead
of training again — which is how a plan's training step can be computed here and the rest of
the plan (`synthaug run`) pick it up. Rank 0 prints the job id and the result's outputs;
the exit code is 0 when the job succeeded.
"""
from __future__ import annotations

import argparse
import logging
import sys

from google.protobuf import json_format

from services.common.jobs import JobManager
from services.common.store import open_store
from services.segmenter.core.distributed import init_from_env
from services.segmenter.core.train_job import ControlChannel, Leader, follow, run_train
from services.segmenter.core.train_request import prepare_trainer
from synthaug.v1 import common_pb2, segmenter_pb2

SERVICE = "segmenter"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.segmenter.torchrun_train")
    parser.add_argument("--store", required=True)
    parser.add_argument("--request", required=True, help="SegmenterTrainRequest as protobuf JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    info = init_from_env()
    store = open_store(args.store)
    channel = ControlChannel(info) if info.enabled else None
    if channel is not None and not info.is_main:
        return follow(store, channel)
    with open(args.request, encoding="utf-8") as f:
        request = json_format.Parse(f.read(), segmenter_pb2.SegmenterTrainRequest())
    leader = Leader(channel) if channel is not None else None
    jobs = JobManager(store, SERVICE)
    try:
        trainer = prepare_trainer(store, request)  # bad input fails here, before any rank trains
        ref = jobs.submit("segmenter.Train", request, lambda ctx: run_train(store, request, trainer, ctx, leader))
        status = jobs.wait(ref.id)
    finally:
        if leader is not None:
            leader.stop()
        jobs.shutdown()
    print(f"job {ref.id} {common_pb2.JobState.Name(status.state)} {status.message}")
    for role, out in status.result.outputs.items():
        print(f"{role} {out.key}")
    if status.state != common_pb2.JOB_STATE_SUCCEEDED:
        print(f"error {status.error.code}: {status.error.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
