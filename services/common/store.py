"""Object store: one interface, two backends.

`file://ROOT` is the embedded default (one machine, no server); `s3://BUCKET?endpoint=HOST:PORT&secure=0|1`
talks to MinIO or any S3 through the `minio` client. Services only ever see `ObjectStore`, so
the code that runs in a test against a folder is the code that runs in a cluster.

Conventions: keys are validated (`validate_key`); writes are atomic (a reader never sees a
half-written object); large payloads are content-addressed blobs (`put_blob`) so that the
same bytes are stored once and a key names its content.

Integrity: a read never hands out bytes that contradict what names them. Gets of a
content-addressed key (a blob named by its sha256, a dataset manifest named by its id) are
hashed while reading and raise IntegrityError on a mismatch, as do S3 objects whose stored
sha256 metadata no longer matches. Mutable records that nothing names by hash (step records,
job results) are written with `put_record`: a small self-checking envelope that `get_record`
verifies, so a zero-byte, truncated or edited record is an error, never an empty result.
"""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import logging
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import parse_qs, urlparse

from services.common.errors import IntegrityError, InvalidArgument, NotFound, StoreUnavailable
from services.common.files import write_new_file

log = logging.getLogger(__name__)

STORE_ENV = "SYNTHAUG_STORE"
DEFAULT_STORE_URL = "file://.synthaug/store"
MAX_KEY_BYTES = 1024
_CHUNK = 1 << 20
BLOB_PREFIX = "blobs/sha256"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BLOB_KEY_RE = re.compile(r"^blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})(?:\.[^/]*)?$")
#: A dataset manifest is named by the first 32 hex digits of its sha256 (see datasets.py).
_MANIFEST_KEY_RE = re.compile(r"^datasets/([0-9a-f]{32})/dataset\.json$")
#: Envelope of a record: magic, sha256 of the payload (32 raw bytes), payload. The magic's first
#: byte is not ASCII and it holds CR LF, so a text-mode copy or a stray text file never passes.
RECORD_MAGIC = b"\x89SYR1\r\n\x1a"
RECORD_HEADER_BYTES = len(RECORD_MAGIC) + 32

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows of one object."""

    key: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Blob:
    """Bytes to be stored under their content hash, hashed once, where they are made.

    The digest is computed here, from the bytes, and nowhere else: a worker that encodes an
    image builds its Blob right away (hashing while the bytes are hot in cache), and
    `ObjectStore.put_blobs` writes it without hashing it again. A Blob cannot carry a
    digest that is not its content's.
    """

    data: bytes
    suffix: str = ""
    content_type: str = "application/octet-stream"
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", sha256_bytes(self.data))

    @property
    def key(self) -> str:
        return blob_key(self.sha256, self.suffix)

    def info(self) -> ObjectInfo:
        return ObjectInfo(key=self.key, sha256=self.sha256, size=len(self.data))


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidArgument naming it."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"invalid object key {key!r}: empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"invalid object key {key[:60]!r}…: longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL_CHARS.search(key):
        raise InvalidArgument(f"invalid object key {key!r}: contains a control character")
    if key.startswith("/") or "\\" in key or (len(key) > 1 and key[1] == ":"):
        raise InvalidArgument(f"invalid object key {key!r}: must be a relative path with '/' separators")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidArgument(f"invalid object key {key!r}: empty, '.' or '..' path segment")
    if parts[-1].startswith(".tmp-"):
        raise InvalidArgument(f"invalid object key {key!r}: '.tmp-' names are reserved")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: '' or a valid key, optionally ending in '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/") or "x")
    return prefix


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob_key(sha256: str, suffix: str = "") -> str:
    """Content-addressed key of a blob: blobs/sha256/ab/abcdef….png"""
    suffix = suffix if not suffix or suffix.startswith(".") else "." + suffix
    return f"{BLOB_PREFIX}/{sha256[:2]}/{sha256}{suffix}"


def named_digest(key: str) -> str | None:
    """The sha256 (hex, or a hex prefix for dataset manifests) that a content-addressed key
    names; None for keys that do not name their content."""
    m = _BLOB_KEY_RE.match(key)
    if m and m.group(2).startswith(m.group(1)):
        return m.group(2)
    m = _MANIFEST_KEY_RE.match(key)
    return m.group(1) if m else None


def _what(key: str) -> str:
    if _BLOB_KEY_RE.match(key):
        return "blob"
    if _MANIFEST_KEY_RE.match(key):
        return "dataset manifest"
    return "object"


def _corrupt(what: str, key: str, url: str, problem: str) -> IntegrityError:
    """The error for a corrupt object: which, what is wrong, where, and how to recover."""
    return IntegrityError(
        f"{what} {key!r} is corrupt: {problem} (store {url}); run `synthaug store verify --repair --store {url}` "
        "to list and delete every corrupt object, then re-run (or re-import) to recompute what it held",
        key=key,
        detail=problem,
    )


def check_content(key: str, url: str, actual_sha256: str, expect_sha256: str = "", stored_sha256: str = "") -> None:
    """Raise IntegrityError naming `key` unless its content hash agrees with its name, with
    the sha256 a caller's reference records (`expect_sha256`) and with the sha256 stored
    beside it (S3 metadata), each where known."""
    named = named_digest(key)
    if named and not actual_sha256.startswith(named):
        reason = f"its {'id' if len(named) < 64 else 'name'} says {named[:16]}…"
    elif expect_sha256 and actual_sha256 != expect_sha256:
        reason = f"the reference to it records sha256 {expect_sha256[:16]}…"
    elif stored_sha256 and actual_sha256 != stored_sha256:
        reason = f"the checksum stored with it says {stored_sha256[:16]}…"
    else:
        return
    raise _corrupt(_what(key), key, url, f"its content hashes to sha256 {actual_sha256[:16]}…, but {reason}")


def encode_record(payload: bytes) -> bytes:
    """The self-checking envelope `put_record` stores: magic + sha256(payload) + payload."""
    return RECORD_MAGIC + hashlib.sha256(payload).digest() + payload


def decode_record(data: bytes, key: str, url: str) -> bytes:
    """The payload of a record envelope; IntegrityError naming `key` when the bytes are not
    an intact envelope (empty, truncated, foreign, or any byte changed)."""
    if len(data) < RECORD_HEADER_BYTES or not data.startswith(RECORD_MAGIC):
        if not data:
            problem = "it is empty (0 bytes)"
        elif data.startswith(RECORD_MAGIC) or RECORD_MAGIC.startswith(data):
            problem = f"it is truncated ({len(data)} bytes, shorter than the record header)"
        else:
            problem = f"it is not a synthaug record ({len(data)} bytes without the record header)"
        raise _corrupt("record", key, url, problem)
    payload = data[RECORD_HEADER_BYTES:]
    if hashlib.sha256(payload).digest() != data[len(RECORD_MAGIC) : RECORD_HEADER_BYTES]:
        raise _corrupt("record", key, url, f"its {len(payload)}-byte payload does not match the checksum in its header "
                                           "(truncated or edited)")
    return payload


class _ContentHash:
    """sha256 of an object as it streams past, and of the record payload when it is one, so a
    whole object is checked in one pass whatever its size."""

    def __init__(self) -> None:
        self.whole = hashlib.sha256()
        self.size = 0
        self.head = b""
        self._payload: Any = None

    def update(self, chunk: bytes) -> None:
        self.whole.update(chunk)
        self.size += len(chunk)
        if self._payload is not None:
            self._payload.update(chunk)
        elif len(self.head) < RECORD_HEADER_BYTES:
            need = RECORD_HEADER_BYTES - len(self.head)
            self.head += chunk[:need]
            if len(self.head) == RECORD_HEADER_BYTES and self.head.startswith(RECORD_MAGIC):
                self._payload = hashlib.sha256(chunk[need:])

    def check(self, key: str, url: str, stored_sha256: str = "") -> ObjectInfo:
        """Everything one object can be checked against: its name, its stored checksum and,
        for a record, its envelope."""
        digest = self.whole.hexdigest()
        check_content(key, url, digest, stored_sha256=stored_sha256)
        looks_like_record = self.head.startswith(RECORD_MAGIC) or (bool(self.head) and RECORD_MAGIC.startswith(self.head))
        if looks_like_record and (self._payload is None or self._payload.digest() != self.head[len(RECORD_MAGIC) :]):
            raise _corrupt("record", key, url, "its payload does not match the checksum in its header (truncated or edited)")
        return ObjectInfo(key=key, sha256=digest, size=self.size)


@dataclass(frozen=True)
class CanonicalJSON:
    """A value already encoded by `canonical_json`: a document that holds it gets these bytes
    spliced in as they are. A worker process encodes the large records it makes (where it
    made them, in parallel), and the process that writes the manifest neither unpickles
    nested dicts nor encodes them again; the manifest's bytes are the same. Make one with
    `of`: bytes that are not canonical JSON would end up, unchecked, in a hashed manifest."""

    data: bytes

    @classmethod
    def of(cls, value: Any) -> CanonicalJSON:
        return cls(canonical_json(value))


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no insignificant space: the bytes that get hashed.

    `CanonicalJSON` values inside `obj` are spliced in: encoded first as a placeholder
    string that nothing else can contain (a fresh random tag), which is then replaced."""
    fragments: list[bytes] = []
    tag = ""

    def splice(value: Any) -> str:
        nonlocal tag
        if not isinstance(value, CanonicalJSON):
            raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
        tag = tag or f"\0{uuid.uuid4().hex}\0"
        fragments.append(value.data)
        return tag

    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=splice)
    if not fragments:
        return text.encode("utf-8")
    parts = text.split(json.dumps(tag))  # the placeholder as encoded: "\u0000<hex>\u0000"
    if len(parts) != len(fragments) + 1:  # cannot happen: the tag is random
        raise RuntimeError("canonical_json: placeholder count does not match the spliced values")
    out = [parts[0].encode("utf-8")]
    for fragment, part in zip(fragments, parts[1:]):
        out += (fragment, part.encode("utf-8"))
    return b"".join(out)


class ObjectStore(ABC):
    """Interface every backend implements. Keys are validated by every method."""

    url: str
    bucket: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Write `data` atomically under `key` (replacing an existing object)."""

    @abstractmethod
    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream") -> ObjectInfo:
        """Stream a local file to `key` (multipart for large files on S3)."""

    @abstractmethod
    def get_bytes(self, key: str, expect_sha256: str = "") -> bytes:
        """The object's content; NotFound when absent. IntegrityError when the content does not
        match its content-addressed name, `expect_sha256` (e.g. an ObjectRef's sha256) or the
        checksum stored with it."""

    @abstractmethod
    def get_to_file(self, key: str, path: str | os.PathLike[str], expect_sha256: str = "") -> ObjectInfo:
        """Stream the object into a local file (written atomically, only once it checked out
        as in `get_bytes`); the returned sha256 is that of the bytes written."""

    @abstractmethod
    def verify(self, key: str) -> ObjectInfo:
        """Read the whole object and check it against everything that names its content (its
        key, the stored checksum, a record's envelope): IntegrityError naming it otherwise."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and sha256 of an object; NotFound when absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key starting with `prefix`, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; absent objects are not an error."""

    # Conveniences shared by every backend.

    def put_json(self, key: str, obj: Any) -> ObjectInfo:
        return self.put_bytes(key, canonical_json(obj), content_type="application/json")

    def get_json(self, key: str) -> Any:
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidArgument(f"object {key!r} is not valid JSON: {exc}") from exc

    def put_record(self, key: str, payload: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        """Write `payload` under `key` in a self-checking envelope (magic + sha256 + payload),
        for mutable records that no hash names (step records, job results). Returns the info of
        the stored envelope."""
        return self.put_bytes(key, encode_record(payload), content_type=content_type)

    def get_record(self, key: str) -> bytes:
        """The payload `put_record` wrote; NotFound when absent, IntegrityError naming the key
        when the stored bytes are not an intact record (zero bytes, random bytes, truncated,
        any byte changed)."""
        return decode_record(self.get_bytes(key), key, self.url)

    def put_blob(self, data: bytes, suffix: str = "", content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store `data` under its content hash; a blob already present is not rewritten."""
        digest = sha256_bytes(data)
        key = blob_key(digest, suffix)
        if not self.exists(key):
            self.put_bytes(key, data, content_type=content_type)
        return ObjectInfo(key=key, sha256=digest, size=len(data))

    def put_blobs(self, blobs: Sequence[Blob]) -> builtins.list[ObjectInfo]:  # `list` here is the method above
        """Store many blobs at once (what a worker made for a chunk of images), in the way
        cheapest for the backend; returns their infos in order. Like `put_blob`, the blobs
        are not durable before `flush()`. Every key is checked before anything is written."""
        for blob in blobs:
            validate_key(blob.key)
        infos = []
        for blob in blobs:
            if not self.exists(blob.key):
                self.put_bytes(blob.key, blob.data, content_type=blob.content_type)
            infos.append(blob.info())
        return infos

    def flush(self) -> None:  # noqa: B027 - an optional hook: not every store needs one
        """Make every object written so far durable (FileStore blobs are written without a
        per-file fsync). Called before a commit point such as a dataset manifest. Nothing
        to do for a store whose writes are durable when they return (S3)."""

    @property
    def needs_flush(self) -> bool:
        """Whether `flush` does anything (a backend that overrides it); callers that would
        run it in a thread skip the thread otherwise."""
        return type(self).flush is not ObjectStore.flush

    def check_bucket(self, bucket: str, what: str = "object") -> None:
        """A reference from another component must point into this store."""
        if bucket and bucket != self.bucket:
            raise InvalidArgument(f"{what} lives in bucket {bucket!r}, but this service's store is {self.bucket!r}")


class BackgroundFlush:
    """Flushes a store now and then while a job writes blobs, so that the flush before its
    manifest finds little left to write.

    A file store's blobs are written without fsync and stay dirty in the page cache until
    `flush()` (the kernel writes them back only after ~30 s); a 3000-image job leaves ~100 MB
    for the flush at its commit, a wait of 0.1-0.5 s with every core idle. Flushing in a
    thread every `interval_s` seconds overlaps that disk I/O with the composing (syncfs
    waits on the disk, not the CPU). Only a speed-up: an error here is logged and left to the
    flush at the commit, which must succeed. A store whose flush does nothing gets no thread.
    """

    def __init__(self, store: ObjectStore, interval_s: float = 1.0):
        self.store = store
        self.interval_s = interval_s
        self._pool: ThreadPoolExecutor | None = None
        if store.needs_flush:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="background-flush")
        self._running: Future[None] | None = None
        self._last = time.monotonic()

    def poke(self) -> None:
        """Start a flush if none is running and `interval_s` passed since the last one started."""
        if self._pool is None or (self._running is not None and not self._running.done()):
            return
        if time.monotonic() - self._last >= self.interval_s:
            self._last = time.monotonic()
            self._running = self._pool.submit(self._flush)

    def _flush(self) -> None:
        try:
            self.store.flush()
        except OSError:
            log.warning("background flush of %s failed; the commit's flush will retry", self.store.url, exc_info=True)

    def close(self) -> None:
        """Wait for a running flush (the commit's own flush follows)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> BackgroundFlush:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileStore(ObjectStore):
    """Objects as files under a root folder; atomic by write-to-temporary + rename."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"
        self.bucket = str(self.root)
        self._blob_dirs: set[str] = set()  # blob folders known to exist (no mkdir per blob)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _atomic_write(self, key: str, fill: Callable[[BinaryIO], object], durable: bool = True) -> ObjectInfo:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{uuid.uuid4().hex}"
        hasher = hashlib.sha256()
        size = 0

        class _Hashing(io.RawIOBase):
            def __init__(self, raw: BinaryIO):
                self.raw = raw

            def writable(self) -> bool:
                return True

            def write(self, b: Any) -> int:  # type: ignore[override]
                nonlocal size
                hasher.update(b)
                size += len(b)
                return self.raw.write(b)

        try:
            with open(tmp, "wb") as raw:
                fill(_Hashing(raw))  # type: ignore[arg-type]
                raw.flush()
                if durable:
                    os.fsync(raw.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return ObjectInfo(key=key, sha256=hasher.hexdigest(), size=size)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        return self._atomic_write(key, lambda f: f.write(data))

    def put_blob(self, data: bytes, suffix: str = "", content_type: str = "application/octet-stream") -> ObjectInfo:
        """Blobs skip the per-file fsync (it would cost more than composing the image): the
        writer of a manifest calls `flush()` once before the manifest that names them."""
        return self._write_blob(Blob(data, suffix, content_type))

    def put_blobs(self, blobs: Sequence[Blob]) -> list[ObjectInfo]:
        for blob in blobs:  # every key is checked before anything is written
            validate_key(blob.key)
        return [self._write_blob(blob) for blob in blobs]

    def _write_blob(self, blob: Blob) -> ObjectInfo:
        """Atomic like every write (`write_new_file`: an unnamed file linked at its name), but
        with the least work per file: the bytes were hashed when the Blob was made, the folder
        is created once per store object, and no fsync (see `flush`). A blob already present
        is not rewritten."""
        key = validate_key(blob.key)
        folder = os.path.join(self.root, key.rsplit("/", 1)[0])
        path = os.path.join(self.root, key)
        if os.path.isfile(path):
            return blob.info()
        if folder not in self._blob_dirs:
            os.makedirs(folder, exist_ok=True)
            self._blob_dirs.add(folder)
        write_new_file(path, blob.data)
        return blob.info()

    def flush(self) -> None:
        """syncfs(2) of the store's file system (once per dataset; it also covers blobs that
        worker processes wrote); os.sync() where syncfs is not available."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream") -> ObjectInfo:
        def fill(out: BinaryIO) -> None:
            with open(path, "rb") as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)

        return self._atomic_write(key, fill)

    def get_bytes(self, key: str, expect_sha256: str = "") -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object {key!r} not found in {self.url}") from None
        if expect_sha256 or named_digest(key):  # only hash what can be checked
            check_content(key, self.url, sha256_bytes(data), expect_sha256)
        return data

    def get_to_file(self, key: str, path: str | os.PathLike[str], expect_sha256: str = "") -> ObjectInfo:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"object {key!r} not found in {self.url}")
        hasher = _ContentHash()
        with open(src, "rb") as f:
            info = _write_checked(Path(path), _chunks(f), hasher,
                                  lambda: check_content(key, self.url, hasher.whole.hexdigest(), expect_sha256))
        return ObjectInfo(key=key, sha256=info[0], size=info[1])

    def verify(self, key: str) -> ObjectInfo:
        path = self._path(key)
        hasher = _ContentHash()
        try:
            with open(path, "rb") as f:
                for chunk in _chunks(f):
                    hasher.update(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object {key!r} not found in {self.url}") from None
        return hasher.check(key, self.url)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"object {key!r} not found in {self.url}")
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        return ObjectInfo(key=key, sha256=hasher.hexdigest(), size=path.stat().st_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        # Walk only the folder the prefix points into.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk


def _write_checked(dest: Path, chunks: Iterable[bytes], hasher: _ContentHash, check: Callable[[], None]) -> tuple[str, int]:
    """Write `chunks` to `dest` atomically, hashing on the way; `check` runs before the file
    appears, so a corrupt object never lands at `dest`. Returns (sha256, size)."""
    tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
        check()
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hasher.whole.hexdigest(), hasher.size


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def read_secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from NAME, or from the file named by NAME_FILE (a mounted secret). The S3
    credentials here and the API token (services/common/security.py) are read this way."""
    if env.get(name):
        return env[name]
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {name}_FILE={file_name!r}: {exc}") from exc
    return None


#: Seconds an S3 store keeps retrying a call that gets no answer (connection refused or
#: reset, time-outs, 5xx) before it gives up: long enough to ride out a MinIO restart.
DEFAULT_RETRY_SECONDS = 90.0
RETRY_ENV = "SYNTHAUG_STORE_RETRY_SECONDS"


@dataclass(frozen=True)
class RetryPolicy:
    """Retry with exponential backoff until `total_seconds` have passed since the first try."""

    total_seconds: float = DEFAULT_RETRY_SECONDS
    base_delay: float = 0.2
    max_delay: float = 5.0


def _server_side(exc: Exception) -> bool:
    """Whether an error answer is the server's trouble (5xx: starting up, overloaded, a proxy
    with no backend), worth retrying, rather than a verdict on the request."""
    status = getattr(getattr(exc, "response", None), "status", None)  # S3Error
    if status is None:
        status = getattr(exc, "_code", None)  # InvalidResponseError: a non-XML answer
    return isinstance(status, int) and status >= 500


def _reason(exc: BaseException) -> str:
    """The cause of a failed call in a few words (urllib3 wraps it: MaxRetryError → reason →
    "HTTPConnection(host=…): Failed to establish a new connection: [Errno 111] …")."""
    cause = getattr(exc, "reason", None) or exc
    text = (str(cause).strip().splitlines() or [""])[0]
    return text.rsplit("): ", 1)[-1][:200] or type(cause).__name__


class S3Store(ObjectStore):
    """S3/MinIO through the `minio` client, with timeouts and retries with backoff."""

    PART_SIZE = 16 * 1024 * 1024
    #: PUTs in flight at once in `put_blobs` (the HTTP pool holds 32 connections).
    CONCURRENT_PUTS = 16

    def __init__(
        self,
        bucket: str,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
    ):
        import urllib3
        from minio import Minio

        self.bucket = bucket
        self.endpoint = endpoint
        self.url = f"s3://{bucket}?endpoint={endpoint}&secure={int(secure)}"
        self.retry = retry
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=32,
            retries=False,  # one retry loop, _with_retry's: its budget, its backoff, its one-line error
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http)
        self._ensure_bucket()

    def _with_retry(self, what: str, op: Callable[[], T]) -> T:
        """Retry calls that got no answer (connection refused or reset, time-outs, 5xx) with
        exponential backoff for `retry.total_seconds`, then StoreUnavailable: one line naming
        the endpoint and the setting to check. Retries are logged at INFO, so a service log
        shows them and the CLI stays quiet until it either succeeds or gives up."""
        import urllib3
        from minio.error import InvalidResponseError, S3Error, ServerError

        delay = self.retry.base_delay
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = op()
            except (S3Error, InvalidResponseError) as exc:
                if not _server_side(exc):
                    raise  # a definite answer from the server (NoSuchKey, AccessDenied, ...)
                failure: Exception = exc
            except (ServerError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                failure = exc
            else:
                if attempt > 1:
                    log.info("store %s: %s answered after %d attempts", what, self.endpoint, attempt)
                return result
            waited = time.monotonic() - start
            if waited + delay > self.retry.total_seconds:
                raise StoreUnavailable(
                    f"object store {self.endpoint} unreachable ({_reason(failure)}) after {attempt} attempt{'s' * (attempt > 1)} "
                    f"in {waited:.0f} s: check the endpoint in SYNTHAUG_STORE / --store ({self.url}) and that the server is running "
                    f"(retry time: {RETRY_ENV}={self.retry.total_seconds:g})"
                ) from None
            log.info("store %s: %s unreachable (%s); retry %d in %.1f s", what, self.endpoint, _reason(failure), attempt, delay)
            time.sleep(delay)
            delay = min(delay * 2, self.retry.max_delay)

    def _ensure_bucket(self) -> None:
        from minio.error import S3Error

        if self._with_retry("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
            return
        try:
            self._with_retry("make_bucket", lambda: self.client.make_bucket(self.bucket))
        except S3Error as exc:  # another replica created it first
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def _missing(self, exc: Exception, key: str) -> Exception:
        from minio.error import S3Error

        if isinstance(exc, S3Error) and exc.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchBucket"):
            return NotFound(f"object {key!r} not found in {self.url}")
        return exc

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectInfo:
        validate_key(key)
        return self._put(key, data, content_type, sha256_bytes(data))

    def _put(self, key: str, data: bytes, content_type: str, digest: str) -> ObjectInfo:
        """One PUT (single part) of `data` with its sha256 as metadata."""
        self._with_retry(
            f"put {key}",
            lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata={"sha256": digest}
            ),
        )
        return ObjectInfo(key=key, sha256=digest, size=len(data))

    def put_blobs(self, blobs: Sequence[Blob]) -> list[ObjectInfo]:
        """Concurrent single-part PUTs (up to CONCURRENT_PUTS at a time): a round trip per
        blob, overlapped, and no HEAD first: re-putting bytes under their own hash leaves
        the object as it was, and costs less than asking whether it is there."""
        for blob in blobs:
            validate_key(blob.key)
        if len(blobs) <= 1:
            return [self._put(b.key, b.data, b.content_type, b.sha256) for b in blobs]
        with ThreadPoolExecutor(min(self.CONCURRENT_PUTS, len(blobs)), thread_name_prefix="s3-put") as pool:
            return list(pool.map(lambda b: self._put(b.key, b.data, b.content_type, b.sha256), blobs))

    def put_file(self, key: str, path: str | os.PathLike[str], content_type: str = "application/octet-stream") -> ObjectInfo:
        validate_key(key)
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                hasher.update(chunk)
        digest = hasher.hexdigest()
        size = os.path.getsize(path)
        self._with_retry(
            f"put {key}",
            lambda: self.client.fput_object(
                self.bucket, key, str(path), content_type=content_type, metadata={"sha256": digest}, part_size=self.PART_SIZE
            ),
        )
        return ObjectInfo(key=key, sha256=digest, size=size)

    def _get(self, key: str, consume: Callable[[Any], T]) -> tuple[T, str]:
        """GET `key` and hand the response to `consume`; returns its result and the sha256 the
        object was stored with ('' when written by another tool)."""
        validate_key(key)

        def op() -> tuple[T, str]:
            response = self.client.get_object(self.bucket, key)
            try:
                return consume(response), response.headers.get("x-amz-meta-sha256", "")
            finally:
                response.close()
                response.release_conn()

        try:
            return self._with_retry(f"get {key}", op)
        except Exception as exc:
            missing = self._missing(exc, key)
            if missing is exc:
                raise
            raise missing from exc

    def get_bytes(self, key: str, expect_sha256: str = "") -> bytes:
        data, stored = self._get(key, lambda response: response.read())
        check_content(key, self.url, sha256_bytes(data), expect_sha256, stored)
        return data

    def get_to_file(self, key: str, path: str | os.PathLike[str], expect_sha256: str = "") -> ObjectInfo:
        def consume(response: Any) -> tuple[str, int]:
            hasher = _ContentHash()
            stored = response.headers.get("x-amz-meta-sha256", "")
            return _write_checked(Path(path), response.stream(_CHUNK), hasher,
                                  lambda: check_content(key, self.url, hasher.whole.hexdigest(), expect_sha256, stored))

        (digest, size), _stored = self._get(key, consume)
        return ObjectInfo(key=key, sha256=digest, size=size)

    def verify(self, key: str) -> ObjectInfo:
        def consume(response: Any) -> _ContentHash:
            hasher = _ContentHash()
            for chunk in response.stream(_CHUNK):
                hasher.update(chunk)
            return hasher

        hasher, stored = self._get(key, consume)
        return hasher.check(key, self.url, stored)

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            st = self._with_retry(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        except Exception as exc:
            raise self._missing(exc, key) from exc
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        digest = meta.get("x-amz-meta-sha256", "")
        return ObjectInfo(key=key, sha256=digest, size=int(st.size or 0))

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
            return True
        except NotFound:
            return False

    def list(self, prefix: str = "") -> list[str]:
        validate_prefix(prefix)
        objects = self._with_retry(
            f"list {prefix}", lambda: list(self.client.list_objects(self.bucket, prefix=prefix or None, recursive=True))
        )
        return sorted(o.object_name for o in objects if not o.is_dir)

    def delete(self, key: str) -> None:
        validate_key(key)
        self._with_retry(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))


def open_store(url: str | None = None, env: dict[str, str] | None = None) -> ObjectStore:
    """The store named by `url`, else $SYNTHAUG_STORE, else ./.synthaug/store.

    `file://ROOT` (absolute `file:///data` or relative `file://.synthaug/store`), a plain path,
    or `s3://BUCKET?endpoint=HOST:PORT&secure=0|1[&region=R]` with credentials from
    SYNTHAUG_S3_ACCESS_KEY / SYNTHAUG_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY), each also readable from a mounted file named by `…_FILE`. S3 calls
    that get no answer are retried for SYNTHAUG_STORE_RETRY_SECONDS (default 90), then fail
    with StoreUnavailable.
    """
    env = dict(os.environ if env is None else env)
    url = url or env.get(STORE_ENV) or DEFAULT_STORE_URL
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        root = (parsed.netloc + parsed.path) if parsed.scheme else url
        if not root:
            raise InvalidArgument(f"store URL {url!r} names no folder")
        return FileStore(root)
    if parsed.scheme == "s3":
        bucket = parsed.netloc
        if not bucket:
            raise InvalidArgument(f"store URL {url!r} names no bucket (s3://BUCKET?endpoint=HOST:PORT)")
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        endpoint = query.get("endpoint") or env.get("SYNTHAUG_S3_ENDPOINT")
        if not endpoint:
            raise InvalidArgument(f"store URL {url!r} has no endpoint=HOST:PORT (or set SYNTHAUG_S3_ENDPOINT)")
        secure_text = query.get("secure", env.get("SYNTHAUG_S3_SECURE", "0")).lower()
        if secure_text not in ("0", "1", "true", "false"):
            raise InvalidArgument(f"store URL {url!r}: secure must be 0 or 1")
        access = read_secret(env, "SYNTHAUG_S3_ACCESS_KEY") or read_secret(env, "AWS_ACCESS_KEY_ID")
        secret = read_secret(env, "SYNTHAUG_S3_SECRET_KEY") or read_secret(env, "AWS_SECRET_ACCESS_KEY")
        retry_text = env.get("SYNTHAUG_STORE_RETRY_SECONDS") or str(DEFAULT_RETRY_SECONDS)
        try:
            retry_seconds = float(retry_text)
        except ValueError:
            raise InvalidArgument(f"{RETRY_ENV}={retry_text!r} is not a number of seconds") from None
        if not access or not secret:
            raise InvalidArgument("S3 store needs credentials: set SYNTHAUG_S3_ACCESS_KEY and SYNTHAUG_S3_SECRET_KEY (or their _FILE variants)")
        return S3Store(
            bucket,
            endpoint,
            access,
            secret,
            secure=secure_text in ("1", "true"),
            region=query.get("region") or env.get("SYNTHAUG_S3_REGION") or None,
            retry=RetryPolicy(total_seconds=max(0.0, retry_seconds)),
        )
    raise InvalidArgument(f"unsupported store URL {url!r}: use file://ROOT or s3://BUCKET?endpoint=HOST:PORT")
