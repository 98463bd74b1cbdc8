"""Stored pixels (services.common.pixels): exact round trips, deterministic bytes, and every
kind of damaged or oversized blob refused with an error that names it."""
from __future__ import annotations

import numpy as np
import pytest
import zstandard

from services.common import pixels
from services.common.errors import InvalidArgument


@pytest.mark.parametrize("shape", [(7, 5, 4), (9, 11, 3), (6, 13), (17,), (0, 4, 4)])
def test_round_trip_is_exact_and_writable(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = pixels.encode_pixels(array)
    assert pixels.is_stored_pixels(data)
    back = pixels.decode_pixels(data, "a", max_pixels=10_000)
    assert back.dtype == np.uint8 and back.shape == shape and np.array_equal(back, array)
    assert back.flags.writeable and back.flags.c_contiguous
    assert pixels.encode_pixels(back) == data  # the same pixels, the same bytes (one blob)


def test_encoding_compresses_smooth_pixels_and_reads_views() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (64, 1))
    rgb = np.ascontiguousarray(np.stack([ramp] * 3, axis=2))
    data = pixels.encode_pixels(rgb[:, ::2])  # a non-contiguous view is stored as its values
    assert len(data) < rgb[:, ::2].nbytes // 4
    assert np.array_equal(pixels.decode_pixels(data, "ramp", 10**6), rgb[:, ::2])


def test_image_files_are_not_stored_pixels() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 20
    assert not pixels.is_stored_pixels(png) and not pixels.is_stored_pixels(b"")
    with pytest.raises(InvalidArgument, match="photo.png: not synthaug pixel data"):
        pixels.decode_pixels(png, "photo.png", 100)


def test_damaged_blobs_are_refused_naming_them() -> None:
    array = np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    data = pixels.encode_pixels(array)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x40
    with pytest.raises(InvalidArgument, match="bg-7: corrupt pixel data"):
        pixels.decode_pixels(bytes(flipped), "bg-7", 10_000)  # the frame's checksum
    with pytest.raises(InvalidArgument, match="bg-7: (pixel data truncated|corrupt pixel data)"):
        pixels.decode_pixels(data[:-20], "bg-7", 10_000)
    not_ours = zstandard.ZstdCompressor().compress(b"PNG?" + b"\0" * 40)
    with pytest.raises(InvalidArgument, match="bg-7: not synthaug pixel data"):
        pixels.decode_pixels(not_ours, "bg-7", 10_000)
    lying = zstandard.ZstdCompressor().compress(pixels.header(np.zeros((4, 4), np.uint8)) + b"\0" * 15)
    with pytest.raises(InvalidArgument, match=r"bg-7: header says \(4, 4\), the frame holds 15 bytes"):
        pixels.decode_pixels(lying, "bg-7", 10_000)


def test_sizes_are_checked_before_anything_is_allocated() -> None:
    data = pixels.encode_pixels(np.zeros((100, 100, 4), np.uint8))
    with pytest.raises(InvalidArgument, match="big: too many pixels"):
        pixels.decode_pixels(data, "big", max_pixels=9_999)
    assert pixels.decode_pixels(data, "big", max_pixels=10_000).shape == (100, 100, 4)
    grey = pixels.encode_pixels(np.zeros((100, 100), np.uint8))  # within the byte bound, not the pixel count
    with pytest.raises(InvalidArgument, match=r"grey: too many pixels \(10000 > 9999\)"):
        pixels.decode_pixels(grey, "grey", max_pixels=9_999)
    # a frame that does not say its size (streamed) is refused rather than decompressed blindly
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(
        pixels.header(np.zeros((2, 2), np.uint8)) + b"\0" * 4)
    with pytest.raises(InvalidArgument, match="unknown or too small size"):
        pixels.decode_pixels(unsized, "streamed", 100)


def test_header_refuses_what_it_cannot_describe() -> None:
    with pytest.raises(ValueError, match="uint8"):
        pixels.header(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="1-3 dimensions"):
        pixels.header(np.zeros((2, 2, 2, 2), np.uint8))
    with pytest.raises(InvalidArgument, match="too short"):
        pixels.parse_header(b"SXPX", "x")
