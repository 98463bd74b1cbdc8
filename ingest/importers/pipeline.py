"""What every importer shares: options, the parallel decode/encode pipeline, registration.

An importer turns its source into a list of `ImportTask`s (cheap, in the parent: listing,
matching, structural checks) and a function that turns one task into image + instance masks
(expensive: decoding, rasterising, resizing). `run_import` runs that function in a process
pool, encodes PNG + RLE in the workers (`encode_sample` against a capturing store, so the
worker needs no store connection), uploads blobs in the parent in task order (deterministic
image ids whatever the worker count) and registers the dataset only when every task
succeeded. Problems are collected over *all* tasks, so one run names every offending item.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, cast

import cv2
import numpy as np

from ingest.splits import SplitSpec, assign_splits, groups_for, read_groups
from services.common.datasets import Dataset, DatasetWriter, ImageRecord, encode_sample, manifest_id, registered_id, validate_name
from services.common.errors import InvalidArgument, SynthaugError
from services.common.imageio import decode_image, resize_image, resize_mask
from services.common.store import BackgroundFlush, ObjectInfo, ObjectStore, blob_key, sha256_bytes

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_LISTED_PROBLEMS = 30
IMAGE_FORMATS = ("auto", "png", "jpeg")
#: Source files whose bytes can be stored as they are (what `decode_image` reads back is then
#: exactly what the importer decoded: same bytes, same decoder).
KEEP_AS_IS = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg"}


class ImportProblems(InvalidArgument):
    """Bad input found by an importer; the message lists the offending items."""

    def __init__(self, what: str, problems: Sequence[str]):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        tail = f"\n  … and {more} more" if more > 0 else ""
        super().__init__(f"{what}: {len(self.problems)} problem(s); nothing was registered:\n{shown}{tail}")


@dataclass(frozen=True)
class ImportOptions:
    """Settings shared by every importer (recorded in the dataset's provenance)."""

    name: str = ""
    size: int | None = 256  # square side; None keeps each image's own size
    image_format: str = "auto"  # auto: the source file's own bytes when unchanged, else png; png; jpeg
    split: SplitSpec | None = field(default_factory=SplitSpec)  # None: leave images unsplit
    metadata: str = ""  # CSV with one row per image (for grouped splits)
    id_column: str = "image_id"  # CSV column matched against image file stems
    workers: int = 1  # processes for decode/encode; ≤ 1 runs in this process
    replace: bool = False  # let `name` move to a different dataset (not part of the provenance)

    def validate(self) -> ImportOptions:
        if self.name:
            validate_name(self.name)
        if self.size is not None and not 8 <= self.size <= 8192:
            raise InvalidArgument(f"--size must be in [8, 8192] or 'keep', got {self.size}")
        if self.image_format not in IMAGE_FORMATS:
            raise InvalidArgument(f"--image-format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if self.workers < 0:
            raise InvalidArgument(f"--workers must be ≥ 0, got {self.workers}")
        if self.split is not None and self.split.group_by and not self.metadata:
            raise InvalidArgument(f"--group-by {self.split.group_by!r} needs --metadata CSV")
        if self.metadata and (self.split is None or not self.split.group_by):
            raise InvalidArgument("--metadata is only used for grouped splits: give --group-by COLUMN too")
        return self

    def params(self) -> dict[str, Any]:
        return {
            "size": self.size if self.size is not None else "keep",
            "image_format": self.image_format,
            "split": self.split.params() if self.split is not None else None,
            "metadata": Path(self.metadata).name if self.metadata else "",
            "id_column": self.id_column if self.metadata else "",
        }


@dataclass
class ImportTask:
    """One image to import; `source` is importer-specific and must be picklable."""

    index: int
    file_name: str  # as recorded in the manifest
    image_path: str
    source: Any
    split: str = ""


@dataclass
class Decoded:
    """What an importer's decode function returns for one task (before resizing)."""

    image: np.ndarray  # H×W×3 uint8
    masks: np.ndarray  # N×H×W bool
    labels: list[int]
    iscrowd: list[bool]
    notes: dict[str, int] = field(default_factory=dict)  # counters for the summary
    source: bytes | None = None  # the encoded source file, when the decoder read one
    source_suffix: str = ""  # its file suffix (".jpg", ".png", …)


def read_source(path: str) -> tuple[bytes, np.ndarray]:
    """The file's bytes and its decoded RGB image (InvalidArgument naming the file)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: file not found") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read ({exc.strerror})") from None
    return data, decode_image(data, path)


@dataclass
class _Outcome:
    index: int
    record: ImageRecord | None = None
    blob: bytes | None = None
    error: str = ""
    notes: dict[str, int] = field(default_factory=dict)


@dataclass
class ImportSummary:
    dataset_id: str
    name: str
    images: int
    instances: int
    categories: int
    split_sizes: dict[str, int]
    images_without_instances: int
    notes: dict[str, int]
    seconds: float
    workers: int
    replaced: str = ""  # the id `name` pointed at before this import moved it ('' if it did not)

    def lines(self) -> list[str]:
        splits = ", ".join(f"{k or 'unsplit'} {v}" for k, v in sorted(self.split_sizes.items(), key=lambda kv: ("train", "val", "test", "").index(kv[0])))
        out = [
            f"dataset   {self.dataset_id}" + (f"  (name {self.name})" if self.name else ""),
            f"images    {self.images}  ({self.images_without_instances} without instances)",
            f"instances {self.instances} in {self.categories} categor{'y' if self.categories == 1 else 'ies'}",
            f"splits    {splits}",
        ]
        if self.replaced:
            out.append(f"replaced  name {self.name} pointed at {self.replaced}, which stays addressable by that id")
        if self.notes:
            out.append("notes     " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(self.notes.items())))
        rate = self.images / self.seconds if self.seconds > 0 else float("inf")
        out.append(f"time      {self.seconds:.2f} s ({rate:.0f} images/s, {self.workers} worker{'s' if self.workers != 1 else ''})")
        return out


class _CaptureStore(ObjectStore):
    """Stands in for the store inside workers: `put_blob` only hashes and keeps the bytes.

    The parent uploads the captured bytes with the real store's `put_blob`, which yields the
    same content-addressed key, so records built in workers stay valid.
    """

    url = "capture://"
    bucket = ""

    def __init__(self) -> None:
        self.data: bytes | None = None

    def put_blob(self, data: bytes, suffix: str = "", content_type: str = "application/octet-stream") -> ObjectInfo:
        self.data = data
        digest = sha256_bytes(data)
        return ObjectInfo(key=blob_key(digest, suffix), sha256=digest, size=len(data))

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the capture store only supports put_blob")

    put_bytes = put_file = get_bytes = get_to_file = verify = stat = exists = list = delete = _unsupported  # type: ignore[assignment]


_BLOB_TYPES = {".png": "image/png", ".jpg": "image/jpeg"}



def _process(task: ImportTask, decode: Callable[[ImportTask], Decoded], size: int | None, image_format: str) -> _Outcome:
    try:
        dec = decode(task)
        image, masks = dec.image, dec.masks
        notes = dict(dec.notes)
        resized = False
        if size is not None and image.shape[:2] != (size, size):
            image = resize_image(image, size)
            masks = resize_mask(masks, size)
            resized = True
        labels, crowd = list(dec.labels), list(dec.iscrowd)
        if len(masks):
            keep = cast(np.ndarray, masks.reshape(len(masks), -1).any(axis=1))  # one bool per instance
            if not keep.all():  # an instance thinner than a pixel after nearest-neighbour resizing
                notes["instances_vanished_on_resize"] = notes.get("instances_vanished_on_resize", 0) + int((~keep).sum())
                masks = masks[keep]
                labels = [label for label, k in zip(labels, keep) if k]
                crowd = [c for c, k in zip(crowd, keep) if k]
        capture = _CaptureStore()
        suffix = KEEP_AS_IS.get(dec.source_suffix.lower(), "")
        if image_format == "auto" and not resized and dec.source is not None and suffix:
            # the source bytes decode to exactly `image`: store them, no re-encoding, no loss
            record = encode_sample(
                capture, image, masks, labels, task.file_name, split=task.split, iscrowd=crowd, encoded=(dec.source, suffix)
            )
        else:
            fmt = "png" if image_format == "auto" else image_format
            record = encode_sample(
                capture, image, masks, labels, task.file_name, split=task.split, iscrowd=crowd, image_format=fmt
            )
        return _Outcome(task.index, record, capture.data, notes=notes)
    except SynthaugError as exc:
        return _Outcome(task.index, error=str(exc))
    except (cv2.error, ValueError, MemoryError) as exc:
        return _Outcome(task.index, error=f"{task.file_name}: {exc.__class__.__name__}: {exc}".strip())


def _process_chunk(tasks: list[ImportTask], decode: Callable[[ImportTask], Decoded], size: int | None,
                   image_format: str) -> list[_Outcome]:
    return [_process(t, decode, size, image_format) for t in tasks]


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core; cv2's own threads would oversubscribe


def _outcomes(tasks: Sequence[ImportTask], decode: Callable[[ImportTask], Decoded], options: ImportOptions) -> Iterator[_Outcome]:
    """Outcomes in task order; with workers, a bounded window of chunks is in flight, so the
    encoded images waiting for upload never pile up in memory."""
    if options.workers <= 1 or len(tasks) < 4:
        for t in tasks:
            yield _process(t, decode, options.size, options.image_format)
        return
    import multiprocessing
    from collections import deque

    # spawn, not fork: the parent may hold gRPC channels or S3 connection pools
    ctx = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(tasks) // (options.workers * 4)))
    pieces = [list(tasks[i : i + chunk]) for i in range(0, len(tasks), chunk)]
    window = options.workers * 3
    with ProcessPoolExecutor(max_workers=options.workers, mp_context=ctx, initializer=_worker_init) as pool:
        pending: deque = deque()
        next_piece = 0
        while next_piece < len(pieces) or pending:
            while next_piece < len(pieces) and len(pending) < window:
                pending.append(pool.submit(_process_chunk, pieces[next_piece], decode, options.size, options.image_format))
                next_piece += 1
            yield from pending.popleft().result()


def assign_task_splits(tasks: list[ImportTask], options: ImportOptions, source: str) -> None:
    """Fill `task.split` from the options (grouped by a metadata column when asked)."""
    if options.split is None:
        return
    keys = [t.file_name for t in tasks]
    groups = None
    if options.split.group_by:
        mapping = read_groups(options.metadata, options.id_column, options.split.group_by)
        stems = [Path(t.file_name).stem for t in tasks]
        csv_name = Path(options.metadata).name
        missing = [
            f"{t.file_name}: no row with {options.id_column} = {stem!r} (or an empty {options.split.group_by}) in {csv_name}"
            for t, stem in zip(tasks, stems) if not mapping.get(stem)
        ]
        if missing:
            raise ImportProblems(source, missing)
        groups = groups_for(stems, mapping, f"{source}: metadata {csv_name}")
    for task, split in zip(tasks, assign_splits(keys, options.split, groups)):
        task.split = split


def run_import(
    store: ObjectStore,
    what: str,
    tasks: list[ImportTask],
    decode: Callable[[ImportTask], Decoded],
    categories: Sequence[dict[str, Any]],
    options: ImportOptions,
    params: dict[str, Any],
    progress: Callable[[int, int], None] | None = None,
) -> ImportSummary:
    """Decode/encode every task (in parallel), upload, and register the dataset if all went well."""
    started = time.perf_counter()
    if not tasks:
        raise ImportProblems(what, ["no images to import"])
    assign_task_splits(tasks, options, what)
    writer = DatasetWriter(
        store,
        "real",
        categories,
        name=options.name,
        params={**params, **options.params()},
        seed=options.split.seed if options.split is not None else None,
    )
    problems: list[str] = []
    notes: dict[str, int] = {}
    done = 0
    with BackgroundFlush(store) as flusher:  # the blobs reach the disk while the import runs
        for outcome in _outcomes(tasks, decode, options):
            done += 1
            if progress is not None:
                progress(done, len(tasks))
            if outcome.error:
                problems.append(outcome.error)
                continue
            if problems:  # keep checking the rest, but upload nothing more
                continue
            record = outcome.record
            assert record is not None
            if outcome.blob is not None:
                suffix = Path(record.key).suffix
                info = store.put_blob(outcome.blob, suffix=suffix,
                                      content_type=_BLOB_TYPES.get(suffix, "application/octet-stream"))
                if info.key != record.key:  # pragma: no cover - would be a bug in blob_key
                    raise RuntimeError(f"blob key mismatch for {record.file_name}: {info.key} != {record.key}")
                flusher.poke()
            for k, v in outcome.notes.items():
                notes[k] = notes.get(k, 0) + v
            writer.add_record(record)
    if problems:
        raise ImportProblems(what, problems)
    previous = registered_id(store, options.name) if options.name else None
    new_id = manifest_id(writer.manifest())
    if previous is not None and previous != new_id and not options.replace:
        raise InvalidArgument(
            f"{what}: the name {options.name!r} already names dataset {previous}, and this import is a different dataset "
            f"({new_id}); nothing was registered. Give --replace to point {options.name!r} at the new dataset "
            f"(the old one stays addressable by its id {previous}), or choose another --name"
        )
    ref = writer.finish()
    dataset = Dataset.load(store, ref.id)
    return ImportSummary(
        dataset_id=ref.id,
        name=options.name,
        images=len(dataset),
        instances=len(dataset.manifest["annotations"]),
        categories=len(dataset.categories),
        split_sizes=dataset.split_sizes(),
        images_without_instances=sum(1 for r in dataset.image_records() if not dataset.annotations_of(r["id"])),
        notes=notes,
        seconds=time.perf_counter() - started,
        workers=max(1, options.workers),
        replaced=previous if previous is not None and previous != ref.id else "",
    )


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files directly in `folder`, sorted by name (hidden files ignored), and the
    problems with the rest: a symlink that dangles or leads outside `folder` is named, never
    skipped or followed out."""
    images, problems = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        problem = outside_problem(folder, p)
        if problem:
            problems.append(f"{p.name}: {problem}")
        elif p.is_file():
            images.append(p)
    return images, problems


def outside_problem(root: Path, path: Path) -> str:
    """Why `path` must not be read as a file of the folder `root` ('' when it may, or when it
    simply does not exist): a dangling symlink, or a path that leads out of `root` through
    '..' or a symlink (an import reads only what the user pointed it at)."""
    if path.is_symlink() and not path.exists():
        return f"dangling symlink (to {os.readlink(path)})"
    if not path.exists():
        return ""
    real, inside = path.resolve(), root.resolve()
    if real != inside and inside not in real.parents:
        return f"leads outside {root} (to {real}); only files inside the folder are imported"
    return ""


def require_dir(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise InvalidArgument(f"{what} {p} is not a folder" if p.exists() else f"{what} {p} does not exist")
    return p


def chunks(items: Iterable[str], n: int) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")
