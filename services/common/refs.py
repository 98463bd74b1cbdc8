"""Conversions between store objects and the protobuf references that travel over gRPC."""
from __future__ import annotations

from services.common.errors import InvalidArgument, NotFound
from services.common.store import ObjectInfo, ObjectStore, validate_key
from synthaug.v1 import common_pb2


def object_ref(store: ObjectStore, info: ObjectInfo) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(bucket=store.bucket, key=info.key, sha256=info.sha256, size=info.size)


def resolve_object(store: ObjectStore, ref: common_pb2.ObjectRef, what: str = "object", verify: bool = False) -> str:
    """Check that `ref` points at an existing object of this store; return its key.

    With `verify`, the object's sha256 must match the reference (when both are known), so a
    reference can't silently point at content that changed.
    """
    if not ref.key:
        raise InvalidArgument(f"{what}: reference has no key")
    store.check_bucket(ref.bucket, what)
    validate_key(ref.key)
    if not verify:
        if not store.exists(ref.key):
            raise NotFound(f"{what}: object {ref.key!r} not found")
        return ref.key
    info = store.stat(ref.key)
    if ref.sha256 and info.sha256 and ref.sha256 != info.sha256:
        raise InvalidArgument(f"{what}: object {ref.key!r} has sha256 {info.sha256[:12]}…, reference says {ref.sha256[:12]}…")
    return ref.key


def add_output(result: common_pb2.JobResult, role: str, ref: common_pb2.ObjectRef | common_pb2.DatasetRef) -> common_pb2.JobResult:
    """Record `ref` in `result` under `role` (and in the flat list of everything produced)."""
    if isinstance(ref, common_pb2.DatasetRef):
        result.dataset_outputs[role].CopyFrom(ref)
        result.datasets.append(ref)
    else:
        result.outputs[role].CopyFrom(ref)
        result.objects.append(ref)
    return result


def output(result: common_pb2.JobResult, role: str, what: str = "step result") -> common_pb2.ObjectRef:
    """The object a job produced under `role`; InvalidArgument naming both when absent."""
    if role not in result.outputs:
        raise InvalidArgument(f"{what} has no {role!r} output (it has {sorted(result.outputs) or 'none'})")
    return result.outputs[role]


def dataset_output(result: common_pb2.JobResult, role: str = "dataset", what: str = "step result") -> common_pb2.DatasetRef:
    """The dataset a job produced under `role`; InvalidArgument naming both when absent."""
    if role not in result.dataset_outputs:
        raise InvalidArgument(f"{what} has no {role!r} dataset (it has {sorted(result.dataset_outputs) or 'none'})")
    return result.dataset_outputs[role]
