"""write_atomically and write_new_file: whole or not at all, no temporary left behind,
concurrent-safe names; write_new_file never replaces a file that is there."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from services.common import files
from services.common.files import write_atomically, write_new_file


def test_writes_the_parts_in_order_and_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content that is longer")
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_atomically(target, b"head", pixels.data, bytearray(b"!"), durable=True)
    assert target.read_bytes() == b"head" + bytes(range(12)) + b"!"
    write_atomically(str(target))  # no parts: an empty file
    assert target.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    monkeypatch.undo()
    with pytest.raises(TypeError):  # a part that is not a buffer: nothing lands
        write_atomically(target, b"new", "text")  # type: ignore[arg-type]
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with pytest.raises(FileNotFoundError):  # a missing folder is not created
        write_atomically(tmp_path / "missing" / "x.bin", b"x")


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "temporary-name"])
def test_write_new_file_writes_once_and_leaves_nothing_else(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            unnamed: bool) -> None:
    """Both ways (an unnamed file linked at its name, or the fallback: a temporary name
    renamed) give the same result: the parts in order, False and the first content kept
    when the file exists, no other file in the folder."""
    if unnamed and not files._unnamed_files:
        pytest.skip("this system has no O_TMPFILE")
    monkeypatch.setattr(files, "_unnamed_files", unnamed)
    target = str(tmp_path / "blob.bin")
    pixels = np.arange(300, dtype=np.uint16).astype(np.uint8).reshape(3, 10, 10)
    assert write_new_file(target, b"head", pixels.data) is True
    assert Path(target).read_bytes() == b"head" + pixels.tobytes()
    assert write_new_file(target, b"other") is False
    assert Path(target).read_bytes() == b"head" + pixels.tobytes()
    assert write_new_file(str(tmp_path / "empty")) is True and (tmp_path / "empty").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "empty"]
    with pytest.raises(FileNotFoundError):
        write_new_file(str(tmp_path / "missing" / "x.bin"), b"x")
    assert files._unnamed_files is unnamed  # a missing folder is an error, not a missing feature
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "empty"]


def test_write_new_file_falls_back_where_unnamed_files_are_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel or file system without O_TMPFILE (EOPNOTSUPP, or EISDIR from old kernels)
    makes it use a temporary name from then on; a failing write leaves no file."""
    if not files._unnamed_files:
        pytest.skip("this system has no O_TMPFILE")
    real_open = os.open
    refused: list[str] = []

    def no_tmpfile(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            refused.append(path)
            raise OSError(95, "Operation not supported")
        return real_open(path, flags, mode)

    monkeypatch.setattr(files, "_unnamed_files", True)
    monkeypatch.setattr(os, "open", no_tmpfile)
    renamed: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((src, dst)), real_replace(src, dst)))
    assert write_new_file(str(tmp_path / "a.bin"), b"abc") is True
    # the temporary name is one FileStore listings skip
    assert len(renamed) == 1 and Path(renamed[0][0]).name.startswith(".tmp-")
    assert refused == [str(tmp_path)] and files._unnamed_files is False
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    monkeypatch.setattr(files, "_unnamed_files", True)
    monkeypatch.setattr(os, "open", real_open)

    def full(fd: int, data: memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left"):
        write_new_file(str(tmp_path / "b.bin"), b"def")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
