"""Initial weights: the one parser of weight strings and the one reader of weight bytes
(torch-free).

A weights string (SegmenterConfig.weights) is parsed once, at the edge, into one of four
typed values; everything downstream matches on the type instead of re-reading prefixes:

* ``none`` (or empty) → `NoWeights`: train from scratch, never download;
* a torchvision weights name (``DEFAULT``, ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``,
  ``ResNet50_Weights.IMAGENET1K_V1``) → `TorchvisionWeights` (downloads through torchvision);
* ``store:KEY`` → `StoreWeights`: an object of the service's store;
* ``file:NAME`` → `FileWeights`: a file inside the folder named by ``SYNTHAUG_WEIGHTS_DIR``.

`read_weights` is the only code that opens a weights file: ``file:`` is confined to
``SYNTHAUG_WEIGHTS_DIR`` (lexically at parse time, and again after resolving symbolic links
at read time) and refused when that variable is unset, so a request can never make a
server — or a trainer started any other way — read an arbitrary file of its host.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from services.common.errors import InvalidArgument, NotFound
from services.common.store import validate_key

#: Folder that "file:NAME" weights must lie in; unset, "file:" weights are refused.
WEIGHTS_DIR_ENV = "SYNTHAUG_WEIGHTS_DIR"
MAX_WEIGHTS_BYTES = 2 * 1024**3
WHERE = "SegmenterConfig.weights"

_TORCHVISION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)?$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class NoWeights:
    def __str__(self) -> str:
        return "none"


@dataclass(frozen=True)
class TorchvisionWeights:
    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class StoreWeights:
    key: str

    def __str__(self) -> str:
        return f"store:{self.key}"


@dataclass(frozen=True)
class FileWeights:
    #: Relative path inside SYNTHAUG_WEIGHTS_DIR (never absolute, never '..').
    name: str

    def __str__(self) -> str:
        return f"file:{self.name}"


WeightsSpec = NoWeights | TorchvisionWeights | StoreWeights | FileWeights


def parse_weights(text: str, where: str = WHERE) -> WeightsSpec:
    """The typed value of a weights string; InvalidArgument naming `where` when malformed."""
    if text in ("", "none"):
        return NoWeights()
    if text.startswith("store:"):
        key = text[len("store:"):]
        try:
            validate_key(key)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where} {text!r}: {exc}") from None
        return StoreWeights(key)
    if text.startswith("file:"):
        name = text[len("file:"):]
        if not name or _CONTROL_CHARS.search(name):
            raise InvalidArgument(f"{where} {text!r}: expected file:NAME, a file inside {WEIGHTS_DIR_ENV}")
        path = PurePosixPath(name)
        if path.is_absolute() or "\\" in name or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
            raise InvalidArgument(f"{where} {text!r}: outside {WEIGHTS_DIR_ENV} (give a path relative to it)")
        return FileWeights(name)
    if not _TORCHVISION_NAME.match(text):
        raise InvalidArgument(f"{where} {text!r} is not 'none', a torchvision weights name, store:KEY or file:NAME")
    return TorchvisionWeights(text)


def parse_local_weights(text: str, where: str) -> StoreWeights | FileWeights:
    """Weights that are never downloaded: ``file:NAME`` or ``store:KEY`` only (e.g. the
    Inception-v3 weights of the quality's feature space, which no run may fetch from the
    internet); InvalidArgument naming `where` otherwise, also when `text` is empty."""
    hint = f"give file:NAME (a file inside {WEIGHTS_DIR_ENV}) or store:KEY; none are ever downloaded"
    if not text:
        raise InvalidArgument(f"{where}: weights are required: {hint}")
    spec = parse_weights(text, where)
    if not isinstance(spec, (StoreWeights, FileWeights)):
        raise InvalidArgument(f"{where} {text!r}: {hint}")
    return spec


class BlobReader(Protocol):
    """What reading store weights needs of an object store."""

    def get_bytes(self, key: str) -> bytes: ...


def weights_file_path(spec: FileWeights, where: str = WHERE) -> Path:
    """The resolved path of file weights, confined to SYNTHAUG_WEIGHTS_DIR."""
    root = os.environ.get(WEIGHTS_DIR_ENV, "")
    if not root:
        raise InvalidArgument(
            f"{where} {str(spec)!r}: file weights are disabled here; set {WEIGHTS_DIR_ENV} to a folder of "
            "weight files, or put the file in the store and use store:KEY")
    base = Path(root).resolve()
    path = (base / spec.name).resolve()
    if not path.is_relative_to(base):
        raise InvalidArgument(f"{where} {str(spec)!r}: outside {WEIGHTS_DIR_ENV}")
    return path


def read_weights(spec: StoreWeights | FileWeights, store: BlobReader | None, where: str = WHERE) -> bytes:
    """The bytes of store or file weights (not yet unpickled); InvalidArgument naming the
    weights when they cannot be read."""
    if isinstance(spec, StoreWeights):
        if store is None:
            raise InvalidArgument(f"{where} {str(spec)!r}: store weights need an object store to read from")
        try:
            return store.get_bytes(spec.key)
        except (InvalidArgument, NotFound) as exc:
            raise InvalidArgument(f"{where} {str(spec)!r}: {exc}") from None
    path = weights_file_path(spec, where)
    try:
        size = path.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise InvalidArgument(f"{where} {str(spec)!r}: {size} bytes exceeds {MAX_WEIGHTS_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{where} {str(spec)!r}: {exc.strerror}") from None
