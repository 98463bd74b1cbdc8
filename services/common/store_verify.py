"""`synthaug store verify [--repair]`: find every object that can no longer be trusted.

Two kinds of bad objects:

- *corrupt*: the bytes contradict what names them: a blob whose sha256 is not its name, a
  dataset manifest whose hash is not its id, a record (`put_record`) whose envelope fails,
  an S3 object whose stored sha256 metadata no longer matches, a step record or job result
  that does not decode as a JobResult.
- *broken*: intact itself, but it stands for work whose output is corrupt, missing or changed
  since it was written: a dataset manifest naming a bad or missing image, a step record or job
  result referring to a bad or missing object or dataset (or to an object whose sha256 is no
  longer the one it recorded), a dataset name pointing at a bad or missing manifest.

`--repair` deletes both kinds, referrers first, so that the next run recomputes exactly what
was lost (a cached step whose output is gone would otherwise claim success with nothing
behind it).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from google.protobuf.message import DecodeError

from services.common.datasets import NAME_PREFIX, manifest_key
from services.common.errors import IntegrityError, NotFound
from services.common.store import ObjectStore, named_digest, sha256_bytes
from synthaug.v1 import common_pb2

#: Keys that must hold a `put_record` envelope around a serialized JobResult: the
#: orchestrator's step records and every service's job results.
RECORD_KEYS = (re.compile(r"^steps/[^/]+\.pb$"), re.compile(r"^jobs/[^/]+/result\.pb$"))
_MANIFEST_RE = re.compile(r"^datasets/([0-9a-f]{32})/dataset\.json$")
_NAME_RE = re.compile(rf"^{re.escape(NAME_PREFIX)}/(.+)\.json$")


def is_record_key(key: str) -> bool:
    return any(p.match(key) for p in RECORD_KEYS)


@dataclass(frozen=True)
class Finding:
    key: str
    kind: str  # "corrupt" or "broken"
    problem: str


@dataclass
class VerifyReport:
    url: str
    counts: dict[str, int] = field(default_factory=dict)  # objects checked, by category
    findings: list[Finding] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def bad_keys(self) -> list[str]:
        return [f.key for f in self.findings]

    @property
    def clean(self) -> bool:
        """True when nothing bad remains in the store (none found, or all repaired)."""
        return set(self.bad_keys) <= set(self.deleted)

    def lines(self) -> list[str]:
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {what}" for what, n in self.counts.items() if n)
        out = [f"checked {total} objects in {self.url}" + (f" ({parts})" if parts else "")]
        for f in self.findings:
            out.append(f"{f.kind.upper():8} {f.key}: {f.problem}")
        if not self.findings:
            out.append("no corrupt or broken objects")
        elif self.deleted:
            out.append(f"deleted {len(self.deleted)} object(s); the next run recomputes them "
                       "(re-import any dataset whose name was deleted)")
        else:
            out.append(f"{len(self.findings)} bad object(s); run again with --repair to delete them, "
                       "so that the next run recomputes them")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "counts": self.counts,
            "findings": [{"key": f.key, "kind": f.kind, "problem": f.problem} for f in self.findings],
            "deleted": self.deleted,
            "clean": self.clean,
        }


class _Scan:
    """What one pass over the store learned: every key's sha256, and who refers to what."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self.sha: dict[str, str] = {}
        self.bad: dict[str, Finding] = {}
        self.manifests: dict[str, dict[str, Any]] = {}  # key -> manifest JSON
        self.records: dict[str, common_pb2.JobResult] = {}
        self.names: dict[str, str] = {}  # name key -> dataset id
        self.counts = {"blobs": 0, "dataset manifests": 0, "records": 0, "dataset names": 0, "other objects": 0}

    def corrupt(self, key: str, problem: str) -> None:
        self.bad[key] = Finding(key, "corrupt", problem)

    def check(self, key: str) -> None:
        try:
            if is_record_key(key):
                self.counts["records"] += 1
                self._record(key)
            elif _MANIFEST_RE.match(key):
                self.counts["dataset manifests"] += 1
                data = self.store.get_bytes(key)  # checked against the id on the way
                self.sha[key] = sha256_bytes(data)
                self.manifests[key] = json.loads(data)
            elif _NAME_RE.match(key):
                self.counts["dataset names"] += 1
                self._name(key)
            else:
                self.counts["blobs" if named_digest(key) else "other objects"] += 1
                self.sha[key] = self.store.verify(key).sha256
        except IntegrityError as exc:
            self.corrupt(key, exc.detail)
        except NotFound:  # deleted while we were looking: nothing to check
            pass

    def _record(self, key: str) -> None:
        payload = self.store.get_record(key)
        self.sha[key] = sha256_bytes(payload)
        result = common_pb2.JobResult()
        try:
            result.ParseFromString(payload)
        except DecodeError as exc:
            self.corrupt(key, f"an intact record that does not decode as a JobResult ({exc})")
            return
        self.records[key] = result

    def _name(self, key: str) -> None:
        data = self.store.get_bytes(key)
        self.sha[key] = sha256_bytes(data)
        try:
            self.names[key] = str(json.loads(data)["id"])
        except (ValueError, KeyError, TypeError):
            self.corrupt(key, "not a JSON object with an id")

    # --- dependencies --------------------------------------------------------------------

    def _object_problem(self, key: str, sha256: str = "") -> str:
        """Why a reference to `key` (recording `sha256`, if any) no longer holds ('' if it does)."""
        if key in self.bad:
            return f"{key} is {self.bad[key].kind}"
        if key not in self.sha:
            return f"{key} is missing"
        if sha256 and named_digest(key) is None and self.sha[key] != sha256:
            return f"{key} changed since (sha256 {self.sha[key][:12]}…, recorded {sha256[:12]}…)"
        return ""

    def _break(self, key: str, problem: str) -> None:
        if key not in self.bad:
            self.bad[key] = Finding(key, "broken", problem)

    def dependencies(self) -> None:
        """Mark what depends on a bad or missing object: manifests on their images, records on
        their outputs, names on their manifests (in that order, so breakage propagates)."""
        for key, manifest in self.manifests.items():
            if key in self.bad:
                continue
            for image in manifest.get("images", []):
                problem = self._object_problem(str(image.get("key", "")), str(image.get("sha256", "")))
                if problem:
                    self._break(key, f"its image {image.get('file_name', '?')}: {problem}")
                    break
        for key, result in self.records.items():
            if key in self.bad:
                continue
            for what, problem in self._result_problems(result):
                self._break(key, f"{what}: {problem}")
                break
        for key, dataset_id in self.names.items():
            if key in self.bad:
                continue
            problem = self._object_problem(manifest_key(dataset_id))
            if problem:
                name = _NAME_RE.match(key).group(1)  # type: ignore[union-attr]
                self._break(key, f"name {name!r} points at dataset {dataset_id}: {problem}")

    def _result_problems(self, result: common_pb2.JobResult) -> Iterable[tuple[str, str]]:
        objects = [(f"output {role!r}", ref) for role, ref in sorted(result.outputs.items())]
        objects += [("object", ref) for ref in result.objects]
        datasets = [(f"dataset output {role!r}", ref) for role, ref in sorted(result.dataset_outputs.items())]
        datasets += [("dataset", ref) for ref in result.datasets]
        for what, ref in objects:
            if ref.key and ref.bucket in ("", self.store.bucket):
                problem = self._object_problem(ref.key, ref.sha256)
                if problem:
                    yield what, problem
        for what, dref in datasets:
            if dref.manifest.bucket not in ("", self.store.bucket):
                continue
            key = dref.manifest.key or (manifest_key(dref.id) if dref.id else "")
            if key:
                problem = self._object_problem(key, dref.manifest.sha256)
                if problem:
                    yield f"{what} {dref.id or key}", problem


def _deletion_order(key: str) -> int:
    """Referrers before what they refer to: a repair cut short never leaves a record or a
    name pointing at something already deleted while it still claims to be valid."""
    if key.startswith(f"{NAME_PREFIX}/"):
        return 0
    if is_record_key(key):
        return 1
    if _MANIFEST_RE.match(key):
        return 2
    return 3


def verify_store(store: ObjectStore, repair: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Check every object of `store`; with `repair`, delete the corrupt and broken ones."""
    keys = store.list("")
    scan = _Scan(store)
    for n, key in enumerate(keys, start=1):
        scan.check(key)
        if progress is not None:
            progress(n, len(keys))
    scan.dependencies()
    report = VerifyReport(store.url, counts=scan.counts,
                          findings=sorted(scan.bad.values(), key=lambda f: (f.kind != "corrupt", f.key)))
    if repair:
        for key in sorted(scan.bad, key=lambda k: (_deletion_order(k), k)):
            store.delete(key)
            report.deleted.append(key)
    return report
