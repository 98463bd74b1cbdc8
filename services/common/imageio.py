"""Image and mask I/O with limits.

Every image that enters synthaug passes through here, so a truncated file, a text file named
.png or a 40 000 × 40 000 "image bomb" becomes an InvalidArgument that names the file instead
of a crash or an out-of-memory kill. Masks are read without any conversion of their values
(instance ids survive) and resized only with nearest neighbour.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from services.common.errors import InvalidArgument

#: Default ceiling on pixels per image (64 MP); overridable with SYNTHAUG_MAX_PIXELS.
MAX_PIXELS = int(os.environ.get("SYNTHAUG_MAX_PIXELS", 64_000_000))
PNG_COMPRESSION = 1  # fast; PNG is lossless whatever the level
#: File formats whose compression changes pixel values (a mask stored in one is not exact).
LOSSY_FORMATS = frozenset({"JPEG", "MPO"})
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def _header(data: bytes, name: str, max_pixels: int) -> tuple[tuple[int, int], str]:
    """((width, height), format name) from the file header, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size, str(im.format or "")
    except Image.DecompressionBombError as exc:
        # Pillow refuses to even open images past twice its own limit: still a size problem.
        m = _PIL_PIXELS.search(str(exc))
        pixels = int(m.group(1)) if m else 0
        limit = max_pixels if pixels > max_pixels else 2 * int(Image.MAX_IMAGE_PIXELS or 0)
        raise InvalidArgument(f"{name}: too many pixels ({pixels or 'more than ' + str(limit)} > {limit}); "
                              "SYNTHAUG_MAX_PIXELS sets the limit") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidArgument(f"{name}: not a readable image ({exc.__class__.__name__})") from None


def _check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InvalidArgument(f"{name}: empty image ({w}×{h})")
    if w * h > max_pixels:
        raise InvalidArgument(f"{name}: too many pixels ({w * h} > {max_pixels}) in a {w}×{h} image; "
                              "SYNTHAUG_MAX_PIXELS sets the limit")


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded bytes to H×W×3 uint8 RGB (grey and alpha are converted)."""
    size, _format = _header(data, name, max_pixels)
    _check_pixels(size, name, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InvalidArgument(f"{name}: image data is corrupt or truncated")
    if arr.dtype == np.uint16:
        arr = np.right_shift(arr, 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise InvalidArgument(f"{name}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
    if arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode a mask to H×W with its values unchanged (uint8 or uint16 instance ids).

    A colour mask is accepted only when its channels are equal (a grey PNG saved as RGB);
    anything else is ambiguous and rejected.
    """
    return decode_mask_and_format(data, name, max_pixels)[0]


def decode_mask_and_format(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """`decode_mask`, and the file's format name ("PNG", "JPEG", …) so that a caller can tell
    a mask stored losslessly from one whose values compression has changed."""
    size, file_format = _header(data, name, max_pixels)
    _check_pixels(size, name, max_pixels)
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InvalidArgument(f"{name}: mask data is corrupt or truncated")
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if not (np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2])):
            raise InvalidArgument(f"{name}: colour mask; expected a single-channel binary or instance-id mask")
        arr = np.ascontiguousarray(arr[:, :, 0])
    return arr, file_format


def read_image(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return decode_image(_read_file(path), str(path), max_pixels)


def read_mask(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    return decode_mask(_read_file(path), str(path), max_pixels)


def read_mask_and_format(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    return decode_mask_and_format(_read_file(path), str(path), max_pixels)


def _read_file(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{path}: file not found") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot read ({exc.strerror})") from None


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H×W×3), RGBA (H×W×4) or grey/id (H×W, uint8/uint16) array.

    Deterministic: the same array always gives the same bytes.
    """
    if array.ndim == 3 and array.shape[2] == 3:
        arr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        arr = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    elif array.ndim == 2:
        arr = array
    else:
        raise InvalidArgument(f"cannot encode an array of shape {array.shape} as PNG")
    if arr.dtype not in (np.uint8, np.uint16):
        raise InvalidArgument(f"cannot encode {arr.dtype} pixels as PNG (uint8 or uint16)")
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise InvalidArgument(f"PNG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InvalidArgument(f"JPEG encoding failed for an array of shape {array.shape}")
    return buf.tobytes()


def write_png(path: str | os.PathLike[str], array: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(array))


def resize_image(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize an image to `size` (side, or (width, height)): area when shrinking, linear when growing."""
    w, h = (size, size) if isinstance(size, int) else size
    if image.shape[1] == w and image.shape[0] == h:
        return image
    shrinking = w * h < image.shape[0] * image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a mask (H×W ids or N×H×W bool) with nearest neighbour only: values are never invented."""
    w, h = (size, size) if isinstance(size, int) else size
    if mask.ndim == 3:
        if mask.shape[0] == 0:
            return np.zeros((0, h, w), dtype=mask.dtype)
        return np.stack([resize_mask(m, (w, h)) for m in mask])
    if mask.shape[1] == w and mask.shape[0] == h:
        return mask
    src = mask.view(np.uint8) if mask.dtype == np.bool_ else mask
    out = cv2.resize(src, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(np.bool_) if mask.dtype == np.bool_ else out
