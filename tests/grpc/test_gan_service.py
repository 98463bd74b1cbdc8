"""GanService end to end over loopback gRPC with the S3 backend (moto): Train, then Generate."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from services.common.client import wait_job
from services.common.datasets import Dataset, DatasetWriter
from services.common.refs import dataset_output, output
from services.common.store import ObjectStore
from services.gan.checkpoint import load_checkpoint
from services.gan.server import build
from synthaug.v1 import common_pb2, gan_pb2, gan_pb2_grpc
from tests.grpc_helpers import running_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(image_size=64, ngf=8, ndf=8, depth=6, n_layers_d=2, n_epochs=1, n_epochs_decay=1, batch_size=2,
            checkpoint_every=1, sample_count=2, boundary_channel=True, diversity="color_hint", color_hint_size=4, flip=False)


def write_dataset(store: ObjectStore, n: int, size: int, name: str, kind: str = "real", splits=("train",)) -> common_pb2.DatasetRef:
    """Skin-toned images with one disc 'lesion' (class 1) and sometimes a bar (class 2)."""
    rng = np.random.default_rng(size + n)
    w = DatasetWriter(store, kind, [{"id": 1, "name": "lesion"}, {"id": 2, "name": "ruler"}], name=name)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = rng.integers(120, 230, 3)
        disc = (yy - size // 2) ** 2 + (xx - size // 2 - i) ** 2 < (size // 5) ** 2
        bar = np.zeros_like(disc)
        bar[2:6, 4:size // 2] = True
        masks, labels = (np.stack([disc, bar]), [1, 2]) if i % 2 else (disc[None], [1])
        img[disc] = rng.integers(30, 100, 3)
        w.add(img, masks, labels, f"img{i:03d}.jpg", split=splits[i % len(splits)], iscrowd=[False] * len(labels))
    return w.finish()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_train_and_generate_end_to_end(s3_store):
    real = write_dataset(s3_store, 6, 64, "real-tiny", splits=("train", "train", "val"))
    with running_server(build, "gan", s3_store) as (_runtime, channel):
        stub = gan_pb2_grpc.GanServiceStub(channel)
        request = gan_pb2.GanTrainRequest(dataset=common_pb2.DatasetRef(name="real-tiny"), split="train",
                                          config=gan_pb2.GanConfig(**TINY), seed=4)
        ref = stub.SubmitTrain(request)
        events: list[common_pb2.JobEvent] = []
        result = wait_job(stub, ref, timeout=120, on_event=events.append)
        epochs = [e for e in events if "G_L1" in e.metrics]
        assert [e.metrics["epoch"] for e in epochs] == [1.0, 2.0]
        assert all({"G_GAN", "G_L1", "D_real", "D_fake", "pairs_per_s"} <= set(e.metrics) for e in epochs)
        generator = output(result, "generator")
        grids = [o for o in result.objects if o.key != generator.key]
        assert list(result.outputs) == ["generator"] and len(result.objects) == 3  # checkpoint + one sample grid per epoch
        assert all(o.key.endswith(".png") and o.key.startswith(f"jobs/{ref.id}/work/grids/") for o in grids) and len(grids) == 2
        state = load_checkpoint(s3_store.get_bytes(generator.key))
        assert state["epoch"] == 2 and state["dataset"] == real.id and state["num_pairs"] == 4
        assert state["config"]["model"] == "pix2pix" and not state["config"]["flip"] and state["config"]["dropout"]
        assert state["render"]["category_names"] == ["lesion", "ruler"] and state["render"]["color_hint"]
        # the same request is the same job; its stored result comes back without retraining
        again = stub.SubmitTrain(request)
        assert again.id == ref.id
        assert output(stub.GetJob(common_pb2.GetJobRequest(job_id=ref.id)).result, "generator").key == generator.key

        # generate from the val masks (with their images as the colour hint's background)
        gen_req = gan_pb2.GanGenerateRequest(checkpoint=generator, masks=common_pb2.DatasetRef(id=real.id),
                                             split="val", seed=7, name="gan-a", batch_size=2)
        out = wait_job(stub, stub.SubmitGenerate(gen_req), timeout=120)
        assert list(out.dataset_outputs) == ["dataset"]
        gan = Dataset.load(s3_store, dataset_output(out))
        src = Dataset.load(s3_store, real.id)
        assert gan.kind == "gan" and gan.categories == src.categories
        assert real.id in gan.provenance["parents"]
        src_recs, gan_recs = src.image_records("val"), gan.image_records()
        assert len(gan_recs) == len(src_recs) == 2 and [r["split"] for r in gan_recs] == ["val", "val"]
        for s, g in zip(src_recs, gan_recs):
            strip = lambda anns: [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in anns]  # noqa: E731
            assert strip(gan.annotations_of(g["id"])) == strip(src.annotations_of(s["id"]))
            assert g["key"] != s["key"] and g["file_name"].endswith(".png")
            img = gan.load_image(g)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        # deterministic per seed: another job (other name), same seed → the very same image blobs
        out_b = wait_job(stub, stub.SubmitGenerate(gan_pb2.GanGenerateRequest(
            checkpoint=generator, masks=common_pb2.DatasetRef(id=real.id), split="val", seed=7, name="gan-b", batch_size=2)), timeout=120)
        assert [r["key"] for r in Dataset.load(s3_store, dataset_output(out_b)).image_records()] == [r["key"] for r in gan_recs]
        out_c = wait_job(stub, stub.SubmitGenerate(gan_pb2.GanGenerateRequest(
            checkpoint=generator, masks=common_pb2.DatasetRef(id=real.id), split="val", seed=8, batch_size=2)), timeout=120)
        assert [r["key"] for r in Dataset.load(s3_store, dataset_output(out_c)).image_records()] != [r["key"] for r in gan_recs]

        # bad input → INVALID_ARGUMENT / NOT_FOUND on the Submit call itself
        inv = grpc.StatusCode.INVALID_ARGUMENT
        bad_cfg = gan_pb2.GanConfig(**{**TINY, "norm": "group"})
        code, msg = code_of(lambda: stub.SubmitTrain(gan_pb2.GanTrainRequest(dataset=common_pb2.DatasetRef(id=real.id), config=bad_cfg)))
        assert code == inv and "GanConfig.norm" in msg
        code, msg = code_of(lambda: stub.SubmitTrain(gan_pb2.GanTrainRequest(dataset=common_pb2.DatasetRef(id=real.id), split="test", config=gan_pb2.GanConfig(**TINY))))
        assert code == inv and "no images" in msg
        masks = common_pb2.DatasetRef(id=real.id)
        code, msg = code_of(lambda: stub.SubmitGenerate(gan_pb2.GanGenerateRequest(checkpoint=generator, masks=masks, batchnorm="frozen")))
        assert code == inv and "GenerateConfig.batchnorm" in msg
        code, msg = code_of(lambda: stub.SubmitGenerate(gan_pb2.GanGenerateRequest(checkpoint=generator, masks=masks, batch_size=0)))
        assert code == inv and "GenerateConfig.batch_size" in msg
        other = write_dataset(s3_store, 2, 48, "other-size", kind="composite", splits=("",))
        code, msg = code_of(lambda: stub.SubmitGenerate(gan_pb2.GanGenerateRequest(checkpoint=generator, masks=other, resize=False)))
        assert code == inv and "48×48" in msg and "resize" in msg
        code, msg = code_of(lambda: stub.SubmitTrain(gan_pb2.GanTrainRequest(dataset=other, config=gan_pb2.GanConfig(**TINY))))
        assert code == inv and "real pairs only" in msg
        missing = common_pb2.ObjectRef(bucket=generator.bucket, key="blobs/sha256/00/none.pt")
        code, _ = code_of(lambda: stub.SubmitGenerate(gan_pb2.GanGenerateRequest(checkpoint=missing, masks=other)))
        assert code == grpc.StatusCode.NOT_FOUND
        code, msg = code_of(lambda: stub.SubmitGenerate(gan_pb2.GanGenerateRequest(checkpoint=grids[0], masks=other)))
        assert code == inv and "checkpoint" in msg

        # resize is the default: other-size composite masks work and the images keep the masks' own size
        out_r = wait_job(stub, stub.SubmitGenerate(gan_pb2.GanGenerateRequest(checkpoint=generator, masks=other, seed=1)), timeout=120)
        resized = Dataset.load(s3_store, dataset_output(out_r))
        assert [resized.load_image(r).shape for r in resized.image_records()] == [(48, 48, 3)] * 2
