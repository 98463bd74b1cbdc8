"""Compositor core: transforms, composition rules, determinism, harvesting, extraction."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from services.common.config import config_from_mapping, config_to_mapping
from services.common.errors import InvalidArgument
from services.compositor.config import ComposeParams, Range
from services.compositor.core.backgrounds import free_crops, inpaint_objects
from services.compositor.core.compose import InMemoryAssets, compose_image
from services.compositor.core.foregrounds import extract_cutouts
from services.compositor.core.transforms import ForegroundPyramid, color_jitter, match_tone, warp_foreground

BG = (60, 60, 60)
NO_JITTER = dict(brightness=Range(1, 1), contrast=Range(1, 1), saturation=Range(1, 1), hue=Range(0, 0),
                 background_brightness=Range(1, 1), background_contrast=Range(1, 1), tone_match=0.0,
                 min_usable_background=0.0)


def disc(radius: int, color: tuple[int, int, int], pad: int = 4) -> np.ndarray:
    size = 2 * (radius + pad) + 1
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = color
    alpha = np.zeros((size, size), np.uint8)
    cv2.circle(alpha, (size // 2, size // 2), radius, 255, -1)
    rgba[..., 3] = alpha
    return rgba


def flat_assets(colors: list[tuple[int, int, int]], radius: int = 20) -> InMemoryAssets:
    bg = np.full((96, 96, 3), BG, np.uint8)
    return InMemoryAssets([disc(radius, c) for c in colors], [1] * len(colors), [bg])


def textured_assets() -> InMemoryAssets:
    rng = np.random.default_rng(0)
    fgs = []
    for r in (10, 18, 25):
        rgba = disc(r, (150, 80, 40), pad=6)
        rgba[..., :3] = rng.integers(0, 255, rgba[..., :3].shape, dtype=np.uint8)
        fgs.append(rgba)
    bgs = [rng.integers(80, 220, (120, 100, 3), dtype=np.uint8) for _ in range(3)]
    return InMemoryAssets(fgs, [1, 2, 1], bgs)


# --- transforms ------------------------------------------------------------------------------


def test_color_jitter_changes_rgb_never_alpha() -> None:
    rgba = textured_assets().foregrounds[2].copy()
    rgba[..., 3] = np.random.default_rng(1).integers(0, 256, rgba.shape[:2], dtype=np.uint8)
    for kw in (dict(brightness=1.4), dict(contrast=0.5), dict(saturation=1.8), dict(hue_degrees=40.0),
               dict(brightness=0.6, contrast=1.3, saturation=0.2, hue_degrees=-170.0)):
        out = color_jitter(rgba, **kw)
        assert np.array_equal(out[..., 3], rgba[..., 3]), kw
        assert not np.array_equal(out[..., :3], rgba[..., :3]), kw
    gained, _ = match_tone(rgba, np.array([100.0, 100, 100]), np.array([150.0, 100, 50]), 1.0)
    assert np.array_equal(gained[..., 3], rgba[..., 3])


def test_brightness_scales_rgb_as_asked() -> None:
    rgba = disc(10, (100, 50, 20))
    out = color_jitter(rgba, brightness=1.5)
    assert out[rgba.shape[0] // 2, rgba.shape[1] // 2, :3].tolist() == [150, 75, 30]


@pytest.mark.parametrize("factor", [1.0, 1.7, 0.45])
@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0, 133.0, -71.5])
def test_warp_keeps_the_whole_foreground_and_room_for_the_blur(angle: float, factor: float) -> None:
    rgba = np.zeros((30, 70, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255  # opaque to the very edge: any clipping would lose area
    margin = 3
    out = warp_foreground(ForegroundPyramid(rgba, margin), factor, angle, margin=margin)
    area = np.count_nonzero(out[..., 3] >= 128)
    expected = 30 * 70 * factor ** 2
    assert abs(area - expected) <= 0.5 * 2 * (30 + 70) * factor + 4  # up to half the outline's pixels
    # nothing within margin + 1 of the window's edge: a blur of radius `margin` is never cut
    room = margin + 1
    alpha = out[..., 3]
    assert alpha[:room].max() == alpha[-room:].max() == alpha[:, :room].max() == alpha[:, -room:].max() == 0
    # every transparent pixel a blur of the alpha can reach carries the object's colour,
    # never black (no dark fringe)
    reach = cv2.dilate((alpha > 0).astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    assert out[reach][:, :3].min() == 200


def test_warp_flips_are_exact_mirror_images() -> None:
    rgba = textured_assets().foregrounds[2]
    pyramid = ForegroundPyramid(rgba, 6)
    plain = warp_foreground(pyramid, 1.0, 0.0, margin=6)
    assert np.array_equal(warp_foreground(pyramid, 1.0, 0.0, hflip=True, margin=6), cv2.flip(plain, 1))
    assert np.array_equal(warp_foreground(pyramid, 1.0, 0.0, vflip=True, margin=6), cv2.flip(plain, 0))
    # at scale 1 and no rotation the warp is a copy of the asset's pixels
    ys, xs = np.nonzero(plain[..., 3] >= 128)
    inside = plain[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ys0, xs0 = np.nonzero(rgba[..., 3] >= 128)
    assert np.array_equal(inside, rgba[ys0.min():ys0.max() + 1, xs0.min():xs0.max() + 1])


def test_warp_shrinks_from_a_pyramid_level_without_aliasing() -> None:
    """A 1-pixel checkerboard shrunk to a quarter is flat grey; bilinear sampling of the
    asset itself would pick black or white pixels (aliasing)."""
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)[..., None]
    rgba[..., 3] = 255
    pyramid = ForegroundPyramid(rgba, 0)
    assert pyramid.level_for(1.0) == 0 and pyramid.level_for(0.7) == 0
    assert pyramid.level_for(0.45) == 1 and pyramid.level_for(0.25) == 2
    out = warp_foreground(pyramid, 0.25, 0.0)
    ys, xs = np.nonzero(out[..., 3] == 255)
    core = out[ys.min() + 1:ys.max(), xs.min() + 1:xs.max(), :3]
    assert core.size and np.abs(core.astype(int) - 127.5).max() <= 2


# --- params ---------------------------------------------------------------------------------


@pytest.mark.parametrize("change, needle", [
    (dict(min_objects=0), "min_objects"),
    (dict(min_objects=3, max_objects=2), "max_objects"),
    (dict(scale=Range(0.5, 0.2)), "scale"),
    (dict(hue=Range(10, -10)), "hue"),
    (dict(blend="median"), "blend"),
    (dict(max_overlap_iou=1.5), "max_overlap_iou"),
    (dict(max_placement_attempts=0), "max_placement_attempts"),
    (dict(output_size=2), "output_size"),
])
def test_bad_params_name_the_parameter(change: dict, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        dataclasses.replace(ComposeParams(), **change).validate()


def test_params_round_trip() -> None:
    p = ComposeParams(scale=Range(0.1, 0.3), blend="poisson")
    mapping = config_to_mapping(p)
    assert mapping["scale"] == {"min": 0.1, "max": 0.3}
    assert config_from_mapping(ComposeParams, mapping) == p


# --- composition ----------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    assets, p = textured_assets(), ComposeParams(output_size=64, max_overlap_iou=0.3).validate()
    a, b = compose_image(assets, p, 7, 3), compose_image(assets, p, 7, 3)
    assert a.image.tobytes() == b.image.tobytes() and a.masks.tobytes() == b.masks.tobytes()
    assert a.audit == b.audit
    c = compose_image(assets, p, 8, 3)
    assert c.image.tobytes() != a.image.tobytes()
    assert compose_image(assets, p, 7, 4).image.tobytes() != a.image.tobytes()


@pytest.mark.parametrize("blend", ["hard", "gaussian", "poisson"])
def test_masks_are_disjoint_visible_and_counted(blend: str) -> None:
    # pure red, green, blue objects on black: channel c of a pixel is 250 × the visible
    # weight of the object of colour c, so "the mask is where the object is more than half
    # of the pixel" can be checked on the pixels themselves.
    colors = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]
    assets = flat_assets(colors)
    assets.backgrounds = [np.zeros((96, 96, 3), np.uint8)]
    p = ComposeParams(output_size=96, min_objects=3, max_objects=3, scale=Range(0.4, 0.5),
                      max_overlap_iou=1.0, blend=blend, blend_sigma=2.0, min_visible_fraction=0.0,
                      **NO_JITTER).validate()
    for index in range(6):
        comp = compose_image(assets, p, 1, index)
        placed = [o for o in comp.audit["objects"] if o["status"] in ("placed", "dropped")]
        kept = [o for o in placed if o["instance"] >= 0]
        assert comp.masks.shape[0] == len(comp.labels) == len(kept) == len(placed)
        assert comp.masks.sum(axis=0).max() <= 1  # never two instances on one pixel
        for obj in kept:
            mask = comp.masks[obj["instance"]]
            assert mask.any()
            if blend == "poisson":
                continue  # Poisson re-colours the object; its alpha is the hard mask by construction
            channel = comp.image[..., obj["foreground"]]
            assert channel[mask].min() >= 124  # weight > 0.5 (up to rounding)
            same_color = [o["instance"] for o in kept if o["foreground"] == obj["foreground"]]
            if len(same_color) == 1:
                assert mask[channel >= 130].all()  # and nothing clearly the object's is left out


def test_later_paste_occludes_earlier_and_small_remains_are_dropped() -> None:
    red, green = (250, 0, 0), (0, 250, 0)
    assets = InMemoryAssets([disc(20, red), disc(20, green)], [1, 2], [np.full((64, 64, 3), BG, np.uint8)])
    # unit scale, no rotation, binary alpha: pixels are exactly the objects' colours
    base = dict(output_size=64, min_objects=2, max_objects=2, scale=Range(49 / 64, 49 / 64), rotation=Range(0, 0),
                flip=False, background_flip=False, max_overlap_iou=1.0, blend="hard", **NO_JITTER)
    checked = 0
    for index in range(40):
        comp = compose_image(assets, ComposeParams(**base, min_visible_fraction=0.0).validate(), 3, index)
        objs = [o for o in comp.audit["objects"] if o["status"] == "placed"]
        if len(objs) != 2 or objs[0]["foreground"] == objs[1]["foreground"]:
            continue
        first, second = objs
        first_color = red if first["foreground"] == 0 else green
        second_color = green if first_color == red else red
        is_first = (comp.image == first_color).all(axis=2)
        is_second = (comp.image == second_color).all(axis=2)
        # exact for hard alpha: the later object keeps its whole disc, the earlier keeps the rest
        assert np.array_equal(comp.masks[second["instance"]], is_second)
        assert np.array_equal(comp.masks[first["instance"]], is_first)
        assert first["visible_area"] < first["pasted_area"]
        strict = compose_image(assets, ComposeParams(**base, min_visible_fraction=0.999).validate(), 3, index)
        sobjs = [o for o in strict.audit["objects"] if o["status"] in ("placed", "dropped")]
        assert sobjs[0]["status"] == "dropped" and sobjs[0]["instance"] == -1
        assert strict.masks.shape[0] == 1 and strict.audit["dropped"] == 1
        assert np.array_equal(strict.image, comp.image)  # dropping changes labels, not pixels
        checked += 1
    assert checked >= 3


def test_unplaceable_objects_are_skipped_and_counted() -> None:
    assets = flat_assets([(200, 10, 10)])
    p = ComposeParams(output_size=64, min_objects=6, max_objects=6, scale=Range(0.8, 0.8), max_overlap_iou=0.0,
                      max_placement_attempts=5, **NO_JITTER).validate()
    comp = compose_image(assets, p, 0, 0)
    assert comp.audit["skipped"] >= 4
    assert comp.masks.shape[0] == 6 - comp.audit["skipped"] - comp.audit["dropped"]


def test_foreground_larger_than_canvas_is_scaled_down_not_clipped() -> None:
    assets = InMemoryAssets([disc(200, (200, 30, 30))], [1], [np.full((48, 48, 3), BG, np.uint8)])
    p = ComposeParams(output_size=48, min_objects=1, max_objects=1, scale=Range(3.0, 3.0), rotation=Range(0, 0),
                      blend="hard", **NO_JITTER).validate()
    comp = compose_image(assets, p, 0, 0)
    assert comp.masks.shape[0] == 1
    mask = comp.masks[0]
    # a whole disc (not cut by the frame), nearly as wide as the canvas
    width, height = mask.any(axis=0).sum(), mask.any(axis=1).sum()
    assert width >= 40 and abs(int(width) - int(height)) <= 1
    assert abs(mask.sum() - np.pi * width * height / 4) <= 0.06 * mask.sum()


def test_dark_border_of_background_is_avoided() -> None:
    bg = np.full((96, 96, 3), 180, np.uint8)
    bg[:, :48] = 0  # left half is the black vignette
    assets = InMemoryAssets([disc(8, (120, 60, 30))], [1], [bg])
    p = dataclasses.replace(ComposeParams(output_size=96, min_objects=1, max_objects=1, scale=Range(0.2, 0.2),
                                          background_flip=False, **NO_JITTER), min_usable_background=1.0).validate()
    for index in range(10):
        comp = compose_image(assets, p, 0, index)
        if comp.masks.shape[0]:
            assert not comp.masks[0][:, :48].any()


# --- extraction and backgrounds -------------------------------------------------------------


def test_cutouts_alpha_is_the_mask_and_small_instances_are_skipped() -> None:
    image = np.random.default_rng(0).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    masks = np.zeros((2, 50, 60), bool)
    masks[0, 10:30, 20:45] = True
    masks[1, 40:42, 5:7] = True  # 4 pixels
    cuts, skipped = extract_cutouts(image, masks, np.array([3, 4]), min_area=10, padding=2)
    assert skipped == 1 and len(cuts) == 1
    cut = cuts[0]
    assert cut.category_id == 3 and cut.area == 20 * 25 and cut.bbox == (18, 8, 29, 24)
    assert np.array_equal(cut.rgba[..., 3] == 255, masks[0, 8:32, 18:47])
    assert np.array_equal(cut.rgba[..., :3], image[8:32, 18:47])
    soft, _ = extract_cutouts(image, masks[:1], np.array([3]), feather_sigma=2.0)
    alpha = soft[0].rgba[..., 3]
    assert 0 < len(np.unique(alpha)) > 10  # a ramp, not a step
    x0, y0, w, h = soft[0].bbox
    differ = np.count_nonzero((alpha >= 128) != masks[0, y0:y0 + h, x0:x0 + w])
    assert differ <= 4 * 4  # thresholding the ramp gives the mask back except at the 4 corners


def test_inpainting_removes_the_object_and_crops_avoid_it() -> None:
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(190, 4, (80, 80, 3)), 0, 255).astype(np.uint8)
    masks = np.zeros((1, 80, 80), bool)
    disc_mask = np.zeros((80, 80), np.uint8)
    cv2.circle(disc_mask, (40, 40), 15, 1, -1)
    masks[0] = disc_mask > 0
    image[masks[0]] = (60, 30, 20)
    for method in ("inpaint_telea", "inpaint_ns"):
        out = inpaint_objects(image, masks, method, dilate_px=3, texture_seed=1)
        assert abs(float(out[masks[0]].mean()) - 190) < 12
        assert np.array_equal(out[:10], image[:10])  # far from the object nothing changes
    corners = free_crops(image, masks, 24, dilate_px=2)
    assert corners
    for x, y in corners:
        assert not masks[0, y:y + 24, x:x + 24].any()
