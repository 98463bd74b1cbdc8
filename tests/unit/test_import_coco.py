"""`import coco`: every polygon, RLE (compressed and not), iscrowd, multi-class; every error named."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ingest import cli_data
from ingest.importers import ImportOptions, ImportProblems, import_coco
from services.common.datasets import Dataset, list_datasets
from services.common.store import FileStore, ObjectStore

H, W = 60, 80


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="synthaug")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def square(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def reference_mask(seg, h: int = H, w: int = W) -> np.ndarray:
    """pycocotools' own rasterisation, the reference every COCO tool agrees with."""
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    else:
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else {"size": seg["size"], "counts": seg["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


@pytest.fixture()
def export(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A CVAT/Supervisely-like export: sub-folder in file_name, two classes, every segmentation form."""
    images = tmp_path / "export" / "images"
    write_png(images / "first.png", rgb(1))
    write_png(images / "second.png", rgb(2))
    write_png(images / "negative.png", rgb(3))
    blob = np.zeros((H, W), np.uint8)
    blob[30:50, 40:70] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))
    uncompressed_mask = np.zeros((H, W), np.uint8)
    uncompressed_mask[5:15, 60:75] = 1
    flat = uncompressed_mask.flatten(order="F")  # COCO uncompressed RLE: column-major run lengths
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    coco = {
        "images": [
            {"id": 10, "file_name": "images/first.png", "width": W, "height": H},
            {"id": 11, "file_name": "images/second.png", "width": W, "height": H},
            {"id": 12, "file_name": "images/negative.png", "width": W, "height": H},
        ],
        "categories": [
            {"id": 1, "name": "nevus", "supercategory": "lesion"},
            {"id": 3, "name": "melanoma", "supercategory": "lesion"},
            {"id": 7, "name": "unused"},
        ],
        "annotations": [
            # one object in two pieces: both polygons belong to the one instance
            {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0,
             "segmentation": [square(2, 2, 20, 20), square(30, 2, 50, 12)]},
            {"id": 2, "image_id": 10, "category_id": 3, "iscrowd": 0, "segmentation": [square(10, 30, 30, 55)]},
            {"id": 3, "image_id": 11, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [H, W], "counts": compressed["counts"].decode()}},
            {"id": 4, "image_id": 11, "category_id": 1, "iscrowd": 1, "segmentation": {"size": [H, W], "counts": runs}},
            # a vertex exactly on the border (x = width), as exporters write it
            {"id": 5, "image_id": 11, "category_id": 1, "iscrowd": 0, "segmentation": [[60, 40, 80, 40, 80, 60, 60, 60]]},
        ],
    }
    ann = tmp_path / "export" / "instances.json"
    ann.write_text(json.dumps(coco))
    return ann, tmp_path / "export", coco


def test_every_polygon_rle_iscrowd_and_category(export: tuple[Path, Path, dict], store: ObjectStore) -> None:
    ann, root, coco = export
    summary = import_coco(store, ann, root, ImportOptions(name="cvat", size=None, split=None, workers=1))
    ds = Dataset.load(store, "cvat")
    assert summary.images == 3 and summary.instances == 5 and summary.images_without_instances == 1
    assert [c["id"] for c in ds.categories] == [1, 3, 7]  # all categories kept, ids unchanged
    recs = {r["file_name"]: r for r in ds.image_records()}
    assert list(recs) == ["images/first.png", "images/second.png", "images/negative.png"]
    for file_name, seed in (("images/first.png", 1), ("images/second.png", 2)):
        sample = ds.load_sample(recs[file_name])
        assert np.array_equal(sample.image, rgb(seed))
        image_id = {"images/first.png": 10, "images/second.png": 11}[file_name]
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
        assert list(sample.labels) == [a["category_id"] for a in anns]
        assert list(sample.iscrowd) == [bool(a["iscrowd"]) for a in anns]
        for got, a in zip(sample.masks, anns):
            assert np.array_equal(got, reference_mask(a["segmentation"]))
    first = ds.load_sample(recs["images/first.png"])
    assert first.masks[0][10, 10] and first.masks[0][7, 40]  # both pieces in one instance
    assert len(ds.load_sample(recs["images/negative.png"]).masks) == 0


def test_resize_to_square(export: tuple[Path, Path, dict], file_store: FileStore) -> None:
    ann, root, _ = export
    import_coco(file_store, ann, root, ImportOptions(name="sq", size=32, split=None, workers=1))
    s = Dataset.load(file_store, "sq").load_sample(1)
    assert s.image.shape == (32, 32, 3) and s.masks.shape == (2, 32, 32)


def test_cli_import_coco(export: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, root, _ = export
    url = f"file://{tmp_path / 'store'}"
    assert run_cli(["import", "coco", "--annotations", str(ann), "--images", str(root), "--store", url,
                    "--name", "c", "--split", "0.34,0.33,0.33", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "images    3" in out and "instances 5 in 3 categories" in out and "train 1, val 1, test 1" in out


def _broken(coco: dict) -> dict:
    bad = json.loads(json.dumps(coco))
    bad["images"].append({"id": 13, "file_name": "images/absent.png", "width": W, "height": H})
    bad["annotations"] += [
        {"id": 20, "image_id": 99, "category_id": 1, "segmentation": [square(1, 1, 5, 5)]},
        {"id": 21, "image_id": 10, "category_id": 1, "segmentation": [square(70, 50, 95, 59)]},
        {"id": 22, "image_id": 10, "category_id": 42, "segmentation": [square(1, 1, 5, 5)]},
        {"id": 23, "image_id": 11, "category_id": 1, "segmentation": {"size": [H + 1, W], "counts": "abc"}},
        {"id": 24, "image_id": 11, "category_id": 1, "bbox": [1, 1, 4, 4]},
    ]
    return bad


def test_every_problem_is_listed_and_nothing_registered(export: tuple[Path, Path, dict], file_store: FileStore,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ann, root, coco = export
    ann.write_text(json.dumps(_broken(coco)))
    with pytest.raises(ImportProblems) as exc:
        import_coco(file_store, ann, root, ImportOptions(name="bad", workers=1))
    problems = exc.value.problems
    assert len(problems) == 6
    text = str(exc.value)
    assert "image 13 (images/absent.png): file not found" in text
    assert "annotation 20: image_id 99 is not among the images" in text
    assert "annotation 21 (image images/first.png): polygon 0 has 2 point(s) outside the 80×60 image, e.g. (95, 50)" in text
    assert "annotation 22 (image images/first.png): category_id 42" in text
    assert "annotation 23 (image images/second.png): RLE size 80×61 differs from the 80×60 image" in text
    assert "annotation 24 (image images/second.png): no segmentation" in text
    assert list_datasets(file_store) == {} and file_store.list("datasets/") == [] and file_store.list("blobs/") == []
    # the same through the CLI: exit code 2, the offenders on stderr
    assert run_cli(["import", "coco", "--annotations", str(ann), "--images", str(root), "--store", f"file://{file_store.root}"]) == 2
    assert "annotation 20: image_id 99" in capsys.readouterr().err


def test_image_problems_found_while_decoding(export: tuple[Path, Path, dict], file_store: FileStore) -> None:
    ann, root, coco = export
    write_png(root / "images" / "second.png", rgb(2, H, W + 10))  # not the size the JSON says
    (root / "images" / "negative.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImportProblems) as exc:
        import_coco(file_store, ann, root, ImportOptions(workers=1))
    assert len(exc.value.problems) == 2
    assert "images/second.png: image is 90×60, the annotation file says 80×60" in str(exc.value)
    assert "negative.png: not a readable image" in str(exc.value)
    assert file_store.list("datasets/") == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}', "no images"),
        ('{"images": []}', "'annotations' is missing"),
        ('{"images": [], "annotations": [], "categories": [{"id": 0, "name": "bg"}]}', "ids must be positive"),
    ],
)
def test_malformed_files(tmp_path: Path, file_store: FileStore, content: str, message: str) -> None:
    ann = tmp_path / "a.json"
    ann.write_text(content)
    with pytest.raises(ImportProblems, match=message):
        import_coco(file_store, ann, tmp_path, ImportOptions(workers=1))
    with pytest.raises(ImportProblems, match="file not found"):
        import_coco(file_store, tmp_path / "absent.json", tmp_path, ImportOptions(workers=1))


def test_file_names_and_symlinks_stay_inside_the_image_folder(export: tuple[Path, Path, dict], tmp_path: Path,
                                                               file_store: FileStore) -> None:
    ann, root, coco = export
    outside = tmp_path / "outside.png"
    write_png(outside, rgb(9))
    (root / "images" / "link.png").symlink_to(outside)
    (root / "images" / "dead.png").symlink_to(root / "images" / "removed.png")
    (root / "images" / "inner.png").symlink_to(root / "images" / "first.png")  # a link inside the folder: fine
    bad = json.loads(json.dumps(coco))
    bad["images"] += [
        {"id": 20, "file_name": "../outside.png", "width": W, "height": H},
        {"id": 21, "file_name": str(outside), "width": W, "height": H},
        {"id": 22, "file_name": "images/link.png", "width": W, "height": H},
        {"id": 23, "file_name": "images/dead.png", "width": W, "height": H},
        {"id": 24, "file_name": "images/../../outside.png", "width": W, "height": H},
    ]
    ann.write_text(json.dumps(bad))
    with pytest.raises(ImportProblems) as exc:
        import_coco(file_store, ann, root, ImportOptions(workers=1))
    problems = exc.value.problems
    assert len(problems) == 5, problems
    assert f"image 20 (../outside.png): file_name contains '..'; it must stay inside {root}" in problems
    assert f"image 21 ({outside}): file_name is an absolute path; it must be relative to {root}" in problems
    assert any(p.startswith(f"image 22 (images/link.png): leads outside {root} (to {outside})") for p in problems)
    assert any(p.startswith("image 23 (images/dead.png): dangling symlink (to ") for p in problems)
    assert any(p.startswith("image 24 (images/../../outside.png): file_name contains '..'") for p in problems)
    assert file_store.list("datasets/") == [] and file_store.list("blobs/") == []

    fine = json.loads(json.dumps(coco))
    fine["images"].append({"id": 30, "file_name": "images/inner.png", "width": W, "height": H})
    ann.write_text(json.dumps(fine))
    assert import_coco(file_store, ann, root, ImportOptions(size=None, split=None, workers=1)).images == 4


def test_cli_reimport_of_a_name_needs_replace(export: tuple[Path, Path, dict], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ann, root, _ = export
    url = f"file://{tmp_path / 'store'}"
    argv = ["import", "coco", "--annotations", str(ann), "--images", str(root), "--store", url, "--name", "parts",
            "--workers", "1", "--split", "none"]
    assert run_cli(argv) == 0
    assert run_cli(argv) == 0  # the same content again: the name already points at it
    first = Dataset.load(FileStore(tmp_path / "store"), "parts").id
    capsys.readouterr()
    assert run_cli(argv[:-2] + ["--split", "0.34,0.33,0.33"]) == 2  # a different dataset under the same name
    assert f"the name 'parts' already names dataset {first}" in capsys.readouterr().err
    assert run_cli(argv[:-2] + ["--split", "0.34,0.33,0.33", "--replace"]) == 0
    store = FileStore(tmp_path / "store")
    assert Dataset.load(store, "parts").id != first and len(Dataset.load(store, first)) == 3
