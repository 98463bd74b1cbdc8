"""Every read of a content-addressed object or a record is checked; corruption is an error
naming the key (and the way out), never garbage pixels or an empty result. Both backends."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from services.common.datasets import Dataset, DatasetWriter, manifest_key
from services.common.errors import IntegrityError, NotFound, error_code
from services.common.imageio import encode_png
from services.common.store import (
    RECORD_HEADER_BYTES,
    FileStore,
    ObjectStore,
    S3Store,
    canonical_json,
    sha256_bytes,
)

ADVICE = "synthaug store verify --repair"


def tamper(store: ObjectStore, key: str, data: bytes) -> None:
    """Replace an object's bytes behind the store's back, as disk corruption or a hand edit
    would: the FileStore's file itself; on S3 a raw PUT by another tool (no sha256 metadata)."""
    if isinstance(store, FileStore):
        (store.root / key).write_bytes(data)
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(store.bucket, key, io.BytesIO(data), len(data))


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def small_dataset(store: ObjectStore, name: str = "toy") -> Dataset:
    rng = np.random.default_rng(0)
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name=name)
    for i in range(2):
        masks = np.zeros((2, 16, 16), bool)
        masks[0, 2:6, 2:6] = masks[1, 9:14, 8:15] = True
        writer.add(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), masks, [1, 1], f"img{i}.png")
    return Dataset.load(store, writer.finish())


def test_flipped_blob_byte_is_an_error_naming_the_key(store: ObjectStore, tmp_path: Path) -> None:
    png = encode_png(np.full((8, 8, 3), 200, np.uint8))
    info = store.put_blob(png, suffix=".png")
    assert store.get_bytes(info.key) == png
    tamper(store, info.key, flip(png, len(png) // 2))
    with pytest.raises(IntegrityError) as exc:
        store.get_bytes(info.key)
    assert info.key in str(exc.value) and ADVICE in str(exc.value) and "blob" in str(exc.value)
    assert exc.value.key == info.key and error_code(exc.value) == "DATA_LOSS"
    dest = tmp_path / "out" / "copy.png"
    dest.parent.mkdir()
    with pytest.raises(IntegrityError, match="corrupt"):
        store.get_to_file(info.key, dest)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temporary is left behind
    with pytest.raises(IntegrityError):
        store.verify(info.key)


def test_intact_blob_streams_to_a_file_with_its_hash(store: ObjectStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # > one read chunk
    info = store.put_blob(data, suffix=".bin")
    got = store.get_to_file(info.key, tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == data and (got.sha256, got.size) == (info.sha256, len(data))
    assert store.verify(info.key).sha256 == info.sha256


def test_caller_expected_sha256_is_checked(store: ObjectStore, tmp_path: Path) -> None:
    info = store.put_bytes("reports/r1/results.json", b'{"iou": 0.975}')
    assert store.get_bytes(info.key, expect_sha256=info.sha256) == b'{"iou": 0.975}'
    tamper(store, info.key, b'{"iou": 0.000}')
    with pytest.raises(IntegrityError, match=r"results.json.*the reference to it records sha256"):
        store.get_bytes(info.key, expect_sha256=info.sha256)
    with pytest.raises(IntegrityError):
        store.get_to_file(info.key, tmp_path / "r.json", expect_sha256=info.sha256)


def test_s3_objects_are_checked_against_their_stored_sha256(s3_store: S3Store) -> None:
    info = s3_store.put_bytes("runs/x/summary.json", b"{}")
    s3_store.client.put_object(s3_store.bucket, info.key, io.BytesIO(b"{ }"), 3, metadata={"sha256": info.sha256})
    with pytest.raises(IntegrityError, match="the checksum stored with it"):
        s3_store.get_bytes(info.key)
    with pytest.raises(IntegrityError):
        s3_store.verify(info.key)


def test_record_round_trip(store: ObjectStore) -> None:
    store.put_record("steps/abc.pb", b"payload bytes")
    assert store.get_record("steps/abc.pb") == b"payload bytes"
    store.put_record("steps/empty.pb", b"")
    assert store.get_record("steps/empty.pb") == b""  # an empty payload is fine when it was written so
    with pytest.raises(NotFound):
        store.get_record("steps/absent.pb")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda env: b"", "empty"),
        (lambda env: np.random.default_rng(7).bytes(200), "not a synthaug record"),
        (lambda env: env[:-3], "does not match the checksum"),
        (lambda env: env[: RECORD_HEADER_BYTES - 5], "truncated"),
        (lambda env: flip(env, len(env) - 4), "does not match the checksum"),
        (lambda env: flip(env, 12), "does not match the checksum"),  # a byte of the checksum itself
        (lambda env: b"\x0a\x00" + env[RECORD_HEADER_BYTES:], "not a synthaug record"),  # a bare protobuf
    ],
    ids=["zero-bytes", "random-bytes", "truncated", "truncated-header", "flipped-payload", "flipped-checksum", "no-envelope"],
)
def test_damaged_record_is_an_error_naming_the_key(store: ObjectStore, damage, message: str) -> None:  # type: ignore[no-untyped-def]
    key = "jobs/0123/result.pb"
    store.put_record(key, b"\x0a\x10a job result payload")
    envelope = (store.root / key).read_bytes() if isinstance(store, FileStore) else store.get_bytes(key)
    tamper(store, key, damage(envelope))
    with pytest.raises(IntegrityError, match=message) as exc:
        store.get_record(key)
    assert key in str(exc.value) and ADVICE in str(exc.value)


def test_edited_manifest_is_an_error_naming_the_key(store: ObjectStore) -> None:
    ds = small_dataset(store)
    key = manifest_key(ds.id)
    edited = json.loads(store.get_bytes(key))
    edited["annotations"].pop()  # an annotation removed, as a hand edit would
    tamper(store, key, canonical_json(edited))
    for ref in ("toy", ds.id):
        with pytest.raises(IntegrityError) as exc:
            Dataset.load(store, ref)
        assert key in str(exc.value) and "dataset manifest" in str(exc.value) and ADVICE in str(exc.value)
        assert f"its id says {ds.id[:16]}" in str(exc.value)


def test_intact_reads_are_unchanged(store: ObjectStore) -> None:
    ds = small_dataset(store)
    sample = ds.load_sample(1)
    assert sample.masks.shape == (2, 16, 16)
    key = ds.image_records()[0]["key"]
    assert sha256_bytes(store.get_bytes(key)) == ds.image_records()[0]["sha256"]


def test_cli_reports_corruption_with_exit_1(file_store: FileStore, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from ingest import cli_data

    ds = small_dataset(file_store)
    key = manifest_key(ds.id)
    tamper(file_store, key, canonical_json({**json.loads(file_store.get_bytes(key)), "annotations": []}))
    parser = argparse.ArgumentParser(prog="synthaug")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dataset", "show", "toy", "--store", file_store.url])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert f"dataset manifest '{key}' is corrupt" in err and ADVICE in err
