"""Procedural dermoscopy-like demo data with exact instance masks.

Why: the demo plan, CI and every service's tests need images that look enough like the real
task (pigmented lesions on textured skin, hairs across them, sometimes the dark vignette of a
dermatoscope) to exercise the whole pipeline, without shipping or downloading a data set.

Every image is a pure function of `(seed, index, config)`: its random generator is the shared
seed derivation's stream (seed, "demo/image", index) (services/common/seeding.py), so any subset, any order and any number of workers produce
byte-identical images. Everything is vectorised numpy/cv2 on float32 (a few ms per 256 px image).

Ground truth: one instance per lesion, lesions never overlap (placement keeps them apart and a
final pass removes any pixel already claimed), masks are the hard `alpha ≥ 0.5` region of the
soft lesion so the mask border sits in the middle of the blurred image border. Hairs are drawn
over lesions but do not cut the masks (as in ISIC's expert annotations).
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

if TYPE_CHECKING:
    from ingest.importers.pipeline import Decoded, ImportOptions, ImportSummary, ImportTask
    from services.common.store import ObjectStore

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from services.common.errors import InvalidArgument
from services.common.files import write_atomically
from services.common.imageio import encode_png
from services.common.seeding import rng as seeded_rng

log = logging.getLogger(__name__)

CATEGORIES = [{"id": 1, "name": "lesion", "supercategory": "skin"}]
GENERATOR = "synthaug.demo_data/1"

# Skin tones (RGB) from light to dark, and lesion pigments (RGB) from light brown to
# blue-black; each image jitters the ones it draws.
_SKIN = np.array(
    [[236, 200, 178], [226, 178, 150], [214, 160, 128], [196, 140, 108], [172, 118, 88], [140, 94, 70]],
    dtype=np.float32,
)
_PIGMENT = np.array(
    [[150, 96, 66], [120, 72, 48], [96, 56, 40], [72, 42, 34], [60, 44, 52], [44, 30, 30]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class DemoConfig:
    """Generator settings; recorded in the dataset's provenance."""

    size: int = 256
    min_lesions: int = 1
    max_lesions: int = 3
    hair_probability: float = 0.6
    max_hairs: int = 14
    vignette_probability: float = 0.3
    min_lesion_area: int = 30

    def validate(self) -> DemoConfig:
        if not 32 <= self.size <= 4096:
            raise InvalidArgument(f"demo size must be in [32, 4096], got {self.size}")
        if not 1 <= self.min_lesions <= self.max_lesions <= 8:
            raise InvalidArgument(
                f"demo lesions need 1 ≤ min_lesions ≤ max_lesions ≤ 8, got {self.min_lesions}..{self.max_lesions}"
            )
        for name in ("hair_probability", "vignette_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"demo {name} must be in [0, 1], got {value}")
        if self.max_hairs < 0:
            raise InvalidArgument(f"demo max_hairs must be ≥ 0, got {self.max_hairs}")
        if self.min_lesion_area < 1:
            raise InvalidArgument(f"demo min_lesion_area must be ≥ 1, got {self.min_lesion_area}")
        return self

    def params(self) -> dict:
        return {"generator": GENERATOR, **asdict(self)}


@dataclass
class DemoSample:
    index: int
    image: np.ndarray  # H×W×3 uint8 RGB
    masks: np.ndarray  # N×H×W bool, disjoint, N ≥ 1
    labels: np.ndarray  # N int64 (all 1: "lesion")

    @property
    def file_stem(self) -> str:
        return f"demo_{self.index:06d}"

    def instance_map(self) -> np.ndarray:
        """H×W uint8: 0 background, i+1 for instance i (the instance-id PNG)."""
        out = np.zeros(self.masks.shape[1:], dtype=np.uint8)
        for i, m in enumerate(self.masks):
            out[m] = i + 1
        return out


def _check_seed(seed: int, what: str = "seed") -> int:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgument(f"demo {what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _upsample(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """Smooth upsampling of a small random grid: cubic to ~1/8 of the target, then linear.

    Cubic all the way is ~10× slower in cv2 for large factors; linear from the tiny grid
    shows diamond artefacts. The two-step result is visually indistinguishable from cubic.
    """
    gh, gw = grid.shape[:2]
    mid_w, mid_h = max(gw, width // 8), max(gh, height // 8)
    if (mid_w, mid_h) != (gw, gh):
        grid = cv2.resize(grid, (mid_w, mid_h), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)


def _background(rng: np.random.Generator, s: int) -> np.ndarray:
    """Skin: a jittered tone with uneven illumination and reddish blotches (built on an 8×8
    grid and upsampled once), mid-frequency mottle and sparse dark pores."""
    tone = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0.0, 6.0, 3).astype(np.float32)
    shading = cv2.resize(rng.standard_normal((4, 4)).astype(np.float32), (8, 8), interpolation=cv2.INTER_CUBIC)
    redness = np.maximum(rng.standard_normal((8, 8)).astype(np.float32), 0.0) * np.float32(rng.uniform(6.0, 18.0))
    low = tone[None, None, :] * (1.0 + 0.07 * shading)[..., None]
    low[..., 1] -= redness  # erythema: less green/blue reads as pink-red
    low[..., 2] -= 0.6 * redness
    img = _upsample(low, s, s)
    mottle = _upsample(rng.standard_normal((24, 24, 3)).astype(np.float32), s, s)
    img = cv2.scaleAdd(mottle, 5.0, img)
    speckle: np.ndarray = (rng.random((s, s), dtype=np.float32) < 0.004).astype(np.float32)
    speckle = cv2.GaussianBlur(speckle, (3, 3), 0.8)
    return cv2.scaleAdd(cv2.merge([speckle, speckle, speckle]), -30.0, img)


@dataclass
class _Lesion:
    cx: float
    cy: float
    radius: float
    reach: float  # upper bound of the boundary radius


def _place_lesions(rng: np.random.Generator, s: int, count: int) -> list[_Lesion]:
    """Random centres and radii, rejected when their reach circles would touch."""
    placed: list[_Lesion] = []
    for i in range(count):
        for _attempt in range(30):
            if i == 0:
                radius = rng.uniform(0.14, 0.3) * s
                cx, cy = rng.uniform(0.3, 0.7, 2) * s
            else:
                radius = rng.uniform(0.05, 0.14) * s
                cx, cy = rng.uniform(0.1, 0.9, 2) * s
            reach = radius * 1.45 + 3.0
            if all(np.hypot(cx - p.cx, cy - p.cy) > reach + p.reach + 2.0 for p in placed):
                placed.append(_Lesion(float(cx), float(cy), float(radius), float(reach)))
                break
    return placed


def _lesion_alpha(rng: np.random.Generator, s: int, les: _Lesion) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Soft coverage (0..1) of one lesion within its bounding box, and the normalised depth.

    The boundary radius is a random low-order Fourier series in the angle (lobes, notches)
    plus band-limited noise (ragged edge); the edge softness varies with the angle, so one
    side of a lesion fades out while another is sharp, as in real dermoscopy.
    """
    r_box = int(np.ceil(les.reach + 2))
    y0, y1 = max(0, int(les.cy) - r_box), min(s, int(les.cy) + r_box + 1)
    x0, x1 = max(0, int(les.cx) - r_box), min(s, int(les.cx) + r_box + 1)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(les.cy)
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(les.cx)
    dist = np.sqrt(xs * xs + ys * ys)
    theta = np.arctan2(ys, xs)
    boundary = np.ones_like(dist)
    budget = 0.3  # Σ amplitudes ≤ 0.3 keeps the shape star-like and within `reach`
    for k in range(2, 7):
        a = rng.uniform(0.0, budget / (k - 0.5))
        budget -= a
        boundary += np.float32(a) * np.cos(k * theta + np.float32(rng.uniform(0, 2 * np.pi)))
    boundary *= np.float32(les.radius)
    h, w = dist.shape
    rough = _upsample(rng.standard_normal((8, 8)).astype(np.float32), w, h)
    boundary += rough * np.float32(0.04 * les.radius)
    phase = np.float32(rng.uniform(0, 2 * np.pi))
    soft = np.float32(les.radius) * (0.03 + 0.12 * (0.5 + 0.5 * np.cos(theta + phase)))
    alpha = np.clip((boundary - dist) / (soft + np.float32(0.5)) + np.float32(0.5), 0.0, 1.0)
    depth = np.clip(1.0 - dist / np.maximum(boundary, np.float32(1.0)), 0.0, 1.0)
    return (slice(y0, y1), slice(x0, x1)), alpha, depth


def _paint_lesion(rng: np.random.Generator, img: np.ndarray, box: tuple[slice, slice], alpha: np.ndarray,
                  depth: np.ndarray) -> None:
    pigment = _PIGMENT[rng.integers(len(_PIGMENT))] + rng.normal(0.0, 8.0, 3).astype(np.float32)
    region = img[box]
    # a lesion is always clearly darker than the skin around it (dark skin + light pigment
    # would otherwise give an invisible lesion with a mask)
    pigment = np.minimum(pigment, region.reshape(-1, 3).mean(axis=0) * np.float32(0.7))
    h, w = alpha.shape
    mottle = _upsample(rng.standard_normal((10, 10)).astype(np.float32), w, h)
    network = cv2.resize(rng.standard_normal((28, 28)).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    strength = rng.uniform(0.55, 0.95)
    density = alpha * np.clip(
        strength * (0.65 + 0.35 * depth) + 0.12 * mottle + 0.08 * np.abs(network), 0.0, 1.0
    )
    region += (pigment[None, None, :] - region) * density[..., None]
    if rng.random() < 0.5:  # dark globules / dots inside the lesion
        dots = np.zeros((h, w), np.float32)
        inside = np.argwhere(alpha > 0.8)
        if len(inside):
            for _ in range(int(rng.integers(3, 15))):
                yy, xx = inside[rng.integers(len(inside))]
                cv2.circle(dots, (int(xx), int(yy)), int(rng.integers(1, 3)), 1.0, -1, cv2.LINE_AA)
            region *= 1.0 - 0.35 * dots[..., None]


def _hairs(rng: np.random.Generator, img: np.ndarray, s: int, max_hairs: int) -> None:
    """Dark, thin quadratic-Bézier hairs across the image (drawn anti-aliased on one layer)."""
    n = int(rng.integers(1, max_hairs + 1))
    layer = np.zeros((s, s), np.uint8)
    t = np.linspace(0.0, 1.0, 24, dtype=np.float32)[:, None]
    for _ in range(n):
        p0 = rng.uniform(-0.1, 1.1, 2) * s
        direction = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 1.0) * s
        p2 = p0 + length * np.array([np.cos(direction), np.sin(direction)])
        p1 = (p0 + p2) / 2 + rng.normal(0, 0.12 * length, 2)
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
        thickness = 1 if rng.random() < 0.7 or s < 200 else 2
        cv2.polylines(layer, [np.round(pts * 16).astype(np.int32)], False, 255, thickness, cv2.LINE_AA, shift=4)
    alpha = layer.astype(np.float32) * np.float32(0.85 / 255.0)
    hair_colour = np.array(rng.uniform(20, 60, 3), np.float32)
    img += (hair_colour[None, None, :] - img) * alpha[..., None]


def _vignette(rng: np.random.Generator, img: np.ndarray, s: int) -> None:
    """The dark circular frame of a contact dermatoscope's lens."""
    radius = rng.uniform(0.5, 0.68) * s
    cx, cy = (0.5 + rng.normal(0, 0.03, 2)) * s
    ys = np.arange(s, dtype=np.float32)[:, None] - np.float32(cy)
    xs = np.arange(s, dtype=np.float32)[None, :] - np.float32(cx)
    d = np.sqrt(xs * xs + ys * ys)
    width = np.float32(0.06 * s)
    dark = np.clip((d - np.float32(radius)) / width, 0.0, 1.0)
    dark = dark * dark * (3 - 2 * dark)  # smoothstep
    img *= (1.0 - 0.92 * dark)[..., None]


def generate_sample(seed: int, index: int, config: DemoConfig = DemoConfig()) -> DemoSample:
    """Image `index` of the demo set with `seed`: a pure function of (seed, index, config)."""
    _check_seed(seed)
    _check_seed(index, "index")
    s = config.size
    rng = seeded_rng(seed, "demo/image", index)
    img = _background(rng, s)
    count = int(rng.integers(config.min_lesions, config.max_lesions + 1))
    masks: list[np.ndarray] = []
    for les in _place_lesions(rng, s, count):
        box, alpha, depth = _lesion_alpha(rng, s, les)
        _paint_lesion(rng, img, box, alpha, depth)
        full = np.zeros((s, s), dtype=bool)
        full[box] = alpha >= 0.5
        masks.append(full)
    if config.hair_probability > 0 and config.max_hairs > 0 and rng.random() < config.hair_probability:
        _hairs(rng, img, s, config.max_hairs)
    if config.vignette_probability > 0 and rng.random() < config.vignette_probability:
        _vignette(rng, img, s)
    # sensor grain: triangular noise (sum of two uniforms, σ≈2); uniform draws are ~10× faster
    # than normal ones and the eye cannot tell the difference
    grain = rng.random((s, s, 3), dtype=np.float32)
    grain += rng.random((s, s, 3), dtype=np.float32)
    grain -= np.float32(1.0)
    grain *= np.float32(4.9)
    img += grain
    img += np.float32(0.5)  # round half up on the truncating cast below
    np.clip(img, 0, 255, out=img)
    image = img.astype(np.uint8)

    # Disjoint, non-trivial instances: later lesions win any shared pixel; tiny ones are dropped
    # (the first lesion is large and central, so at least one always survives).
    claimed = np.zeros((s, s), dtype=bool)
    kept: list[np.ndarray] = []
    for m in reversed(masks):
        visible = m & ~claimed
        claimed |= m
        if visible.sum() >= config.min_lesion_area:
            kept.append(visible)
    kept.reverse()
    if not kept:  # pathological configs only (tiny size with a huge min area)
        raise InvalidArgument(f"demo image {index} has no lesion of at least {config.min_lesion_area} px")
    stacked = np.stack(kept)
    return DemoSample(index=index, image=image, masks=stacked, labels=np.ones(len(kept), dtype=np.int64))


def generate(seed: int, count: int, config: DemoConfig = DemoConfig(), start: int = 0) -> Iterator[DemoSample]:
    """Samples start..start+count-1 of the demo set `seed`."""
    config.validate()
    for index in range(start, start + count):
        yield generate_sample(seed, index, config)


# --------------------------------------------------------------------------------------------
# Writing a demo folder (images/, masks/, annotations.json)


def coco_annotations(masks: np.ndarray, labels: Sequence[int] | np.ndarray, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations (compressed RLE, area, bbox) for N×H×W bool masks."""
    out: list[dict[str, Any]] = []
    if len(masks) == 0:
        return out
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    for i, rle in enumerate(rles):
        out.append({
            "id": first_id + i,
            "image_id": image_id,
            "category_id": int(labels[i]),
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(areas[i]),
            "bbox": [float(v) for v in boxes[i]],
            "iscrowd": 0,
        })
    return out


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _write_one(args: tuple[str, int, int, DemoConfig]) -> tuple[int, str, int, int, np.ndarray, np.ndarray]:
    out, seed, index, config = args
    sample = generate_sample(seed, index, config)
    root = Path(out)
    name = sample.file_stem + ".png"
    (root / "images" / name).write_bytes(encode_png(sample.image))
    (root / "masks" / name).write_bytes(encode_png(sample.instance_map()))
    h, w = sample.image.shape[:2]
    return index, name, h, w, sample.masks, sample.labels


def write_demo_folder(out: str | Path, count: int, seed: int, config: DemoConfig = DemoConfig(),
                      workers: int = 1) -> dict:
    """Write `out/images/*.png`, `out/masks/*.png` (instance ids) and `out/annotations.json`.

    Returns a summary dict. The files do not depend on `workers`.
    """
    config.validate()
    _check_seed(seed)
    if count < 1:
        raise InvalidArgument(f"demo count must be ≥ 1, got {count}")
    root = Path(out)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        # stale images from an earlier, larger run would sit next to a COCO file that omits them
        raise InvalidArgument(f"demo output {root} exists and is not an empty folder; choose a new one")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), seed, i, config) for i in range(count)]
    if workers > 1 and count > 1:
        import multiprocessing

        # spawn, not fork: the caller may hold gRPC channels (the embedded orchestrator)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            results = list(pool.map(_write_one, jobs, chunksize=max(1, min(32, count // (workers * 4)))))
    else:
        results = [_write_one(j) for j in jobs]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, name, h, w, masks, labels in results:
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        annotations.extend(coco_annotations(masks, labels, image_id, len(annotations) + 1))
    coco = {
        "info": {"description": "synthaug procedural demo data", "seed": seed, "params": config.params()},
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    write_atomically(root / "annotations.json", json.dumps(coco, sort_keys=True, separators=(",", ":")).encode())
    return {"images": len(images), "instances": len(annotations), "out": str(root)}


# --------------------------------------------------------------------------------------------
# Registering a demo dataset in the store (through the importers' parallel pipeline)


def decode_demo_task(task: ImportTask) -> Decoded:
    from ingest.importers.pipeline import Decoded

    seed, config = task.source
    sample = generate_sample(seed, task.index, config)
    n = len(sample.masks)
    return Decoded(sample.image, sample.masks, [1] * n, [False] * n)


def register_demo(store: ObjectStore, count: int, seed: int, config: DemoConfig = DemoConfig(),
                  options: ImportOptions | None = None,
                  progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    """Generate `count` demo images and register them as a 'real' dataset.

    The provenance params carry the generator settings and the seed, so the dataset can be
    regenerated exactly; images keep their generated size (`options.size` is ignored).
    """
    from dataclasses import replace

    from ingest.importers.pipeline import ImportOptions, ImportTask, run_import

    config.validate()
    _check_seed(seed)
    if count < 1:
        raise InvalidArgument(f"demo count must be ≥ 1, got {count}")
    options = replace(options or ImportOptions(), size=None).validate()
    tasks = [ImportTask(i, f"demo_{i:06d}.png", "", (seed, config)) for i in range(count)]
    params: dict[str, Any] = {"source": "demo", "demo": {**config.params(), "seed": seed, "count": count}}
    return run_import(store, "dataset demo", tasks, decode_demo_task, CATEGORIES, options, params, progress)
