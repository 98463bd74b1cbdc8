"""Files in and out of an orchestrator's store, for a user who cannot reach that store.

With compose or Kubernetes the store (MinIO) sits behind the orchestrator; its credentials
stay there. OrchestratorService therefore streams a run's report out (`FetchReport`) and
takes a dataset in (`PushDataset`). This module is that logic without gRPC: the messages
are plain protos, the transport is the server's and the CLI's business.

Everything that crosses is checked where it lands: a report file against the sha256 sent
with its last chunk; a pushed image against the sha256 its manifest records (and its key,
which names that sha256); the dataset's id is computed from the manifest's bytes, never
taken from the sender. Nothing is registered unless every image arrived intact.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from orchestrator.runs import load_report_status, validate_run_id
from services.common.datasets import Dataset, manifest_id, manifest_key, registered_id, validate_name, write_manifest
from services.common.errors import IntegrityError, InvalidArgument, NotFound
from services.common.files import write_atomically
from services.common.store import ObjectStore, canonical_json, named_digest, validate_key
from synthaug.v1 import common_pb2, orchestrator_pb2

#: Bytes per chunk: well under the default 16 MiB message limit.
CHUNK_BYTES = 1 << 20
#: The path the manifest travels under in PushDataset.
MANIFEST_PATH = "dataset.json"


def chunks_of(path: str, data: bytes) -> Iterator[orchestrator_pb2.FileChunk]:
    """`data` as FileChunks of at most CHUNK_BYTES; the last carries the sha256."""
    digest = hashlib.sha256(data).hexdigest()
    for start in range(0, max(len(data), 1), CHUNK_BYTES):
        last = start + CHUNK_BYTES >= len(data)
        yield orchestrator_pb2.FileChunk(path=path, data=data[start : start + CHUNK_BYTES], last=last, sha256=digest if last else "")


class _Assembler:
    """Joins FileChunks back into files, checking each file's sha256."""

    def __init__(self) -> None:
        self.path = ""
        self.parts: list[bytes] = []

    def add(self, chunk: orchestrator_pb2.FileChunk) -> tuple[str, bytes] | None:
        """The finished (path, bytes) when `chunk` was a file's last, else None."""
        if self.parts and chunk.path != self.path:
            raise InvalidArgument(f"file {self.path!r} ended without its last chunk (next came {chunk.path!r})")
        self.path = chunk.path
        self.parts.append(chunk.data)
        if not chunk.last:
            return None
        data = b"".join(self.parts)
        self.parts = []
        actual = hashlib.sha256(data).hexdigest()
        if actual != chunk.sha256:
            raise IntegrityError(f"{chunk.path}: received bytes hash to {actual}, the sender said {chunk.sha256 or '(nothing)'}", key=chunk.path)
        return chunk.path, data

    def check_complete(self) -> None:
        if self.parts:
            raise InvalidArgument(f"file {self.path!r} ended without its last chunk")


# --- reports out ---------------------------------------------------------------------------


def report_files(store: ObjectStore, run_id: str) -> tuple[orchestrator_pb2.RunStatus, str, list[str]]:
    """The attempt whose report `synthaug report` shows, its report folder's prefix and the
    keys in it; NotFound when the run has no report yet."""
    status = load_report_status(store, validate_run_id(run_id))
    if not status.report.key:
        state = common_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower()
        raise NotFound(f"run {run_id} has no report yet (state {state})")
    prefix = status.report.key.rsplit("/", 1)[0] + "/"
    return status, prefix, store.list(prefix)


def report_chunks(store: ObjectStore, run_id: str, only: Sequence[str] = ()) -> Iterator[orchestrator_pb2.FileChunk]:
    """The report's files (or those of `only`, paths relative to the report folder, that
    exist) as chunks, one file after another."""
    _status, prefix, keys = report_files(store, run_id)
    wanted = set(only)
    for key in keys:
        path = key[len(prefix) :]
        if wanted and path not in wanted:
            continue
        yield from chunks_of(path, store.get_bytes(key))


def safe_relative(path: str) -> str:
    """A received file's path: relative, '/'-separated, no '..' (the store's key rules)."""
    try:
        return validate_key(path)
    except InvalidArgument:
        raise IntegrityError(f"refusing a received file with the unsafe path {path!r}", key=path) from None


def write_report(chunks: Iterable[orchestrator_pb2.FileChunk], out: Path) -> list[Path]:
    """Write streamed report files under `out` (each complete and checked, or not at all)."""
    out.mkdir(parents=True, exist_ok=True)
    assembler = _Assembler()
    written = []
    for chunk in chunks:
        done = assembler.add(chunk)
        if done is None:
            continue
        path, data = done
        target = out / safe_relative(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, data)
        written.append(target)
    assembler.check_complete()
    return written


def collect(chunks: Iterable[orchestrator_pb2.FileChunk]) -> dict[str, bytes]:
    """Streamed files in memory (a few small ones, e.g. the CSVs the results table needs)."""
    assembler = _Assembler()
    files = {}
    for chunk in chunks:
        done = assembler.add(chunk)
        if done is not None:
            files[safe_relative(done[0])] = done[1]
    assembler.check_complete()
    return files


# --- datasets in ---------------------------------------------------------------------------


def dataset_chunks(store: ObjectStore, dataset: str, replace: bool = False) -> Iterator[orchestrator_pb2.PushDatasetChunk]:
    """What PushDataset sends for `dataset` (name or id) of `store`: the header, the
    manifest's stored bytes, then every image object it names (each read checked)."""
    ds = Dataset.load(store, dataset)
    yield orchestrator_pb2.PushDatasetChunk(header=orchestrator_pb2.PushDatasetHeader(replace=replace))
    for chunk in chunks_of(MANIFEST_PATH, store.get_bytes(manifest_key(ds.id))):
        yield orchestrator_pb2.PushDatasetChunk(file=chunk)
    sent = set()
    for image in ds.manifest["images"]:
        if image["key"] in sent:
            continue
        sent.add(image["key"])
        for chunk in chunks_of(image["key"], store.get_bytes(image["key"], expect_sha256=image["sha256"])):
            yield orchestrator_pb2.PushDatasetChunk(file=chunk)


def _expected_images(manifest: Mapping[str, object]) -> dict[str, str]:
    """Image key → sha256 from a received manifest, every key checked to name its content."""
    images = manifest.get("images")
    if not isinstance(images, list) or not images:
        raise InvalidArgument("pushed manifest has no images")
    expected: dict[str, str] = {}
    for image in images:
        key, digest = str(image.get("key", "")), str(image.get("sha256", ""))
        validate_key(key)
        if named_digest(key) != digest:
            raise InvalidArgument(f"pushed manifest: image {image.get('file_name', key)!r} has key {key!r}, which does not name its sha256 {digest!r}")
        expected[key] = digest
    return expected


def receive_dataset(store: ObjectStore, chunks: Iterator[orchestrator_pb2.PushDatasetChunk]) -> common_pb2.DatasetRef:
    """Store a pushed dataset: its images, then its manifest (the commit point), then its
    name. InvalidArgument (nothing registered) when anything is missing, extra or corrupt."""
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidArgument("PushDataset: the first message must be the header")
    replace = first.header.replace
    assembler = _Assembler()
    manifest: dict | None = None
    expected: dict[str, str] = {}
    received: set[str] = set()
    for message in chunks:
        if message.WhichOneof("part") != "file":
            raise InvalidArgument("PushDataset: only the first message may be a header")
        done = assembler.add(message.file)
        if done is None:
            continue
        path, data = done
        if manifest is None:
            if path != MANIFEST_PATH:
                raise InvalidArgument(f"PushDataset: the manifest ({MANIFEST_PATH}) must come first, got {path!r}")
            manifest = _parse_manifest(data)
            expected = _expected_images(manifest)
            _check_name(store, manifest, replace)
            continue
        if path not in expected:
            raise InvalidArgument(f"PushDataset: {path!r} is not an image of the pushed manifest")
        if hashlib.sha256(data).hexdigest() != expected[path]:
            raise IntegrityError(f"pushed image {path}: its bytes do not hash to the sha256 its manifest records", key=path)
        suffix = Path(path).suffix
        info = store.put_blob(data, suffix=suffix)
        if info.key != path:  # blob_key(sha256, suffix) is the key named_digest checked
            raise InvalidArgument(f"pushed image {path}: not a content-addressed blob key (stored as {info.key})")
        received.add(path)
    assembler.check_complete()
    if manifest is None:
        raise InvalidArgument("PushDataset: no manifest arrived")
    missing = sorted(k for k in expected if k not in received and not store.exists(k))
    if missing:
        raise InvalidArgument(f"PushDataset: {len(missing)} image(s) of the manifest did not arrive, e.g. {missing[:3]}; nothing was registered")
    ref = write_manifest(store, manifest)
    return ref


def _parse_manifest(data: bytes) -> dict:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise InvalidArgument(f"pushed manifest is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or canonical_json(manifest) != data:
        raise InvalidArgument("pushed manifest is not a dataset manifest in canonical JSON (send the stored dataset.json bytes)")
    try:
        Dataset(None, manifest_id(manifest), manifest)  # type: ignore[arg-type]  # indexes images and annotations
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidArgument(f"pushed manifest is not a dataset manifest (COCO images, annotations, categories): {exc!r}") from None
    return manifest


def _check_name(store: ObjectStore, manifest: Mapping[str, object], replace: bool) -> None:
    """The manifest's name may point at it unless it names another dataset (then `replace`)."""
    provenance = manifest.get("synthaug")
    name = str(provenance.get("name", "")) if isinstance(provenance, dict) else ""
    if not name:
        return
    validate_name(name)
    previous = registered_id(store, name)
    new_id = manifest_id(manifest)
    if previous is not None and previous != new_id and not replace:
        raise InvalidArgument(
            f"the name {name!r} already names dataset {previous} on the orchestrator, and the pushed dataset is a different one "
            f"({new_id}); nothing was registered. Give --replace to point {name!r} at the pushed dataset (the old one stays "
            "addressable by its id)"
        )
