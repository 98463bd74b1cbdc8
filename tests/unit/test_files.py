"""write_atomically: whole or not at all, no temporary left behind, concurrent-safe names."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from services.common.files import write_atomically


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
