"""`synthaug store verify [--repair]` finds every corrupt object and everything that depends on
one, and --repair deletes exactly those, so the next run recomputes them. Both backends."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from ingest import cli_data
from services.common.datasets import Dataset, DatasetWriter, list_datasets, manifest_key
from services.common.errors import NotFound
from services.common.refs import add_output, object_ref
from services.common.store import ObjectStore, canonical_json
from services.common.store_verify import verify_store
from synthaug.v1 import common_pb2
from tests.conftest import S3_ACCESS, S3_SECRET
from tests.unit.test_integrity import flip, tamper


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="synthaug")
    cli_data.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def dataset(store: ObjectStore, name: str, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(store, "real", [{"id": 1, "name": "lesion"}], name=name)
    for i in range(2):
        masks = np.zeros((1, 12, 12), bool)
        masks[0, 2:9, 3:10] = True
        writer.add(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), masks, [1], f"{name}{i}.png")
    return Dataset.load(store, writer.finish())


def step_record(store: ObjectStore, key: str, ds: Dataset) -> None:
    result = common_pb2.JobResult()
    result.dataset_outputs["dataset"].CopyFrom(ds.ref())
    result.datasets.append(ds.ref())
    store.put_record(key, result.SerializeToString(deterministic=True))


@pytest.fixture()
def damaged(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> tuple[ObjectStore, dict[str, str], list[str]]:
    """A store with intact work and with each kind of damage; returns (store, {bad key: kind}, intact keys)."""
    monkeypatch.setenv("SYNTHAUG_S3_ACCESS_KEY", S3_ACCESS)  # for the CLI's open_store on S3
    monkeypatch.setenv("SYNTHAUG_S3_SECRET_KEY", S3_SECRET)
    toy, other, fine = dataset(store, "toy", 1), dataset(store, "other", 2), dataset(store, "fine", 3)
    step_record(store, "steps/toy.pb", toy)
    step_record(store, "steps/other.pb", other)
    step_record(store, "steps/fine.pb", fine)
    results = store.put_bytes("evaluations/j1/results.json", b'{"iou": 0.975}')
    store.put_record("jobs/j1/result.pb", add_output(common_pb2.JobResult(), "evaluation", object_ref(store, results))
                     .SerializeToString(deterministic=True))
    store.put_bytes("runs/r1/summary.json", b"{}")  # nothing names its content: read, not judged
    assert verify_store(store).findings == []

    blob = toy.image_records()[1]["key"]
    tamper(store, blob, flip(store.get_bytes(blob), 40))  # flipped blob bytes
    edited = json.loads(store.get_bytes(manifest_key(other.id)))
    edited["annotations"].pop()  # an annotation removed from a manifest
    tamper(store, manifest_key(other.id), canonical_json(edited))
    store.put_bytes("steps/zero.pb", b"")  # zero-byte step record
    store.put_bytes("steps/random.pb", np.random.default_rng(5).bytes(300))  # random-byte step record
    store.put_record("steps/garbage.pb", b"\xff\xff\xff\xff")  # intact envelope, not a JobResult
    tamper(store, results.key, b'{"iou": 0.000}')  # an output edited after its job finished
    bad = {
        blob: "corrupt",
        manifest_key(other.id): "corrupt",
        "steps/zero.pb": "corrupt",
        "steps/random.pb": "corrupt",
        "steps/garbage.pb": "corrupt",
        manifest_key(toy.id): "broken",  # names the corrupt blob
        "steps/toy.pb": "broken",
        "steps/other.pb": "broken",
        "names/datasets/toy.json": "broken",
        "names/datasets/other.json": "broken",
        "jobs/j1/result.pb": "broken",  # its output changed since
    }
    intact = ["steps/fine.pb", manifest_key(fine.id), "names/datasets/fine.json", "runs/r1/summary.json",
              *[r["key"] for r in fine.image_records()], toy.image_records()[0]["key"]]
    return store, bad, intact


def test_verify_lists_every_bad_object(damaged: tuple[ObjectStore, dict[str, str], list[str]]) -> None:
    store, bad, _ = damaged
    report = verify_store(store)
    assert {f.key: f.kind for f in report.findings} == bad
    assert not report.clean and report.deleted == []
    problems = {f.key: f.problem for f in report.findings}
    assert "empty (0 bytes)" in problems["steps/zero.pb"]
    assert "not a synthaug record" in problems["steps/random.pb"]
    assert "does not decode as a JobResult" in problems["steps/garbage.pb"]
    assert "its id says" in problems[next(k for k in bad if k.startswith("datasets/") and bad[k] == "corrupt")]
    assert "evaluations/j1/results.json changed since" in problems["jobs/j1/result.pb"]
    assert report.counts["records"] == 7 and report.counts["dataset manifests"] == 3 and report.counts["dataset names"] == 3
    for key in bad:  # verify only reads
        assert store.exists(key)


def test_cli_verify_then_repair(damaged: tuple[ObjectStore, dict[str, str], list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    store, bad, intact = damaged
    assert run_cli(["store", "verify", "--store", store.url]) == 1
    out = capsys.readouterr().out
    for key, kind in bad.items():
        assert f"{kind.upper():8} {key}: " in out
    assert "11 bad object(s); run again with --repair" in out

    assert run_cli(["store", "verify", "--store", store.url, "--repair", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["deleted"]) == sorted(bad) and report["clean"]
    for key in bad:
        assert not store.exists(key)
    for key in intact:
        assert store.exists(key)
    assert list_datasets(store) == {"fine": Dataset.load(store, "fine").id}
    with pytest.raises(NotFound):
        Dataset.load(store, "toy")
    assert Dataset.load(store, "fine").load_sample(1).masks.shape == (1, 12, 12)

    assert run_cli(["store", "verify", "--store", store.url]) == 0
    assert "no corrupt or broken objects" in capsys.readouterr().out


def test_repair_output_says_what_was_deleted(damaged: tuple[ObjectStore, dict[str, str], list[str]]) -> None:
    store, bad, _ = damaged
    repaired = verify_store(store, repair=True)
    assert f"deleted {len(bad)} object(s); the next run recomputes them" in repaired.lines()[-1]
    # referrers go first: names, then records, then the manifests and blobs they point at
    order = [0 if k.startswith("names/") else 1 if k.startswith(("steps/", "jobs/")) else 2 if k.startswith("datasets/") else 3
             for k in repaired.deleted]
    assert order == sorted(order) and set(repaired.deleted) == set(bad)
    report = verify_store(store)
    assert report.findings == [] and report.clean


def test_empty_store_is_clean(store: ObjectStore) -> None:
    report = verify_store(store)
    assert report.findings == [] and sum(report.counts.values()) == 0 and report.clean
