"""Writing a local file whole or not at all.

Every file synthaug writes outside the object store (checkpoints, exported models, report
files, demo data, decoded assets shared between workers) goes through `write_atomically`:
a reader, or a process that crashes halfway, sees the old file or the complete new one,
never a prefix. (The store's own writers also hash what they write and check it before the
rename; see services.common.store.)
"""
from __future__ import annotations

import contextlib
import os
import uuid

#: What can be written: bytes, or a view of an array's memory (no copy).
Buffer = bytes | bytearray | memoryview


def write_atomically(path: str | os.PathLike[str], *parts: Buffer, durable: bool = False) -> None:
    """Write `parts`, one after the other, to `path`: into a uniquely named temporary file
    beside it (two writers never share one), then renamed over `path`, which is atomic on
    POSIX file systems. The temporary file is removed on any failure. With `durable`, the
    data reach the disk (fsync) before the rename."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
