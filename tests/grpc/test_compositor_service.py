"""CompositorService end to end over loopback gRPC with the S3 (moto) store."""
from __future__ import annotations

from typing import Iterator

import grpc
import pytest

from services.common.client import wait_job
from services.common.datasets import Dataset
from services.common.refs import dataset_output, output
from services.common.store import ObjectStore, open_store
from services.compositor.core.sets import FOREGROUND_KIND, save_set
from services.compositor.server import build
from synthaug.v1 import common_pb2, compositor_pb2_grpc
from synthaug.v1 import compositor_pb2 as pb
from tests.grpc_helpers import running_server
from tests.unit.test_compositor_pipeline import make_real_dataset


@pytest.fixture()
def served(s3_env: str) -> Iterator[tuple[ObjectStore, compositor_pb2_grpc.CompositorServiceStub]]:
    store = open_store(s3_env)  # credentials from the environment, as worker processes get them
    with running_server(build, "compositor", store) as (_runtime, channel):
        yield store, compositor_pb2_grpc.CompositorServiceStub(channel)


def _code(call, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(request)
    return info.value.code(), info.value.details()


def test_three_operations_end_to_end(served) -> None:  # type: ignore[no-untyped-def]
    store, stub = served
    real = make_real_dataset(store)
    events: list[common_pb2.JobEvent] = []
    fg_job = stub.SubmitExtractForegrounds(pb.ExtractForegroundsRequest(dataset=real.ref(), split="train", min_area=50))
    fg_result = wait_job(stub, fg_job, timeout=60, on_event=events.append)
    fg = output(fg_result, "foregrounds")
    assert list(fg_result.objects) == [fg]
    assert any(0 < e.progress < 1 or e.message for e in events)
    fg_manifest = store.get_json(fg.key)
    # unset settings take ForegroundParams' defaults; the one given is used
    assert fg_manifest["params"] == {"min_area": 50, "feather_sigma": 1.0, "padding": 8, "keep_truncated": False}
    bg_job = stub.SubmitHarvestBackgrounds(pb.HarvestBackgroundsRequest(
        dataset=real.ref(), split="train", method=pb.BACKGROUND_METHOD_INPAINT_TELEA, dilate_px=3))
    bg_result = wait_job(stub, bg_job, timeout=60)
    assert bg_result.metrics["backgrounds"] == 5
    bg = output(bg_result, "backgrounds")
    bg_params = store.get_json(bg.key)["params"]
    assert (bg_params["method"], bg_params["dilate_px"], bg_params["max_backgrounds"]) == ("inpaint_telea", 3, 0)
    params = pb.ComposeParams(output_size=64, min_objects=1, max_objects=3, blend=pb.BLEND_MODE_GAUSSIAN,
                              scale=pb.Range(min=0.3, max=0.5), max_overlap_iou=0.1)
    request = pb.ComposeRequest(foregrounds=fg, backgrounds=bg, count=8, seed=11, params=params, workers=2, name="toy-comp")
    result = wait_job(stub, stub.SubmitCompose(request), timeout=120)
    ref = dataset_output(result, "dataset")
    assert list(result.datasets) == [ref] and not result.objects
    assert ref.num_images == 8 and ref.name == "toy-comp"
    comp = Dataset.load(store, "toy-comp")
    assert comp.kind == "composite" and comp.provenance["parents"] == [real.id]
    assert ref.num_instances == result.metrics["instances"] == len(comp.manifest["annotations"])
    for record in comp.image_records():
        kept = [o for o in record["synthaug"]["composite"]["objects"] if o.get("instance", -1) >= 0]
        assert len(comp.annotations_of(record["id"])) == len(kept)
    # one worker: a different job, the very same dataset (bytes and masks)
    request.workers = 1
    again = wait_job(stub, stub.SubmitCompose(request), timeout=120)
    assert dataset_output(again, "dataset").id == ref.id
    # Poisson blending runs through the service too
    request.params.blend = pb.BLEND_MODE_POISSON
    request.count = 3
    request.name = ""
    poisson = wait_job(stub, stub.SubmitCompose(request), timeout=120)
    poisson_ref = dataset_output(poisson, "dataset")
    assert poisson_ref.num_images == 3 and poisson_ref.id != ref.id


def test_bad_requests_are_rejected_on_submit(served) -> None:  # type: ignore[no-untyped-def]
    store, stub = served
    real = make_real_dataset(store)
    fg = output(wait_job(stub, stub.SubmitExtractForegrounds(pb.ExtractForegroundsRequest(dataset=real.ref())), timeout=60),
                "foregrounds")
    bg = output(wait_job(stub, stub.SubmitHarvestBackgrounds(pb.HarvestBackgroundsRequest(
        dataset=real.ref(), method=pb.BACKGROUND_METHOD_AS_IS)), timeout=60), "backgrounds")

    def compose(**params: object) -> pb.ComposeRequest:
        return pb.ComposeRequest(foregrounds=fg, backgrounds=bg, count=2, params=pb.ComposeParams(**params))

    cases = [
        (compose(min_objects=0), "min_objects"),
        (compose(min_objects=4, max_objects=2), "max_objects"),
        (compose(scale=pb.Range(min=0.6, max=0.2)), "scale"),
        (compose(hue=pb.Range(min=5, max=-5)), "hue"),
        (compose(blend=9), "BlendMode"),
        (compose(scale=pb.Range(max=0.5)), "scale"),
        (compose(max_overlap_iou=1.5), "max_overlap_iou"),
        (pb.ComposeRequest(foregrounds=fg, backgrounds=bg, count=0), "count"),
    ]
    for request, needle in cases:
        code, details = _code(stub.SubmitCompose, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, (needle, details)
    empty = save_set(store, {"kind": FOREGROUND_KIND, "foregrounds": [], "categories": [{"id": 1}]})
    empty_ref = common_pb2.ObjectRef(bucket=store.bucket, key=empty.key)
    code, details = _code(stub.SubmitCompose, pb.ComposeRequest(foregrounds=empty_ref, backgrounds=bg, count=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "foregrounds" in details and "empty" in details
    code, details = _code(stub.SubmitCompose, pb.ComposeRequest(foregrounds=fg, backgrounds=fg, count=1))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "backgrounds" in details
    missing = common_pb2.ObjectRef(bucket=store.bucket, key="compositor/none.json")
    code, _ = _code(stub.SubmitCompose, pb.ComposeRequest(foregrounds=fg, backgrounds=missing, count=1))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(stub.SubmitExtractForegrounds, pb.ExtractForegroundsRequest(
        dataset=common_pb2.DatasetRef(name="no-such-dataset")))
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = _code(stub.SubmitHarvestBackgrounds, pb.HarvestBackgroundsRequest(
        image_prefix="user/", method=pb.BACKGROUND_METHOD_INPAINT_NS))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "method" in details
    # 0 is a value now (unset is the default): a negative one is named
    for request, needle in [
        (pb.ExtractForegroundsRequest(dataset=real.ref(), min_area=-1), "ForegroundParams.min_area"),
        (pb.ExtractForegroundsRequest(dataset=real.ref(), padding=300), "ForegroundParams.padding"),
    ]:
        code, details = _code(stub.SubmitExtractForegrounds, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details, (needle, details)
    code, details = _code(stub.SubmitHarvestBackgrounds, pb.HarvestBackgroundsRequest(dataset=real.ref(), max_backgrounds=-3))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "BackgroundParams.max_backgrounds" in details
