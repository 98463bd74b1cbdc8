"""Dataset-level entry points: train from a synthaug dataset, generate a GAN dataset from masks.

This is where the core meets the store: pairs come from services.common.datasets, checkpoints
and sample grids go under the job's work prefix, the final generator is a content-addressed
blob (role "generator"), and generated images become a dataset of kind "gan" (role "dataset")
whose annotations are copied verbatim from the mask dataset (same RLEs, boxes, areas,
categories; new image blobs). Nothing here depends on which registered generator is used.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

from services.common.config import config_to_mapping
from services.common.datasets import Dataset, DatasetWriter, ImageRecord
from services.common.errors import InvalidArgument
from services.common.imageio import encode_png, resize_image, resize_mask
from services.common.refs import add_output, object_ref, resolve_object
from services.common.store import ObjectStore
from services.gan.checkpoint import checkpoint_config, load_checkpoint, save_checkpoint
from services.gan.config import GanConfig, GenerateConfig
from services.gan.generator import MaskItem, generate_images, load_generator
from services.gan.rendering import RenderSpec
from services.gan.trainer import EpochReport, TrainHooks, TrainPair, train
from synthaug.v1 import common_pb2

log = logging.getLogger(__name__)

_CKPT_RE = re.compile(r"checkpoint-(\d{4,})\.pt$")
LOAD_THREADS = 4
CHUNK = 32


class Progress(Protocol):
    """What the pipeline reports to (a JobContext fits): progress(fraction, message, metrics)."""

    work_prefix: str

    def progress(self, fraction: float, message: str = "", metrics: dict[str, float] | None = None) -> None: ...
    def check_cancelled(self) -> None: ...


# -- training ---------------------------------------------------------------------------------
def training_records(ds: Dataset, split: str) -> list[dict[str, Any]]:
    """The real pairs of `split` to train on; InvalidArgument for another kind or none."""
    if ds.kind != "real":
        raise InvalidArgument(f"dataset {ds.id} is of kind {ds.kind!r}: a GAN trains on real pairs only")
    records = ds.image_records(split)
    if not records:
        where = f"split {split!r} of " if split else ""
        raise InvalidArgument(f"{where}dataset {ds.id} has no images to train on")
    return records


def load_pair(ds: Dataset, record: Mapping[str, Any], size: int) -> TrainPair:
    """One real pair at the training size (image: area/linear, masks: nearest neighbour only)."""
    sample = ds.load_sample(record)
    return TrainPair(resize_image(sample.image, size), resize_mask(sample.masks, size), sample.labels)


def load_pairs(ds: Dataset, records: Sequence[Mapping[str, Any]], size: int) -> list[TrainPair]:
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        return list(pool.map(lambda r: load_pair(ds, r, size), records))


def checkpoint_key(prefix: str, epoch: int) -> str:
    return f"{prefix}checkpoint-{epoch:04d}.pt"


def latest_checkpoint(store: ObjectStore, prefix: str) -> tuple[int, str] | None:
    found = [(int(m.group(1)), k) for k in store.list(prefix) if (m := _CKPT_RE.search(k))]
    return max(found) if found else None


def run_train(ctx: Progress, store: ObjectStore, ds: Dataset, split: str, cfg: GanConfig, seed: int) -> common_pb2.JobResult:
    """Train on the real pairs of `split`; resume from the latest checkpoint under the work prefix.

    Result: outputs["generator"] is the final checkpoint; `objects` also lists the sample grids.
    """
    records = training_records(ds, split)
    spec = RenderSpec.for_categories(ds.categories, cfg.boundary_channel, cfg.diversity == "color_hint", cfg.color_hint_size)
    ctx.progress(0.0, f"loading {len(records)} training pairs")
    pairs = load_pairs(ds, records, cfg.image_size)
    prefix = ctx.work_prefix
    resume = None
    latest = latest_checkpoint(store, prefix)
    if latest is not None:
        resume = load_checkpoint(store.get_bytes(latest[1]), latest[1])
        if resume["config"] != config_to_mapping(cfg) or resume["render"] != spec.to_dict():
            raise InvalidArgument(f"{latest[1]} was written with another configuration; refusing to resume from it")
        ctx.progress(latest[0] / cfg.total_epochs, f"resuming after epoch {latest[0]}")

    def on_epoch(r: EpochReport) -> None:
        if r.grid is not None:
            key = f"{prefix}grids/epoch-{r.epoch:04d}.png"
            store.put_bytes(key, encode_png(r.grid), content_type="image/png")
        metrics = {**r.losses, "epoch": float(r.epoch), "pairs_per_s": r.pairs_per_s, "iterations_per_s": r.iterations_per_s, "lr": r.lr}
        ctx.progress(r.epoch / r.total_epochs, f"epoch {r.epoch}/{r.total_epochs}", metrics)

    def on_checkpoint(state: dict[str, Any], epoch: int) -> None:
        key = checkpoint_key(prefix, epoch)
        store.put_bytes(key, save_checkpoint(state))
        for k in store.list(prefix):  # keep only the newest: checkpoints at 256 px are ~650 MB
            m = _CKPT_RE.search(k)
            if m and int(m.group(1)) < epoch:
                store.delete(k)

    run = train(pairs, cfg, spec, seed, TrainHooks(on_epoch, on_checkpoint, ctx.check_cancelled), resume)
    final = run.checkpoint(with_optimizers=False)
    final.update(dataset=ds.id, split=split, seed=int(seed), num_pairs=len(pairs))
    info = store.put_blob(save_checkpoint(final), suffix=".pt")
    result = add_output(common_pb2.JobResult(), "generator", object_ref(store, info))
    grids = sorted(k for k in store.list(f"{prefix}grids/") if k.endswith(".png"))
    result.objects.extend(object_ref(store, store.stat(k)) for k in grids)
    last = run.history[-1] if run.history else {}
    result.metrics.update({k: float(v) for k, v in last.items()})
    result.metrics["num_pairs"] = float(len(pairs))
    result.attributes.update({"dataset": ds.id, "split": split, "checkpoint": info.key, "model": cfg.model, "diversity": cfg.diversity})
    return result


# -- generation -------------------------------------------------------------------------------
class CheckpointCache:
    """Checkpoints loaded (weights_only) and validated once, by content: a service answering
    many Generate requests for one generator reads and checks its file once."""

    def __init__(self, store: ObjectStore, size: int = 2) -> None:
        self.store = store
        self.size = size
        self._states: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ref: common_pb2.ObjectRef, what: str = "checkpoint") -> dict[str, Any]:
        key = resolve_object(self.store, ref, what, verify=True)
        sha = self.store.stat(key).sha256
        with self._lock:
            if sha in self._states:
                self._states.move_to_end(sha)
                return self._states[sha]
        state = load_checkpoint(self.store.get_bytes(key), key)
        with self._lock:
            self._states[sha] = state
            while len(self._states) > self.size:
                self._states.popitem(last=False)
        return state


def category_map(spec: RenderSpec, categories: Sequence[Mapping[str, Any]], used: set[int]) -> dict[int, int]:
    """Mask-dataset category id → generator category id, by name (ids when names are absent)."""
    by_name = dict(zip(spec.category_names, spec.category_ids))
    out: dict[int, int] = {}
    for cat in categories:
        cid, name = int(cat["id"]), str(cat.get("name", cat["id"]))
        if spec.category_names and name in by_name:
            out[cid] = by_name[name]
        elif not spec.category_names and cid in spec.category_ids:
            out[cid] = cid
        elif cid in used:
            known = list(spec.category_names or spec.category_ids)
            raise InvalidArgument(f"category {name!r} (id {cid}) of the mask dataset is unknown to the generator, which knows {known}")
    return out


def generation_plan(ds: Dataset, split: str, state: Mapping[str, Any], cfg: GenerateConfig) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Validate a generation request against the checkpoint; the records to use and the id map."""
    cfg.validate()
    records = ds.image_records(split)
    if cfg.count:
        records = records[: cfg.count]
    if not records:
        raise InvalidArgument(f"mask dataset {ds.id} has no images{' in split ' + repr(split) if split else ''}")
    size = checkpoint_config(state).image_size
    if not cfg.resize:
        for r in records:
            if (r["width"], r["height"]) != (size, size):
                raise InvalidArgument(f"{r['file_name']}: masks are {r['width']}×{r['height']} but the generator was trained "
                                      f"at {size}×{size}; set resize to resample them")
    used = {int(a["category_id"]) for r in records for a in ds.annotations_of(r["id"])}
    return records, category_map(RenderSpec.from_dict(state["render"]), ds.categories, used)


def _png_name(file_name: str) -> str:
    return str(PurePosixPath(file_name).with_suffix(".png"))


def run_generate(
    ctx: Progress, store: ObjectStore, ds: Dataset, split: str, state: Mapping[str, Any], checkpoint: common_pb2.ObjectRef,
    cfg: GenerateConfig, seed: int, name: str = "",
) -> common_pb2.JobResult:
    """Generate one image per mask record of `split` (the first cfg.count) with the checkpoint's
    generator. Result: dataset_outputs["dataset"] is the generated dataset."""
    records, id_map = generation_plan(ds, split, state, cfg)
    gen = load_generator(state)
    need_image = gen.spec.color_hint

    def load(r: Mapping[str, Any]) -> MaskItem:
        masks, labels, _ = ds.load_masks(r)
        image = ds.load_image(r) if need_image else None
        return MaskItem(masks, np.array([id_map[int(x)] for x in labels], dtype=np.int64), image)

    def encode(r: Mapping[str, Any], image: np.ndarray) -> ImageRecord:
        info = store.put_blob(encode_png(image), suffix=".png", content_type="image/png")
        anns = [{k: v for k, v in a.items() if k not in ("id", "image_id")} for a in ds.annotations_of(r["id"])]
        return ImageRecord(_png_name(r["file_name"]), int(r["width"]), int(r["height"]), info.key, info.sha256, anns,
                           split=r.get("split", ""), extra={"source": {"dataset": ds.id, "image_id": int(r["id"])}})

    parents = [ds.id] + ([str(state["dataset"])] if state.get("dataset") and state["dataset"] != ds.id else [])
    writer = DatasetWriter(
        store, "gan", ds.categories, name=name, parents=parents, seed=seed,
        params={"checkpoint": checkpoint.sha256 or checkpoint.key, "model": gen.cfg.model, **config_to_mapping(cfg),
                "split": split, "diversity": "color_hint" if gen.spec.color_hint else "none"},
    )
    t0 = time.perf_counter()
    with ThreadPoolExecutor(LOAD_THREADS) as pool:
        def items() -> Iterator[MaskItem]:
            for i in range(0, len(records), CHUNK):
                yield from pool.map(load, records[i:i + CHUNK])

        pending = []
        images = generate_images(gen, items(), seed, cfg, names=[r["file_name"] for r in records])
        for done, (r, img) in enumerate(zip(records, images), start=1):
            pending.append(pool.submit(encode, r, img))
            if done % cfg.batch_size == 0 or done == len(records):
                for f in pending:
                    writer.add_record(f.result())
                pending.clear()
                rate = done / max(time.perf_counter() - t0, 1e-9)
                ctx.progress(done / len(records), f"{done}/{len(records)} images", {"images_per_s": rate, "images": float(done)})
    ref = writer.finish()
    elapsed = max(time.perf_counter() - t0, 1e-9)
    result = add_output(common_pb2.JobResult(), "dataset", ref)
    result.metrics.update({"images": float(len(records)), "images_per_s": len(records) / elapsed})
    result.attributes.update({"source_dataset": ds.id, "checkpoint": checkpoint.key})
    return result
