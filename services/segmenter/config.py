"""Segmenter settings: the only copy of their defaults, and their validation (torch-free).

`SegmenterConfig` is a training run's configuration (`SegmenterConfig` in
protos/synthaug/v1/segmenter.proto carries its settings, plus the request's seed);
`PredictConfig` holds the settings of a `PredictRequest`. Requests and plans fill them
through services.common.config (`config_from_proto` / `config_from_mapping`), so every
caller gets the same defaults and refuses the same input with the same message. Plan
validation imports this module, so it must not import torch (nor anything that does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from services.common.errors import InvalidArgument
from services.segmenter.architectures import DEFAULT_ARCHITECTURE, get_architecture
from services.segmenter.weights import TorchvisionWeights, WeightsSpec, parse_weights

#: Pixel validation scores; any of them may select the best evaluation.
METRICS = ("iou", "f1", "precision", "recall", "es")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
DTYPES = ("float32", "float64")


def check_thresholds(owner: str, score_field: str, score: float, mask_field: str, mask: float) -> None:
    """A score threshold in [0, 1] and a mask probability threshold in (0, 1)."""
    if not 0.0 <= score <= 1.0:
        raise InvalidArgument(f"{owner}.{score_field} must be in [0, 1], got {score}")
    if not 0.0 < mask < 1.0:
        raise InvalidArgument(f"{owner}.{mask_field} must be in (0, 1), got {mask}")


@dataclass
class SegmenterConfig:
    """Training hyper-parameters. Zero sizes mean "from the data"; lr 0 means the linear
    scaling rule of torchvision's references (0.02 per 16 images for SGD, 1e-4 for AdamW).

    The proto carries every field but warmup_factor, step_milestones, gamma, dtype, seed (the
    request's), device (the server's), cpu_amp (tests) and max_iters_per_epoch (benchmarks).

    The training budget: `iterations` optimiser steps when set (the equal budget that makes
    arms comparable), else `epochs` × one epoch's iterations of this training set;
    validation, best-checkpoint selection and early stopping every `eval_every` iterations
    (one epoch's by default). An epoch's iterations are ceil(training images / (batch_size ×
    world size))."""

    architecture: str = DEFAULT_ARCHITECTURE
    #: "none", a torchvision weights name, "store:KEY" or "file:NAME" (services/segmenter/weights.py).
    weights: str = "none"
    #: Ignored when `iterations` is set.
    epochs: int = 12
    #: Total optimiser steps; None = epochs × one epoch's iterations.
    iterations: int | None = None
    #: Iterations between validations (and checkpoints); None = one epoch's iterations.
    eval_every: int | None = None
    #: Share of real images (dataset kind "real") in every batch; None = sample the mixed
    #: training set uniformly, i.e. in the arm's proportions.
    real_fraction: float | None = None
    #: Per process.
    batch_size: int = 4
    lr: float = 0.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    step_milestones: tuple[float, ...] = (2 / 3, 8 / 9)
    gamma: float = 0.1
    #: Max gradient norm; 0 = off.
    grad_clip: float = 0.0
    #: Mixed precision on CUDA ("none", "bf16", "fp16"); ignored on CPU unless cpu_amp.
    amp: str = "none"
    #: Evaluations without val improvement before stopping; 0 = off.
    patience: int = 0
    #: Threads that decode the training set into its cache before training (core/data.py
    #: TrainingDataset); -1 = auto: min(8, CPUs); 0 = the training thread. Batches are then
    #: assembled and augmented on the training device, without loader processes.
    num_workers: int = -1
    augment: bool = True
    #: 0..5; None: all layers from scratch, 3 with pretrained weights.
    trainable_backbone_layers: int | None = None
    min_size: int = 0
    max_size: int = 0
    dtype: str = "float32"
    val_score_threshold: float = 0.5
    val_mask_threshold: float = 0.5
    select_metric: str = "iou"
    seed: int = 0
    device: str = ""
    #: Tests and benchmarks: run amp "bf16" on CPU too (torch's CPU autocast), i.e. the code
    #: path that CUDA mixed precision takes, on a machine without a GPU.
    cpu_amp: bool = False
    #: Benchmarks only: cap one epoch's iterations (epoch-mode length, default eval_every); 0 = off.
    max_iters_per_epoch: int = 0

    def validate(self) -> None:
        architecture = get_architecture(self.architecture)
        weights = self.weights_spec  # InvalidArgument when malformed
        if isinstance(weights, TorchvisionWeights):
            architecture.check_torchvision_weights(weights.name)
        checks = [
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.iterations is None or self.iterations >= 1,
             f"iterations must be ≥ 1 (or unset = epochs), got {self.iterations}"),
            (self.eval_every is None or self.eval_every >= 1,
             f"eval_every must be ≥ 1 (or unset = one epoch), got {self.eval_every}"),
            (self.real_fraction is None or (math.isfinite(self.real_fraction) and 0 <= self.real_fraction <= 1),
             f"real_fraction must be in [0, 1] (or unset = the arm's proportions), got {self.real_fraction}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.lr >= 0 and math.isfinite(self.lr), f"lr must be ≥ 0, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"schedule must be 'cosine' or 'step', got {self.schedule!r}"),
            (self.warmup_iters >= 0, f"warmup_iters must be ≥ 0, got {self.warmup_iters}"),
            (0 <= self.warmup_factor <= 1, f"warmup_factor must be in [0, 1], got {self.warmup_factor}"),
            (all(0 <= m <= 1 for m in self.step_milestones),
             f"step_milestones must be fractions of the run in [0, 1], got {list(self.step_milestones)}"),
            (self.gamma > 0, f"gamma must be > 0, got {self.gamma}"),
            (self.grad_clip >= 0, f"grad_clip must be ≥ 0 (0 = off), got {self.grad_clip}"),
            (self.amp in AMP_MODES, f"amp must be 'none', 'bf16' or 'fp16', got {self.amp!r}"),
            (not self.cpu_amp or self.amp == "bf16", f"cpu_amp needs amp 'bf16' (CPU autocast), got {self.amp!r}"),
            (self.patience >= 0, f"patience must be ≥ 0 (0 = off), got {self.patience}"),
            (self.num_workers >= -1, f"num_workers must be ≥ 0 (or -1 = auto), got {self.num_workers}"),
            (self.dtype in DTYPES, f"dtype must be 'float32' or 'float64', got {self.dtype!r}"),
            (self.select_metric in METRICS, f"select_metric must be one of {METRICS}, got {self.select_metric!r}"),
            (self.min_size >= 0 and self.max_size >= 0, "min_size and max_size must be ≥ 0 (0 = image size)"),
            (self.trainable_backbone_layers is None or 0 <= self.trainable_backbone_layers <= 5,
             f"trainable_backbone_layers must be in 0..5, got {self.trainable_backbone_layers}"),
            (self.max_iters_per_epoch >= 0, f"max_iters_per_epoch must be ≥ 0 (0 = whole epoch), got {self.max_iters_per_epoch}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgument(f"SegmenterConfig.{message}")
        check_thresholds("SegmenterConfig", "val_score_threshold", self.val_score_threshold,
                         "val_mask_threshold", self.val_mask_threshold)

    @property
    def weights_spec(self) -> WeightsSpec:
        """`weights` as its typed value (services/segmenter/weights.py)."""
        return parse_weights(self.weights)

    def effective_lr(self) -> float:
        if self.lr > 0:
            return self.lr
        return 0.02 * self.batch_size / 16 if self.optimizer == "sgd" else 1e-4


@dataclass
class PredictConfig:
    """Settings of a prediction (a PredictRequest's, beside its model, dataset and split).

    Predictions keep every detection at or above `export_threshold` (0.05, the torchvision /
    COCO practice), at most `detections_per_image` per image: COCO AP is computed on all of
    them, and only the evaluator applies the score threshold of its pixel metrics."""

    export_threshold: float = 0.05
    #: The most detections written per image (the highest-scoring ones); the model's cap.
    detections_per_image: int = 100
    #: Mask probability at which the written RLE masks are binarised.
    mask_threshold: float = 0.5
    #: Images per inference batch (memory grows with batch × image size).
    batch_size: int = 4

    def validate(self) -> None:
        check_thresholds("PredictConfig", "export_threshold", self.export_threshold, "mask_threshold", self.mask_threshold)
        if self.detections_per_image < 1:
            raise InvalidArgument(f"PredictConfig.detections_per_image must be ≥ 1, got {self.detections_per_image}")
        if self.batch_size < 1:
            raise InvalidArgument(f"PredictConfig.batch_size must be ≥ 1, got {self.batch_size}")


@dataclass
class FeaturesConfig:
    """Settings of a feature extraction (a FeaturesRequest's, beside its model or weights,
    extractor and image sets). The features themselves have no settings: each feature space
    fixes its input size and normalisation (core/feature_extraction.py)."""

    #: Images per inference batch; images of one size are batched together, so the batch
    #: size changes speed and memory, not the features.
    batch_size: int = 16

    def validate(self) -> None:
        if self.batch_size < 1:
            raise InvalidArgument(f"FeaturesConfig.batch_size must be ≥ 1, got {self.batch_size}")
