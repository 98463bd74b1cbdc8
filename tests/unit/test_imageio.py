"""Image I/O rejects bad input by name and never alters mask values."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import InvalidArgument
from services.common.imageio import MAX_PIXELS, decode_image, decode_mask, encode_png, read_image, read_mask, resize_image, resize_mask


def test_png_round_trip_rgb_and_instance_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_png(img), "x"), img)
    ids = rng.integers(0, 700, (9, 11)).astype(np.uint16)  # more than 255 instances survive
    assert np.array_equal(decode_mask(encode_png(ids), "m"), ids)
    assert encode_png(img) == encode_png(img.copy())  # deterministic bytes
    (tmp_path / "a.png").write_bytes(encode_png(img))
    assert np.array_equal(read_image(tmp_path / "a.png"), img)


def test_grey_image_becomes_rgb() -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = decode_image(encode_png(grey), "g")
    assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], grey)


def test_not_an_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(InvalidArgument, match="notes.png: not a readable image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(InvalidArgument, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")


def test_truncated_image_is_rejected() -> None:
    data = encode_png(np.full((64, 64, 3), 7, np.uint8))
    with pytest.raises(InvalidArgument, match="trunc.png"):
        decode_image(data[: len(data) // 2], "trunc.png")


def test_pixel_limit_checked_before_decoding() -> None:
    data = encode_png(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(InvalidArgument, match=r"big.png: too many pixels \(10000 > 9999\) in a 100×100 image"):
        decode_image(data, "big.png", max_pixels=9999)
    with pytest.raises(InvalidArgument, match=r"big.png: too many pixels \(10000 > 9999\)"):
        decode_mask(data, "big.png", max_pixels=9999)
    assert decode_image(data, "ok.png", max_pixels=10000).shape == (100, 100, 3)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width×height (8-bit grey) with one tiny IDAT: a decompression bomb's
    header, costing nothing to make."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 50_000])  # 81 MP: over our limit; 2.5 GP: over Pillow's own as well
def test_decompression_bomb_says_too_many_pixels(side: int) -> None:
    bomb = _png_header(side, side)
    message = rf"bomb.png: too many pixels \({side * side} > {MAX_PIXELS}\)"
    with pytest.raises(InvalidArgument, match=message):
        decode_image(bomb, "bomb.png")
    with pytest.raises(InvalidArgument, match=message):
        decode_mask(bomb, "bomb.png")


def test_colour_mask_is_rejected_grey_rgb_mask_accepted() -> None:
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    with pytest.raises(InvalidArgument, match="colour mask"):
        decode_mask(encode_png(colour), "c.png")
    grey_rgb = np.repeat(np.array([[0, 3], [3, 0]], np.uint8)[:, :, None], 3, axis=2)
    assert np.array_equal(decode_mask(encode_png(grey_rgb), "g.png"), [[0, 3], [3, 0]])


def test_resize_mask_never_invents_values() -> None:
    ids = np.zeros((50, 50), np.uint8)
    ids[5:20, 5:30] = 3
    ids[25:45, 10:40] = 9
    for size in (17, 64, 256):
        out = resize_mask(ids, size)
        assert out.shape == (size, size)
        assert set(np.unique(out)) <= {0, 3, 9}
    stack = np.stack([ids == 3, ids == 9])
    out = resize_mask(stack, 31)
    assert out.shape == (2, 31, 31) and out.dtype == bool
    assert resize_mask(np.zeros((0, 50, 50), bool), 8).shape == (0, 8, 8)


def test_resize_image_shapes() -> None:
    img = np.zeros((40, 60, 3), np.uint8)
    assert resize_image(img, 32).shape == (32, 32, 3)
    assert resize_image(img, (80, 20)).shape == (20, 80, 3)
    assert resize_image(img, (60, 40)) is img


def test_read_mask_keeps_values(tmp_path: Path) -> None:
    m = np.array([[0, 255], [255, 0]], np.uint8)
    (tmp_path / "m.png").write_bytes(encode_png(m))
    assert np.array_equal(read_mask(tmp_path / "m.png"), m)
