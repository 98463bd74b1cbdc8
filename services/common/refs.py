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
