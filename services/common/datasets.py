"""Datasets: COCO instances JSON with RLE masks, content-addressed, with provenance.

A dataset is `datasets/<id>/dataset.json` plus image blobs (`blobs/sha256/…`). `<id>` is the
hash of the canonical manifest, so the same content always has the same id and a manifest is
written only after every image it names is in the store: nothing half-written is ever
registered. Masks are stored per instance (RLE) and never merged or interpolated.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from services.common.errors import InvalidArgument, NotFound
from services.common.imageio import decode_image, encode_jpeg, encode_png
from services.common.refs import object_ref
from services.common.store import Blob, ObjectStore, canonical_json, sha256_bytes
from synthaug import CODE_VERSION
from synthaug.v1 import common_pb2

DATASET_PREFIX = "datasets"
NAME_PREFIX = "names/datasets"
KINDS = ("real", "composite", "gan")
SPLITS = ("", "train", "val", "test")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def validate_split(value: str, field: str) -> str:
    """A split name from a request; InvalidArgument naming the request field otherwise."""
    if value not in SPLITS:
        raise InvalidArgument(f"{field} must be one of train, val, test or '' (all), got {value!r}")
    return value


def manifest_key(dataset_id: str) -> str:
    return f"{DATASET_PREFIX}/{dataset_id}/dataset.json"


# --- masks <-> RLE -------------------------------------------------------------------------


def masks_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """N×H×W bool → COCO compressed RLEs with `counts` as str (JSON-ready)."""
    if masks.ndim != 3:
        raise InvalidArgument(f"masks must be N×H×W, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # Column-major order, as RLE needs. Masks stored that way already (compose_image's) are
    # encoded as they are; others go into zeros, each mask's bounding box copied in (an
    # instance covers a small part of the image; a transposing copy of it all costs more
    # than encoding). bool shares uint8's layout: a view, not a conversion.
    as_uint8 = masks.view(np.uint8) if masks.dtype in (np.bool_, np.uint8) else (masks != 0).view(np.uint8)
    n, h, w = masks.shape
    columns = as_uint8.transpose(1, 2, 0)
    if not columns.flags.f_contiguous:
        columns = np.zeros((h, w, n), np.uint8, order="F")
        for k in range(n):
            x, y, bw, bh = cv2.boundingRect(np.ascontiguousarray(as_uint8[k]))
            columns[y:y + bh, x:x + bw, k] = as_uint8[k, y:y + bh, x:x + bw]
    encoded = mask_utils.encode(columns)
    return [{"size": [int(r["size"][0]), int(r["size"][1])], "counts": r["counts"].decode("ascii")} for r in encoded]


def rle_to_masks(rles: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray:
    """COCO RLEs (compressed, str or bytes counts) → N×H×W bool."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    objs = [{"size": list(r["size"]), "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]} for r in rles]
    decoded = mask_utils.decode(objs)  # H×W×N
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


# --- building datasets ---------------------------------------------------------------------


@dataclass
class ImageRecord:
    """One encoded image with its annotations, before it gets ids in a dataset.

    Picklable, so worker processes can do the heavy part (encode, upload, RLE) and the parent
    only collects records in index order, which keeps ids deterministic.
    """

    file_name: str
    width: int
    height: int
    key: str
    sha256: str
    annotations: list[dict[str, Any]]
    split: str = ""
    # the image entry's "synthaug" object; a value may be CanonicalJSON (encoded already, by
    # the worker that made it), so read a dataset's records from its stored manifest
    extra: dict[str, Any] = field(default_factory=dict)


def _check_sample(image: np.ndarray, masks: np.ndarray, labels: Sequence[int], file_name: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidArgument(f"{file_name}: image must be H×W×3 uint8, got {image.shape} {image.dtype}")
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise InvalidArgument(f"{file_name}: masks must be N×H×W bool, got {masks.shape} {masks.dtype}")
    if masks.shape[1:] != image.shape[:2]:
        raise InvalidArgument(f"{file_name}: mask size {masks.shape[2]}×{masks.shape[1]} differs from image size {image.shape[1]}×{image.shape[0]}")
    if len(labels) != masks.shape[0]:
        raise InvalidArgument(f"{file_name}: {masks.shape[0]} masks but {len(labels)} labels")


def encode_image(image: np.ndarray, image_format: str = "png", jpeg_quality: int = 95) -> tuple[bytes, str, str]:
    """(bytes, suffix, content type) of an RGB image in a dataset's image format."""
    if image_format == "png":
        return encode_png(image), ".png", "image/png"
    if image_format == "jpeg":
        return encode_jpeg(image, jpeg_quality), ".jpg", "image/jpeg"
    raise InvalidArgument(f"unknown image format {image_format!r} (png or jpeg)")


def encode_annotations(masks: np.ndarray, labels: Sequence[int], file_name: str,
                       iscrowd: Sequence[bool] | None = None) -> list[dict[str, Any]]:
    """COCO annotations (without ids) of N×H×W instance masks: every mask RLE-encoded in
    one call, areas and boxes computed from the RLEs. Empty instances are an error."""
    rles = masks_to_rle(masks)
    if not rles:
        return []
    compressed = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in rles]
    areas = mask_utils.area(compressed)
    empty = [i for i, a in enumerate(areas) if a == 0]
    if empty:
        raise InvalidArgument(f"{file_name}: instance(s) {empty} have an empty mask")
    boxes = mask_utils.toBbox(compressed)
    crowd = list(iscrowd) if iscrowd is not None else [False] * len(rles)
    return [
        {
            "category_id": int(label),
            "segmentation": rle,
            "area": int(area),
            "bbox": [float(x), float(y), float(w), float(h)],
            "iscrowd": int(bool(is_crowd)),
        }
        for rle, label, area, (x, y, w, h), is_crowd in zip(rles, labels, areas, boxes.tolist(), crowd)
    ]


@dataclass
class EncodedSample:
    """One image encoded and hashed (a Blob) with its annotations: all the work of a sample
    but the store write, so a worker can make a batch of them and store it at once
    (`ObjectStore.put_blobs`)."""

    blob: Blob
    file_name: str
    width: int
    height: int
    annotations: list[dict[str, Any]]
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> ImageRecord:
        """The record of this sample once its blob is in the store."""
        return ImageRecord(file_name=self.file_name, width=self.width, height=self.height, key=self.blob.key,
                           sha256=self.blob.sha256, annotations=self.annotations, split=self.split,
                           extra=self.extra)


def check_sample(image: np.ndarray, masks: np.ndarray, labels: Sequence[int], file_name: str, split: str = "") -> None:
    """InvalidArgument naming `file_name` unless image, masks, labels and split fit together."""
    _check_sample(image, masks, labels, file_name)
    if split not in SPLITS:
        raise InvalidArgument(f"{file_name}: unknown split {split!r}; expected one of {SPLITS[1:]} or ''")


def encode_sample(
    store: ObjectStore,
    image: np.ndarray,
    masks: np.ndarray,
    labels: Sequence[int],
    file_name: str,
    split: str = "",
    extra: dict[str, Any] | None = None,
    iscrowd: Sequence[bool] | None = None,
    image_format: str = "png",
    encoded: tuple[bytes, str] | None = None,
    jpeg_quality: int = 95,
) -> ImageRecord:
    """Encode and upload one image, encode its instance masks. Empty instances are an error.

    `encoded` = (bytes, suffix) stores those bytes as the image (an import keeps a source JPEG
    as it is, without a lossy re-encode); `image` must be their decoded pixels.
    """
    check_sample(image, masks, labels, file_name, split)
    annotations = encode_annotations(masks, labels, file_name, iscrowd)
    if encoded is not None:
        data, suffix = encoded
        content_type = "image/png" if suffix == ".png" else "image/jpeg"
    else:
        data, suffix, content_type = encode_image(image, image_format, jpeg_quality)
    info = store.put_blob(data, suffix=suffix, content_type=content_type)
    return ImageRecord(
        file_name=file_name,
        width=int(image.shape[1]),
        height=int(image.shape[0]),
        key=info.key,
        sha256=info.sha256,
        annotations=annotations,
        split=split,
        extra=dict(extra or {}),
    )


def validate_categories(categories: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if not categories:
        raise InvalidArgument("a dataset needs at least one category")
    out, seen = [], set()
    for cat in categories:
        cid = cat.get("id")
        if not isinstance(cid, int) or cid <= 0:
            raise InvalidArgument(f"category {cat!r}: id must be a positive integer (0 is background)")
        if cid in seen:
            raise InvalidArgument(f"category id {cid} appears twice")
        seen.add(cid)
        out.append({"id": cid, "name": str(cat.get("name", cid)), "supercategory": str(cat.get("supercategory", ""))})
    return sorted(out, key=lambda c: c["id"])


class DatasetWriter:
    """Collects image records and registers the dataset with `finish()`."""

    def __init__(
        self,
        store: ObjectStore,
        kind: str,
        categories: Sequence[Mapping[str, Any]],
        name: str = "",
        parents: Iterable[str] = (),
        params: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ):
        if kind not in KINDS:
            raise InvalidArgument(f"dataset kind must be one of {KINDS}, got {kind!r}")
        if name:
            validate_name(name)
        self.store = store
        self.kind = kind
        self.categories = validate_categories(categories)
        self._category_ids = {c["id"] for c in self.categories}
        self.name = name
        self.parents = list(parents)
        self.params = dict(params or {})
        self.seed = seed
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(
        self,
        image: np.ndarray,
        masks: np.ndarray,
        labels: Sequence[int],
        file_name: str,
        split: str = "",
        extra: dict[str, Any] | None = None,
        iscrowd: Sequence[bool] | None = None,
        image_format: str = "png",
    ) -> int:
        record = encode_sample(self.store, image, masks, labels, file_name, split, extra, iscrowd, image_format)
        return self.add_record(record)

    def add_record(self, record: ImageRecord) -> int:
        """Append a record; returns its image id (1-based, in order of addition)."""
        unknown = sorted({a["category_id"] for a in record.annotations} - self._category_ids)
        if unknown:
            raise InvalidArgument(f"{record.file_name}: category ids {unknown} are not among the dataset's categories {sorted(self._category_ids)}")
        image_id = len(self.images) + 1
        entry: dict[str, Any] = {
            "id": image_id,
            "file_name": record.file_name,
            "width": record.width,
            "height": record.height,
            "key": record.key,
            "sha256": record.sha256,
            "split": record.split,
        }
        if record.extra:
            entry["synthaug"] = record.extra
        self.images.append(entry)
        for ann in record.annotations:
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id, **ann})
        return image_id

    def manifest(self) -> dict[str, Any]:
        return {
            "info": {"description": f"synthaug {self.kind} dataset {self.name}".strip(), "version": CODE_VERSION},
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
            "synthaug": {
                "kind": self.kind,
                "name": self.name,
                "parents": self.parents,
                "params": self.params,
                "seed": self.seed,
                "code_version": CODE_VERSION,
            },
        }

    def finish(self) -> common_pb2.DatasetRef:
        """Write the manifest (last, after every image) and register the name."""
        if not self.images:
            raise InvalidArgument(f"dataset {self.name or '(unnamed)'} would be empty")
        return write_manifest(self.store, self.manifest())


def manifest_id(manifest: Mapping[str, Any]) -> str:
    """A dataset's id: the first 32 hex digits of the sha256 of its canonical manifest bytes
    (what the store checks every read of `datasets/<id>/dataset.json` against)."""
    return _id_of(canonical_json(manifest))


def _id_of(manifest_bytes: bytes) -> str:
    return sha256_bytes(manifest_bytes)[:32]


def write_manifest(store: ObjectStore, manifest: dict[str, Any]) -> common_pb2.DatasetRef:
    # Every image the manifest names is durable before the manifest exists. The flush waits
    # on the disk (syncfs releases the GIL) while this thread encodes the manifest.
    if store.needs_flush:
        with ThreadPoolExecutor(1, thread_name_prefix="manifest-flush") as pool:
            flushed = pool.submit(store.flush)
            data = canonical_json(manifest)
            flushed.result()
    else:
        data = canonical_json(manifest)
    dataset_id = _id_of(data)
    key = manifest_key(dataset_id)
    if not store.exists(key):
        store.put_bytes(key, data, content_type="application/json")
    name = manifest.get("synthaug", {}).get("name", "")
    if name:
        register_name(store, name, dataset_id)
    return Dataset(store, dataset_id, manifest).ref()


# --- names ---------------------------------------------------------------------------------


def validate_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidArgument(f"invalid dataset name {name!r}: use letters, digits, '.', '_', '-' (≤ 100, starting with a letter or digit)")
    return name


def register_name(store: ObjectStore, name: str, dataset_id: str) -> None:
    """Point `name` at a dataset id (a name is a mutable pointer; datasets are immutable)."""
    store.put_json(f"{NAME_PREFIX}/{validate_name(name)}.json", {"id": dataset_id})


def resolve_name(store: ObjectStore, name: str) -> str:
    dataset_id = registered_id(store, name)
    if dataset_id is None:
        raise NotFound(f"no dataset named {name!r}")
    return dataset_id


def registered_id(store: ObjectStore, name: str) -> str | None:
    """The id `name` points at, or None when no dataset has that name."""
    try:
        return str(store.get_json(f"{NAME_PREFIX}/{validate_name(name)}.json")["id"])
    except NotFound:
        return None


def list_datasets(store: ObjectStore) -> dict[str, str]:
    """Registered names → ids."""
    out = {}
    for key in store.list(f"{NAME_PREFIX}/"):
        name = key[len(NAME_PREFIX) + 1 : -len(".json")]
        out[name] = str(store.get_json(key)["id"])
    return out


# --- reading datasets ----------------------------------------------------------------------


@dataclass
class Sample:
    image_id: int
    file_name: str
    image: np.ndarray  # H×W×3 uint8 RGB
    masks: np.ndarray  # N×H×W bool
    labels: np.ndarray  # N int64, category ids as in the manifest
    iscrowd: np.ndarray  # N bool
    record: dict[str, Any]


class Dataset:
    """A registered dataset: its manifest and lazy access to images and masks."""

    def __init__(self, store: ObjectStore, dataset_id: str, manifest: dict[str, Any]):
        self.store = store
        self.id = dataset_id
        self.manifest = manifest
        self._by_id = {img["id"]: img for img in manifest["images"]}
        self._anns: dict[int, list[dict[str, Any]]] = {i: [] for i in self._by_id}
        for ann in manifest["annotations"]:
            self._anns.setdefault(ann["image_id"], []).append(ann)

    @classmethod
    def load(cls, store: ObjectStore, ref: common_pb2.DatasetRef | str) -> Dataset:
        """By DatasetRef, 32-hex id, or registered name. NotFound when absent."""
        if isinstance(ref, common_pb2.DatasetRef):
            if ref.manifest.bucket:
                store.check_bucket(ref.manifest.bucket, "dataset")
            ident = ref.id or ref.name
            if not ident:
                raise InvalidArgument("dataset reference has neither id nor name")
        else:
            ident = ref
        dataset_id = ident if _ID_RE.match(ident) else resolve_name(store, ident)
        try:
            manifest = store.get_json(manifest_key(dataset_id))
        except NotFound:
            raise NotFound(f"dataset {ident!r} not found") from None
        return cls(store, dataset_id, manifest)

    @property
    def provenance(self) -> dict[str, Any]:
        return self.manifest.get("synthaug", {})

    @property
    def kind(self) -> str:
        return str(self.provenance.get("kind", "real"))

    @property
    def name(self) -> str:
        return str(self.provenance.get("name", ""))

    @property
    def categories(self) -> list[dict[str, Any]]:
        return self.manifest["categories"]

    def __len__(self) -> int:
        return len(self.manifest["images"])

    def image_records(self, split: str = "") -> list[dict[str, Any]]:
        """Image records of a split ('' = all), in id order. Unknown split → InvalidArgument."""
        if split not in SPLITS:
            raise InvalidArgument(f"unknown split {split!r}; expected train, val, test or '' (all)")
        images = sorted(self.manifest["images"], key=lambda r: r["id"])
        return images if not split else [r for r in images if r.get("split", "") == split]

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        return self._anns.get(image_id, [])

    def record(self, image_id: int) -> dict[str, Any]:
        try:
            return self._by_id[image_id]
        except KeyError:
            raise NotFound(f"dataset {self.id}: no image with id {image_id}") from None

    def load_image(self, record: Mapping[str, Any]) -> np.ndarray:
        data = self.store.get_bytes(record["key"], expect_sha256=str(record.get("sha256", "")))
        return decode_image(data, f"{self.id}/{record['file_name']}")

    def load_masks(self, record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        anns = self.annotations_of(record["id"])
        masks = rle_to_masks([a["segmentation"] for a in anns], record["height"], record["width"])
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        return masks, labels, iscrowd

    def load_sample(self, record_or_id: Mapping[str, Any] | int) -> Sample:
        record = self.record(record_or_id) if isinstance(record_or_id, int) else record_or_id
        masks, labels, iscrowd = self.load_masks(record)
        return Sample(int(record["id"]), record["file_name"], self.load_image(record), masks, labels, iscrowd, dict(record))

    def split_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for r in self.manifest["images"]:
            sizes[r.get("split", "")] = sizes.get(r.get("split", ""), 0) + 1
        return sizes

    def ref(self) -> common_pb2.DatasetRef:
        key = manifest_key(self.id)
        info = self.store.stat(key)
        return common_pb2.DatasetRef(
            id=self.id,
            manifest=object_ref(self.store, info),
            name=self.name,
            num_images=len(self.manifest["images"]),
            num_instances=len(self.manifest["annotations"]),
        )

    def with_splits(self, assignment: Mapping[int, str], split_params: Mapping[str, Any], name: str = "") -> common_pb2.DatasetRef:
        """A new dataset: the same images and annotations, each image assigned to a split.

        Every image must be assigned; the split parameters enter the provenance, and the new
        dataset's parent is this one.
        """
        missing = sorted(set(self._by_id) - set(assignment))
        if missing:
            raise InvalidArgument(f"split assignment misses image ids {missing[:10]}{'…' if len(missing) > 10 else ''}")
        bad = sorted({s for s in assignment.values() if s not in SPLITS[1:]})
        if bad:
            raise InvalidArgument(f"unknown split names {bad}; expected train, val, test")
        manifest = dict(self.manifest)
        manifest["images"] = [{**img, "split": assignment[img["id"]]} for img in self.manifest["images"]]
        prov = dict(self.provenance)
        prov["parents"] = [self.id]
        prov["params"] = {**prov.get("params", {}), "split": dict(split_params)}
        # The child is registered only under a name given here: a parent's name keeps
        # pointing at the parent (a split never moves the user's name).
        prov["name"] = validate_name(name) if name else ""
        manifest["synthaug"] = prov
        return write_manifest(self.store, manifest)

    def subset(self, image_ids: Iterable[int], params: Mapping[str, Any]) -> common_pb2.DatasetRef:
        """A new dataset of some of this one's images: their records (ids, splits) and
        annotations unchanged, so whatever reads the subset names the same images the parent
        does. Its parent is this dataset; `params` (what chose the images) and the chosen ids
        enter its provenance. Never registered under a name."""
        ids = sorted({int(i) for i in image_ids})
        if not ids:
            raise InvalidArgument(f"a subset of dataset {self.id} needs at least one image")
        unknown = [i for i in ids if i not in self._by_id]
        if unknown:
            raise InvalidArgument(f"dataset {self.id} has no images with ids {unknown[:10]}{'…' if len(unknown) > 10 else ''}")
        chosen = set(ids)
        manifest = dict(self.manifest)
        manifest["images"] = [img for img in self.manifest["images"] if img["id"] in chosen]
        manifest["annotations"] = [a for a in self.manifest["annotations"] if a["image_id"] in chosen]
        prov = dict(self.provenance)
        prov["parents"] = [self.id]
        prov["params"] = {**prov.get("params", {}), "subset": {**dict(params), "image_ids": ids}}
        prov["name"] = ""
        manifest["synthaug"] = prov
        return write_manifest(self.store, manifest)
