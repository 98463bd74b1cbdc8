"""Decoded pixels as bytes: a 20-byte header and the raw uint8 array, zstd-compressed when
stored.

Why not PNG for what synthaug itself stores to be read back many times (the compositor's
foreground and background sets): every composition job decodes each asset it uses, and
PNG decoding (inflate, then libpng's unfiltering) is the slow part of reading one. On the
reference machine a 256×256 RGB background takes ~2.5 ms as PNG and ~0.2 ms as zstd-compressed
raw pixels; a ~150×150 RGBA foreground ~1.1 ms against ~0.15 ms. The blob is ~1.3× the PNG's size.
The same header without compression is how the workers of one job pass decoded assets to
each other through /dev/shm (services.compositor.core.pipeline).

Layout: magic ``SXPX``, then ndim and three dimensions as little-endian uint32 (missing ones
1), then the pixels in C order. Channel order is the caller's: the compositor's sets hold
RGB and RGBA, never OpenCV's BGR. A stored blob is one zstd frame of that, with its content
size and a checksum, so truncation or corruption is an error rather than wrong pixels.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import zstandard

from services.common.errors import InvalidArgument

MAGIC = b"SXPX"
HEADER = struct.Struct("<4s4I")
#: The first bytes of every zstd frame: what tells stored pixels from an image file.
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: zstd's level for stored pixels: its default; higher levels shrink assets by < 10% and
#: compress several times slower, and decompression speed does not depend on the level.
ZSTD_LEVEL = 3
SUFFIX = ".zst"
CONTENT_TYPE = "application/zstd"


def header(array: np.ndarray) -> bytes:
    """The header of `array` (uint8, 1 to 3 dimensions)."""
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 3:
        raise ValueError(f"pixels must be a uint8 array of 1-3 dimensions, got {array.dtype} {array.shape}")
    return HEADER.pack(MAGIC, array.ndim, *array.shape, *(1,) * (3 - array.ndim))


def parse_header(data: bytes, name: str) -> tuple[int, ...]:
    """The shape a header gives; InvalidArgument naming `name` when `data` is not one."""
    if len(data) != HEADER.size:
        raise InvalidArgument(f"{name}: pixel data too short for its header ({len(data)} bytes)")
    magic, ndim, *dims = HEADER.unpack(data)
    if magic != MAGIC or not 1 <= ndim <= 3 or any(d != 1 for d in dims[ndim:]):
        raise InvalidArgument(f"{name}: not synthaug pixel data (bad header)")
    return tuple(dims[:ndim])


def is_stored_pixels(data: bytes) -> bool:
    """Whether `data` is `encode_pixels` output rather than an image file (PNG, JPEG, …)."""
    return data[:4] == ZSTD_MAGIC


def encode_pixels(array: np.ndarray) -> bytes:
    """One zstd frame of `array`'s header and pixels (deterministic: the same array gives the
    same bytes, so a content-addressed blob of it is stored once)."""
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return compressor.compress(header(array) + np.ascontiguousarray(array).tobytes())


def decode_pixels(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The array `encode_pixels` stored (writable, C order). InvalidArgument naming `name`
    for anything else: not a zstd frame, a frame that does not say its size, more than
    `max_pixels` pixels (rows × columns; the frame's size, up to 4 bytes a pixel, is checked
    before anything is allocated), a bad header, a size that does not match the header, or
    a failed checksum."""
    if not is_stored_pixels(data):
        raise InvalidArgument(f"{name}: not synthaug pixel data (no zstd frame)")
    try:
        total = zstandard.frame_content_size(data)
    except zstandard.ZstdError:
        raise InvalidArgument(f"{name}: corrupt zstd frame header") from None
    if total < HEADER.size:  # -1: the frame does not say (never what encode_pixels writes)
        raise InvalidArgument(f"{name}: pixel data of unknown or too small size")
    if total - HEADER.size > 4 * max_pixels:
        raise InvalidArgument(f"{name}: too many pixels ({(total - HEADER.size) // 4}+ > {max_pixels}); "
                              "SYNTHAUG_MAX_PIXELS sets the limit")
    # one buffer for header and pixels, decompressed straight into (a stream read of the
    # header first would make zstd stage the first block in its own window)
    whole = np.empty(total, np.uint8)
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            if _read_into(reader, whole.data) != total:
                raise InvalidArgument(f"{name}: pixel data truncated")
            if reader.read(1):  # reading to the end verifies the frame's checksum
                raise InvalidArgument(f"{name}: pixel data longer than its header says")
    except zstandard.ZstdError as exc:
        raise InvalidArgument(f"{name}: corrupt pixel data ({exc})") from None
    shape = parse_header(whole[:HEADER.size].tobytes(), name)
    if HEADER.size + math.prod(shape) != total:
        raise InvalidArgument(f"{name}: header says {shape}, the frame holds {total - HEADER.size} bytes")
    if math.prod(shape[:2]) > max_pixels:
        raise InvalidArgument(f"{name}: too many pixels ({math.prod(shape[:2])} > {max_pixels}); "
                              "SYNTHAUG_MAX_PIXELS sets the limit")
    return whole[HEADER.size:].reshape(shape)


def _read_into(reader: zstandard.ZstdDecompressionReader, buffer: memoryview) -> int:
    """Fill `buffer` from `reader` (a read may return less than asked); the bytes read."""
    done = 0
    while done < len(buffer):
        n = reader.readinto(buffer[done:])
        if not n:
            break
        done += n
    return done
