"""Data-parallel training under torchrun (see services/segmenter/core/distributed.py).

    torchrun --standalone --nproc_per_node=NUM_GPUS -m services.segmenter.torchrun_train \\
        --store s3://bucket?endpoint=minio:9000 --request train-request.json [--work jobs/<id>/work/]

The request is a SegmenterTrainRequest in protobuf JSON. Every rank builds the same trainer;
rank 0 validates, checkpoints under the work prefix (so a restarted launch resumes) and
finally writes the model file and training record as blobs and prints their keys.
"""
from __future__ import annotations

import argparse
import logging
import sys

from google.protobuf import json_format

from services.common.jobs import job_id_for
from services.common.store import canonical_json, open_store
from services.segmenter.core.checkpoints import StoreCheckpointIO
from services.segmenter.core.train_request import prepare_trainer
from synthaug.v1 import segmenter_pb2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.segmenter.torchrun_train")
    parser.add_argument("--store", required=True)
    parser.add_argument("--request", required=True, help="SegmenterTrainRequest as protobuf JSON")
    parser.add_argument("--work", default="", help="checkpoint prefix (default jobs/<request id>/work/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    store = open_store(args.store)
    with open(args.request, encoding="utf-8") as f:
        request = json_format.Parse(f.read(), segmenter_pb2.SegmenterTrainRequest())
    work = args.work or f"jobs/{job_id_for('segmenter.Train', request)}/work/"
    trainer = prepare_trainer(store, request)
    trainer.checkpoints = StoreCheckpointIO(store, work)
    trainer.progress = lambda f, m, x: logging.info("%.0f%% %s %s", 100 * f, m, x or "")
    result = trainer.run()
    if trainer.dist.is_main:
        model = store.put_blob(result.model_file, "pt")
        record = store.put_blob(canonical_json(result.record), "json", "application/json")
        print(f"model {model.key}\nrecord {record.key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
