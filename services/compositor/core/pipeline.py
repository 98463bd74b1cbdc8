"""Dataset-level entry points: foreground sets, background sets and composite datasets.

These read and write the store through services.common (datasets, store) and are what the
gRPC adapter and the benchmark call. Composition runs in a process pool: each worker
composes a chunk of images, encodes (JPEG, RLE) and hashes each where it was made, and
stores the chunk's blobs in one batch; the parent only collects small records in index
order and writes the one manifest, so image ids, bytes and the manifest are the same for any
number of workers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import cv2
import numpy as np

from services.common import pixels
from services.common.config import config_from_mapping, config_to_mapping
from services.common.datasets import (
    Dataset,
    DatasetWriter,
    EncodedSample,
    ImageRecord,
    check_sample,
    encode_annotations,
    encode_image,
)
from services.common.errors import InvalidArgument
from services.common.files import write_new_file
from services.common.imageio import decode_image
from services.common.seeding import rng as seeded_rng
from services.common.store import BackgroundFlush, Blob, CanonicalJSON, ObjectInfo, ObjectStore, open_store
from services.compositor.config import BackgroundParams, ComposeParams, ForegroundParams
from services.compositor.core.backgrounds import (
    INPAINT_METHODS,
    free_crops,
    inpaint_objects,
)
from services.compositor.core.compose import (
    Composite,
    DerivedForegrounds,
    ForegroundStats,
    compose_image,
    foreground_stats,
    rng_for,
    stats_from_record,
    stats_record,
)
from services.compositor.core.foregrounds import extract_cutouts
from services.compositor.core.sets import (
    BACKGROUND_KIND,
    FOREGROUND_KIND,
    SET_VERSION,
    decode_rgb,
    decode_rgba,
    load_set,
    put_asset,
    save_set,
)
from synthaug.v1 import common_pb2

log = logging.getLogger(__name__)

#: progress(fraction, message, metrics); may raise JobCancelled to stop the work.
Progress = Callable[[float, str, dict[str, float]], None]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _no_progress(fraction: float, message: str = "", metrics: dict[str, float] | None = None) -> None:
    return None


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


# --- foregrounds ---------------------------------------------------------------------------

#: The dark threshold of the colour statistics a foreground set records (ComposeParams'
#: default; a job with another one measures them itself).
STATS_DARK_THRESHOLD = ComposeParams().dark_threshold


def extract_foreground_set(store: ObjectStore, dataset: Dataset, split: str = "",
                           params: ForegroundParams | None = None, *,
                           progress: Progress = _no_progress) -> tuple[ObjectInfo, dict[str, Any]]:
    """Cut every instance of `dataset` (one split or all) into an RGBA foreground set.

    Instances touching the image border are cut off by the frame; pasted whole they show a
    straight edge, so they are skipped unless `params.keep_truncated`. Returns (manifest
    object, manifest).
    """
    params = (params or ForegroundParams()).validate()
    records = dataset.image_records(split)
    if not records:
        raise InvalidArgument(f"dataset {dataset.id}: split {split or '(all)'!r} has no images")
    entries: list[dict[str, Any]] = []
    skipped = {"small": 0, "truncated": 0, "crowd": 0}
    for n, record in enumerate(records):
        sample = dataset.load_sample(record)
        skipped["crowd"] += int(sample.iscrowd.sum())
        keep = ~sample.iscrowd
        if not params.keep_truncated:
            border = np.array([_touches_border(m) for m in sample.masks], dtype=bool)
            skipped["truncated"] += int((border & keep).sum())
            keep &= ~border
        anns = dataset.annotations_of(record["id"])
        cutouts, small = extract_cutouts(sample.image, sample.masks, sample.labels, min_area=params.min_area,
                                         feather_sigma=params.feather_sigma, padding=params.padding, iscrowd=~keep)
        skipped["small"] += small
        for cut in cutouts:
            info = put_asset(store, cut.rgba)
            stats = stats_record(foreground_stats(cut.rgba, STATS_DARK_THRESHOLD), STATS_DARK_THRESHOLD)
            entries.append({
                "key": info.key, "sha256": info.sha256, "width": int(cut.rgba.shape[1]),
                "height": int(cut.rgba.shape[0]), "category_id": cut.category_id, "area": cut.area,
                "source_image_id": int(record["id"]), "source_file": record["file_name"],
                "annotation_id": int(anns[cut.instance_index]["id"]) if cut.instance_index < len(anns) else None,
                "instance_index": cut.instance_index, "bbox": list(cut.bbox), "stats": stats,
            })
        if n % 20 == 0 or n == len(records) - 1:
            progress((n + 1) / len(records), f"{n + 1}/{len(records)} images, {len(entries)} foregrounds",
                     {"foregrounds": float(len(entries))})
    if not entries:
        raise InvalidArgument(
            f"dataset {dataset.id} split {split or '(all)'!r}: no instance passed the filters "
            f"(min_area={params.min_area}, skipped {skipped})")
    manifest = {
        "kind": FOREGROUND_KIND, "version": SET_VERSION, "dataset": dataset.id, "split": split,
        "categories": dataset.categories,
        "params": config_to_mapping(params),
        "skipped": skipped, "foregrounds": entries,
    }
    return save_set(store, manifest), manifest


# --- backgrounds ---------------------------------------------------------------------------


def _dark_fraction(image: np.ndarray, threshold: int) -> float:
    return float(np.count_nonzero(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) < threshold)) / (image.shape[0] * image.shape[1])


def harvest_background_set(store: ObjectStore, *, dataset: Dataset | None = None, split: str = "",
                           image_prefix: str = "", params: BackgroundParams | None = None, seed: int = 0,
                           crops_per_image: int = 4, max_dark_fraction: float = 0.5, dark_threshold: int = 25,
                           progress: Progress = _no_progress) -> tuple[ObjectInfo, dict[str, Any]]:
    """Backgrounds from user images under `image_prefix` (as they are) or from a dataset.

    From a dataset, `params.method` removes the instances: "inpaint_telea"/"inpaint_ns"
    inpaint the dilated masks, "crop" takes square crops touching no instance, "as_is" keeps
    images whole (for datasets of empty scenes); unset, it is "inpaint_telea" (see
    BackgroundParams.method_for). Images mostly covered by the dark border of a dermoscope
    (more than `max_dark_fraction` of pixels under `dark_threshold`) are left out.
    `params.max_backgrounds` > 0 keeps a seeded random subset.
    """
    if (dataset is None) == (not image_prefix):
        raise InvalidArgument("give exactly one source: dataset or image_prefix")
    params = (params or BackgroundParams()).validate()
    method = params.method_for(from_dataset=dataset is not None)
    dilate_px, crop_size, max_backgrounds = params.dilate_px, params.crop_size, params.max_backgrounds
    entries: list[dict[str, Any]] = []
    rejected_dark = 0
    if image_prefix:
        keys = [k for k in store.list(image_prefix) if k.lower().endswith(IMAGE_SUFFIXES)]
        if max_backgrounds and len(keys) > max_backgrounds:
            pick = np.sort(seeded_rng(int(seed), "compositor/background-pick", "images").choice(len(keys), max_backgrounds, replace=False))
            keys = [keys[i] for i in pick]
        for n, key in enumerate(keys):
            data = store.get_bytes(key)
            image = decode_image(data, key)
            info = store.stat(key)
            entries.append({"key": key, "sha256": info.sha256, "width": int(image.shape[1]),
                            "height": int(image.shape[0]), "source": key, "method": "as_is"})
            progress((n + 1) / len(keys), f"{n + 1}/{len(keys)} images", {"backgrounds": float(len(entries))})
        if not entries:
            raise InvalidArgument(f"image_prefix {image_prefix!r}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        source: dict[str, Any] = {"image_prefix": image_prefix}
    else:
        assert dataset is not None
        records = dataset.image_records(split)
        if not records:
            raise InvalidArgument(f"dataset {dataset.id}: split {split or '(all)'!r} has no images")
        if max_backgrounds and method != "crop" and len(records) > max_backgrounds:
            pick = np.sort(seeded_rng(int(seed), "compositor/background-pick", "images").choice(len(records), max_backgrounds, replace=False))
            records = [records[i] for i in pick]
        for n, record in enumerate(records):
            sample = dataset.load_sample(record)
            images: list[tuple[np.ndarray, dict[str, Any]]] = []
            if method == "as_is":
                images.append((sample.image, {}))
            elif method in INPAINT_METHODS:
                filled = inpaint_objects(sample.image, sample.masks, method, dilate_px,
                                         texture_seed=int(rng_for(seed, record["id"]).integers(1 << 31)))
                images.append((filled, {}))
            else:
                corners = free_crops(sample.image, sample.masks, crop_size, dilate_px, dark_threshold)
                rng = rng_for(seed, record["id"])
                for i in rng.permutation(len(corners))[:crops_per_image]:
                    x, y = corners[int(i)]
                    images.append((sample.image[y:y + crop_size, x:x + crop_size], {"crop": [x, y, crop_size]}))
            for image, extra in images:
                if _dark_fraction(image, dark_threshold) > max_dark_fraction:
                    rejected_dark += 1
                    continue
                info = put_asset(store, np.ascontiguousarray(image))
                entries.append({"key": info.key, "sha256": info.sha256, "width": int(image.shape[1]),
                                "height": int(image.shape[0]), "source_image_id": int(record["id"]),
                                "source": record["file_name"], "method": method, **extra})
            if n % 10 == 0 or n == len(records) - 1:
                progress((n + 1) / len(records), f"{n + 1}/{len(records)} images, {len(entries)} backgrounds",
                         {"backgrounds": float(len(entries))})
        if max_backgrounds and len(entries) > max_backgrounds:
            pick = np.sort(seeded_rng(int(seed), "compositor/background-pick", "backgrounds").choice(len(entries), max_backgrounds, replace=False))
            entries = [entries[i] for i in pick]
        if not entries:
            raise InvalidArgument(
                f"dataset {dataset.id} split {split or '(all)'!r}: method {method!r} produced no background "
                f"({rejected_dark} rejected as mostly dark)")
        source = {"dataset": dataset.id, "split": split}
    manifest = {
        "kind": BACKGROUND_KIND, "version": SET_VERSION, **source,
        "params": {"method": method, "dilate_px": dilate_px, "crop_size": crop_size,
                   "crops_per_image": crops_per_image, "max_backgrounds": max_backgrounds, "seed": seed,
                   "max_dark_fraction": max_dark_fraction, "dark_threshold": dark_threshold},
        "rejected_dark": rejected_dark, "backgrounds": entries,
    }
    return save_set(store, manifest), manifest


# --- composition ---------------------------------------------------------------------------


class StoreAssets(DerivedForegrounds):
    """Foregrounds and backgrounds loaded from the store on first use and kept decoded.

    Foregrounds larger than any paste can need are shrunk once at load time (area
    averaging), so each paste resizes a small crop; this is a pure function of the blob and
    the params, so every worker gets the same pixels.

    With `shared_dir`, the worker processes of one job share their decoding work: the first
    to need an asset decodes it (even zstd-compressed, reading a copy costs less) and leaves
    the raw pixels there (ideally on tmpfs; `write_shared_pixels`); the others load those instead.
    """

    def __init__(self, store: ObjectStore, foregrounds: Sequence[dict[str, Any]],
                 backgrounds: Sequence[dict[str, Any]], params: ComposeParams,
                 shared_dir: str | None = None):
        self.store = store
        self.shared_dir = shared_dir
        self.fg_entries = list(foregrounds)
        self.bg_entries = list(backgrounds)
        self.num_foregrounds = len(self.fg_entries)
        self.num_backgrounds = len(self.bg_entries)
        self.max_side = max(8, math.ceil(params.scale.max * params.output_size * 1.25))
        self._fg: dict[int, np.ndarray] = {}
        self._bg: dict[int, np.ndarray] = {}

    def foreground(self, i: int) -> tuple[np.ndarray, int]:
        rgba = self._fg.get(i)
        if rgba is None:
            rgba = self._fg[i] = self._shared(f"fg-{i}", lambda: self._load_foreground(i))
        return rgba, int(self.fg_entries[i]["category_id"])

    def background(self, i: int) -> np.ndarray:
        image = self._bg.get(i)
        if image is None:
            key = self.bg_entries[i]["key"]
            image = self._bg[i] = self._shared(f"bg-{i}", lambda: decode_rgb(self.store.get_bytes(key), key))
        return image

    def recorded_stats(self, i: int, dark_threshold: int) -> ForegroundStats | None:
        return stats_from_record(self.fg_entries[i].get("stats"), dark_threshold)

    def _load_foreground(self, i: int) -> np.ndarray:
        key = self.fg_entries[i]["key"]
        rgba = decode_rgba(self.store.get_bytes(key), key)
        side = max(rgba.shape[:2])
        if side > self.max_side:
            f = self.max_side / side
            size = (max(1, round(rgba.shape[1] * f)), max(1, round(rgba.shape[0] * f)))
            rgba = cv2.resize(rgba, size, interpolation=cv2.INTER_AREA)
        return rgba

    def _shared(self, name: str, load: Callable[[], np.ndarray]) -> np.ndarray:
        """`load()`, or its result as another worker of this job left it in `shared_dir`."""
        if self.shared_dir is None:
            return load()
        path = os.path.join(self.shared_dir, f"{name}.u8")
        array = read_shared_pixels(path)
        if array is None:
            array = load()
            write_shared_pixels(path, array)
        return array


# Decoded assets shared by the workers of a job: services.common.pixels' header and the raw
# pixels, uncompressed (reading them costs less than decompressing).


def write_shared_pixels(path: str, array: np.ndarray) -> None:
    """Leave `array` (uint8, at most 3-D) at `path` for the other workers; atomic (a reader
    sees a complete file or none). Best effort: sharing is only a speed-up, so a full
    /dev/shm (64 MiB in a default container) or an odd array leaves nothing behind."""
    try:
        header = pixels.header(array)
    except ValueError:  # not uint8, or not 1-3 dimensions
        return
    try:
        write_new_file(path, header, np.ascontiguousarray(array).data)
    except OSError:
        log.debug("could not share decoded asset %s", path, exc_info=True)


def read_shared_pixels(path: str) -> np.ndarray | None:
    """The array `write_shared_pixels` left at `path`; None when there is none, or when it
    cannot be read or does not have the size its header says (the caller decodes the asset
    itself: sharing is only a speed-up)."""
    try:
        with open(path, "rb", buffering=0) as f:
            try:
                shape = pixels.parse_header(f.read(pixels.HEADER.size), path)
            except InvalidArgument:
                return None
            if os.fstat(f.fileno()).st_size != pixels.HEADER.size + math.prod(shape):
                return None
            array = np.empty(shape, np.uint8)
            if array.size and f.readinto(array.reshape(-1).data) != array.nbytes:
                return None
            return array
    except FileNotFoundError:
        return None
    except OSError:
        log.debug("could not read shared decoded asset %s", path, exc_info=True)
        return None


@dataclass
class _ComposeTask:
    store_url: str
    foregrounds: list[dict[str, Any]]
    backgrounds: list[dict[str, Any]]
    params: dict[str, Any]
    seed: int
    shared_dir: str | None = None  # decoded assets shared by the workers (see StoreAssets)


#: The stages of making a composite whose time compose_dataset reports (seconds summed over
#: every image and worker): composing the pixels and masks; encoding the image (JPEG/PNG)
#: and the masks (RLE, boxes, areas); hashing the image bytes; storing them.
STAGES = ("compose", "encode", "hash", "put")
#: What a job counts over its composites' audits: instances kept, objects not placed
#: (skipped) and objects covered by later pastes (dropped).
_TOTALS = ("instances", "skipped", "dropped")
#: JPEG quality of composites, fixed: a setting would change every dataset id for no gain
#: (at 95 the blocking is invisible and the file a third of the PNG's size).
JPEG_QUALITY = 95


@dataclass
class _Chunk:
    """What a worker sends back for a run of consecutive images: small records only (the
    image bytes went to the store from the worker)."""

    records: list[ImageRecord]  # each one's audit already JSON (CanonicalJSON)
    seconds: dict[str, float]
    cpu_seconds: float  # of the process that made the chunk, while making it
    totals: dict[str, int]  # instances, skipped and dropped objects (from the audits)


class _Composer:
    """What one worker process (or the parent, with one worker) holds."""

    def __init__(self, task: _ComposeTask, store: ObjectStore | None = None):
        self.store = store if store is not None else open_store(task.store_url)
        self.params = config_from_mapping(ComposeParams, task.params)
        self.seed = task.seed
        self.assets = StoreAssets(self.store, task.foregrounds, task.backgrounds, self.params, task.shared_dir)

    def _audited(self, index: int) -> Composite:
        comp = compose_image(self.assets, self.params, self.seed, index)
        for obj in comp.audit["objects"]:
            entry = self.assets.fg_entries[obj["foreground"]]
            obj["foreground_key"] = entry["key"]
            obj["source"] = entry.get("source_file", "")
        bg_entry = self.assets.bg_entries[comp.audit["background"]["index"]]
        comp.audit["background"]["key"] = bg_entry["key"]
        comp.audit["background"]["source"] = bg_entry.get("source", "")
        return comp

    def make(self, start: int, stop: int) -> _Chunk:
        """Images [start, stop): each composed, encoded and hashed here, then all their
        blobs stored in one batch (concurrent PUTs on S3)."""
        cpu = time.process_time()
        seconds = dict.fromkeys(STAGES, 0.0)
        fmt = self.params.image_format
        suffix = "jpg" if fmt == "jpeg" else "png"
        samples: list[EncodedSample] = []
        totals = dict.fromkeys(_TOTALS, 0)
        clock = time.perf_counter
        for index in range(start, stop):
            t0 = clock()
            comp = self._audited(index)
            t1 = clock()
            file_name = f"composite_{index:06d}.{suffix}"
            labels = comp.labels.tolist()
            check_sample(comp.image, comp.masks, labels, file_name)
            annotations = encode_annotations(comp.masks, labels, file_name)
            data, blob_suffix, content_type = encode_image(comp.image, fmt, JPEG_QUALITY)
            t2 = clock()
            blob = Blob(data, blob_suffix, content_type)
            t3 = clock()
            # the audit (most of the manifest's bytes) is encoded here, in parallel, not by
            # the parent at commit time
            audit = CanonicalJSON.of(comp.audit)
            samples.append(EncodedSample(blob, file_name, int(comp.image.shape[1]), int(comp.image.shape[0]),
                                         annotations, extra={"composite": audit}))
            totals["instances"] += len(annotations)
            totals["skipped"] += comp.audit["skipped"]
            totals["dropped"] += comp.audit["dropped"]
            seconds["compose"] += t1 - t0
            seconds["encode"] += t2 - t1
            seconds["hash"] += t3 - t2
        t0 = clock()
        self.store.put_blobs([s.blob for s in samples])
        seconds["put"] += clock() - t0
        records = [s.record() for s in samples]
        return _Chunk(records, seconds, time.process_time() - cpu, totals)

_WORKER: _Composer | None = None
_INIT_ERROR: Exception | None = None


def _init_worker(task: _ComposeTask, environ: dict[str, str]) -> None:
    """Set up a pool worker. It gets the job's environment (store credentials, …): a worker
    forked from the fork server would otherwise see the server's, from when it started. A
    failure is raised by the worker's first chunk, so the job fails with its error (a
    failing initializer would only say that the pool broke)."""
    global _WORKER, _INIT_ERROR
    os.environ.clear()
    os.environ.update(environ)
    cv2.setNumThreads(1)
    try:
        _WORKER = _Composer(task)
    except Exception as exc:  # noqa: BLE001 - re-raised with every chunk this worker gets
        _INIT_ERROR = exc


def _run_chunk(bounds: tuple[int, int]) -> _Chunk:
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.make(*bounds)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _pool_context() -> Any:
    """Where worker processes come from: a fork server where the platform has one, else spawn.

    Both are safe under a threaded gRPC server (fork is not: it copies locks held by other
    threads). The fork server is a fresh single-threaded process that imports this module
    once (at the first job of this process); every worker of every later job is forked from
    it in milliseconds, instead of a new interpreter importing numpy, OpenCV and the
    compositor for each worker (~0.4 s of a core each)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])  # only read when the server starts
        return ctx
    return multiprocessing.get_context("spawn")


def _chunks(task: _ComposeTask, store: ObjectStore, count: int, workers: int) -> Generator[_Chunk, None, None]:
    """The chunks of images [0, count) in index order, made by `workers` processes.

    A chunk is at most 32 images (the batch one store write takes), and there are at
    least 4 per worker, so the pool stays balanced to the end. Once the last chunk is in,
    the workers exit (their exit, which frees every decoded asset, takes ~0.1 s) and the
    assets they shared are removed (~0.05 s), in threads, while the caller commits; closing
    the generator joins them."""
    chunk = max(1, min(32, math.ceil(count / (workers * 4))))
    bounds = [(s, min(count, s + chunk)) for s in range(0, count, chunk)]
    if workers == 1:  # in this process, on one core like each pool worker
        composer = _Composer(task, store)
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for start, stop in bounds:
                yield composer.make(start, stop)
        finally:
            cv2.setNumThreads(threads)
        return
    ctx = _pool_context()
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs where there is one
    shared_dir = tempfile.mkdtemp(prefix="synthaug-compose-assets-", dir=shm)
    try:
        task = dataclasses.replace(task, shared_dir=shared_dir)
        # A worker that dies or fails to start breaks the pool (BrokenProcessPool) instead
        # of being replaced forever, as multiprocessing.Pool would.
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(task, dict(os.environ))) as pool:
            cleanup: list[threading.Thread] = []
            try:
                for n, made in enumerate(pool.map(_run_chunk, bounds), 1):
                    if n == len(bounds):  # the workers are done with the shared assets
                        cleanup = [threading.Thread(target=pool.shutdown, name="compose-pool-exit"),
                                   threading.Thread(target=shutil.rmtree, args=(shared_dir, True),
                                                    name="compose-shared-removal")]
                        for thread in cleanup:
                            thread.start()
                    yield made
            finally:
                for thread in cleanup:
                    thread.join()
                pool.shutdown(wait=True, cancel_futures=True)  # on an error or cancellation too
    finally:
        shutil.rmtree(shared_dir, ignore_errors=True)


def compose_dataset(store: ObjectStore, foregrounds_key: str, backgrounds_key: str, count: int, seed: int,
                    params: ComposeParams | None = None, *, workers: int = 0, name: str = "",
                    foregrounds_sha256: str = "", backgrounds_sha256: str = "",
                    progress: Progress = _no_progress) -> tuple[common_pb2.DatasetRef, dict[str, float]]:
    """Compose `count` images into a registered dataset of kind "composite".

    Worker processes reopen the store from its URL (credentials come from their
    environment, as in the parent). Returns (dataset ref, metrics).
    """
    params = (params or ComposeParams()).validate()
    if not 1 <= count <= 10_000_000:
        raise InvalidArgument(f"count must be in [1, 10000000], got {count}")
    if workers < 0:
        raise InvalidArgument(f"workers must be ≥ 0 (0 = CPU count), got {workers}")
    fg = load_set(store, foregrounds_key, FOREGROUND_KIND, "foregrounds", foregrounds_sha256)
    bg = load_set(store, backgrounds_key, BACKGROUND_KIND, "backgrounds", backgrounds_sha256)
    workers = min(workers or default_workers(), count)
    fg_info, bg_info = store.stat(foregrounds_key), store.stat(backgrounds_key)
    parents = [d for d in dict.fromkeys([fg.get("dataset"), bg.get("dataset")]) if d]
    writer = DatasetWriter(
        store, "composite", fg["categories"], name=name, parents=parents, seed=int(seed),
        params={"compose": config_to_mapping(params), "count": count,
                "foregrounds": {"key": foregrounds_key, "sha256": fg_info.sha256},
                "backgrounds": {"key": backgrounds_key, "sha256": bg_info.sha256}},
    )
    task = _ComposeTask(store.url, fg["foregrounds"], bg["backgrounds"], config_to_mapping(params), int(seed))
    start = time.perf_counter()
    totals = dict.fromkeys(_TOTALS, 0)
    stages = dict.fromkeys(STAGES, 0.0)
    chunk_cpu = 0.0
    cpu = time.process_time()
    done = 0
    # closing(): a failure or a cancellation (progress raises) stops the workers right away;
    # after the last chunk the loop stops without asking for more, so the commit below runs
    # while the workers exit (_chunks joins them when closed)
    with contextlib.closing(_chunks(task, store, count, workers)) as chunks, BackgroundFlush(store) as flusher:
        for chunk in chunks:
            flusher.poke()
            for record in chunk.records:
                writer.add_record(record)
            for total, value in chunk.totals.items():
                totals[total] += value
            for stage, seconds in chunk.seconds.items():
                stages[stage] += seconds
            chunk_cpu += chunk.cpu_seconds
            done += len(chunk.records)
            rate = done / max(time.perf_counter() - start, 1e-9)
            progress(done / count, f"{done}/{count} composites", {"images": float(done), "images_per_s": rate})
            if done == count:
                break
        made = time.perf_counter()
        ref = writer.finish()
        committed = time.perf_counter()
    elapsed = time.perf_counter() - start
    # CPU time of every process of the job (the workers' while making chunks, this one's for
    # the rest): what the job costs whatever else the machine runs
    cpu = time.process_time() - cpu + (chunk_cpu if workers > 1 else 0.0)
    metrics = {"images": float(count), "instances": float(totals["instances"]),
               "skipped_objects": float(totals["skipped"]), "dropped_instances": float(totals["dropped"]),
               "images_per_s": count / max(elapsed, 1e-9), "workers": float(workers), "seconds": elapsed,
               # where the time went: per-stage seconds summed over workers, and the commit
               # (flush + manifest + name) in this process
               **{f"seconds_{stage}": value for stage, value in stages.items()},
               "seconds_commit": committed - made, "cpu_seconds": cpu}
    log.info("composed %d images (%d instances) with %d workers in %.1f s", count, totals["instances"], workers, elapsed)
    return ref, metrics
