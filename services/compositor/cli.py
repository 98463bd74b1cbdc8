"""`synthaug dataset preview DATASET --out sheet.png`: a contact sheet of any dataset."""
from __future__ import annotations

import argparse
import logging
from typing import Any

from services.common.datasets import Dataset
from services.common.errors import InvalidArgument
from services.common.imageio import write_png
from services.common.store import open_store
from services.compositor.contact_sheet import draw_contact_sheet

log = logging.getLogger(__name__)


def _group(subparsers: Any, name: str, help_text: str) -> Any:
    """The sub-subparsers of command `name`, creating the command if no one has yet.

    Several areas contribute `synthaug dataset …` subcommands; the first creates the group.
    """
    parser = subparsers.choices.get(name)
    if parser is None:
        parser = subparsers.add_parser(name, help=help_text)
    for action in parser._actions:  # argparse has no public accessor for an existing group
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def register(subparsers: Any) -> None:
    group = _group(subparsers, "dataset", "work with datasets in the store")
    p = group.add_parser("preview", help="draw a grid of a dataset's images with instance outlines")
    p.add_argument("dataset", help="dataset id or registered name")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--store", default=None, help="store URL (default $SYNTHAUG_STORE)")
    p.add_argument("--count", type=int, default=16, help="images on the sheet (default 16)")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--tile", type=int, default=256, help="tile side in pixels (default 256)")
    p.add_argument("--split", default="", help="only this split (train, val, test)")
    p.add_argument("--seed", type=int, default=None, help="random sample instead of the first images")
    p.set_defaults(func=preview)


def preview(args: argparse.Namespace) -> int:
    if not str(args.out).lower().endswith(".png"):
        raise InvalidArgument(f"--out must name a .png file, got {args.out!r}")
    store = open_store(args.store)
    dataset = Dataset.load(store, args.dataset)
    sheet = draw_contact_sheet(dataset, args.count, args.columns, args.tile, args.split, args.seed)
    write_png(args.out, sheet)
    log.info("wrote %s (%d×%d)", args.out, sheet.shape[1], sheet.shape[0])
    return 0
