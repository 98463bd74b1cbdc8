"""The segmenter's Features job over loopback gRPC: one vector per image of each set, in the
evaluator's features format; the segmenter's own FPN features and Inception-v3 with weights
the user supplies (never downloaded)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
import torch

from services.common.client import wait_job
from services.common.datasets import Dataset, DatasetWriter
from services.common.refs import object_ref, output
from services.common.sampling import nested_order
from services.common.store import FileStore, ObjectStore
from services.evaluator.core.features import decode_features
from services.segmenter.core.checkpoints import model_file, to_bytes
from services.segmenter.core.data import CategoryMap, image_to_tensor
from services.segmenter.core.feature_extraction import INCEPTION_DIM, ImageSet, SegmenterExtractor, extract, inception_network
from services.segmenter.core.models import ModelSpec, build_model
from services.segmenter.core.predictor import LoadedModel
from services.segmenter.server import build
from services.segmenter.weights import WEIGHTS_DIR_ENV
from synthaug.v1 import common_pb2, segmenter_pb2_grpc
from synthaug.v1 import segmenter_pb2 as pb
from tests.grpc_helpers import running_server
from tests.unit.segmenter_shapes import make_example

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATEGORIES = [{"id": 1, "name": "lesion"}]
FPN_CHANNELS = 128  # maskrcnn_resnet18_fpn


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ObjectStore, segmenter_pb2_grpc.SegmenterServiceStub]]:
    store = FileStore(tmp_path / "store")
    with running_server(build, "segmenter", store) as (_runtime, channel):
        yield store, segmenter_pb2_grpc.SegmenterServiceStub(channel)


def shapes(store: ObjectStore, sizes: dict[str, int], size: int = 64, first: int = 0) -> Dataset:
    writer = DatasetWriter(store, "real", CATEGORIES, seed=0)
    i = 0
    for split, n in sizes.items():
        for _ in range(n):
            ex = make_example(first + i + 1, size, seed=3)
            writer.add(ex.image, ex.masks, ex.category_ids.tolist(), f"img{i:03d}.png", split=split)
            i += 1
    return Dataset.load(store, writer.finish())


def untrained_model(store: ObjectStore) -> tuple[common_pb2.ObjectRef, torch.nn.Module]:
    torch.manual_seed(0)
    spec = ModelSpec(architecture="maskrcnn_resnet18_fpn", num_classes=2, min_size=64, max_size=64)
    model = build_model(spec).eval()
    info = store.put_blob(model_file(model.state_dict(), spec.to_dict(), CATEGORIES), "pt")
    return object_ref(store, info), model


def features_of(store: ObjectStore, stub: segmenter_pb2_grpc.SegmenterServiceStub, request: pb.FeaturesRequest):  # type: ignore[no-untyped-def]
    result = wait_job(stub, stub.SubmitFeatures(request), timeout=300)
    ref = output(result, "features")
    return decode_features(store.get_bytes(ref.key, ref.sha256)), result


def test_segmenter_fpn_features_of_every_set_by_image_id(served) -> None:  # type: ignore[no-untyped-def]
    store, stub = served
    real = shapes(store, {"train": 7, "test": 4})
    synthetic = shapes(store, {"": 6}, first=20)
    checkpoint, model = untrained_model(store)
    request = pb.FeaturesRequest(
        checkpoint=checkpoint, extractor="segmenter_fpn", seed=5, batch_size=3,
        sets=[pb.FeatureSet(label="real_train", dataset=real.ref(), split="train"),
              pb.FeatureSet(label="real_test", dataset=real.ref(), split="test"),
              pb.FeatureSet(label="gan-s0", dataset=synthetic.ref(), count=4, order_seed=11),
              pb.FeatureSet(label="composite", dataset=synthetic.ref(), count=2)])
    features, result = features_of(store, stub, request)
    assert features.extractor == "segmenter_fpn" and features.dim == FPN_CHANNELS
    assert set(features.sets) == {"real_train", "real_test", "gan-s0", "composite"}
    train_ids = [r["id"] for r in real.image_records("train")]
    assert features.sets["real_train"].ids.tolist() == train_ids and features.sets["real_train"].split == "train"
    assert features.sets["real_test"].ids.tolist() == [r["id"] for r in real.image_records("test")]
    all_synthetic = [r["id"] for r in synthetic.image_records()]
    # count > 0: the first `count` of the nested order (the set's order seed, else the request's).
    assert features.sets["gan-s0"].ids.tolist() == sorted(nested_order(11, synthetic.id, "", all_synthetic)[:4])
    assert features.sets["composite"].ids.tolist() == sorted(nested_order(5, synthetic.id, "", all_synthetic)[:2])
    assert features.sets["gan-s0"].dataset == synthetic.id and features.sets["real_test"].dataset == real.id
    assert {s.features.shape for s in features.sets.values()} == {(7, FPN_CHANNELS), (4, FPN_CHANNELS), (2, FPN_CHANNELS)}
    assert features.model["checkpoint"] == checkpoint.key and features.model["architecture"] == "maskrcnn_resnet18_fpn"
    assert result.metrics["num_images"] == 17 and result.metrics["dim"] == FPN_CHANNELS and result.metrics["images_per_s"] > 0

    # Each row is the model's own features of that image alone (batching changes nothing).
    with torch.inference_mode():
        for i, image_id in enumerate(features.sets["real_test"].ids.tolist()):
            image = image_to_tensor(real.load_image(real.record(image_id)))
            alone = model.features([image])[0].numpy()
            np.testing.assert_allclose(features.sets["real_test"].features[i], alone, rtol=1e-4, atol=1e-5)

    # The same request is the same job; another batch size gives the same features.
    assert stub.SubmitFeatures(request).id == stub.SubmitFeatures(request).id
    request.batch_size = 16
    again, _ = features_of(store, stub, request)
    for name, s in features.sets.items():
        assert np.array_equal(again.sets[name].ids, s.ids)
        np.testing.assert_allclose(again.sets[name].features, s.features, rtol=1e-4, atol=1e-5)


def test_images_of_several_sizes_get_the_features_they_get_alone(file_store: ObjectStore) -> None:
    """extract batches images of one size together: a batch's padding never reaches an image."""
    writer = DatasetWriter(file_store, "real", CATEGORIES, seed=0)
    for i in range(5):
        ex = make_example(i + 1, 64, seed=3)
        image, masks = (ex.image, ex.masks) if i % 2 else (np.concatenate([ex.image, ex.image[:, :30]], 1), np.concatenate([ex.masks, ex.masks[:, :, :30]], 2))
        writer.add(image, masks, ex.category_ids.tolist(), f"img{i}.png")
    dataset = Dataset.load(file_store, writer.finish())
    torch.manual_seed(0)
    spec = ModelSpec(architecture="maskrcnn_resnet18_fpn", num_classes=2, min_size=64, max_size=100)
    model = build_model(spec).eval()
    extractor = SegmenterExtractor(LoadedModel(model, spec, CategoryMap(CATEGORIES)), torch.device("cpu"), "model")
    ids = [r["id"] for r in dataset.image_records()]
    done: list[int] = []
    sets, rate = extract(extractor, [ImageSet("real_train", dataset, "", ids)], 4, lambda n, total, m: done.append(n))
    assert done == [2, 5] and rate > 0  # a batch of the two 64 × 64 images, then the three 64 × 94 ones
    got = sets["real_train"]
    assert got.ids.tolist() == ids and got.features.shape == (5, FPN_CHANNELS) and got.dataset == dataset.id
    with torch.inference_mode():
        for row, image_id in zip(got.features, ids):
            alone = model.features([image_to_tensor(dataset.load_image(dataset.record(image_id)))])[0].numpy()
            np.testing.assert_allclose(row, alone, rtol=1e-4, atol=1e-5)


def test_inception_features_with_weights_from_the_weights_folder(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from torchvision.models import inception_v3

    store, stub = served
    real = shapes(store, {"train": 2, "test": 2}, size=48)
    # A randomly initialised torchvision Inception-v3, saved as torchvision ships it (with the
    # auxiliary classifier and the 1000-class head, which the pool features do not use).
    torch.manual_seed(1)
    full = inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=True).eval()
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "inception.pt").write_bytes(to_bytes(full.state_dict()))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    request = pb.FeaturesRequest(extractor="inception", weights="file:inception.pt", sets=[
        pb.FeatureSet(label="real_train", dataset=real.ref(), split="train"),
        pb.FeatureSet(label="real_test", dataset=real.ref(), split="test")])
    features, result = features_of(store, stub, request)
    assert features.extractor == "inception" and features.dim == INCEPTION_DIM == result.metrics["dim"]
    assert features.sets["real_train"].features.shape == (2, INCEPTION_DIM)
    assert features.model["weights"] == "file:inception.pt" and len(features.model["weights_sha256"]) == 64
    # The pool features of the supplied network: torchvision's forward up to (without) fc, on
    # the image resized to 299 px and ImageNet-normalised (transform_input maps it to [-1, 1]).
    reference = inception_network(full.state_dict(), "reference")
    image_id = int(features.sets["real_test"].ids[0])
    x = torch.nn.functional.interpolate(image_to_tensor(real.load_image(real.record(image_id)))[None], size=(299, 299),
                                        mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        pooled = reference(x)[0].numpy()
        full.fc = torch.nn.Identity()
        np.testing.assert_allclose(full(x)[0].numpy(), pooled, rtol=1e-5)  # torchvision's own forward, fc aside
    np.testing.assert_allclose(features.sets["real_test"].features[0], pooled, rtol=1e-4)

    # From the store as well ("store:KEY"), the same network: the same features.
    info = store.put_blob((folder / "inception.pt").read_bytes(), "pt")
    from_store = pb.FeaturesRequest(extractor="inception", weights=f"store:{info.key}", sets=request.sets[1:])
    stored, _ = features_of(store, stub, from_store)
    np.testing.assert_allclose(stored.sets["real_test"].features, features.sets["real_test"].features, rtol=1e-5)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"extractor": "inception"}, "FeaturesRequest.weights: weights are required: give file:NAME"),
        ({"extractor": "inception", "weights": "IMAGENET1K_V1"}, "none are ever downloaded"),
        ({"extractor": "inception", "weights": "file:missing.pt"}, "file weights are disabled here"),
        ({"extractor": "inception", "weights": "store:blobs/none.pt", "checkpoint": "keep"}, "the inception extractor takes no segmenter model"),
        ({"extractor": "inception", "weights": "store:blobs/none.pt"}, "no such object in the store"),
        ({"extractor": "segmenter_fpn", "weights": "store:x"}, "only the inception extractor takes weights"),
        ({"extractor": "fid"}, "FeaturesRequest.extractor must be one of segmenter_fpn, inception; got 'fid'"),
        ({"sets": "dup"}, "FeaturesRequest.sets[1].label 'real_test' appears twice"),
        ({"sets": "count"}, "FeaturesRequest.sets[0].count must be in [0, 3]"),
        ({"sets": "label"}, "FeaturesRequest.sets[0].label 'a__b' must be"),
        ({"sets": []}, "FeaturesRequest.sets: at least one image set is required"),
        ({"batch_size": 0}, "FeaturesConfig.batch_size must be ≥ 1, got 0"),
    ],
)
def test_bad_requests_are_refused_naming_the_field(served, monkeypatch: pytest.MonkeyPatch, changes: dict, message: str) -> None:  # type: ignore[no-untyped-def]
    store, stub = served
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    real = shapes(store, {"train": 3, "test": 1})
    checkpoint, _ = untrained_model(store)
    sets = {
        "dup": [pb.FeatureSet(label="real_test", dataset=real.ref(), split="test")] * 2,
        "count": [pb.FeatureSet(label="real_train", dataset=real.ref(), split="train", count=4)],
        "label": [pb.FeatureSet(label="a__b", dataset=real.ref(), split="train")],
    }
    fields: dict = {"checkpoint": checkpoint, "extractor": "segmenter_fpn", "sets": [pb.FeatureSet(label="real_test", dataset=real.ref(), split="test")]}
    for name, value in changes.items():
        if name == "sets":
            fields[name] = sets[value] if isinstance(value, str) else value
        elif name != "checkpoint":  # "keep": the inception extractor given a checkpoint anyway
            fields[name] = value
    if fields["extractor"] == "inception" and "checkpoint" not in changes:
        del fields["checkpoint"]
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitFeatures(pb.FeaturesRequest(**fields))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
