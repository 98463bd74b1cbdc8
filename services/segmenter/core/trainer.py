"""Training: all losses, schedules, AMP, an iteration budget, validation, checkpoints, resume.

The network is any registered architecture (services/segmenter/architectures.py), used only
through the SegmentationModel contract of core/models.py: the sum of every loss the model
reports is optimised.

What the thesis got wrong and this module does instead: every Mask R-CNN loss is optimised
(classifier, box regression, mask, RPN objectness, RPN box regression — the thesis trained
only two); training runs at one configured (or the dataset's) image size in float32 (AMP on
CUDA) instead of float64 at 800 px; SGD with warmup and a cosine or step schedule over the
whole run (AdamW as an option); augmentation, batched on the training device, of a training
set decoded once (core/data.py, core/augment.py); a fixed number of optimiser steps drawn from a
deterministic stream of the training set (core/stream.py), so arms of different sizes can
train for the same budget (epochs = the training set's passes, when no budget is given);
validation every ``eval_every`` iterations with pixel IoU/F1 from the evaluator core,
best-checkpoint selection and early stopping; a checkpoint at every validation from which a
restarted job continues with exactly the losses of an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, cast

import torch
from torch import nn

from services.common.allocator import retain_freed_memory
from services.common.config import config_to_mapping
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.seeding import derive_seed
from services.segmenter.config import SegmenterConfig
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.augment import AugmentConfig
from services.segmenter.core.data import (
    CategoryMap,
    Draw,
    ExampleSource,
    Target,
    TrainingDataset,
    sample_training_set,
)
from services.segmenter.core.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    broadcast_flag,
    init_from_env,
)
from services.segmenter.core.models import (
    ModelSpec,
    SegmentationModel,
    build_model,
    load_state_dict_into,
    torchvision_weights,
)
from services.segmenter.core.predictor import autocast, effective_amp, pixel_validation
from services.segmenter.core.stream import TrainingStream, draws_by_source, draws_digest
from services.segmenter.weights import BlobReader, TorchvisionWeights

log = logging.getLogger(__name__)

#: progress(fraction, message, metrics) — JobContext.progress has this signature.
Progress = Callable[[float, str, "dict[str, float] | None"], None]


@dataclass
class TrainResult:
    model_file: bytes  # the best evaluation's model (checkpoints.model_file format)
    record: dict[str, Any]  # the training record (JSON-serialisable)


class Interrupted(Exception):
    """Raised by an ``on_evaluation`` hook to stop training after a checkpoint (tests)."""


def select_device(name: str) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def lr_factor(it: int, total: int, cfg: SegmenterConfig) -> float:
    """Multiplier of the base lr at iteration ``it``: linear warmup, then cosine or step."""
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(it, total) / max(1, total)))
    passed = sum(1 for m in cfg.step_milestones if it >= int(m * total))
    return warm * cfg.gamma ** passed


def resolve_sizes(cfg: SegmenterConfig, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """min_size / max_size of the model's resize: the images' own size unless configured
    (``sizes``: (h, w) of every training and validation image)."""
    if cfg.min_size and cfg.max_size:
        return cfg.min_size, cfg.max_size
    short = min(min(h, w) for h, w in sizes)
    long = max(max(h, w) for h, w in sizes)
    return cfg.min_size or short, cfg.max_size or max(long, cfg.min_size or short)


def decode_threads(num_workers: int) -> int:
    """Threads decoding the training set into its cache: SegmenterConfig.num_workers, -1 = auto."""
    return num_workers if num_workers >= 0 else min(8, os.cpu_count() or 1)


def cache_device(device: torch.device, nbytes: int) -> torch.device:
    """Where the decoded training set lives: on the GPU when it takes at most a quarter of the
    free memory (no image then crosses between host and device during training), else on
    the host (one copy per batch)."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _total = torch.cuda.mem_get_info(device)
    return device if nbytes <= free // 4 else torch.device("cpu")


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass(frozen=True)
class Budget:
    """How long a run trains and how often it validates, in optimiser steps."""

    #: "epochs" (epochs × one epoch's iterations) or "iterations" (SegmenterConfig.iterations).
    mode: str
    #: Planned optimiser steps (early stopping may end the run sooner).
    iterations: int
    #: Iterations between validations and checkpoints.
    eval_every: int
    #: One epoch's iterations: ceil(training images / (batch_size × world size)).
    epoch_iterations: int

    @classmethod
    def of(cls, cfg: SegmenterConfig, num_images: int, world_size: int) -> Budget:
        epoch = -(-num_images // (cfg.batch_size * world_size))
        if cfg.max_iters_per_epoch:
            epoch = min(epoch, cfg.max_iters_per_epoch)
        if cfg.iterations is not None:
            return cls("iterations", cfg.iterations, cfg.eval_every or epoch, epoch)
        return cls("epochs", cfg.epochs * epoch, cfg.eval_every or epoch, epoch)


class Trainer:
    """One training run. ``run()`` resumes from the last checkpoint in ``checkpoints``."""

    def __init__(self, cfg: SegmenterConfig, sources: Sequence[tuple[ExampleSource, int]], val: ExampleSource | None,
                 checkpoints: ck.CheckpointIO | None, progress: Progress | None = None,
                 on_evaluation: Callable[[int, dict[str, Any]], None] | None = None,
                 dist_info: DistInfo | None = None, weights_store: BlobReader | None = None,
                 order_seeds: Sequence[int | None] | None = None):
        """Check everything that can be checked before training (configuration, sources,
        budget, weights: a torchvision name must exist, store/file weights are read now and
        must fit the model), so bad input fails here, not mid-job. ``weights_store`` is where
        ``store:KEY`` weights are read from; ``order_seeds[i]`` seeds source i's nested order
        (None: the training seed)."""
        cfg.validate()
        self.cfg = cfg
        self.sources = [s for s, _ in sources]
        for i, (src, _) in enumerate(sources):
            if src.num_annotations() == 0:
                raise InvalidArgument(f"sources[{i}] ({src.name}) has no annotations: nothing to train on")
        given = list(order_seeds) if order_seeds is not None else [None] * len(sources)
        self.order_seeds = [cfg.seed if s is None else int(s) for s in given]
        self.items = sample_training_set(sources, cfg.seed, self.order_seeds)
        self.val = val
        if val is not None and not val.image_ids():
            raise InvalidArgument(f"validation set {val.name} has no images")
        cats = [c for s in self.sources for c in s.categories] + (val.categories if val is not None else [])
        self.category_map = CategoryMap(cats)
        self.checkpoints = checkpoints
        self.progress = progress
        self.on_evaluation = on_evaluation
        self.dist = dist_info if dist_info is not None else init_from_env()
        self.budget = Budget.of(cfg, len(self.items), self.dist.world_size)
        self.stream = TrainingStream([self.sources[s].kind == "real" for s, _ in self.items], cfg.seed,
                                     cfg.batch_size, self.dist.world_size, cfg.real_fraction)
        self.device = select_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        #: The mixed precision in force on this device (predictor.effective_amp).
        self.amp = effective_amp(self.device, cfg.amp, cfg.cpu_amp)
        if cfg.amp != self.amp:
            log.info("amp=%s ignored on %s", cfg.amp, self.device)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        self.weights = cfg.weights_spec  # parsed once; matched on its type below
        self.download = self.weights if isinstance(self.weights, TorchvisionWeights) else None
        if self.download is not None:
            torchvision_weights(self.download.name, cfg.architecture)  # a bad name fails here, not mid-job
        #: (h, w) of each training item, in order, and of each validation image.
        self.train_sizes = [self.sources[s].image_size(i) for s, i in self.items]
        self.val_sizes = [val.image_size(i) for i in val.image_ids()] if val is not None else []
        min_size, max_size = resolve_sizes(cfg, self.train_sizes + self.val_sizes)
        self.spec = ModelSpec(cfg.architecture, self.category_map.num_classes, min_size, max_size,
                              cfg.trainable_backbone_layers, pretrained_backbone=self.download is not None)
        self.init_state = ck.initial_state(self.weights, weights_store)
        if self.init_state is not None:
            self._load_initial_state(build_model(self.spec))  # weights that do not fit fail here

    # -- building blocks ---------------------------------------------------------------
    def _load_initial_state(self, model: nn.Module) -> None:
        assert self.init_state is not None
        load_state_dict_into(model, self.init_state, self.cfg.weights, self.spec.registered.class_heads)

    def _build_model(self) -> nn.Module:
        model = build_model(self.spec, self.download)
        if self.init_state is not None:
            self._load_initial_state(model)
        return model

    def _checkpoint_io(self) -> ck.CheckpointIO:
        if self.checkpoints is None:
            raise RuntimeError("Trainer.run() needs a CheckpointIO (set trainer.checkpoints)")
        return self.checkpoints

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        # As in detectron2/torchvision references: no weight decay on norm layers and biases.
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in model.parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        lr = self.cfg.effective_lr()
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=self.cfg.momentum)
        return torch.optim.AdamW(groups, lr=lr)

    def training_data(self) -> TrainingDataset:
        """The training set decoded once (core/data.py TrainingDataset), cached on the GPU when
        it fits, producing batches on the training device in the training dtype. The process
        keeps freed heap memory from here on (services/common/allocator.py): every step frees
        and allocates the same batch buffers, which would otherwise fault in fresh pages."""
        retain_freed_memory()
        estimate = sum(4 * h * w for h, w in self.train_sizes)  # 3 bytes a pixel, and about one instance
        t0 = time.perf_counter()
        threads = decode_threads(self.cfg.num_workers)
        data = TrainingDataset(self.sources, self.items, self.category_map, AugmentConfig() if self.cfg.augment else None,
                               self.cfg.seed, device=self.device, cache_device=cache_device(self.device, estimate),
                               dtype=self.dtype, threads=threads)
        log.info("decoded %d training images in %.1f s with %d threads: %.1f MB cached on %s", len(data),
                 time.perf_counter() - t0, threads, data.nbytes / 2**20, data.cache_device)
        return data

    def _batches(self, data: TrainingDataset, start: int, stop: int) -> Iterator[tuple[list[Draw], list[torch.Tensor], list[Target]]]:
        """This process's draws and batches of steps ``start`` … ``stop`` − 1."""
        for step in range(start, stop):
            draws = self.stream.rank_draws(step, self.dist.rank)
            images, targets = data.batch(draws)
            yield draws, images, targets

    def _report(self, fraction: float, message: str, metrics: dict[str, float] | None = None) -> None:
        if self.progress is not None and self.dist.is_main:
            self.progress(fraction, message, metrics)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train (resuming from the last checkpoint); the result. Rank 0's call under DDP (the
        other ranks call `train`)."""
        result = self.train()
        if result is None:
            raise RuntimeError(f"rank {self.dist.rank} has no training result: only rank 0 validates; call train()")
        return result

    def train(self) -> TrainResult | None:
        """Train (resuming from the last checkpoint): the result on rank 0, None on the other
        ranks of a data-parallel run (only rank 0 validates and selects the best model)."""
        cfg, device, budget = self.cfg, self.device, self.budget
        checkpoints = self._checkpoint_io()
        torch.manual_seed(derive_seed(cfg.seed, "segmenter/init"))
        model = self._build_model().to(device=device, dtype=self.dtype)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if self.dist.enabled and device.type == "cuda" and _has_batchnorm(model):
            # (SyncBatchNorm runs on GPUs only; on CPU each process normalises its own share
            # and DDP keeps the running statistics of rank 0.)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = self._optimizer(model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, budget.iterations, cfg))
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and self.amp == "fp16")
        record = self._new_record(model)
        state: dict[str, Any] = {"best_epoch": -1, "best_score": -math.inf, "bad_epochs": 0, "stopped": False,
                                 "iteration": 0}
        evaluation = 0

        done = ck.checkpoint_epochs(checkpoints)
        if done:
            last = done[-1]
            name = ck.epoch_name(last)
            saved = ck.from_bytes(checkpoints.read(name), f"checkpoint {name}")
            if saved.get("format") != ck.TRAIN_FORMAT or saved.get("config") != config_to_mapping(cfg):
                raise InvalidArgument(f"checkpoint {name} was written with another configuration or version; "
                                      "use a fresh work prefix")
            if saved.get("world_size") != self.dist.world_size:
                raise InvalidArgument(f"checkpoint {name} was written by {saved.get('world_size')} processes, "
                                      f"not {self.dist.world_size}: the training stream would differ")
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            ck.set_rng_state(saved["rng"])
            record = _from_tensors(saved["record"])
            state = dict(saved["state"])
            evaluation = last + 1
            log.info("resuming after evaluation %d, iteration %d (best evaluation %d)",
                     last, state["iteration"], state["best_epoch"])
            self._report(state["iteration"] / budget.iterations, f"resumed after iteration {state['iteration']}")

        train_model: nn.Module = model
        if self.dist.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.dist.local_rank] if device.type == "cuda" else None)
        data = self.training_data() if state["iteration"] < budget.iterations and not state["stopped"] else None
        if data is not None:
            record["data"] = {"cache_device": str(data.cache_device), "cache_mb": round(data.nbytes / 2**20, 1)}
        while data is not None and state["iteration"] < budget.iterations and not state["stopped"]:
            start = state["iteration"]
            stop = min(start + budget.eval_every, budget.iterations)
            entry = self._train_interval(train_model, optimizer, scheduler, scaler, self._batches(data, start, stop),
                                         evaluation, start, record)
            state["iteration"] = stop
            if self.dist.is_main:
                self._validate(model, evaluation, entry, state)
                record["epochs"].append(entry)
                record["best_epoch"] = state["best_epoch"]
                record["stopped_early"] = state["stopped"]
                self._count(record["budget"], start, stop)
                self._save(evaluation, model, optimizer, scheduler, scaler, record, state)
                metrics = {**{f"loss/{k}": v for k, v in entry["losses"].items()}, "iteration": float(stop),
                           "images_per_s": entry["images_per_s"], **{f"val/{k}": v for k, v in entry.get("val", {}).items()}}
                self._report(stop / budget.iterations, f"iteration {stop}/{budget.iterations} (evaluation {evaluation + 1}) done",
                             metrics)
            state["stopped"] = broadcast_flag(state["stopped"], self.dist, device)
            barrier(self.dist)
            if self.on_evaluation is not None:
                self.on_evaluation(evaluation, entry)
            evaluation += 1
        return self._result(record, state) if self.dist.is_main else None

    def _new_record(self, network: nn.Module) -> dict[str, Any]:
        cfg, budget = self.cfg, self.budget
        model = cast(SegmentationModel, network)
        train_sizes, val_sizes = sorted(set(self.train_sizes)), sorted(set(self.val_sizes))
        return {
            "epochs": [], "best_epoch": -1, "select_metric": cfg.select_metric, "stopped_early": False,
            "steps": [], "config": config_to_mapping(cfg),
            "model": {**self.spec.to_dict(), "input_sizes": {
                "train": [list(model.input_size(h, w)) for h, w in train_sizes],
                "val": [list(model.input_size(h, w)) for h, w in val_sizes]}},
            "categories": self.category_map.categories,
            "budget": {
                "mode": budget.mode, "iterations": budget.iterations, "iterations_run": 0, "images_seen": 0,
                "batch_size": cfg.batch_size, "world_size": self.dist.world_size, "eval_every": budget.eval_every,
                "real_fraction": cfg.real_fraction, "images_seen_by_source": [0] * len(self.sources),
            },
            "training_set": {
                "num_images": len(self.items),
                "sources": [{"name": s.name, "dataset": s.dataset_id, "split": s.split, "kind": s.kind,
                             "order_seed": self.order_seeds[k], "count": sum(1 for i, _ in self.items if i == k)}
                            for k, s in enumerate(self.sources)],
                "members": [[s, i] for s, i in self.items],
            },
            "val_set": {"name": self.val.name, "num_images": len(self.val.image_ids())} if self.val else None,
            "device": str(self.device), "world_size": self.dist.world_size, "amp": self.amp,
        }

    def _count(self, budget: dict[str, Any], start: int, stop: int) -> None:
        """Add steps ``start`` … ``stop`` − 1 to the record's budget."""
        by_source = draws_by_source(self.stream, self.items, len(self.sources), start, stop)
        budget["iterations_run"] = stop
        budget["images_seen"] = stop * self.stream.step_images
        budget["images_seen_by_source"] = [int(a + b) for a, b in zip(budget["images_seen_by_source"], by_source)]

    def _train_interval(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                        scaler: torch.amp.GradScaler, batches: Iterable[tuple[list[Draw], list[torch.Tensor], list[Target]]],
                        evaluation: int, start: int, record: dict[str, Any]) -> dict[str, Any]:
        """Train steps ``start`` … (the batches'); the entry of the evaluation that follows.

        The entry's ``draws`` say what every process trained on: per rank, the number of
        images and a digest of its (item, draw) sequence (stream.draws_digest)."""
        cfg, device, total = self.cfg, self.device, self.budget.iterations
        model.train()
        sums: dict[str, float] = defaultdict(float)
        n_iter = 0
        seen: list[Draw] = []
        last_report = time.monotonic()
        t0 = time.perf_counter()
        for draws, images, targets in batches:
            iteration = start + n_iter + 1  # 1-based: optimiser steps taken after this one
            seen.extend(draws)
            with autocast(device, self.amp, cpu=cfg.cpu_amp):
                loss_dict = model(images, targets)
            loss = sum(loss_dict.values())
            values = {k: float(v.detach()) for k, v in loss_dict.items()}
            if not all(math.isfinite(v) for v in values.values()):
                bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
                raise FailedPrecondition(f"training diverged at iteration {iteration}: {bad}; "
                                         "lower the learning rate or enable grad_clip")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            for k, v in values.items():
                sums[k] += v
            step_loss = sum(values.values())
            sums["loss"] += step_loss
            n_iter += 1
            if self.dist.is_main:
                record["steps"].append({"iteration": iteration, "loss": step_loss, "lr": lr})
            now = time.monotonic()
            if now - last_report > 5.0:
                last_report = now
                self._report(iteration / total, f"iteration {iteration}/{total}", {"loss": step_loss, "lr": lr})
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        trained = n_iter * self.stream.step_images
        shares = all_gather_objects({"rank": self.dist.rank, "images": len(seen), "sha256": draws_digest(seen)}, self.dist)
        return {
            "epoch": evaluation,
            "iteration": start + n_iter,
            "images_seen": (start + n_iter) * self.stream.step_images,
            "losses": {k: v / max(1, n_iter) for k, v in sums.items()},
            "iterations": n_iter,
            "images": trained,
            "seconds": seconds,
            "images_per_s": trained / max(seconds, 1e-9),
            "lr": optimizer.param_groups[0]["lr"],
            "draws": shares,
        }

    def _validate(self, model: nn.Module, evaluation: int, entry: dict[str, Any], state: dict[str, Any]) -> None:
        if self.val is None:
            state["best_epoch"] = evaluation  # without validation the last evaluation is the result
            return
        t0 = time.perf_counter()
        scores = pixel_validation(model, self.val, self.device, self.cfg.batch_size, self.cfg.val_score_threshold,
                                  self.cfg.val_mask_threshold, self.dtype, self.amp, cpu_amp=self.cfg.cpu_amp)
        entry["val"] = scores
        entry["val_seconds"] = time.perf_counter() - t0
        score = scores[self.cfg.select_metric]
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=evaluation, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
            if self.cfg.patience and state["bad_epochs"] >= self.cfg.patience:
                state["stopped"] = True
                log.info("early stop after iteration %d: no %s improvement for %d evaluations",
                         entry["iteration"], self.cfg.select_metric, state["bad_epochs"])

    def _save(self, evaluation: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
              scaler: torch.amp.GradScaler, record: dict[str, Any], state: dict[str, Any]) -> None:
        payload = {
            "format": ck.TRAIN_FORMAT, "epoch": evaluation, "iteration": state["iteration"], "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": ck.rng_state(), "config": config_to_mapping(self.cfg),
            "world_size": self.dist.world_size, "spec": self.spec.to_dict(),
            "categories": self.category_map.categories, "record": record, "state": state,
        }
        io_ = self._checkpoint_io()
        io_.write(ck.epoch_name(evaluation), ck.to_bytes(payload))
        log.info("rank %d wrote checkpoint %s (iteration %d)", self.dist.rank, ck.epoch_name(evaluation), state["iteration"])
        # Keep the last and the best evaluation's checkpoints; older ones are no longer needed.
        for old in ck.checkpoint_epochs(io_):
            if old not in (evaluation, state["best_epoch"]):
                io_.remove(ck.epoch_name(old))

    def _result(self, record: dict[str, Any], state: dict[str, Any]) -> TrainResult:
        best = state["best_epoch"]
        if best < 0:
            raise RuntimeError("training finished without a completed evaluation")
        saved = ck.from_bytes(self._checkpoint_io().read(ck.epoch_name(best)), f"checkpoint {ck.epoch_name(best)}")
        record = _from_tensors(record)
        record["best_epoch"] = best
        entry = next(e for e in record["epochs"] if e["epoch"] == best)
        extra = {"best_epoch": best, "iteration": entry["iteration"], "val": entry.get("val", {})}
        return TrainResult(ck.model_file(saved["model"], self.spec.to_dict(), self.category_map.categories, extra),
                           record)


def _from_tensors(obj: Any) -> Any:
    """Records round-trip through torch.save untouched; this only copies containers."""
    if isinstance(obj, dict):
        return {k: _from_tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_tensors(v) for v in obj]
    return obj
