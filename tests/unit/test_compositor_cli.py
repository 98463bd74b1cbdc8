"""Contact sheet and the `dataset preview` command."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument
from services.common.imageio import read_image
from services.common.store import FileStore
from services.compositor import cli
from services.compositor.contact_sheet import CAPTION_PX, draw_contact_sheet
from tests.unit.test_compositor_pipeline import make_real_dataset


def test_sheet_grid_and_outlines(file_store: FileStore) -> None:
    ds = make_real_dataset(file_store)
    sheet = draw_contact_sheet(ds, count=5, columns=2, tile=64)
    assert sheet.shape == (3 * (64 + CAPTION_PX) + 2 * 2, 2 * 64 + 2, 3)
    first = sheet[:64, :64]
    assert ((first == (0, 255, 0)).all(axis=2)).sum() > 20  # instance 0 outlined in green
    assert ((first == (255, 64, 64)).all(axis=2)).sum() > 5  # the second instance in red
    with pytest.raises(InvalidArgument, match="count"):
        draw_contact_sheet(ds, count=0)


def test_preview_command(file_store: FileStore, tmp_path: Path) -> None:
    make_real_dataset(file_store, name="toy")
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    out = tmp_path / "sheet.png"
    args = parser.parse_args(["dataset", "preview", "toy", "--out", str(out), "--store", file_store.url,
                              "--tile", "64", "--count", "4"])
    assert args.func(args) == 0
    assert read_image(out).shape == (64 + CAPTION_PX, 4 * 64 + 3 * 2, 3)  # one row of four tiles
    bad = parser.parse_args(["dataset", "preview", "toy", "--out", str(tmp_path / "x.jpg"), "--store", file_store.url])
    with pytest.raises(InvalidArgument):
        bad.func(bad)
