"""Checkpoints: what is saved, where, and how it is read back safely.

Two formats, both written with ``torch.save`` of plain containers (state dicts, tensors,
Python scalars, strings) so that ``torch.load(weights_only=True)`` reads them — nothing is
unpickled:

* a **training checkpoint** (``epoch-NNNN.pt`` under the job's work prefix, NNNN the index
  of the evaluation it was written at — the epoch, in epoch mode) holds model, optimiser,
  scheduler and AMP-scaler state, the evaluation index and iteration, the RNG state (as
  tensors), the config, the number of processes and the training record, so that a
  restarted job resumes after the last finished evaluation with exactly the losses an
  uninterrupted run would have had;
* a **model file** (the job's result) holds the model state dict and the ModelSpec and
  category list needed to rebuild the network for prediction.

Initial weights (``store:KEY`` / ``file:NAME``, services/segmenter/weights.py) are read
back the same way by :func:`initial_state`.

The last checkpoint is found by parsing the evaluation number out of the names — never by the
order a directory listing happens to return (the thesis resumed from whatever
``os.listdir`` gave first).
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Protocol

import torch

from services.common.errors import InvalidArgument
from services.common.files import write_atomically
from services.common.store import ObjectStore
from services.segmenter.weights import (
    BlobReader,
    FileWeights,
    StoreWeights,
    WeightsSpec,
    read_weights,
)

#: /2: iteration budget (the checkpoint's state holds the iteration; the stream is a function of it).
TRAIN_FORMAT = "synthaug.segmenter.checkpoint/2"
MODEL_FORMAT = "synthaug.segmenter.model/1"
_EPOCH_RE = re.compile(r"^epoch-(\d{4,})\.pt$")


class CheckpointIO(Protocol):
    """Where training checkpoints live: a folder here, the job's work prefix in the store."""

    def write(self, name: str, data: bytes) -> None: ...

    def read(self, name: str) -> bytes: ...

    def names(self) -> list[str]: ...

    def remove(self, name: str) -> None: ...


class DirectoryCheckpointIO:
    """CheckpointIO over a local folder (tests, single machine); writes are atomic."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, data: bytes) -> None:
        write_atomically(self.root / name, data)

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))  # not temporaries

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)


class StoreCheckpointIO:
    """CheckpointIO under a prefix of the object store (a job's work prefix), so a job
    resubmitted after its server died resumes after the last finished evaluation."""

    def __init__(self, store: ObjectStore, prefix: str):
        self.store, self.prefix = store, prefix

    def write(self, name: str, data: bytes) -> None:
        self.store.put_bytes(self.prefix + name, data)

    def read(self, name: str) -> bytes:
        return self.store.get_bytes(self.prefix + name)

    def names(self) -> list[str]:
        return [k[len(self.prefix):] for k in self.store.list(self.prefix) if "/" not in k[len(self.prefix):]]

    def remove(self, name: str) -> None:
        self.store.delete(self.prefix + name)


def epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


def checkpoint_epochs(io_: CheckpointIO) -> list[int]:
    """Evaluation numbers of the stored training checkpoints, ascending."""
    return sorted(int(m.group(1)) for n in io_.names() if (m := _EPOCH_RE.match(n)))


def to_bytes(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes, what: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of ``data``; InvalidArgument naming ``what`` when it
    is not a readable checkpoint."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError…
        raise InvalidArgument(f"{what} is not a readable weights-only torch file: {exc.__class__.__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{what} holds a {type(obj).__name__}, not a dict")
    return obj


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_file(model_state: dict[str, torch.Tensor], spec: dict[str, Any], categories: list[dict[str, Any]],
               extra: dict[str, Any] | None = None) -> bytes:
    """Bytes of a model file (the result of training, the input of prediction)."""
    return to_bytes({"format": MODEL_FORMAT, "model": model_state, "spec": spec,
                     "categories": categories, "extra": extra or {}})


def state_dict_from(obj: dict[str, Any], what: str) -> dict[str, torch.Tensor]:
    """The model state dict inside a model file, a training checkpoint or a bare state dict."""
    if obj.get("format") in (MODEL_FORMAT, TRAIN_FORMAT):
        return obj["model"]
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]  # torchvision reference checkpoints
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise InvalidArgument(f"{what} holds no model state dict")


def initial_state(weights: WeightsSpec, store: BlobReader | None = None) -> dict[str, torch.Tensor] | None:
    """The state dict of ``store:`` / ``file:`` weights (read with weights_only=True; file
    weights confined to SYNTHAUG_WEIGHTS_DIR); None for ``none`` and torchvision names."""
    if not isinstance(weights, (StoreWeights, FileWeights)):
        return None
    what = f"weights {str(weights)!r}"
    return state_dict_from(from_bytes(read_weights(weights, store), what), what)
