"""Compositor dataset-level entry points over a file store: sets, composite datasets."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

from services.common import pixels
from services.common.datasets import Dataset, DatasetWriter, manifest_key
from services.common.errors import IntegrityError, InvalidArgument, NotFound
from services.common.imageio import encode_png
from services.common.store import ObjectStore, canonical_json
from services.compositor.config import (
    BackgroundParams,
    ComposeParams,
    ForegroundParams,
    Range,
)
from services.compositor.core.compose import foreground_stats
from services.compositor.core.pipeline import (
    compose_dataset,
    extract_foreground_set,
    harvest_background_set,
    read_shared_pixels,
    write_shared_pixels,
)
from services.compositor.core.sets import (
    BACKGROUND_KIND,
    FOREGROUND_KIND,
    decode_rgb,
    decode_rgba,
    load_set,
    save_set,
)


def make_real_dataset(store: ObjectStore, n: int = 6, size: int = 64, name: str = "toy") -> Dataset:
    """Skin-toned images with one or two dark 'lesions' each (one touching the border)."""
    rng = np.random.default_rng(0)
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}, {"id": 2, "name": "nevus"}], name=name)
    for i in range(n):
        image = np.clip(rng.normal((200, 160, 140), 5, (size, size, 3)), 0, 255).astype(np.uint8)
        masks = []
        for j, (cx, cy, r) in enumerate([(20 + i, 22, 9), (46, 44 - i, 6 + i % 3)][: 1 + i % 2]):
            m = np.zeros((size, size), np.uint8)
            cv2.circle(m, (cx, cy), r, 1, -1)
            image[m > 0] = (90 - 10 * j, 50, 30)
            masks.append(m > 0)
        if i == 0:  # an object cut by the frame
            m = np.zeros((size, size), np.uint8)
            cv2.circle(m, (0, 60), 5, 1, -1)
            masks.append(m > 0)
        labels = [1 + (k % 2) for k in range(len(masks))]
        writer.add(image, np.stack(masks), labels, f"img{i}.png", split="train" if i < n - 1 else "val")
    return Dataset.load(store, writer.finish())


def test_foreground_set_lists_rgba_cutouts_with_metadata(file_store: ObjectStore) -> None:
    ds = make_real_dataset(file_store)
    info, manifest = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=200, feather_sigma=0.0, padding=3))
    entries = manifest["foregrounds"]
    # train images 0..4 each have one r=9 disc (~253 px); images 1 and 3 also a small one
    # (r=7, r=6: < 200 px); image 0 also one cut by the frame
    assert manifest["skipped"] == {"small": 2, "truncated": 1, "crowd": 0}
    assert len(entries) == 5
    for e in entries:
        rgba = decode_rgba(file_store.get_bytes(e["key"]), e["key"])
        assert rgba.shape == (e["height"], e["width"], 4)
        assert np.count_nonzero(rgba[..., 3] == 255) == e["area"]
        assert e["category_id"] in (1, 2) and e["source_file"].startswith("img")
    assert load_set(file_store, info.key, FOREGROUND_KIND, "fg")["foregrounds"] == entries
    with pytest.raises(InvalidArgument, match="min_area"):
        extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=10_000))
    with pytest.raises(InvalidArgument, match="ForegroundParams.padding"):
        extract_foreground_set(file_store, ds, "train", ForegroundParams(padding=-1))


def test_foreground_sets_record_the_colour_stats_composition_uses(file_store: ObjectStore) -> None:
    """Each entry records the stats of its asset (as `foreground_stats` measures them on the
    stored PNG); composition uses them instead of measuring again, and a set without them
    (made before they were recorded) composes the same images."""
    ds = make_real_dataset(file_store)
    fg, manifest = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=50))
    bg, _ = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3))
    for e in manifest["foregrounds"]:
        rgba = decode_rgba(file_store.get_bytes(e["key"]), e["key"])
        measured = foreground_stats(rgba, 25)
        assert e["stats"]["dark_threshold"] == 25 and e["stats"]["mean_grey"] == measured.mean_grey
        assert measured.skin is not None and e["stats"]["skin"] == measured.skin.tolist()

    def variant(change: Callable[[dict[str, Any]], Any]) -> str:  # every entry changed by `change`
        copy = json.loads(json.dumps(manifest))
        for e in copy["foregrounds"]:
            change(e)
        return save_set(file_store, copy).key

    # scale up to 0.9: no asset is shrunk at load time (a shrunk one's measured stats differ)
    params = ComposeParams(output_size=64, scale=Range(0.4, 0.9), tone_match=1.0)
    assert all(max(e["width"], e["height"]) <= 0.9 * 64 * 1.25 for e in manifest["foregrounds"])
    recorded, _ = compose_dataset(file_store, fg.key, bg.key, 6, 5, params, workers=1)
    without, _ = compose_dataset(file_store, variant(lambda e: e.pop("stats")), bg.key, 6, 5, params, workers=1)
    other_skin = variant(lambda e: e["stats"].update(skin=[100.0, 100.0, 100.0]))
    tinted, _ = compose_dataset(file_store, other_skin, bg.key, 6, 5, params, workers=1)
    keys = {name: [r["key"] for r in Dataset.load(file_store, ref).image_records()]
            for name, ref in (("recorded", recorded), ("without", without), ("tinted", tinted))}
    assert keys["recorded"] == keys["without"]  # the same pixels: the recorded stats are exact
    assert all(a != b for a, b in zip(keys["recorded"], keys["tinted"]))  # and they are what is used
    # measured with another dark threshold: not used (the job measures them itself)
    again, _ = compose_dataset(file_store, other_skin, bg.key, 6, 5, dataclasses.replace(params, dark_threshold=30),
                               workers=1)
    measured_30, _ = compose_dataset(file_store, fg.key, bg.key, 6, 5, dataclasses.replace(params, dark_threshold=30),
                                     workers=1)
    assert [r["key"] for r in Dataset.load(file_store, again).image_records()] == \
        [r["key"] for r in Dataset.load(file_store, measured_30).image_records()]
    good = {"dark_threshold": 25, "mean_grey": 90.0, "skin": [1.0, 2.0, 3.0]}
    for bad in ({**good, "mean_grey": 300.0}, {"mean_grey": 90.0, "skin": None}, {**good, "skin": [1.0, 2.0]},
                "stats", {**good, "mean_grey": float("nan")}, {**good, "dark_threshold": True},
                {**good, "dark_threshold": 25.0}, {**good, "extra": 1}, {**good, "skin": [1.0, True, 3.0]}):
        broken = variant(lambda e, bad=bad: e.update(stats=bad))
        with pytest.raises(InvalidArgument, match=r"entry 0 of .* has malformed stats"):
            compose_dataset(file_store, broken, bg.key, 1, 5, params, workers=1)


def test_sets_store_raw_pixels_and_sets_of_png_blobs_compose_the_same_images(file_store: ObjectStore) -> None:
    """The sets synthaug makes hold zstd-compressed pixels (decoded ~10× faster than PNG);
    a set of PNG blobs (as sets were made before, or written by hand) holding the same
    pixels composes byte-identical images; a blob with the wrong channels is refused by name."""
    ds = make_real_dataset(file_store)
    fg, fg_manifest = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=50))
    bg, bg_manifest = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3))
    png_sets = []
    for manifest, entries, decode in ((fg_manifest, "foregrounds", decode_rgba), (bg_manifest, "backgrounds", decode_rgb)):
        copy = json.loads(json.dumps(manifest))
        for e in copy[entries]:
            data = file_store.get_bytes(e["key"])
            assert pixels.is_stored_pixels(data) and e["key"].endswith(".zst")
            e["key"] = file_store.put_blob(encode_png(decode(data, e["key"])), ".png", "image/png").key
        png_sets.append(save_set(file_store, copy).key)
    params = ComposeParams(output_size=64)
    stored, _ = compose_dataset(file_store, fg.key, bg.key, 6, 5, params, workers=1)
    from_png, _ = compose_dataset(file_store, png_sets[0], png_sets[1], 6, 5, params, workers=2)
    assert [r["key"] for r in Dataset.load(file_store, stored).image_records()] == \
        [r["key"] for r in Dataset.load(file_store, from_png).image_records()]
    rgb_key = bg_manifest["backgrounds"][0]["key"]
    with pytest.raises(InvalidArgument, match=f"{rgb_key}: foreground pixels must be H×W×4"):
        decode_rgba(file_store.get_bytes(rgb_key), rgb_key)
    fg_key = fg_manifest["foregrounds"][0]["key"]
    with pytest.raises(InvalidArgument, match=f"{fg_key}: background pixels must be H×W×3"):
        decode_rgb(file_store.get_bytes(fg_key), fg_key)


def test_background_sets_from_dataset_and_prefix(file_store: ObjectStore) -> None:
    ds = make_real_dataset(file_store)
    _, inpainted = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3), seed=1)
    assert len(inpainted["backgrounds"]) == 5
    assert inpainted["params"]["method"] == "inpaint_telea"  # the default for a dataset
    image = file_store.get_bytes(inpainted["backgrounds"][0]["key"])
    assert image
    _, crops = harvest_background_set(file_store, dataset=ds, crops_per_image=2, seed=1,
                                      params=BackgroundParams(method="crop", crop_size=16, dilate_px=2, max_backgrounds=7))
    assert len(crops["backgrounds"]) == 7
    assert all(e["width"] == e["height"] == 16 for e in crops["backgrounds"])
    file_store.put_bytes("user/bg/a.png", encode_png(np.full((40, 50, 3), 170, np.uint8)))
    file_store.put_bytes("user/bg/notes.txt", b"not an image")
    _, user = harvest_background_set(file_store, image_prefix="user/bg/")  # unset method: as_is
    assert [e["key"] for e in user["backgrounds"]] == ["user/bg/a.png"] and user["params"]["method"] == "as_is"
    with pytest.raises(InvalidArgument, match="needs a dataset"):
        harvest_background_set(file_store, image_prefix="user/bg/", params=BackgroundParams(method="inpaint_telea"))
    with pytest.raises(InvalidArgument, match="BackgroundParams.method must be one of"):
        harvest_background_set(file_store, dataset=ds, params=BackgroundParams(method="telea"))


def test_composite_dataset_is_identical_for_1_and_2_workers(file_store: ObjectStore) -> None:
    ds = make_real_dataset(file_store)
    fg, _ = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=50))
    bg, _ = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3))
    params = ComposeParams(output_size=64, scale=Range(0.3, 0.5), max_overlap_iou=0.2)
    one, m1 = compose_dataset(file_store, fg.key, bg.key, 10, 5, params, workers=1, name="comp")
    two, m2 = compose_dataset(file_store, fg.key, bg.key, 10, 5, params, workers=2, name="comp")
    assert one.id == two.id  # same manifest: same image bytes (sha256) and masks (RLE)
    data = file_store.get_bytes(manifest_key(one.id))  # with the workers' audits spliced in:
    assert canonical_json(json.loads(data)) == data  # still the canonical encoding of itself
    assert m2["workers"] == 2
    for m in (m1, m2):  # where the time went, per stage (summed over workers), and the commit
        assert {"seconds_compose", "seconds_encode", "seconds_hash", "seconds_put", "seconds_commit", "cpu_seconds"} <= set(m)
        assert m["seconds_compose"] > 0 and m["seconds_encode"] > 0 and m["seconds_put"] > 0
        assert m["cpu_seconds"] > 0
    comp = Dataset.load(file_store, one)
    assert comp.kind == "composite" and comp.provenance["parents"] == [ds.id]
    assert comp.provenance["seed"] == 5 and comp.provenance["params"]["count"] == 10
    assert len(comp) == 10
    total = skipped = dropped = 0
    for record in comp.image_records():
        sample = comp.load_sample(record)
        audit = record["synthaug"]["composite"]
        kept = [o for o in audit["objects"] if o.get("instance", -1) >= 0]
        assert sample.masks.shape[0] == len(kept) == len(comp.annotations_of(record["id"]))
        assert sample.image.shape == (64, 64, 3)
        assert sample.masks.sum(axis=0).max(initial=0) <= 1
        assert sorted(sample.labels.tolist()) == sorted(o["category_id"] for o in kept)
        for ann, mask in zip(comp.annotations_of(record["id"]), sample.masks):  # areas and boxes from the RLE
            ys, xs = np.nonzero(mask)
            assert ann["area"] == len(ys) > 0
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert record["file_name"] == f"composite_{record['id'] - 1:06d}.jpg"
        total += len(kept)
        skipped += audit["skipped"]
        dropped += audit["dropped"]
    assert total == m1["instances"] == m2["instances"] == one.num_instances
    assert (m1["skipped_objects"], m1["dropped_instances"]) == (m2["skipped_objects"], m2["dropped_instances"]) == (skipped, dropped)
    other, _ = compose_dataset(file_store, fg.key, bg.key, 10, 6, params, workers=1)
    assert other.id != one.id


def test_compose_rejects_empty_and_missing_sets(file_store: ObjectStore) -> None:
    empty_fg = save_set(file_store, {"kind": FOREGROUND_KIND, "foregrounds": [], "categories": [{"id": 1}]})
    bg = save_set(file_store, {"kind": BACKGROUND_KIND, "backgrounds": [{"key": "x.png"}]})
    with pytest.raises(InvalidArgument, match="foregrounds.*empty"):
        compose_dataset(file_store, empty_fg.key, bg.key, 1, 0)
    fg = save_set(file_store, {"kind": FOREGROUND_KIND, "foregrounds": [{"key": "y.png", "category_id": 1}],
                               "categories": [{"id": 1}]})
    with pytest.raises(NotFound, match="backgrounds"):
        compose_dataset(file_store, fg.key, "compositor/nope.json", 1, 0)
    with pytest.raises(InvalidArgument, match="category ids"):
        bad = save_set(file_store, {"kind": FOREGROUND_KIND, "foregrounds": [{"key": "y.png", "category_id": 3}],
                                    "categories": [{"id": 1}]})
        compose_dataset(file_store, bad.key, bg.key, 1, 0)
    with pytest.raises(InvalidArgument, match="min_objects"):
        compose_dataset(file_store, empty_fg.key, bg.key, 1, 0, ComposeParams(min_objects=0))


def test_a_failing_worker_fails_the_job_and_registers_nothing(file_store: ObjectStore) -> None:
    ds = make_real_dataset(file_store)
    fg, fg_manifest = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=50))
    bg, _ = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3))
    for entry in fg_manifest["foregrounds"]:  # every foreground corrupt on disk
        path = file_store.root / entry["key"]
        path.write_bytes(path.read_bytes()[:-1] + b"x")
    before = set(file_store.list(""))
    with pytest.raises(IntegrityError, match="is corrupt"):
        compose_dataset(file_store, fg.key, bg.key, 12, 5, ComposeParams(output_size=64), workers=2, name="broken")
    assert not [k for k in set(file_store.list("")) - before if not k.startswith("blobs/")]  # no manifest, no name


def test_a_cancelled_job_stops_its_workers_and_registers_nothing(file_store: ObjectStore) -> None:
    import multiprocessing

    ds = make_real_dataset(file_store)
    fg, _ = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=50))
    bg, _ = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3))

    class Cancelled(Exception):
        pass

    seen: list[float] = []

    def progress(fraction: float, message: str = "", metrics: dict | None = None) -> None:
        seen.append(fraction)
        raise Cancelled()  # as JobContext.progress does when the job is cancelled

    before = set(file_store.list(""))
    with pytest.raises(Cancelled):
        compose_dataset(file_store, fg.key, bg.key, 64, 5, ComposeParams(output_size=64), workers=2,
                        name="cancelled", progress=progress)
    assert len(seen) == 1 and 0 < seen[0] < 1  # stopped at the first chunk
    assert multiprocessing.active_children() == []  # the pool's workers are gone
    assert not [k for k in set(file_store.list("")) - before if not k.startswith("blobs/")]


def test_workers_open_the_store_with_the_environment_of_the_job(file_store: ObjectStore, s3_endpoint: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers come from a fork server started by an earlier job (here: one on a file
    store, without S3 credentials); they must still see the credentials of this job."""
    from services.common.store import S3Store, open_store
    from tests.conftest import S3_ACCESS, S3_SECRET

    ds = make_real_dataset(file_store)
    fg, _ = extract_foreground_set(file_store, ds, "train", ForegroundParams(min_area=50))
    bg, _ = harvest_background_set(file_store, dataset=ds, split="train", params=BackgroundParams(dilate_px=3))
    params = ComposeParams(output_size=64)
    on_file, _ = compose_dataset(file_store, fg.key, bg.key, 6, 5, params, workers=2)

    # S3 credentials given to the store object but absent from the environment: the workers,
    # which open the store from its URL, fail, and the job fails with their error.
    s3 = S3Store("compose-env-test", s3_endpoint, S3_ACCESS, S3_SECRET, secure=False)
    monkeypatch.delenv("SYNTHAUG_S3_ACCESS_KEY", raising=False)
    monkeypatch.delenv("SYNTHAUG_S3_SECRET_KEY", raising=False)
    ds3 = make_real_dataset(s3)
    fg3, _ = extract_foreground_set(s3, ds3, "train", ForegroundParams(min_area=50))
    bg3, _ = harvest_background_set(s3, dataset=ds3, split="train", params=BackgroundParams(dilate_px=3))
    with pytest.raises(InvalidArgument, match="S3 store needs credentials"):
        compose_dataset(s3, fg3.key, bg3.key, 6, 5, params, workers=2)

    monkeypatch.setenv("SYNTHAUG_S3_ACCESS_KEY", S3_ACCESS)
    monkeypatch.setenv("SYNTHAUG_S3_SECRET_KEY", S3_SECRET)
    on_s3, _ = compose_dataset(open_store(s3.url), fg3.key, bg3.key, 6, 5, params, workers=2)
    keys = [r["key"] for r in Dataset.load(s3, on_s3).image_records()]
    assert keys == [r["key"] for r in Dataset.load(file_store, on_file).image_records()]  # same bytes on both stores
    assert all(s3.exists(k) for k in keys)


def test_shared_pixels_round_trip_and_reject_damaged_files(tmp_path: Path) -> None:
    """What one worker leaves for the others comes back bit for bit, whatever its shape; a
    missing, truncated or overlong file reads as absent (the reader decodes it itself)."""
    rng = np.random.default_rng(3)
    for shape in [(7, 5, 4), (9, 11, 3), (6, 13), (0, 4, 4)]:
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        path = str(tmp_path / f"a-{len(shape)}-{shape[0]}.u8")
        write_shared_pixels(path, array)
        back = read_shared_pixels(path)
        assert back is not None and back.dtype == np.uint8 and back.shape == shape
        assert np.array_equal(back, array) and back.flags.writeable
    assert read_shared_pixels(str(tmp_path / "missing.u8")) is None
    whole = (tmp_path / "a-3-7.u8").read_bytes()
    size = pixels.HEADER.size
    huge = pixels.HEADER.pack(pixels.MAGIC, 3, 2**20, 2**20, 4) + whole[size:]  # no allocation should trust it
    for damaged in (whole[:-1], whole + b"\0", whole[:10], huge, b"XXXX" + whole[4:]):
        (tmp_path / "damaged.u8").write_bytes(damaged)
        assert read_shared_pixels(str(tmp_path / "damaged.u8")) is None
    write_shared_pixels(str(tmp_path / "floats.u8"), np.zeros((2, 2), np.float32))  # not shared
    assert not list(tmp_path.glob("*floats*"))
    # a failed write (here: no such folder) is not an error, and leaves nothing behind
    write_shared_pixels(str(tmp_path / "missing" / "a.u8"), np.zeros((2, 2), np.uint8))
    assert not (tmp_path / "missing").exists()
