"""Both store backends behave the same: round trips, listing, blobs, errors, key validation."""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.store import (
    BackgroundFlush,
    Blob,
    CanonicalJSON,
    FileStore,
    ObjectStore,
    S3Store,
    blob_key,
    canonical_json,
    open_store,
    validate_key,
)


def test_round_trip_and_stat(store: ObjectStore) -> None:
    info = store.put_bytes("a/b/c.bin", b"hello")
    assert info.sha256 == hashlib.sha256(b"hello").hexdigest()
    assert info.size == 5
    assert store.get_bytes("a/b/c.bin") == b"hello"
    st = store.stat("a/b/c.bin")
    assert (st.sha256, st.size) == (info.sha256, 5)
    assert store.exists("a/b/c.bin") and not store.exists("a/b/d.bin")


def test_overwrite_replaces_content(store: ObjectStore) -> None:
    store.put_bytes("x", b"one")
    store.put_bytes("x", b"two")
    assert store.get_bytes("x") == b"two"


def test_list_is_sorted_and_prefixed(store: ObjectStore) -> None:
    for key in ["p/2", "p/1", "p/sub/3", "q/1", "pp/1"]:
        store.put_bytes(key, key.encode())
    assert store.list("p/") == ["p/1", "p/2", "p/sub/3"]
    assert store.list("p") == ["p/1", "p/2", "p/sub/3", "pp/1"]
    assert store.list("nothing/") == []
    assert len(store.list()) == 5


def test_missing_object_is_not_found(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.get_bytes("nope")
    with pytest.raises(NotFound):
        store.stat("nope")
    with pytest.raises(NotFound):
        store.get_to_file("nope", tmp_path / "out")
    store.delete("nope")  # deleting an absent object is fine


def test_large_file_streams_and_round_trips(store: ObjectStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * (80 * 1024)  # 20 MiB: above the S3 part size
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    info = store.put_file("big/file.bin", src)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    out = tmp_path / "copy.bin"
    store.get_to_file("big/file.bin", out)
    assert out.read_bytes() == data
    assert store.stat("big/file.bin").sha256 == info.sha256


def test_blob_is_content_addressed_and_written_once(store: ObjectStore) -> None:
    a = store.put_blob(b"pixels", suffix="png")
    b = store.put_blob(b"pixels", suffix=".png")
    assert a == b
    assert a.key == blob_key(hashlib.sha256(b"pixels").hexdigest(), ".png")
    assert store.get_bytes(a.key) == b"pixels"


def test_put_blobs_stores_a_batch_under_content_hashes(store: ObjectStore) -> None:
    blobs = [Blob(b"one", ".jpg", "image/jpeg"), Blob(b"two", "png"), Blob(b"one", ".jpg", "image/jpeg")]
    assert blobs[0].sha256 == hashlib.sha256(b"one").hexdigest()
    assert blobs[1].key == blob_key(hashlib.sha256(b"two").hexdigest(), ".png")
    infos = store.put_blobs(blobs)
    assert [i.key for i in infos] == [b.key for b in blobs]  # in order, duplicates included
    assert [i.sha256 for i in infos] == [b.sha256 for b in blobs] and [i.size for i in infos] == [3, 3, 3]
    assert store.get_bytes(infos[0].key) == b"one" and store.get_bytes(infos[1].key) == b"two"
    assert store.put_blob(b"two", ".png") == infos[1]  # the same object as one put_blob writes
    assert sorted(store.list("blobs/")) == sorted({b.key for b in blobs})
    assert store.put_blobs([]) == []


def test_put_blobs_checks_keys_before_writing(store: ObjectStore) -> None:
    with pytest.raises(InvalidArgument, match=r"'\.\.'"):
        store.put_blobs([Blob(b"fine", ".png"), Blob(b"escape", "/../../outside")])
    assert store.list("") == []  # nothing written: every key is checked first


def test_file_store_put_blobs_keeps_an_existing_blob(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    first = store.put_blobs([Blob(b"pixels", ".png")])[0]
    path = store.root / first.key
    before = path.stat()
    assert store.put_blobs([Blob(b"pixels", ".png")])[0] == first
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]  # no temporary left


def test_json_helpers(store: ObjectStore) -> None:
    store.put_json("j.json", {"b": 1, "a": [1, 2]})
    assert store.get_bytes("j.json") == b'{"a":[1,2],"b":1}'
    assert store.get_json("j.json") == {"a": [1, 2], "b": 1}
    store.put_bytes("bad.json", b"{not json")
    with pytest.raises(InvalidArgument, match="bad.json"):
        store.get_json("bad.json")


def test_background_flush_runs_one_flush_at_a_time_and_never_fails_the_job(tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    class SlowStore(FileStore):
        def __init__(self, root: Path, fail: bool = False):
            super().__init__(root)
            self.fail, self.started, self.finished = fail, 0, 0
            self.release = threading.Event()

        def flush(self) -> None:
            self.started += 1
            self.release.wait(5)
            self.finished += 1
            if self.fail:
                raise OSError(5, "Input/output error")

    store = SlowStore(tmp_path / "a")
    with BackgroundFlush(store, interval_s=0.0) as flusher:
        flusher.poke()
        flusher.poke()  # one is running: no second
        assert store.started == 1
        store.release.set()
    assert store.finished == 1  # close() waited for it
    failing = SlowStore(tmp_path / "b", fail=True)
    failing.release.set()
    with caplog.at_level(logging.WARNING), BackgroundFlush(failing, interval_s=0.0) as flusher:
        flusher.poke()
    assert failing.finished == 1 and "background flush" in caplog.text  # logged, not raised
    idle = SlowStore(tmp_path / "c")
    with BackgroundFlush(idle, interval_s=3600) as flusher:
        flusher.poke()  # the interval has not passed
    assert idle.started == 0

    class NoFlush(FileStore):
        flush = ObjectStore.flush  # a store whose writes are durable at once (S3)

    with BackgroundFlush(NoFlush(tmp_path / "d"), interval_s=0.0) as flusher:
        flusher.poke()
        assert not [t for t in threading.enumerate() if t.name.startswith("background-flush")]


def test_canonical_json_splices_pre_encoded_values_to_the_same_bytes() -> None:
    """A document with values encoded beforehand (CanonicalJSON) gets exactly the bytes of
    encoding it whole, wherever they sit (nested, in lists, side by side), also beside
    strings that hold NUL characters like the placeholder does."""
    inner = {"b": [1.5, None, "x\u00e9", 1e-17], "a": {"y": True, "x": -2}}
    whole = {"z": inner, "a": [3, {"k": []}, inner, inner], "s": "\x00tricky\x00", "e": "é"}
    spliced = {"z": CanonicalJSON(canonical_json(inner)),
               "a": [CanonicalJSON(b"3"), {"k": CanonicalJSON(canonical_json([]))},
                     CanonicalJSON(canonical_json(inner)), CanonicalJSON(canonical_json(inner))],
               "s": "\x00tricky\x00", "e": "é"}
    assert canonical_json(spliced) == canonical_json(whole)
    assert json.loads(canonical_json(spliced)) == whole
    shared = CanonicalJSON.of(inner)  # one instance in several places, and a whole document
    assert canonical_json({"x": shared, "y": [shared, shared]}) == canonical_json({"x": inner, "y": [inner, inner]})
    assert canonical_json(shared) == canonical_json(inner) and shared.data == canonical_json(inner)
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        canonical_json({"a": {1, 2}})
    with pytest.raises(TypeError, match="keys must be"):  # never a key
        canonical_json({shared: 1})


@pytest.mark.parametrize(
    "key",
    ["", "/abs", "a/../b", "..", "a//b", "./a", "a\\b", "a\x00b", "a\nb", "C:/x", "a/.tmp-123", "x" * 1100],
)
def test_bad_keys_are_rejected_with_the_key_named(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid object key"):
        store.put_bytes(key, b"x")
    with pytest.raises(InvalidArgument):
        validate_key(key)


def test_file_store_writes_atomically(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    class Boom(Exception):
        pass

    def fill(out) -> None:  # type: ignore[no-untyped-def]
        out.write(b"partial")
        raise Boom()

    with pytest.raises(Boom):
        store._atomic_write("obj", fill)
    assert not store.exists("obj")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_open_store_by_url(tmp_path: Path, s3_env: str) -> None:
    fs = open_store(f"file://{tmp_path}/root")
    assert isinstance(fs, FileStore) and fs.root == (tmp_path / "root").resolve()
    s3 = open_store(s3_env)
    assert isinstance(s3, S3Store)
    s3.put_bytes("k", b"v")
    assert open_store(s3_env).get_bytes("k") == b"v"  # bucket created once, reused


def test_open_store_from_environment(tmp_path: Path) -> None:
    store = open_store(env={"SYNTHAUG_STORE": f"file://{tmp_path}/envroot"})
    assert isinstance(store, FileStore) and store.root.name == "envroot"


def test_s3_credentials_from_mounted_files(tmp_path: Path, s3_endpoint: str) -> None:
    (tmp_path / "user").write_text("synthaug-test\n")
    (tmp_path / "pass").write_text("synthaug-test-secret\n")
    env = {
        "SYNTHAUG_S3_ACCESS_KEY_FILE": str(tmp_path / "user"),
        "SYNTHAUG_S3_SECRET_KEY_FILE": str(tmp_path / "pass"),
    }
    store = open_store(f"s3://mounted?endpoint={s3_endpoint}", env=env)
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


@pytest.mark.parametrize(
    "url, message",
    [
        ("ftp://x", "unsupported store URL"),
        ("s3://?endpoint=h:1", "names no bucket"),
        ("s3://b", "no endpoint"),
        ("s3://b?endpoint=h:1&secure=maybe", "secure must be"),
        ("s3://b?endpoint=h:1", "needs credentials"),
    ],
)
def test_bad_store_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        open_store(url, env={})


def test_check_bucket(file_store: FileStore) -> None:
    file_store.check_bucket("")
    file_store.check_bucket(file_store.bucket)
    with pytest.raises(InvalidArgument, match="other-bucket"):
        file_store.check_bucket("other-bucket")
