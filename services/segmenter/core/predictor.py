"""Batched inference: COCO results (RLE masks, boxes, scores, category ids) and pixel
validation scores (through the evaluator's metrics — the one IoU/F1 implementation)."""
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
from services.segmenter.core.checkpoints import from_bytes, state_dict_from
from services.segmenter.core.data import CategoryMap, ExampleSource, image_to_tensor
from services.segmenter.core.models import ModelSpec, build_model, load_state_dict_into

Progress = Callable[[float, str, "dict[str, float] | None"], None]


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA only ("bf16" / "fp16"); a no-op elsewhere."""
    if device.type != "cuda" or amp in ("", "none"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@torch.inference_mode()
def infer(model: nn.Module, images: Sequence[np.ndarray], device: torch.device,
          dtype: torch.dtype = torch.float32, amp: str = "none") -> list[dict[str, np.ndarray]]:
    """Model outputs for H×W×3 uint8 images, as numpy: boxes (N×4 xyxy), scores (N),
    labels (N, contiguous), masks (N×H×W float32 probabilities at the image's size)."""
    batch = [image_to_tensor(im).to(device=device, dtype=dtype, non_blocking=True) for im in images]
    with autocast(device, amp):
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


def validate_thresholds(score_threshold: float, mask_threshold: float) -> None:
    if not 0.0 <= score_threshold <= 1.0:
        raise InvalidArgument(f"score_threshold must be in [0, 1], got {score_threshold}")
    if not 0.0 < mask_threshold < 1.0:
        raise InvalidArgument(f"mask_threshold must be in (0, 1), got {mask_threshold}")


def pixel_validation(model: nn.Module, source: ExampleSource, device: torch.device, batch_size: int,
                     score_threshold: float = 0.5, mask_threshold: float = 0.5,
                     dtype: torch.dtype = torch.float32, amp: str = "none") -> dict[str, float]:
    """Mean per-image pixel IoU, F1, precision, recall and ES = (IoU + F1) / 2 of the union
    of predicted instances against the union of ground-truth instances."""
    was_training = model.training
    model.eval()
    # Instances below the score threshold never enter the union: skip their mask heads.
    roi_heads = model.module.roi_heads if hasattr(model, "module") else model.roi_heads
    saved_thresh = roi_heads.score_thresh
    roi_heads.score_thresh = max(saved_thresh, score_threshold)
    per_image: dict[str, list[float]] = {"iou": [], "f1": [], "precision": [], "recall": []}
    ids = source.image_ids()
    try:
        for chunk in _batches(ids, batch_size):
            examples = [source.load(i) for i in chunk]
            outputs = infer(model, [e.image for e in examples], device, dtype, amp)
            for ex, out in zip(examples, outputs):
                pred = union_of_instances(out["masks"], out["scores"], score_threshold, mask_threshold)
                truth = union_of_instances(np.asarray(ex.masks, dtype=bool))
                s = pixel_scores(pred, truth)
                for k in per_image:
                    per_image[k].append(float(getattr(s, k)))
    finally:
        roi_heads.score_thresh = saved_thresh
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
    load_state_dict_into(model, state_dict_from(obj, what), what)
    model.to(device).eval()
    return LoadedModel(model, spec, cmap)


def predict(loaded: LoadedModel, source: ExampleSource, device: torch.device, batch_size: int = 4,
            score_threshold: float = 0.5, mask_threshold: float = 0.5, amp: str = "none",
            progress: Progress | None = None) -> list[dict[str, Any]]:
    """COCO results for every image of ``source``: one entry per detected instance with
    score ≥ ``score_threshold``, its mask binarised at ``mask_threshold`` and RLE-encoded,
    bbox [x, y, w, h] and the dataset's category id."""
    validate_thresholds(score_threshold, mask_threshold)
    if batch_size < 1:
        raise InvalidArgument(f"batch_size must be ≥ 1, got {batch_size}")
    model = loaded.model
    # torchvision drops boxes below its own threshold (0.05) before we see them.
    model.roi_heads.score_thresh = min(model.roi_heads.score_thresh, score_threshold)
    ids = source.image_ids()
    results: list[dict[str, Any]] = []
    done = 0
    for chunk in _batches(ids, batch_size):
        images = [source.load(i).image for i in chunk]
        for image_id, out in zip(chunk, infer(model, images, device, amp=amp)):
            keep = out["scores"] >= score_threshold
            cats = loaded.category_map.to_category_ids(out["labels"][keep])
            for box, score, cat, prob in zip(out["boxes"][keep], out["scores"][keep], cats, out["masks"][keep]):
                x0, y0, x1, y1 = (float(v) for v in box)
                results.append({
                    "image_id": int(image_id),
                    "category_id": int(cat),
                    "segmentation": encode_rle(prob >= mask_threshold),
                    "score": float(score),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                })
        done += len(chunk)
        if progress is not None:
            progress(done / max(1, len(ids)), f"predicted {done}/{len(ids)} images", None)
    return results


def results_document(results: list[dict[str, Any]], score_threshold: float, mask_threshold: float,
                     dataset_id: str, split: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"results": results, "score_threshold": score_threshold, "mask_threshold": mask_threshold,
            "dataset": dataset_id, "split": split, **(extra or {})}
