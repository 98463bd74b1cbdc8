"""Batched inference: COCO results (RLE masks, boxes, scores, category ids) and pixel
validation scores (through the evaluator's metrics — the one IoU/F1 implementation).

Networks are used through the SegmentationModel contract (core/models.py) only."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import nn

from services.common.errors import InvalidArgument
from services.evaluator.core.metrics import pixel_scores, union_of_instances
from services.segmenter.config import PredictConfig
from services.segmenter.core.checkpoints import from_bytes, state_dict_from
from services.segmenter.core.data import CategoryMap, ExampleSource, to_device_batch
from services.segmenter.core.models import ModelSpec, build_model, load_state_dict_into

Progress = Callable[[float, str, "dict[str, float] | None"], None]


def effective_amp(device: torch.device, amp: str, cpu_amp: bool = False) -> str:
    """The mixed precision that applies on ``device``: ``amp`` on CUDA; on CPU "bf16" only
    when ``cpu_amp`` asks for it (SegmenterConfig.cpu_amp: tests and benchmarks run the
    CUDA code path under CPU autocast), else "none"."""
    if amp in ("", "none"):
        return "none"
    if device.type == "cuda" or (cpu_amp and device.type == "cpu" and amp == "bf16"):
        return amp
    return "none"


def autocast(device: torch.device, amp: str, cpu: bool = False) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision ("bf16" / "fp16") on CUDA; on CPU only with ``cpu`` and "bf16" (see
    `effective_amp`); a no-op otherwise."""
    amp = effective_amp(device, amp, cpu)
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.inference_mode()
def infer(model: nn.Module, images: Sequence[np.ndarray], device: torch.device,
          dtype: torch.dtype = torch.float32, amp: str = "none", cpu_amp: bool = False) -> list[dict[str, np.ndarray]]:
    """Model outputs for H×W×3 uint8 images, as numpy: boxes (N×4 xyxy), scores (N),
    labels (N, contiguous), masks (N×H×W float32 probabilities at the image's size)."""
    batch = to_device_batch(images, device, dtype)
    with autocast(device, amp, cpu=cpu_amp):
        outputs = model(batch)
    result = []
    for out in outputs:
        result.append({
            "boxes": out["boxes"].float().cpu().numpy(),
            "scores": out["scores"].float().cpu().numpy(),
            "labels": out["labels"].cpu().numpy(),
            "masks": out["masks"][:, 0].float().cpu().numpy(),
        })
    return result


def _batches(ids: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _unwrapped(model: nn.Module) -> Any:
    """The SegmentationModel inside a DistributedDataParallel wrapper (or the model)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def pixel_validation(model: nn.Module, source: ExampleSource, device: torch.device, batch_size: int,
                     score_threshold: float, mask_threshold: float,
                     dtype: torch.dtype = torch.float32, amp: str = "none", cpu_amp: bool = False) -> dict[str, float]:
    """Mean per-image pixel IoU, F1, precision, recall and ES = (IoU + F1) / 2 of the union
    of predicted instances against the union of ground-truth instances."""
    was_training = model.training
    model.eval()
    # Instances below the score threshold never enter the union: let the model skip them.
    net = _unwrapped(model)
    saved_thresh = net.score_threshold
    net.score_threshold = max(saved_thresh, score_threshold)
    per_image: dict[str, list[float]] = {"iou": [], "f1": [], "precision": [], "recall": []}
    ids = source.image_ids()
    try:
        for chunk in _batches(ids, batch_size):
            examples = [source.load(i) for i in chunk]
            outputs = infer(model, [e.image for e in examples], device, dtype, amp, cpu_amp)
            for ex, out in zip(examples, outputs):
                pred = union_of_instances(out["masks"], out["scores"], score_threshold, mask_threshold)
                truth = union_of_instances(np.asarray(ex.masks, dtype=bool))
                s = pixel_scores(pred, truth)
                for k in per_image:
                    per_image[k].append(float(getattr(s, k)))
    finally:
        net.score_threshold = saved_thresh
        model.train(was_training)
    means = {k: float(np.mean(v)) if v else 0.0 for k, v in per_image.items()}
    means["es"] = (means["iou"] + means["f1"]) / 2
    return means


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


@dataclass
class LoadedModel:
    model: nn.Module
    spec: ModelSpec
    category_map: CategoryMap


def load_model_file(data: bytes, what: str, device: torch.device) -> LoadedModel:
    """Rebuild the network of a model file (or a training checkpoint) for inference."""
    obj = from_bytes(data, what)
    if "spec" not in obj or "categories" not in obj:
        raise InvalidArgument(f"{what} is not a synthaug segmenter model file (no spec/categories)")
    spec = ModelSpec.from_dict(obj["spec"])
    cmap = CategoryMap(obj["categories"])
    if cmap.num_classes != spec.num_classes:
        raise InvalidArgument(f"{what}: {len(obj['categories'])} categories but the model has {spec.num_classes} classes")
    model = build_model(spec)
    load_state_dict_into(model, state_dict_from(obj, what), what, spec.registered.class_heads)
    model.to(device).eval()
    return LoadedModel(model, spec, cmap)


def exported(scores: np.ndarray, cfg: PredictConfig) -> np.ndarray:
    """Indices of the detections an image exports: score ≥ ``cfg.export_threshold``, the
    ``cfg.detections_per_image`` highest-scoring of them, by decreasing score."""
    keep = np.flatnonzero(scores >= cfg.export_threshold)
    return keep[np.argsort(-scores[keep], kind="stable")][: cfg.detections_per_image]


def predict(loaded: LoadedModel, source: ExampleSource, device: torch.device, cfg: PredictConfig,
            amp: str = "none", progress: Progress | None = None) -> list[dict[str, Any]]:
    """COCO results for every image of ``source``: one entry per exported detection (see
    `exported`), its mask probabilities (at the image's stored size) binarised at
    ``cfg.mask_threshold`` and RLE-encoded, bbox [x, y, w, h] and the dataset's category id.
    No score threshold beyond the export threshold is applied: that is the evaluator's."""
    cfg.validate()
    model = _unwrapped(loaded.model)
    saved = model.score_threshold, model.detections_per_image
    # The model's own cut and cap (torchvision's: 0.05 and 100) must not drop what we export.
    model.score_threshold, model.detections_per_image = cfg.export_threshold, cfg.detections_per_image
    ids = source.image_ids()
    results: list[dict[str, Any]] = []
    done = 0
    try:
        for chunk in _batches(ids, cfg.batch_size):
            images = [source.load(i).image for i in chunk]
            for image_id, out in zip(chunk, infer(model, images, device, amp=amp)):
                keep = exported(out["scores"], cfg)
                cats = loaded.category_map.to_category_ids(out["labels"][keep])
                for box, score, cat, prob in zip(out["boxes"][keep], out["scores"][keep], cats, out["masks"][keep]):
                    x0, y0, x1, y1 = (float(v) for v in box)
                    results.append({
                        "image_id": int(image_id),
                        "category_id": int(cat),
                        "segmentation": encode_rle(prob >= cfg.mask_threshold),
                        "score": float(score),
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                    })
            done += len(chunk)
            if progress is not None:
                progress(done / max(1, len(ids)), f"predicted {done}/{len(ids)} images", None)
    finally:
        model.score_threshold, model.detections_per_image = saved
    return results


def results_document(results: list[dict[str, Any]], cfg: PredictConfig, dataset_id: str, split: str,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"results": results, "export_threshold": cfg.export_threshold,
            "detections_per_image": cfg.detections_per_image, "mask_threshold": cfg.mask_threshold,
            "dataset": dataset_id, "split": split, **(extra or {})}
