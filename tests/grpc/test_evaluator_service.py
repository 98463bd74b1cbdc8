"""EvaluatorService over real loopback gRPC with the S3 store (moto server)."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from services.common.client import JobFailed, wait_job
from services.common.datasets import DatasetWriter, ImageRecord, masks_to_rle
from services.common.imageio import encode_png
from services.common.refs import output
from services.common.store import ObjectStore
from services.evaluator.server import build
from synthaug.v1 import common_pb2, evaluator_pb2, evaluator_pb2_grpc
from tests.grpc_helpers import running_server

S = 32
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def box(y0, y1, x0, x1):
    m = np.zeros((S, S), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# Truth per image: (mask, split). Image ids are 1..6 in this order.
TRUTH = [
    (box(0, 16, 0, 16), "test"),
    (box(8, 24, 8, 24), "test"),
    (box(0, 10, 0, 20), "test"),
    (None, "test"),  # no lesion
    (box(0, 16, 0, 16), "train"),
    (box(0, 16, 0, 16), "train"),
]


def make_truth(store: ObjectStore, name: str = "eval-truth") -> common_pb2.DatasetRef:
    rng = np.random.default_rng(0 if name == "eval-truth" else 1)
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name=name)
    for i, (mask, split) in enumerate(TRUTH):
        image = rng.integers(0, 255, (S, S, 3), dtype=np.uint8)
        if mask is not None:
            writer.add(image, mask[None], [1], f"img{i + 1}.png", split=split)
        else:
            # An image without lesions. (DatasetWriter.add cannot take zero masks yet: the
            # foundation's encode_sample reshapes (0, -1); so the record is built here.)
            info = store.put_blob(encode_png(image), ".png", "image/png")
            writer.add_record(ImageRecord(f"img{i + 1}.png", S, S, info.key, info.sha256, [], split))
    return writer.finish()


def result(image_id, mask, score=0.9):
    return {"image_id": image_id, "category_id": 1, "segmentation": masks_to_rle(mask[None])[0], "score": score,
            "bbox": [0.0, 0.0, 1.0, 1.0]}


def put_predictions(store: ObjectStore, results, key: str) -> common_pb2.ObjectRef:
    info = store.put_json(key, {"results": results, "score_threshold": 0.05, "mask_threshold": 0.5})
    return common_pb2.ObjectRef(bucket=store.bucket, key=info.key, sha256=info.sha256, size=info.size)


PREDS_A = [
    result(1, box(0, 16, 0, 16)),  # perfect: IoU 1
    result(2, box(8, 24, 16, 32)),  # half: tp 128, fp 128, fn 128 → 1/3
    result(3, box(0, 10, 0, 20), 0.3),  # below the score threshold → empty prediction → 0
    # image 4: nothing on an empty image → 1
]
PREDS_B = [result(1, box(0, 16, 0, 8)), result(2, box(8, 24, 8, 24)), result(3, box(0, 10, 0, 20), 0.8)]


@pytest.fixture()
def server(s3_store):
    with running_server(build, "evaluator", s3_store) as (_runtime, channel):
        yield s3_store, evaluator_pb2_grpc.EvaluatorServiceStub(channel)


def evaluate(store, stub, truth, preds_ref, **kw):
    ref = stub.SubmitEvaluate(evaluator_pb2.EvaluateRequest(truth=truth, split="test", predictions=preds_ref, n_bootstrap=200, seed=1, **kw))
    events = []
    res = wait_job(stub, ref, timeout=120, on_event=events.append)
    return ref, res, events


def test_evaluate_compare_report_end_to_end(server):
    store, stub = server
    truth = make_truth(store)
    pa = put_predictions(store, PREDS_A, "preds/a.json")
    ref, res, events = evaluate(store, stub, truth, pa)
    assert ref.kind == "evaluator.Evaluate"
    assert events[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    assert any(0 < e.progress < 1 for e in events)
    ev_ref = output(res, "evaluation")
    assert list(res.objects) == [ev_ref]
    assert ev_ref.bucket == store.bucket and ev_ref.key.endswith(".json")
    ev = store.get_json(ev_ref.key)
    assert ev["n_images"] == 4 and ev["split"] == "test" and ev["truth_dataset"] == truth.id
    assert [r["iou"] for r in ev["per_image"]] == pytest.approx([1.0, 1 / 3, 0.0, 1.0])
    assert [r["image"] for r in ev["per_image"]] == ["img1.png", "img2.png", "img3.png", "img4.png"]
    assert ev["mean_iou"] == pytest.approx((2 + 1 / 3) / 4)
    assert ev["thresholded_jaccard"] == pytest.approx(0.5)
    assert ev["images_without_prediction"] == ["img4.png"]
    assert res.metrics["mean_iou"] == pytest.approx(ev["mean_iou"])
    assert res.metrics["iou_ci_low"] <= res.metrics["mean_iou"] <= res.metrics["iou_ci_high"]
    assert "mask_ap" in res.metrics and "lesion_recall" in res.metrics
    # Same request → same job, answered from the stored result.
    again = stub.SubmitEvaluate(evaluator_pb2.EvaluateRequest(truth=truth, split="test", predictions=pa, n_bootstrap=200, seed=1))
    assert again.id == ref.id
    assert output(wait_job(stub, again, timeout=30), "evaluation").key == ev_ref.key
    # Thesis behaviour: no score threshold → image 3 counts.
    _, res0, _ = evaluate(store, stub, truth, pa, score_threshold=0.0)
    assert store.get_json(output(res0, "evaluation").key)["per_image"][2]["iou"] == 1.0

    pb = put_predictions(store, PREDS_B, "preds/b.json")
    _, res_b, _ = evaluate(store, stub, truth, pb)
    ev_b = output(res_b, "evaluation")
    cmp = stub.Compare(evaluator_pb2.CompareRequest(a=ev_ref, b=ev_b, metric="iou", n_bootstrap=200))
    ious_b = [0.5, 1.0, 1.0, 1.0]
    assert cmp.n_images == 4 and cmp.metric == "iou"
    assert cmp.mean_difference == pytest.approx(np.mean(np.array([1.0, 1 / 3, 0.0, 1.0]) - ious_b))
    assert cmp.ci_low <= cmp.mean_difference <= cmp.ci_high
    assert 0 < cmp.p_value <= 1

    record = store.put_json("train/a.json", {"epochs": [{"epoch": e, "losses": {"loss_mask": 1 / e}, "val": {"iou": 0.1 * e}} for e in (1, 2, 3)]})
    rec_ref = common_pb2.ObjectRef(bucket=store.bucket, key=record.key)
    # The same predictions scored on a second test set ("ext": the same images under another name).
    ext = make_truth(store, "eval-ext")
    ev_ext = output(evaluate(store, stub, ext, pa)[1], "evaluation")
    ev_ext_b = output(evaluate(store, stub, ext, pb)[1], "evaluation")
    runs = [
        evaluator_pb2.ArmRun(arm="real", seed=0, evaluation=ev_ref, predictions=pa, training_record=rec_ref, real_count=100),
        evaluator_pb2.ArmRun(arm="composite", seed=0, evaluation=ev_b, predictions=pb, real_count=100, composite_count=200),
        evaluator_pb2.ArmRun(arm="real", seed=0, evaluation=ev_ext, predictions=pa, training_record=rec_ref, real_count=100,
                             test_set="ext"),
        evaluator_pb2.ArmRun(arm="composite", seed=0, evaluation=ev_ext_b, real_count=100, composite_count=200, test_set="ext"),
    ]
    provenance = {"format": "synthaug.provenance/1", "run_id": "r1", "synthesis": {"real": 100},
                  "steps": [{"label": "compose", "kind": "compose", "key": "ab" * 32, "code_digest": "cd" * 32}],
                  "datasets": [{"role": "real", "id": truth.id}, {"role": "test_set", "label": "ext", "id": ext.id}]}
    report_request = evaluator_pb2.ReportRequest(
        runs=runs, truth=truth, split="test", title="E2E", prefix="reports/e2e", overlay_images=3, n_bootstrap=200,
        test_sets=[evaluator_pb2.TestSet(label="ext", truth=ext, split="test")],
        contact_sources=[evaluator_pb2.ContactSource(label="real", dataset=truth, split="train")],
        provenance_json=json.dumps(provenance), contact_images=2)
    report_job = stub.SubmitReport(report_request)
    assert report_job.kind == "evaluator.Report"
    report_events = []
    rep = wait_job(stub, report_job, timeout=300, on_event=report_events.append)
    assert any(0 < e.progress < 1 for e in report_events)
    index = output(rep, "index")
    keys = [f.key for f in rep.objects]
    assert index.key == keys[0] == "reports/e2e/index.html"
    for name in ("metrics_bar.png", "metrics_bar.pdf", "metrics_bar.svg", "overlays.png", "overlays_ext.png",
                 "validation_curves.png", "contact_sheet.png", "results.csv", "results.md", "results.tex",
                 "comparisons.csv", "domain_shift.csv", "per_image.csv", "provenance.json"):
        assert f"reports/e2e/{name}" in keys, name
    # notes and warnings (one per line, possibly none) travel in the attributes
    assert rep.attributes["prefix"] == "reports/e2e/" and "notes" in rep.attributes and "warnings" in rep.attributes
    # the same request is the same job, answered from the stored result
    assert stub.SubmitReport(report_request).id == report_job.id
    assert [f.key for f in wait_job(stub, report_job, timeout=30).objects] == keys
    for f in rep.objects:
        data = store.get_bytes(f.key)
        assert len(data) == f.size
        if f.key.endswith(".png"):
            assert data.startswith(PNG_MAGIC)
    page = store.get_bytes(keys[0]).decode()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page and "E2E" in page
    assert 'id="test-set-ext"' in page and ext.id in page and "N = 100" in page
    csv_text = store.get_bytes("reports/e2e/results.csv").decode()
    assert csv_text.splitlines()[1].startswith("real,internal,1,4,")
    assert len(store.get_bytes("reports/e2e/per_image.csv").decode().splitlines()) == 1 + 4 * 2 * 2
    assert json.loads(store.get_bytes("reports/e2e/provenance.json")) == provenance


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_bad_requests_map_to_status_codes(server):
    store, stub = server
    truth = make_truth(store)
    pa = put_predictions(store, PREDS_A, "preds/a.json")
    req = evaluator_pb2.EvaluateRequest
    code, msg = code_of(lambda: stub.SubmitEvaluate(req(truth=truth, predictions=pa, score_threshold=1.5)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "score_threshold" in msg
    code, msg = code_of(lambda: stub.SubmitEvaluate(req(truth=truth, predictions=pa, split="holdout")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "split" in msg
    code, msg = code_of(lambda: stub.SubmitEvaluate(req(truth=common_pb2.DatasetRef(name="nope"), predictions=pa)))
    assert code == grpc.StatusCode.NOT_FOUND and "nope" in msg
    missing = common_pb2.ObjectRef(bucket=store.bucket, key="preds/missing.json")
    code, msg = code_of(lambda: stub.SubmitEvaluate(req(truth=truth, predictions=missing)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, msg = code_of(lambda: stub.Compare(evaluator_pb2.CompareRequest(a=pa, b=pa, metric="accuracy")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "metric" in msg
    code, msg = code_of(lambda: stub.SubmitEvaluate(req(truth=truth, predictions=pa, n_bootstrap=0)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "n_bootstrap" in msg  # 0 is a value, not "default"
    # SubmitReport validates on the call: bad settings, runs and references never start a job.
    run = evaluator_pb2.ArmRun(arm="real", evaluation=pa)
    report = evaluator_pb2.ReportRequest
    for request, needle, expected in [
        (report(), "runs", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run, run]), "twice", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[evaluator_pb2.ArmRun(arm="real")]), "runs[0].evaluation is required", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], overlay_images=30), "ReportConfig.overlay_images", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], n_bootstrap=0), "ReportConfig.n_bootstrap", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], baseline_arm="gan"), "baseline arm 'gan'", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], split="holdout"), "split", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], prefix="../up"), "..", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[evaluator_pb2.ArmRun(arm="real", evaluation=missing)]), "preds/missing.json", grpc.StatusCode.NOT_FOUND),
        (report(runs=[run], truth=common_pb2.DatasetRef(name="nope")), "nope", grpc.StatusCode.NOT_FOUND),
        (report(runs=[run], contact_images=17), "ReportConfig.contact_images", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[evaluator_pb2.ArmRun(arm="real", evaluation=pa, test_set="ext")]),
         "runs[0].test_set 'ext' is not among ReportRequest.test_sets", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[evaluator_pb2.ArmRun(arm="real", evaluation=pa, test_set="a b")]), "runs[0].test_set 'a b' must be",
         grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], test_sets=[evaluator_pb2.TestSet(label="ext")]), "test_sets[0]: no run names test set 'ext'",
         grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], truth=truth, split="test", test_sets=[evaluator_pb2.TestSet(label="internal", truth=truth)]),
         "test_sets[0].label: the internal test set is", grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[evaluator_pb2.ArmRun(arm="real", evaluation=pa, test_set="ext")],
                test_sets=[evaluator_pb2.TestSet(label="ext", truth=common_pb2.DatasetRef(name="nope"))]),
         "nope", grpc.StatusCode.NOT_FOUND),
        (report(runs=[run], contact_sources=[evaluator_pb2.ContactSource(label="real", dataset=truth, split="val")]),
         "contact_sources[0]: dataset", grpc.StatusCode.INVALID_ARGUMENT),  # no images in that split
        (report(runs=[run], contact_sources=[evaluator_pb2.ContactSource(dataset=truth)]), "contact_sources[0].label is empty",
         grpc.StatusCode.INVALID_ARGUMENT),
        (report(runs=[run], provenance_json="{}"), "ReportRequest.provenance_json.format", grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        code, msg = code_of(lambda request=request: stub.SubmitReport(request))
        assert code == expected and needle in msg, (needle, code, msg)
    # An evaluation reference to something that is not an evaluation fails the job, naming it.
    with pytest.raises(JobFailed) as info:
        wait_job(stub, stub.SubmitReport(report(runs=[run])), timeout=60)
    assert info.value.status.error.code == "INVALID_ARGUMENT" and "not an evaluation JSON" in info.value.status.error.message
    # A prediction of the wrong size fails the job with INVALID_ARGUMENT naming the image.
    bad = put_predictions(store, [{"image_id": 2, "category_id": 1, "score": 0.9,
                                   "segmentation": masks_to_rle(np.ones((1, 8, 8), bool))[0]}], "preds/bad.json")
    ref = stub.SubmitEvaluate(req(truth=truth, split="test", predictions=bad, n_bootstrap=200))
    with pytest.raises(JobFailed) as info:
        wait_job(stub, ref, timeout=60)
    assert info.value.status.error.code == "INVALID_ARGUMENT" and "img2.png" in info.value.status.error.message


def image_dataset(store: ObjectStore, name: str, kind: str, splits: list[str], seed: int) -> common_pb2.DatasetRef:
    """Tiny images with one square lesion each, in the given splits (ids 1..N in order)."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(store, kind, [{"id": 1, "name": "lesion"}], name=name)
    for i, split in enumerate(splits):
        y, x = rng.integers(0, 16, 2)
        writer.add(rng.integers(0, 255, (S, S, 3), dtype=np.uint8), box(y, y + 12, x, x + 12)[None], [1], f"{name}{i}.png",
                   split=split)
    return writer.finish()


def test_quality_job_and_report_section(server, caplog):
    from services.evaluator.core.features import FeatureSet, encode_features

    store, stub = server
    real = image_dataset(store, "q-real", "real", ["train"] * 12 + ["test"] * 8, 0)
    gan = image_dataset(store, "q-gan", "gan", [""] * 10, 1)
    rng = np.random.default_rng(2)
    train = rng.normal(size=(12, 8))
    sets = {
        "real_train": FeatureSet("real_train", train.astype(np.float32), np.arange(1, 13), real.id, "train"),
        "real_test": FeatureSet("real_test", rng.normal(size=(8, 8)).astype(np.float32), np.arange(13, 21), real.id, "test"),
        # Images 1-3 copy training images 5, 6, 7 exactly.
        "gan-s0": FeatureSet("gan-s0", np.vstack([train[4:7], rng.normal(size=(7, 8)) + 0.5]).astype(np.float32),
                             np.arange(1, 11), gan.id),
    }
    info = store.put_blob(encode_features("segmenter_fpn", sets, {"checkpoint": "models/real.pt"}), ".npz")
    features = common_pb2.ObjectRef(bucket=store.bucket, key=info.key, sha256=info.sha256, size=info.size)
    # Mask fidelity: "the real-only segmenter" predicts the GAN images; here: their own masks, shifted on image 1.
    gan_ds = store.get_json(f"datasets/{gan.id}/dataset.json")
    preds = [result(a["image_id"], masks_rle_shift(a["segmentation"], 4 if a["image_id"] == 1 else 0)) for a in gan_ds["annotations"]]
    fidelity = output(wait_job(stub, stub.SubmitEvaluate(evaluator_pb2.EvaluateRequest(
        truth=gan, predictions=put_predictions(store, preds, "preds/gan.json"), n_bootstrap=200)), timeout=120), "evaluation")
    request = evaluator_pb2.QualityRequest(
        features=features, feature_space="segmenter_fpn", seed=1, nearest_k=2, kid_subsets=10,
        sources=[evaluator_pb2.QualitySource(label="gan-s0", mask_fidelity=fidelity)])
    ref = stub.SubmitQuality(request)
    assert ref.kind == "evaluator.Quality"
    res = wait_job(stub, ref, timeout=120)
    q_ref = output(res, "quality")
    quality = store.get_json(q_ref.key)
    assert quality["format"] == "synthaug.quality/1" and quality["sample_size"] == 6  # min(2000, 12 // 2, 8, 10)
    assert [r["label"] for r in quality["rows"]] == ["real-vs-real", "gan-s0"]
    gan_row = quality["rows"][1]
    assert gan_row["dataset"] == gan.id and quality["real"]["train"]["dataset"] == real.id
    assert [(p["synthetic_id"], p["train_id"]) for p in gan_row["closest_pairs"][:3]] == [(1, 5), (2, 6), (3, 7)]
    assert gan_row["memorisation"]["near_copies"] == 3
    assert gan_row["mask_fidelity"]["evaluation"] == fidelity.key and gan_row["mask_fidelity"]["n_images"] == 10
    assert gan_row["mask_fidelity"]["mean_iou"] == pytest.approx(store.get_json(fidelity.key)["mean_iou"])
    assert quality["features"]["key"] == info.key and quality["features"]["model"] == {"checkpoint": "models/real.pt"}
    assert res.metrics["gan-s0.near_copy_share"] == pytest.approx(0.3) and "real-vs-real.fd_test" in res.metrics
    assert res.attributes["feature_space"] == "segmenter_fpn"
    assert stub.SubmitQuality(request).id == ref.id  # the same request is the same job

    # The report: the GAN arm trained on source gan-s0; its section, files and figures.
    truth = make_truth(store)
    ev_a = output(evaluate(store, stub, truth, put_predictions(store, PREDS_A, "preds/a.json"))[1], "evaluation")
    ev_b = output(evaluate(store, stub, truth, put_predictions(store, PREDS_B, "preds/b.json"))[1], "evaluation")
    runs = [evaluator_pb2.ArmRun(arm="real", seed=0, evaluation=ev_a, real_count=12),
            evaluator_pb2.ArmRun(arm="gan", seed=0, evaluation=ev_b, real_count=12, gan_count=10, quality_source="gan-s0")]
    report = evaluator_pb2.ReportRequest(runs=runs, prefix="reports/q", overlay_images=0, n_bootstrap=200, quality=[q_ref])
    rep = wait_job(stub, stub.SubmitReport(report), timeout=300)
    keys = [f.key for f in rep.objects]
    for name in ("quality.csv", "quality.tex", "quality_gain_segmenter_fpn.png", "closest_pairs_segmenter_fpn.pdf"):
        assert f"reports/q/{name}" in keys, name
    page = store.get_bytes("reports/q/index.html").decode()
    assert '<h2 id="quality">' in page and "no Inception weights supplied" in page
    assert not [r for r in caplog.records if "cannot load image" in r.getMessage()]  # the pairs came from the datasets

    # Errors on the call name the field; errors in the features fail the job naming the set.
    q = evaluator_pb2.QualityRequest
    src = evaluator_pb2.QualitySource
    for bad, needle, expected in [
        (q(features=features, feature_space="clip", sources=[src(label="gan-s0")]), "QualityRequest.feature_space must be one of",
         grpc.StatusCode.INVALID_ARGUMENT),
        (q(features=features, feature_space="segmenter_fpn"), "QualityRequest.sources: at least one", grpc.StatusCode.INVALID_ARGUMENT),
        (q(features=features, feature_space="segmenter_fpn", sources=[src(label="a"), src(label="a")]),
         "sources[1].label 'a' appears twice", grpc.StatusCode.INVALID_ARGUMENT),
        (q(features=features, feature_space="segmenter_fpn", sources=[src(label="real_train")]), "is reserved",
         grpc.StatusCode.INVALID_ARGUMENT),
        (q(features=features, feature_space="segmenter_fpn", sources=[src(label="g")], nearest_k=0), "QualityConfig.nearest_k",
         grpc.StatusCode.INVALID_ARGUMENT),
        (q(feature_space="segmenter_fpn", sources=[src(label="g")]), "QualityRequest.features", grpc.StatusCode.INVALID_ARGUMENT),
        (q(features=common_pb2.ObjectRef(bucket=store.bucket, key="features/missing.npz"), feature_space="segmenter_fpn",
           sources=[src(label="g")]), "features/missing.npz", grpc.StatusCode.NOT_FOUND),
        (q(features=features, feature_space="segmenter_fpn", sources=[src(label="g", mask_fidelity=common_pb2.ObjectRef(
            bucket=store.bucket, key="evals/missing.json"))]), "evals/missing.json", grpc.StatusCode.NOT_FOUND),
        (evaluator_pb2.ReportRequest(runs=runs), "runs[1].quality_source 'gan-s0': the request has no quality results",
         grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        call = stub.SubmitReport if isinstance(bad, evaluator_pb2.ReportRequest) else stub.SubmitQuality
        code, msg = code_of(lambda call=call, bad=bad: call(bad))
        assert code == expected and needle in msg, (needle, code, msg)
    for bad, needle in [
        (q(features=features, feature_space="inception", sources=[src(label="gan-s0")]),
         "feature_space is 'inception', the features were extracted with 'segmenter_fpn'"),
        (q(features=features, feature_space="segmenter_fpn", sources=[src(label="gan-s1")]), "the features have no set 'gan-s1'"),
        (q(features=fidelity, feature_space="segmenter_fpn", sources=[src(label="gan-s0")]), "not a synthaug.features/1 .npz"),
    ]:
        with pytest.raises(JobFailed) as info:
            wait_job(stub, stub.SubmitQuality(bad), timeout=60)
        assert info.value.status.error.code == "INVALID_ARGUMENT" and needle in info.value.status.error.message, needle


def masks_rle_shift(rle, dx: int):
    """The mask of a COCO RLE shifted right by dx pixels, as a boolean S × S array."""
    from services.common.datasets import rle_to_masks

    return np.roll(rle_to_masks([rle], S, S)[0], dx, axis=1)
