"""Object store: one interface, two backends.

`file://ROOT` is the embedded default (one machine, no server); `s3://BUCKET?endpoint=HOST:PORT&secure=0|1`
talks to MinIO or any S3 through the `minio` client. Services only ever see `ObjectStore`, so
the code that runs in a test against a folder is the code that runs in a cluster.

Conventions: keys are validated (`validate_key`); writes are atomic (a reader never sees a
half-written object); large payloads are content-addressed blobs (`put_blob`) so that the
same bytes are stored once and a key names its content.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, TypeVar
from urllib.parse import parse_qs, urlparse

from services.common.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

STORE_ENV = "SYNTHAUG_STORE"
DEFAULT_STORE_URL = "file://.synthaug/store"
MAX_KEY_BYTES = 1024
_CHUNK = 1 << 20
BLOB_PREFIX = "blobs/sha256"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows of one object."""

    key: str
    sha256: str
    size: int


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


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no insignificant space: the bytes that get hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


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
    def get_bytes(self, key: str) -> bytes:
        """The object's content; NotFound when absent."""

    @abstractmethod
    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        """Stream the object into a local file (written atomically)."""

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

    def put_blob(self, data: bytes, suffix: str = "", content_type: str = "application/octet-stream") -> ObjectInfo:
        """Store `data` under its content hash; a blob already present is not rewritten."""
        digest = sha256_bytes(data)
        key = blob_key(digest, suffix)
        if not self.exists(key):
            self.put_bytes(key, data, content_type=content_type)
        return ObjectInfo(key=key, sha256=digest, size=len(data))

    def flush(self) -> None:
        """Make every object written so far durable (FileStore blobs are written without a
        per-file fsync). Called before a commit point such as a dataset manifest."""

    def check_bucket(self, bucket: str, what: str = "object") -> None:
        """A reference from another component must point into this store."""
        if bucket and bucket != self.bucket:
            raise InvalidArgument(f"{what} lives in bucket {bucket!r}, but this service's store is {self.bucket!r}")


class FileStore(ObjectStore):
    """Objects as files under a root folder; atomic by write-to-temporary + rename."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = f"file://{self.root}"
        self.bucket = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _atomic_write(self, key: str, fill: Callable[[BinaryIO], None], durable: bool = True) -> ObjectInfo:
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
        digest = sha256_bytes(data)
        key = blob_key(digest, suffix)
        if not self.exists(key):
            self._atomic_write(key, lambda f: f.write(data), durable=False)
        return ObjectInfo(key=key, sha256=digest, size=len(data))

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

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"object {key!r} not found in {self.url}") from None

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"object {key!r} not found in {self.url}")
        dest = Path(path)
        tmp = dest.parent / f".tmp-{uuid.uuid4().hex}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
        return self.stat(key)

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


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_syncfs = _load_syncfs()


def _read_secret(env: dict[str, str], name: str) -> str | None:
    """A credential from NAME, or from the file named by NAME_FILE (a mounted secret)."""
    if env.get(name):
        return env[name]
    file_name = env.get(f"{name}_FILE")
    if file_name:
        try:
            return Path(file_name).read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read {name}_FILE={file_name!r}: {exc}") from exc
    return None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2
    max_delay: float = 5.0


class S3Store(ObjectStore):
    """S3/MinIO through the `minio` client, with timeouts and retries with backoff."""

    PART_SIZE = 16 * 1024 * 1024

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
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http)
        self._ensure_bucket()

    def _with_retry(self, what: str, op: Callable[[], T]) -> T:
        """Retry transient failures (connection errors, 5xx) with exponential backoff."""
        import urllib3
        from minio.error import S3Error, ServerError

        delay = self.retry.base_delay
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return op()
            except S3Error:
                raise  # a definite answer from the server (NoSuchKey, AccessDenied, ...)
            except (ServerError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                if attempt == self.retry.attempts:
                    raise
                log.warning("store %s failed (attempt %d/%d): %s; retrying in %.1fs", what, attempt, self.retry.attempts, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.retry.max_delay)
        raise AssertionError("unreachable")

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
        digest = sha256_bytes(data)
        self._with_retry(
            f"put {key}",
            lambda: self.client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata={"sha256": digest}
            ),
        )
        return ObjectInfo(key=key, sha256=digest, size=len(data))

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

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)

        def op() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        try:
            return self._with_retry(f"get {key}", op)
        except Exception as exc:
            raise self._missing(exc, key) from exc

    def get_to_file(self, key: str, path: str | os.PathLike[str]) -> ObjectInfo:
        validate_key(key)
        try:
            self._with_retry(f"get {key}", lambda: self.client.fget_object(self.bucket, key, str(path)))
        except Exception as exc:
            raise self._missing(exc, key) from exc
        return self.stat(key)

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
    AWS_SECRET_ACCESS_KEY), each also readable from a mounted file named by `…_FILE`.
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
        access = _read_secret(env, "SYNTHAUG_S3_ACCESS_KEY") or _read_secret(env, "AWS_ACCESS_KEY_ID")
        secret = _read_secret(env, "SYNTHAUG_S3_SECRET_KEY") or _read_secret(env, "AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            raise InvalidArgument("S3 store needs credentials: set SYNTHAUG_S3_ACCESS_KEY and SYNTHAUG_S3_SECRET_KEY (or their _FILE variants)")
        return S3Store(
            bucket,
            endpoint,
            access,
            secret,
            secure=secure_text in ("1", "true"),
            region=query.get("region") or env.get("SYNTHAUG_S3_REGION") or None,
        )
    raise InvalidArgument(f"unsupported store URL {url!r}: use file://ROOT or s3://BUCKET?endpoint=HOST:PORT")
