"""Foreground and background sets: JSON manifests in the store listing image blobs.

A set is immutable and named by its content: `compositor/foreground-sets/<hash>.json` or
`compositor/background-sets/<hash>.json`, where <hash> is the first 32 hex digits of the
sha256 of the canonical manifest. Foregrounds are RGBA blobs (alpha = instance mask), each
with the colour statistics composition needs (`stats`, optional); backgrounds are RGB blobs.

The sets synthaug makes store their pixels zstd-compressed (services.common.pixels), not as
PNG: every composition job decodes each asset it uses, and that decode is ~10× faster.
Image files are read too: a background set from user images names them as they are, and
sets made before this format hold PNG blobs.
"""
from __future__ import annotations

import reprlib
from typing import Any

import cv2
import numpy as np

from services.common.errors import InvalidArgument, NotFound
from services.common.imageio import MAX_PIXELS, decode_image
from services.common.pixels import CONTENT_TYPE, SUFFIX, decode_pixels, encode_pixels, is_stored_pixels
from services.common.store import ObjectInfo, ObjectStore, canonical_json, sha256_bytes
from services.compositor.core.compose import valid_stats_record

FOREGROUND_KIND = "synthaug.compositor.foreground_set"
BACKGROUND_KIND = "synthaug.compositor.background_set"
SET_VERSION = 1
MAX_SIDE = 16384


def save_set(store: ObjectStore, manifest: dict[str, Any]) -> ObjectInfo:
    """Write a set manifest under its content hash (idempotent)."""
    data = canonical_json(manifest)
    folder = "foreground-sets" if manifest["kind"] == FOREGROUND_KIND else "background-sets"
    key = f"compositor/{folder}/{sha256_bytes(data)[:32]}.json"
    if store.exists(key):
        return store.stat(key)
    return store.put_bytes(key, data, content_type="application/json")


def load_set(store: ObjectStore, key: str, kind: str, what: str, sha256: str = "") -> dict[str, Any]:
    """Read and check a set manifest; `what` names the request field in error messages."""
    if not key:
        raise InvalidArgument(f"{what}: no object key given")
    try:
        info = store.stat(key)
    except NotFound:
        raise NotFound(f"{what}: object {key!r} not found") from None
    if sha256 and info.sha256 != sha256:
        raise InvalidArgument(f"{what}: object {key!r} has sha256 {info.sha256[:12]}…, the reference says {sha256[:12]}…")
    manifest = store.get_json(key)
    if not isinstance(manifest, dict) or manifest.get("kind") != kind:
        raise InvalidArgument(f"{what}: {key!r} is not a {kind.rsplit('.', 1)[-1].replace('_', ' ')} manifest")
    entries = manifest.get("foregrounds" if kind == FOREGROUND_KIND else "backgrounds")
    if not isinstance(entries, list) or not entries:
        raise InvalidArgument(f"{what}: set {key!r} is empty")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
            raise InvalidArgument(f"{what}: entry {i} of {key!r} has no object key")
        if kind == FOREGROUND_KIND and not isinstance(entry.get("category_id"), int):
            raise InvalidArgument(f"{what}: entry {i} of {key!r} has no integer category_id")
        if kind == FOREGROUND_KIND and entry.get("stats") is not None and not valid_stats_record(entry["stats"]):
            raise InvalidArgument(f"{what}: entry {i} of {key!r} has malformed stats {reprlib.repr(entry['stats'])} "
                                  "(dark_threshold 0-255, mean_grey 0-255, skin null or 3 values 0-255)")
    if kind == FOREGROUND_KIND:
        cats = manifest.get("categories")
        if not isinstance(cats, list) or not cats:
            raise InvalidArgument(f"{what}: set {key!r} lists no categories")
        known = {c.get("id") for c in cats if isinstance(c, dict)}
        bad = sorted({e["category_id"] for e in entries} - known)
        if bad:
            raise InvalidArgument(f"{what}: set {key!r} uses category ids {bad} it does not list")
    return manifest


def put_asset(store: ObjectStore, pixels: np.ndarray) -> ObjectInfo:
    """Store one asset of a set (RGBA foreground or RGB background) as a blob."""
    return store.put_blob(encode_pixels(pixels), suffix=SUFFIX, content_type=CONTENT_TYPE)


def _check_side(arr: np.ndarray, name: str) -> None:
    if max(arr.shape[:2]) > MAX_SIDE:
        raise InvalidArgument(f"{name}: {arr.shape[1]}×{arr.shape[0]} is too large")


def decode_rgba(data: bytes, name: str) -> np.ndarray:
    """RGBA uint8 of a foreground blob: stored pixels (`put_asset`) or an image file (PNG…);
    grey or RGB images get an opaque alpha."""
    if is_stored_pixels(data):
        arr = _stored_asset(data, name, "foreground", "RGBA")
        _check_side(arr, name)
        return arr
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InvalidArgument(f"{name}: not a decodable image")
    if image.dtype != np.uint8:
        raise InvalidArgument(f"{name}: foreground must be 8-bit, got {image.dtype}")
    _check_side(image, name)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGRA)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)


def decode_rgb(data: bytes, name: str) -> np.ndarray:
    """RGB uint8 of a background blob: stored pixels (`put_asset`) or an image file."""
    if not is_stored_pixels(data):
        return decode_image(data, name)
    return _stored_asset(data, name, "background", "RGB")


def _stored_asset(data: bytes, name: str, what: str, channels: str) -> np.ndarray:
    """Stored pixels (`put_asset`) that must be H×W×len(channels)."""
    arr = decode_pixels(data, name, MAX_PIXELS)
    if arr.ndim != 3 or arr.shape[2] != len(channels):
        raise InvalidArgument(f"{name}: {what} pixels must be H×W×{len(channels)} ({channels}), got {arr.shape}")
    return arr
