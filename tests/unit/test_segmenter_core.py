"""Segmenter core: sampling, the training stream, augmentation, losses, learning, resume,
checkpoints, prediction, image size."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from services.common.errors import InvalidArgument
from services.common.sampling import nested_order
from services.evaluator.core.metrics import pixel_scores, union_of_instances
from services.segmenter.config import PredictConfig, SegmenterConfig
from services.segmenter.core import checkpoints as ck
from services.segmenter.core.augment import AugmentConfig, augment_batch, masks_to_boxes
from services.segmenter.core.data import (
    CategoryMap,
    Example,
    InMemorySource,
    TrainingDataset,
    sample_training_set,
)
from services.segmenter.core.maskrcnn import LOSS_NAMES
from services.segmenter.core.models import ModelSpec, build_model, load_state_dict_into
from services.segmenter.core.predictor import infer, load_model_file, pixel_validation, predict
from services.segmenter.core.stream import TrainingStream
from services.segmenter.core.trainer import Interrupted, Trainer
from services.segmenter.weights import WEIGHTS_DIR_ENV
from tests.unit.segmenter_shapes import make_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LIGHT = "maskrcnn_resnet18_fpn"


# -- training-set membership ---------------------------------------------------------------

def test_training_set_counts_and_membership_are_exact():
    a = make_source("a", 100, size=16, seed=1)
    b = make_source("b", 30, size=16, seed=2, first_id=1000)
    items = sample_training_set([(a, 100), (b, 7)], seed=5)
    assert len(items) == 107 and len(set(items)) == 107
    assert sorted(i for s, i in items if s == 0) == list(range(1, 101))  # every one of the 100
    chosen_b = [i for s, i in items if s == 1]
    assert len(chosen_b) == 7 and set(chosen_b) <= set(b.image_ids())
    assert sample_training_set([(a, 100), (b, 7)], seed=5) == items  # seeded
    assert sample_training_set([(a, 100), (b, 7)], seed=6) != items

    # The thesis' dataset class mapped every index ≥ 80 to a random index < 80: the images
    # actually served must be exactly the members, all 107 of them.
    ds = TrainingDataset([a, b], items, CategoryMap(a.categories), None, seed=0)
    served = [(s, int(ds[(k, 0)][1]["image_id"])) for k, (s, _) in enumerate(items)]
    assert served == items


def test_training_set_refuses_more_than_available_and_repeats():
    a = make_source("a", 10, size=16)
    with pytest.raises(InvalidArgument, match=r"sources\[0\].count = 11 .* only 10 images"):
        sample_training_set([(a, 11)], seed=0)
    with pytest.raises(InvalidArgument, match=r"count must be ≥ 1"):
        sample_training_set([(a, 0)], seed=0)
    with pytest.raises(InvalidArgument, match="repeats"):
        sample_training_set([(a, 2), (a, 3)], seed=0)


def test_stream_is_seeded_permutation_passes_split_over_ranks():
    stream = TrainingStream([True] * 10, seed=3, batch_size=2)
    draws = [d for step in range(10) for d in stream.draws(step)]
    assert [g for _, g in draws] == list(range(20))  # draw numbers: positions in the stream
    first, second = [i for i, _ in draws[:10]], [i for i, _ in draws[10:]]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second  # two passes
    assert TrainingStream([True] * 10, seed=3, batch_size=2).draws(7) == stream.draws(7)  # a function of the step
    assert TrainingStream([True] * 10, seed=4, batch_size=2).draws(0) != stream.draws(0)
    # Under DDP each rank takes every world-th image of the same stream: disjoint shares of
    # batch_size each, together the single-process stream of batch batch_size × world.
    ddp = TrainingStream([True] * 10, seed=3, batch_size=2, world_size=3)
    single = TrainingStream([True] * 10, seed=3, batch_size=6)
    for step in range(4):
        shares = [ddp.rank_draws(step, r) for r in range(3)]
        assert all(len(s) == 2 for s in shares)
        assert sorted(sum(shares, [])) == sorted(single.draws(step)) and shares[1] == single.draws(step)[1::3]


def test_real_fraction_mixes_two_streams_in_exact_proportion():
    is_real = [True] * 3 + [False] * 9
    stream = TrainingStream(is_real, seed=1, batch_size=4, real_fraction=0.25)
    for step in range(9):
        assert sum(is_real[i] for i, _ in stream.draws(step)) == 1
    # Three steps take one pass over the three real images; twelve steps take four.
    assert sorted(i for step in range(3) for i, _ in stream.draws(step) if is_real[i]) == [0, 1, 2]
    # A share that is not a whole number of images per batch is exact over every prefix of the run.
    odd = TrainingStream(is_real, seed=1, batch_size=4, real_fraction=0.3)
    per_step = [sum(is_real[i] for i, _ in odd.draws(step)) for step in range(10)]
    assert set(per_step) == {1, 2} and [sum(per_step[:t]) for t in (1, 5, 10)] == [1, 6, 12]  # ⌊1.2 t⌋
    # Unset: one stream over the mixed set, so over whole passes every image is seen equally often.
    mixed = TrainingStream(is_real, seed=1, batch_size=4)
    counts = np.bincount([i for step in range(6) for i, _ in mixed.draws(step)], minlength=12)
    assert counts.tolist() == [2] * 12
    with pytest.raises(InvalidArgument, match="real_fraction = 0.5 but the training set has no real images"):
        TrainingStream([False] * 4, seed=1, batch_size=2, real_fraction=0.5)
    with pytest.raises(InvalidArgument, match="real_fraction = 0.5 but the training set has no synthetic images"):
        TrainingStream([True] * 4, seed=1, batch_size=2, real_fraction=0.5)
    TrainingStream([True] * 4, seed=1, batch_size=2, real_fraction=1.0)  # all real: nothing else needed


def test_category_ids_map_to_contiguous_labels_and_back():
    cmap = CategoryMap([{"id": 7, "name": "b"}, {"id": 3, "name": "a"}])
    assert cmap.num_classes == 3
    assert cmap.to_labels(np.array([3, 7, 7])).tolist() == [1, 2, 2]
    assert cmap.to_category_ids(np.array([2, 1])).tolist() == [7, 3]
    with pytest.raises(InvalidArgument, match="category id 5"):
        cmap.to_labels(np.array([5]))


# -- augmentation ----------------------------------------------------------------------------

def _dataset(src: InMemorySource, cfg: AugmentConfig | None, seed: int = 9, **kw) -> TrainingDataset:
    return TrainingDataset([src], [(0, i) for i in src.image_ids()], CategoryMap(src.categories), cfg, seed, **kw)


def test_augmentation_moves_image_masks_and_boxes_together():
    src = make_source("x", 4, size=64, seed=4, max_objects=2)
    ds = _dataset(src, AugmentConfig(brightness=0, contrast=0, saturation=0))
    for draw in range(24):
        image, target = ds[(draw % 4, draw)]
        ex = src.examples[draw % 4]
        masks = target["masks"].numpy().astype(bool)
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
        assert target["masks"].dtype == torch.uint8 and masks.shape[1:] == (64, 64) and masks.shape[0] <= ex.masks.shape[0]
        pixels = (image.permute(1, 2, 0).numpy() * 255).round()
        # Pixels under every mask are still the object's pixels (nearest-neighbour masks can
        # disagree with the bilinear image only on a 1-px border, so erode first).
        inner = masks & np.roll(masks, 1, 1) & np.roll(masks, -1, 1) & np.roll(masks, 1, 2) & np.roll(masks, -1, 2)
        for m in inner:
            if m.sum() > 10:
                colours = [ex.image[o].mean(0) for o in ex.masks if o.any()]
                assert min(np.abs(pixels[m].mean(0) - c).max() for c in colours) < 12
        for box, m in zip(target["boxes"].tolist(), masks):
            ys, xs = np.nonzero(m)
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert target["labels"].tolist() == [1] * masks.shape[0]


def _cropped_examples(h: int, w: int, size: int, seed: int, max_objects: int) -> list[Example]:
    """Three synthetic examples cropped to h×w, keeping the instances the crop still shows."""
    examples = []
    for ex in make_source("x", 3, size=size, seed=seed, max_objects=max_objects).examples:
        masks = ex.masks[:, :h, :w]
        shown = masks.any(axis=(1, 2))
        examples.append(Example(ex.image_id, np.ascontiguousarray(ex.image[:h, :w]), masks[shown], ex.category_ids[shown]))
    return examples


@pytest.mark.parametrize("size", [(64, 64), (48, 80)], ids=["square", "oblong"])
def test_flips_and_quarter_turns_are_exact_permutations(size):
    """Without scale and colour jitter the augmentation is exactly the flips and quarter
    turns drawn for the draw (in the order: horizontal, vertical, rotation), on image and
    masks alike; an oblong image turned by a quarter comes back transposed."""
    from services.common import seeding

    h, w = size
    examples = _cropped_examples(h, w, size=80, seed=4, max_objects=2)
    src = InMemorySource("x", make_source("y", 1).categories, examples)
    ds = _dataset(src, AugmentConfig(brightness=0, contrast=0, saturation=0, scale=(1, 1)), seed=1)
    turns = set()
    for draw in range(24):
        image, target = ds[(draw % 3, draw)]
        ex = examples[draw % 3]
        rng = seeding.rng(1, "segmenter/augment", draw)
        rng.uniform(1, 1), rng.random(2)  # scale and offset: no effect at scale 1
        flips, k = rng.random(2), int(rng.integers(0, 4))
        want, masks = ex.image, ex.masks
        if flips[0] < 0.5:
            want, masks = want[:, ::-1], masks[:, :, ::-1]
        if flips[1] < 0.5:
            want, masks = want[::-1], masks[:, ::-1]
        want, masks = np.rot90(want, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
        turns.add(k)
        got = (image.permute(1, 2, 0).numpy() * 255).round()
        assert got.shape == want.shape and np.abs(got - want).max() <= 0.5
        assert np.array_equal(target["masks"].numpy().astype(bool), masks)
    assert turns == {0, 1, 2, 3}


def test_colour_jitter_is_brightness_contrast_saturation_about_the_mean_grey():
    """A grey image stays grey under saturation; brightness b and contrast c map a pixel x
    to c·b·(x − mean) + b·mean (hand-computed from the drawn parameters)."""
    from services.common import seeding

    image = np.full((8, 8, 3), 100, np.uint8)
    image[:4] = 50  # mean grey 75
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:6, 2:6] = True
    src = InMemorySource("g", [{"id": 1, "name": "x"}], [Example(1, image, masks, np.array([1]))])
    cfg = AugmentConfig(hflip=0, vflip=0, rot90=False, scale=(1, 1))
    out, _ = _dataset(src, cfg, seed=5)[(0, 3)]
    rng = seeding.rng(5, "segmenter/augment", 3)
    rng.uniform(1, 1), rng.random(2), rng.random(2)
    b, c, _sat = (float(rng.uniform(0.8, 1.2)) for _ in range(3))
    for value, rows in ((50, slice(0, 4)), (100, slice(4, 8))):
        expected = min(255.0, c * b * (value - 75) + b * 75) / 255
        assert torch.allclose(out[:, rows], torch.full_like(out[:, rows], expected), atol=1e-5)


def test_augmentation_is_deterministic_per_seed_and_draw():
    src = make_source("x", 4, size=32)
    ds = _dataset(src, AugmentConfig())
    a = ds[(2, 17)]
    b = ds[(2, 17)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["masks"], b[1]["masks"])
    assert not torch.equal(ds[(2, 18)][0], a[0])  # the same image drawn again is augmented afresh
    # A batch is its draws, whatever else it holds and however the cache was decoded.
    draws = [(k % 4, 30 + k) for k in range(11)]
    images, targets = _dataset(src, AugmentConfig(), threads=3).batch(draws)
    for draw, image, target in zip(draws, images, targets):
        alone_image, alone_target = ds[draw]
        assert torch.equal(image, alone_image)
        assert all(torch.equal(target[k], alone_target[k]) for k in ("boxes", "labels", "masks", "image_id"))


def test_images_of_different_sizes_share_a_batch_and_keep_their_sizes():
    small, large = make_source("s", 2, size=32, seed=1), make_source("l", 2, size=48, seed=2, first_id=10)
    items = [(0, 1), (0, 2), (1, 10), (1, 11)]
    ds = TrainingDataset([small, large], items, CategoryMap(small.categories), AugmentConfig(), seed=0)
    images, targets = ds.batch([(2, 0), (0, 1), (3, 2), (1, 3)])
    assert [tuple(im.shape) for im in images] == [(3, 48, 48), (3, 32, 32), (3, 48, 48), (3, 32, 32)]
    assert [int(t["image_id"]) for t in targets] == [10, 1, 11, 2]
    assert all(t["masks"].shape[1:] == im.shape[1:] for im, t in zip(images, targets))


@pytest.mark.parametrize("size", [(40, 40), (40, 56)], ids=["square", "oblong"])
def test_scale_jitter_is_resize_then_crop_or_pad_then_flips_and_turns(size):
    """With scale jitter, the batched augmentation is exactly the per-image recipe, step by
    step from the draws: resize (on CPU the image bilinear as cv2.resize does it on uint8,
    the masks nearest with half-pixel centres), crop or paste on zeros at the drawn offset,
    flips (horizontal, vertical), quarter turns; image and masks alike."""
    import cv2

    from services.common import seeding

    h, w = size
    examples = _cropped_examples(h, w, size=64, seed=6, max_objects=3)
    src = InMemorySource("x", make_source("y", 1).categories, examples)
    ds = _dataset(src, AugmentConfig(brightness=0, contrast=0, saturation=0), seed=2)
    scales = set()
    for draw in range(24):
        image, target = ds[(draw % 3, draw)]
        ex = examples[draw % 3]
        rng = seeding.rng(2, "segmenter/augment", draw)
        s, u, flips, k = rng.uniform(0.8, 1.25), rng.random(2), rng.random(2), int(rng.integers(0, 4))
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        scales.add(np.sign(nh - h))
        want = cv2.resize(ex.image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        rows = np.floor((np.arange(nh) + 0.5) * h / nh).astype(int)  # exact in float64
        cols = np.floor((np.arange(nw) + 0.5) * w / nw).astype(int)
        masks = ex.masks[:, rows][:, :, cols]
        oy, ox = min(int(u[0] * (abs(nh - h) + 1)), abs(nh - h)), min(int(u[1] * (abs(nw - w) + 1)), abs(nw - w))
        frame, frame_masks = np.zeros((h, w, 3), np.uint8), np.zeros((masks.shape[0], h, w), bool)
        ch, cw = min(h, nh), min(w, nw)
        (sy, dy), (sx, dx) = ((oy, 0) if nh > h else (0, oy)), ((ox, 0) if nw > w else (0, ox))
        frame[dy:dy + ch, dx:dx + cw] = want[sy:sy + ch, sx:sx + cw]
        frame_masks[:, dy:dy + ch, dx:dx + cw] = masks[:, sy:sy + ch, sx:sx + cw]
        want, masks = frame, frame_masks
        if flips[0] < 0.5:
            want, masks = want[:, ::-1], masks[:, :, ::-1]
        if flips[1] < 0.5:
            want, masks = want[::-1], masks[:, ::-1]
        want, masks = np.rot90(want, k, axes=(0, 1)), np.rot90(masks, k, axes=(1, 2))
        got = (image.permute(1, 2, 0).numpy() * 255).round()
        assert got.shape == want.shape and np.abs(got - want).max() <= 0.5
        assert np.array_equal(target["masks"].numpy().astype(bool), masks[masks.any(axis=(1, 2))])
    assert {-1, 1} <= scales  # both crops and pastes


@pytest.mark.parametrize("size", [(40, 40), (40, 56)], ids=["square", "oblong"])
def test_gpu_path_gives_the_cpu_paths_masks_and_images_up_to_rounding(size):
    """The batched torch path (the one CUDA runs; run here on CPU) and the per-image OpenCV
    path produce identical masks and the same images up to the resize's rounding (uint8 on
    the CPU path, float32 on the other), with colour jitter and both orientations; a batch
    mixing orientations is refused."""
    from services.segmenter.core.augment import augment_batch_opencv, augment_batch_torch, draw_params

    h, w = size
    examples = _cropped_examples(h, w, size=64, seed=8, max_objects=3)
    images = torch.from_numpy(np.stack([ex.image for ex in examples * 8]))
    params = draw_params(4, list(range(24)), [(h, w)] * 24, [float(ex.image.mean()) for ex in examples * 8],
                         AugmentConfig())
    assert 0 < params.transposed.sum() < 24  # both orientations were drawn
    for transposed in (False, True):
        picked = [k for k in range(24) if params.transposed[k] == transposed]
        masks = torch.from_numpy(np.concatenate([examples[k % 3].masks for k in picked]).astype(np.uint8))
        owner = torch.from_numpy(np.repeat(np.arange(len(picked)), [len(examples[k % 3].masks) for k in picked]))
        cpu_images, cpu_masks = augment_batch_opencv(images[picked], masks, owner, params.subset(picked))
        gpu_images, gpu_masks = augment_batch_torch(images[picked], masks, owner, params.subset(picked))
        out = (len(picked), 3, w, h) if transposed else (len(picked), 3, h, w)
        assert cpu_images.shape == gpu_images.shape == out and cpu_images.dtype == gpu_images.dtype == torch.float32
        assert torch.equal(cpu_masks, gpu_masks) and cpu_masks.shape == (len(masks), *out[2:])
        assert (cpu_images - gpu_images).abs().max() <= 2 / 255
    mixed = [0, next(k for k in range(24) if params.transposed[k] != params.transposed[0])]
    with pytest.raises(ValueError, match="one output orientation"):
        augment_batch(images[:2], masks[:0], owner[:0], params.subset(mixed))


@pytest.mark.parametrize("scale", [1.25, 0.8], ids=["cropped", "padded"])
def test_cpu_rows_read_the_cache_in_place_and_drop_masks_left_empty(scale):
    """augment_rows_opencv takes any rows of a cache, in any order: its images and masks are
    augment_batch's for those rows, minus the masks the augmentation leaves empty (cropped: a
    2×2 instance in a corner, cut away at scale 1.25; padded: an instance without pixels,
    whose slot the next image's mask then reuses), with masks_to_boxes' boxes, each kept
    mask's cache row, and the count kept per image."""
    from services.segmenter.core.augment import augment_batch_torch, augment_rows_opencv, draw_params

    examples = _cropped_examples(40, 40, size=64, seed=8, max_objects=3)
    corner = np.zeros((1, 40, 40), bool)
    if scale > 1:
        corner[0, :2, :2] = True
    images = np.stack([ex.image for ex in examples])
    masks = [np.concatenate([ex.masks, corner]) for ex in examples]
    cache_masks = np.concatenate(masks).astype(np.uint8)
    mask_start = np.concatenate([[0], np.cumsum([len(m) for m in masks])])
    rows = [2, 0, 2, 1]  # out of order, one image twice
    cfg = AugmentConfig(scale=(scale, scale), hflip=0, vflip=0, rot90=False)
    params = draw_params(3, list(range(4)), [(40, 40)] * 4, [100.0] * 4, cfg)
    out = augment_rows_opencv(images, rows, cache_masks, mask_start, params)
    owner = torch.from_numpy(np.repeat(np.arange(4), [len(masks[r]) for r in rows]))
    all_rows = np.concatenate([np.arange(mask_start[r], mask_start[r + 1]) for r in rows])
    want_images, want_masks = augment_batch_torch(torch.from_numpy(images[rows]), torch.from_numpy(cache_masks[all_rows]),
                                                  owner, params)
    keep = want_masks.flatten(1).amax(dim=1) > 0
    # Cropped: every crop starts ≥ 3 resized pixels in on one axis, so each corner is cut away.
    assert (~keep).sum() == 4 and (scale > 1 or (params.size < 40).all())  # padded: every frame
    assert torch.equal(out.masks, want_masks[keep]) and (out.images - want_images).abs().max() <= 2 / 255
    assert torch.equal(out.boxes, masks_to_boxes(want_masks[keep]))
    assert out.mask_rows.tolist() == all_rows[keep.numpy()].tolist()
    assert out.counts == torch.bincount(owner[keep], minlength=4).tolist()


def test_masks_to_boxes_are_one_past_the_last_pixel():
    masks = torch.zeros((2, 5, 7), dtype=torch.uint8)
    masks[0, 1:3, 2:6] = 1
    masks[1, 4, 0] = 1
    assert masks_to_boxes(masks).tolist() == [[2.0, 1.0, 6.0, 3.0], [0.0, 4.0, 1.0, 5.0]]
    assert masks_to_boxes(masks[:0]).shape == (0, 4)


# -- model, losses, weights -------------------------------------------------------------------

def test_all_five_losses_present_and_finite():
    torch.manual_seed(0)
    src = make_source("x", 2, size=64)
    ds = TrainingDataset([src], [(0, 1), (0, 2)], CategoryMap(src.categories), None, seed=0)
    model = build_model(ModelSpec(LIGHT, 2, 64, 64))
    model.train()
    images, targets = zip(*[ds[(0, 0)], ds[(1, 1)]])
    losses = model(list(images), list(targets))
    assert set(losses) == set(LOSS_NAMES)
    assert all(torch.isfinite(v) and v.requires_grad for v in losses.values())


def test_model_resize_follows_dataset_size_without_upsampling():
    model = build_model(ModelSpec(LIGHT, 2, 96, 96))
    batch, _ = model.transform([torch.rand(3, 96, 96)])
    assert batch.image_sizes == [(96, 96)]


def test_state_dict_loading_reinitialises_heads_and_names_mismatches():
    src = build_model(ModelSpec(LIGHT, 4, 64, 64)).state_dict()
    spec = ModelSpec(LIGHT, 2, 64, 64)
    dst = build_model(spec)
    heads = spec.registered.class_heads
    with pytest.raises(InvalidArgument, match="shape mismatches"):
        load_state_dict_into(dst, src, "store:x.pt")  # without the architecture's heads: refused
    skipped = load_state_dict_into(dst, src, "store:x.pt", heads)
    assert skipped and all(k.startswith("roi_heads.") for k in skipped)
    assert torch.equal(dst.state_dict()["backbone.body.conv1.weight"], src["backbone.body.conv1.weight"])
    bad = dict(src)
    bad["backbone.body.conv1.weight"] = torch.zeros(3, 3)
    with pytest.raises(InvalidArgument, match=r"weights file:w.pt do not fit.*backbone.body.conv1.weight"):
        load_state_dict_into(dst, bad, "file:w.pt", heads)
    r50 = {k: v for k, v in list(src.items())[:5]}
    with pytest.raises(InvalidArgument, match="missing keys"):
        load_state_dict_into(dst, r50, "file:partial.pt", heads)


def test_unknown_architecture_and_bad_config_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="architecture 'unet'"):
        SegmenterConfig(architecture="unet").validate()
    with pytest.raises(InvalidArgument, match="SegmenterConfig.optimizer"):
        SegmenterConfig(optimizer="lbfgs").validate()


def test_source_without_annotations_is_rejected(tmp_path):
    ex = Example(1, np.zeros((32, 32, 3), np.uint8), np.zeros((0, 32, 32), bool), np.zeros(0, np.int64))
    empty = InMemorySource("empty", [{"id": 1, "name": "lesion"}], [ex])
    with pytest.raises(InvalidArgument, match="empty.*no annotations"):
        Trainer(SegmenterConfig(architecture=LIGHT), [(empty, 1)], None, ck.DirectoryCheckpointIO(tmp_path))


def test_last_checkpoint_is_chosen_by_epoch_number(tmp_path):
    io_ = ck.DirectoryCheckpointIO(tmp_path)
    for e in (10, 2, 9):
        io_.write(ck.epoch_name(e), b"x")
    io_.write("notes.txt", b"")
    assert ck.checkpoint_epochs(io_) == [2, 9, 10]
    with pytest.raises(InvalidArgument, match="not a readable weights-only"):
        ck.from_bytes(b"junk", "checkpoint epoch-0010.pt")


# -- training: resume, learning, prediction ------------------------------------------------

def _cfg(**kw) -> SegmenterConfig:
    base = dict(architecture=LIGHT, epochs=6, batch_size=4, lr=0.02, warmup_iters=10, grad_clip=10.0,
                num_workers=0, seed=1)
    base.update(kw)
    return SegmenterConfig(**base)


@pytest.mark.slow
@pytest.mark.parametrize(("budget", "evaluated_at"), [({"epochs": 2}, [2, 4]), ({"iterations": 5, "eval_every": 2}, [2, 4, 5])],
                         ids=["epochs", "iterations"])
def test_resume_continues_with_identical_losses(tmp_path, budget, evaluated_at):
    train = make_source("t", 12, size=48, seed=11)
    val = make_source("v", 2, size=48, seed=12)
    cfg = _cfg(batch_size=4, **budget)  # 8 images in batches of 4: one epoch is 2 iterations
    full = Trainer(cfg, [(train, 8)], val, ck.DirectoryCheckpointIO(tmp_path / "full")).run()
    assert [e["iteration"] for e in full.record["epochs"]] == evaluated_at
    last = len(evaluated_at) - 1

    def crash_after_first(evaluation: int, _entry: dict) -> None:
        if evaluation == 0:
            raise Interrupted("killed")

    work = ck.DirectoryCheckpointIO(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        Trainer(cfg, [(train, 8)], val, work, on_evaluation=crash_after_first).run()
    assert ck.checkpoint_epochs(work) == [0]
    resumed = Trainer(cfg, [(train, 8)], val, work).run()

    assert [e["losses"] for e in resumed.record["epochs"]] == [e["losses"] for e in full.record["epochs"]]
    assert resumed.record["steps"] == full.record["steps"]
    assert [s["iteration"] for s in resumed.record["steps"]] == list(range(1, evaluated_at[-1] + 1))
    assert [e["val"] for e in resumed.record["epochs"]] == [e["val"] for e in full.record["epochs"]]
    assert resumed.record["budget"] == full.record["budget"] == {
        "mode": "iterations" if "iterations" in budget else "epochs", "iterations": evaluated_at[-1],
        "iterations_run": evaluated_at[-1], "images_seen": 4 * evaluated_at[-1], "batch_size": 4, "world_size": 1,
        "eval_every": 2, "real_fraction": None, "images_seen_by_source": [4 * evaluated_at[-1]]}
    assert resumed.model_file == full.model_file
    # Only the last and the best checkpoints are kept.
    assert set(ck.checkpoint_epochs(work)) == {last, resumed.record["best_epoch"]}
    # A different configuration never resumes silently from someone else's checkpoints.
    with pytest.raises(InvalidArgument, match="another configuration"):
        Trainer(_cfg(batch_size=4, lr=0.01, **budget), [(train, 8)], val, work).run()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    train = make_source("train", 32, size=64, seed=1)
    val = make_source("val", 8, size=64, seed=2, first_id=501)
    events: list[tuple[float, str, dict | None]] = []
    result = Trainer(_cfg(), [(train, 32)], val, ck.DirectoryCheckpointIO(tmp_path_factory.mktemp("ck")),
                     progress=lambda f, m, x: events.append((f, m, x))).run()
    return result, train, val, events


@pytest.mark.slow
def test_training_raises_val_iou_well_above_untrained(trained):
    result, train, val, events = trained
    torch.manual_seed(1)
    untrained = build_model(ModelSpec(LIGHT, 2, 64, 64))
    before = pixel_validation(untrained, val, torch.device("cpu"), 4, 0.5, 0.5)["iou"]
    rec = result.record
    best = rec["epochs"][rec["best_epoch"]]["val"]["iou"]
    assert best == max(e["val"]["iou"] for e in rec["epochs"])
    assert best > 0.5 and best > before + 0.4, (before, [e["val"] for e in rec["epochs"]])
    # Record shape (the evaluator draws loss curves from it) and streamed metrics.
    json.dumps(rec)
    for e in rec["epochs"]:
        assert set(LOSS_NAMES) <= set(e["losses"]) and all(np.isfinite(list(e["losses"].values())))
        assert e["images_per_s"] > 0 and {"iou", "f1", "precision", "recall"} <= set(e["val"])
    assert rec["training_set"]["num_images"] == 32
    epoch_events = [x for f, m, x in events if m.endswith("done")]
    assert len(epoch_events) == 6 and "val/iou" in epoch_events[-1] and "loss/loss_mask" in epoch_events[-1]


@pytest.mark.slow
def test_prediction_is_coco_results_that_round_trip_through_pycocotools(trained):
    result, _train, val, _ = trained
    loaded = load_model_file(result.model_file, "model", torch.device("cpu"))
    results = predict(loaded, val, torch.device("cpu"), PredictConfig(export_threshold=0.5, mask_threshold=0.5, batch_size=3))
    assert results and all(r["category_id"] == 1 and r["score"] >= 0.5 for r in results)

    gt = COCO()
    anns, aid = [], 1
    for ex in val.examples:
        for m in ex.masks:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            anns.append({"id": aid, "image_id": ex.image_id, "category_id": 1, "segmentation": rle,
                         "area": float(m.sum()), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
            aid += 1
    gt.dataset = {"images": [{"id": e.image_id, "height": 64, "width": 64} for e in val.examples],
                  "annotations": anns, "categories": val.categories}
    gt.createIndex()
    dt = gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(gt, dt, "segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] > 0.3  # AP@0.5 of a model with val IoU > 0.5

    # The RLE masks rebuild the same pixel IoU as validation computed from probabilities.
    ious = []
    for ex in val.examples:
        mine = [r for r in results if r["image_id"] == ex.image_id]
        masks = np.stack([mask_utils.decode(r["segmentation"]) for r in mine]) if mine else np.zeros((0, 64, 64), np.uint8)
        assert masks.shape[1:] == (64, 64)
        ious.append(float(pixel_scores(union_of_instances(masks), union_of_instances(ex.masks)).iou))
    best_val = result.record["epochs"][result.record["best_epoch"]]["val"]["iou"]
    assert np.mean(ious) == pytest.approx(best_val, abs=1e-9)


def test_target_of_an_image_without_instances_is_empty_not_an_error() -> None:
    """An image without instances (a composite whose pastes were all occluded, a
    background-only photo) is a valid negative example; an instance with no pixels left
    (empty in the data, or pushed out by augmentation) is dropped, with its label."""
    blank = Example(7, np.zeros((16, 24, 3), np.uint8), np.zeros((0, 16, 24), bool), np.zeros(0, np.int64))
    masks = np.zeros((2, 16, 24), dtype=bool)
    masks[1, 3:5, 4:9] = True  # instance 0 is empty: dropped
    two = Example(1, np.zeros((16, 24, 3), np.uint8), masks, np.array([1, 2]))
    src = InMemorySource("e", [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], [blank, two])
    ds = TrainingDataset([src], [(0, 7), (0, 1)], CategoryMap(src.categories), None, seed=0)
    _, target = ds[(0, 0)]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 16, 24) and int(target["image_id"]) == 7
    _, target = ds[(1, 0)]
    assert target["labels"].tolist() == [2] and target["boxes"].tolist() == [[4.0, 3.0, 9.0, 5.0]]


def test_smaller_counts_take_a_prefix_so_arms_are_nested() -> None:
    a = make_source("a", 60, size=16, seed=3)
    b = make_source("b", 30, size=16, seed=4)
    small = {img for _, img in sample_training_set([(a, 20)], seed=9)}
    large = {img for _, img in sample_training_set([(a, 45)], seed=9)}
    assert len(small) == 20 and len(large) == 45 and small < large
    # A source draws the same images wherever it stands in the list.
    alone = [img for _, img in sample_training_set([(b, 10)], seed=9)]
    second = [img for src, img in sample_training_set([(a, 5), (b, 10)], seed=9) if src == 1]
    assert alone == second
    # The prefix is the shared nested order's (the orchestrator derives synthetic sources from
    # it), keyed by the dataset id and split, and a source's order seed replaces the seed.
    assert small == set(nested_order(9, "a", "", a.image_ids())[:20])
    assert sample_training_set([(a, 20), (b, 10)], seed=1, order_seeds=[9, None]) == \
        [(0, i) for i in sorted(small)] + [(1, i) for i in sorted(nested_order(1, "b", "", b.image_ids())[:10])]
    a_test = make_source("a", 60, size=16, seed=3)
    a_test.split = "test"
    assert {img for _, img in sample_training_set([(a_test, 20)], seed=9)} != small


def test_one_image_size_trains_and_predicts_at_the_configured_size(tmp_path) -> None:
    """96-px images with min_size = max_size = 64: the network sees 64 px in training and
    prediction, and predicted masks come back at the stored 96 px (probabilities pasted
    bilinearly, then thresholded at mask_threshold)."""
    train = make_source("t", 4, size=96, seed=5)
    val = make_source("v", 2, size=96, seed=6, first_id=101)
    cfg = _cfg(min_size=64, max_size=64, iterations=1, eval_every=1, batch_size=2, augment=False)
    trainer = Trainer(cfg, [(train, 4)], val, ck.DirectoryCheckpointIO(tmp_path))
    result = trainer.run()
    assert result.record["model"]["input_sizes"] == {"train": [[64, 64]], "val": [[64, 64]]}
    assert (result.record["model"]["min_size"], result.record["model"]["max_size"]) == (64, 64)

    seen: list[tuple[int, ...]] = []

    def record_input(_module, args) -> None:  # type: ignore[no-untyped-def]
        seen.append(tuple(args[0].shape))

    # Training: what enters the backbone (torchvision's GeneralizedRCNN) is 64 px.
    model = build_model(trainer.spec).train()
    model.backbone.register_forward_pre_hook(record_input)
    ds = TrainingDataset([train], trainer.items, trainer.category_map, None, seed=0)
    images, targets = zip(*[ds[(0, 0)], ds[(1, 1)]])
    model(list(images), list(targets))
    assert seen == [(2, 3, 64, 64)]
    assert model.input_size(96, 96) == (64, 64) and model.input_size(96, 48) == (64, 32)

    # Prediction: 64 px inside, masks at 96 px outside.
    seen.clear()
    loaded = load_model_file(result.model_file, "model", torch.device("cpu"))
    loaded.model.backbone.register_forward_pre_hook(record_input)
    cfg_predict = PredictConfig(export_threshold=0.0, batch_size=2)
    results = predict(loaded, val, torch.device("cpu"), cfg_predict)
    assert seen == [(2, 3, 64, 64)] and results
    assert all(r["segmentation"]["size"] == [96, 96] for r in results)
    out = infer(loaded.model, [val.load(101).image], torch.device("cpu"))[0]
    assert out["masks"].shape[1:] == (96, 96)
    assert ((out["masks"] > 0.01) & (out["masks"] < 0.99)).any()  # probabilities, not pasted binary masks
    first = [r for r in results if r["image_id"] == 101]
    keep = np.argsort(-out["scores"], kind="stable")[:len(first)]
    for r, k in zip(first, keep):
        assert np.array_equal(mask_utils.decode(r["segmentation"]).astype(bool), out["masks"][k] >= 0.5)


def test_file_weights_are_confined_to_the_weights_dir_on_the_trainer_path(tmp_path, monkeypatch) -> None:
    """Regression: the trainer opened `file:PATH` weights wherever PATH pointed. Every path
    that opens weights goes through services/segmenter/weights.py now."""
    train = make_source("t", 4, size=32)
    io_ = ck.DirectoryCheckpointIO(tmp_path / "ck")
    torch.manual_seed(0)
    weights = build_model(ModelSpec(LIGHT, 2, 32, 32)).state_dict()
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(weights, folder / "w.pt")
    (tmp_path / "outside.pt").write_bytes((folder / "w.pt").read_bytes())
    (folder / "link.pt").symlink_to(tmp_path / "outside.pt")

    def trainer(spec: str) -> Trainer:
        return Trainer(_cfg(epochs=1, weights=spec), [(train, 4)], None, io_)

    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    with pytest.raises(InvalidArgument, match="file weights are disabled"):
        trainer("file:w.pt")
    with pytest.raises(InvalidArgument, match="outside"):
        trainer(f"file:{tmp_path / 'outside.pt'}")  # absolute: refused before anything is read
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    for escaping in ("file:../outside.pt", f"file:{tmp_path / 'outside.pt'}", "file:sub/../../outside.pt", "file:link.pt"):
        with pytest.raises(InvalidArgument, match="outside"):
            trainer(escaping)
    with pytest.raises(InvalidArgument, match="missing.pt"):
        trainer("file:missing.pt")
    with pytest.raises(InvalidArgument, match="store weights need an object store"):
        trainer("store:weights/w.pt")  # the trainer alone has no store to read them from
    loaded = trainer("file:w.pt")._build_model().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())


def test_train_request_config_takes_the_request_seed_over_the_defaults() -> None:
    from services.segmenter.core.train_request import train_config
    from synthaug.v1 import segmenter_pb2 as pb

    cfg = train_config(pb.SegmenterTrainRequest(config=pb.SegmenterConfig(architecture=LIGHT, patience=0), seed=7))
    assert cfg == SegmenterConfig(architecture=LIGHT, seed=7)
    with pytest.raises(InvalidArgument, match=r"SegmenterConfig.batch_size must be ≥ 1, got 0"):
        train_config(pb.SegmenterTrainRequest(config=pb.SegmenterConfig(batch_size=0)))
