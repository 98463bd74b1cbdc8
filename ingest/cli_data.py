"""`synthaug import coco|masks`, `synthaug dataset demo|list|show` and `synthaug store verify`:
data in and out of the store, and its integrity.

Exit codes: 0 success, 2 bad input (the message lists the offending items; nothing is
registered), 1 failure (including corrupt objects found by `store verify` and not repaired).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable

from services.common.cli_support import guarded
from services.common.errors import IntegrityError, InvalidArgument, NotFound

log = logging.getLogger(__name__)

_EPILOG_SPLIT = (
    "Splits are seeded, exact without groups (val and test rounded, train the rest) and "
    "independent of the order files are listed in. With --metadata CSV --group-by COLUMN all images of a "
    "group (e.g. HAM10000 lesion_id) land in the same split; rows are matched by --id-column "
    "(default image_id) against the image file stem."
)


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _size(text: str) -> int | None:
    if text.strip().lower() in ("keep", "0", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a side length in pixels or 'keep', got {text!r}") from None
    if not 8 <= value <= 8192:
        raise argparse.ArgumentTypeError(f"size must be in [8, 8192] or 'keep', got {value}")
    return value


def _min_area(text: str) -> float:
    t = text.strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1]) / 100.0
            if not 0 <= value < 1:
                raise ValueError
            return value
        value = float(t)
        if value < 1 and value != 0:
            raise argparse.ArgumentTypeError(f"--min-area in pixels must be 0 or ≥ 1 (use '1%' for a fraction), got {text!r}")
        return value
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixels (e.g. 50) or a percentage of the image (e.g. 1%), got {text!r}") from None


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return value


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help="object store: file://ROOT or s3://BUCKET?endpoint=HOST:PORT&secure=0|1 "
        "(default $SYNTHAUG_STORE, else file://.synthaug/store)",
    )


def _add_split(p: argparse.ArgumentParser, default: str = "0.8,0.1,0.1") -> None:
    g = p.add_argument_group("splits")
    g.add_argument("--split", default=default, metavar="TRAIN,VAL,TEST",
                   help=f"fractions of images per split, or 'none' to leave images unsplit (default {default})")
    g.add_argument("--split-seed", type=_non_negative, default=0, metavar="N", help="seed of the split assignment (default 0)")
    g.add_argument("--metadata", default="", metavar="CSV", help="CSV with one row per image, for --group-by")
    g.add_argument("--group-by", default="", metavar="COLUMN", help="keep images sharing this CSV column's value in one split (e.g. lesion_id)")
    g.add_argument("--id-column", default="image_id", metavar="COLUMN", help="CSV column holding the image file stem (default image_id)")


def _mask_threshold(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a mask value in [1, 65535], got {value}")
    return value


def _add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="", help="register the dataset under this name (letters, digits, . _ -)")
    p.add_argument("--replace", action="store_true",
                   help="let --name move to this dataset when it already names a different one (the old dataset "
                   "stays addressable by its id); without it, such an import is refused")


def _add_import_common(p: argparse.ArgumentParser) -> None:
    _add_store(p)
    _add_name(p)
    p.add_argument("--size", type=_size, default=256, metavar="N|keep",
                   help="resize images to N×N (area/linear for images, nearest neighbour for masks) or keep their size (default 256)")
    p.add_argument("--image-format", choices=("auto", "png", "jpeg"), default="auto",
                   help="how images are stored: auto keeps a PNG/JPEG source file's own bytes when it needs no resizing "
                   "(no re-encoding, no loss) and writes PNG otherwise; png always re-encodes losslessly (default auto)")
    p.add_argument("--workers", type=_non_negative, default=_default_workers(), metavar="N",
                   help=f"decode/encode processes (default {_default_workers()}: the CPU count, at most 8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_split(p)


def _import_options(args: argparse.Namespace) -> Any:
    from ingest.importers import ImportOptions
    from ingest.splits import SplitSpec

    split = SplitSpec.parse(args.split, seed=args.split_seed, group_by=args.group_by)
    if split is None and args.group_by:
        raise InvalidArgument("--group-by needs a split (--split TRAIN,VAL,TEST), not --split none")
    return ImportOptions(
        name=args.name,
        size=args.size if hasattr(args, "size") else None,
        image_format=getattr(args, "image_format", "auto"),
        split=split,
        metadata=args.metadata,
        id_column=args.id_column,
        workers=args.workers,
        replace=bool(getattr(args, "replace", False)),
    )


def _progress() -> Callable[[int, int], None] | None:
    return _progress_of("images")


def _progress_of(unit: str) -> Callable[[int, int], None] | None:
    if not sys.stderr.isatty():
        return None

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 100) == 0:
            sys.stderr.write(f"\r{done}/{total} {unit}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report


def _split_order(item: tuple[str, int]) -> int:
    return ("train", "val", "test", "").index(item[0]) if item[0] in ("train", "val", "test", "") else 9


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        from dataclasses import asdict

        print(json.dumps(asdict(summary), sort_keys=True))
    else:
        print("\n".join(summary.lines()))


# --- handlers ---------------------------------------------------------------------------------


def _cmd_import_masks(args: argparse.Namespace) -> int:
    from ingest.importers import MaskOptions, import_masks
    from services.common.store import open_store

    mask_options = MaskOptions(
        pattern=args.pattern,
        mask_type=args.mask_type,
        binary_instances=args.binary_instances,
        min_area=args.min_area,
        category=args.category,
        mask_threshold=args.mask_threshold,
    ).validate()
    options = _import_options(args).validate()
    store = open_store(args.store)
    summary = import_masks(store, args.images, args.masks, mask_options, options, progress=_progress())
    _print_summary(summary, args.json)
    return 0


def _cmd_import_coco(args: argparse.Namespace) -> int:
    from ingest.importers import import_coco
    from services.common.store import open_store

    options = _import_options(args).validate()
    store = open_store(args.store)
    summary = import_coco(store, args.annotations, args.images, options, progress=_progress())
    _print_summary(summary, args.json)
    return 0


def _demo_config(args: argparse.Namespace) -> Any:
    from ingest.demo_data import DemoConfig

    return DemoConfig(
        size=args.size,
        min_lesions=args.min_lesions,
        max_lesions=args.max_lesions,
        hair_probability=args.hair_probability,
        vignette_probability=args.vignette_probability,
    ).validate()


def _cmd_dataset_demo(args: argparse.Namespace) -> int:
    from ingest import demo_data

    config = _demo_config(args)
    if args.out:
        if args.name or args.store:
            raise InvalidArgument("--out writes a folder; --name/--store register in the store: give one or the other")
        result = demo_data.write_demo_folder(args.out, args.count, args.seed, config, workers=args.workers)
        if args.json:
            print(json.dumps(result, sort_keys=True))
        else:
            print(f"wrote {result['images']} images with {result['instances']} instances to {result['out']} "
                  f"(images/, masks/, annotations.json)")
        return 0
    from services.common.store import open_store

    options = _import_options(args).validate()
    store = open_store(args.store)
    summary = demo_data.register_demo(store, args.count, args.seed, config, options, progress=_progress())
    _print_summary(summary, args.json)
    return 0


def _cmd_dataset_list(args: argparse.Namespace) -> int:
    from services.common.datasets import Dataset, list_datasets
    from services.common.store import open_store

    store = open_store(args.store)
    names = list_datasets(store)
    rows: list[dict[str, Any]] = []
    for name, dataset_id in sorted(names.items()):
        try:
            ds = Dataset.load(store, dataset_id)
            rows.append({"name": name, "id": dataset_id, "kind": ds.kind, "images": len(ds),
                         "instances": len(ds.manifest["annotations"]), "splits": ds.split_sizes()})
        except NotFound:
            rows.append({"name": name, "id": dataset_id, "kind": "?", "images": 0, "instances": 0, "splits": {}, "missing": True})
        except IntegrityError:
            rows.append({"name": name, "id": dataset_id, "kind": "?", "images": 0, "instances": 0, "splits": {}, "corrupt": True})
    if args.json:
        print(json.dumps(rows, sort_keys=True))
        return 0
    if not rows:
        print("no named datasets")
        return 0
    print(f"{'NAME':24} {'ID':32} {'KIND':9} {'IMAGES':>7} {'INSTANCES':>9}  SPLITS")
    for r in rows:
        splits = " ".join(f"{k or 'unsplit'}={v}" for k, v in sorted(r["splits"].items(), key=_split_order))
        print(f"{r['name']:24} {r['id']:32} {r['kind']:9} {r['images']:>7} {r['instances']:>9}  {splits}"
              + ("  (manifest missing)" if r.get("missing") else "")
              + ("  (manifest corrupt: run `synthaug store verify`)" if r.get("corrupt") else ""))
    return 0


def _cmd_dataset_show(args: argparse.Namespace) -> int:
    from services.common.datasets import Dataset
    from services.common.store import open_store

    store = open_store(args.store)
    ds = Dataset.load(store, args.dataset)
    per_category: dict[int, int] = {}
    for ann in ds.manifest["annotations"]:
        per_category[ann["category_id"]] = per_category.get(ann["category_id"], 0) + 1
    info: dict[str, Any] = {
        "id": ds.id,
        "name": ds.name,
        "kind": ds.kind,
        "images": len(ds),
        "instances": len(ds.manifest["annotations"]),
        "splits": ds.split_sizes(),
        "categories": [{**c, "instances": per_category.get(c["id"], 0)} for c in ds.categories],
        "provenance": ds.provenance,
    }
    if args.json:
        print(json.dumps(info, sort_keys=True))
        return 0
    print(f"dataset    {ds.id}" + (f"  (name {ds.name})" if ds.name else ""))
    print(f"kind       {ds.kind}")
    print(f"images     {info['images']}")
    print(f"instances  {info['instances']}")
    print("splits     " + ", ".join(f"{k or 'unsplit'} {v}" for k, v in sorted(info["splits"].items(), key=_split_order)))
    for c in info["categories"]:
        print(f"category   {c['id']}: {c['name']} ({c['instances']} instances)")
    prov = ds.provenance
    if prov.get("parents"):
        print("parents    " + ", ".join(prov["parents"]))
    print("params     " + json.dumps(prov.get("params", {}), sort_keys=True))
    if prov.get("seed") is not None:
        print(f"seed       {prov['seed']}")
    print(f"code       {prov.get('code_version', '')}")
    return 0


def _cmd_store_verify(args: argparse.Namespace) -> int:
    from services.common.store import open_store
    from services.common.store_verify import verify_store

    store = open_store(args.store)
    report = verify_store(store, repair=args.repair, progress=_progress_of("objects"))
    if args.json:
        print(json.dumps(report.to_json(), sort_keys=True))
    else:
        print("\n".join(report.lines()))
    return 0 if report.clean else 1


# --- registration -------------------------------------------------------------------------------


def _subcommand_group(subparsers: Any, name: str, help_text: str) -> Any:
    """`name` may already exist (another module registered `dataset …`): reuse its subparsers."""
    existing = subparsers.choices.get(name)
    if existing is not None:
        for action in existing._actions:  # argparse keeps sub-subparsers as an action
            if isinstance(action, argparse._SubParsersAction):
                return action
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    return parser.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")


def register(subparsers: Any) -> None:
    """Add `import coco`, `import masks`, `dataset demo`, `dataset list`, `dataset show`, `store verify`."""
    imports = _subcommand_group(subparsers, "import", "import annotated images as a 'real' dataset")

    p = imports.add_parser(
        "masks",
        help="image folder + mask folder (binary or instance-id PNGs)",
        description="Import an image folder and a mask folder. Binary masks (one non-zero value) give one "
        "instance per 8-connected component; components below --min-area join the nearest larger one "
        "(or use --binary-instances single for one object per image). Instance-id masks give one "
        "instance per non-zero value. Problems (missing or unreadable files, size mismatches) are all "
        "listed, exit code 2, and nothing is registered.",
        epilog="Example: synthaug import masks --images isic/train/images --masks isic/train/masks "
        "--pattern '{stem}_segmentation.png' --name isic-train.  " + _EPILOG_SPLIT,
    )
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images (.jpg .png .tif .bmp .webp)")
    p.add_argument("--masks", required=True, metavar="DIR", help="folder of masks")
    p.add_argument("--pattern", default="{stem}.png",
                   help="mask file name for an image: {stem} (name without extension), {name}, {ext} (default {stem}.png)")
    p.add_argument("--mask-type", choices=("auto", "binary", "instance"), default="auto",
                   help="auto: binary when a mask has one non-zero value, else instance ids (default auto). "
                   "Lossy masks (JPEG files, or grey levels along edges) are refused in every mode unless "
                   "--mask-threshold is given")
    p.add_argument("--mask-threshold", type=_mask_threshold, default=None, metavar="V",
                   help="with --mask-type binary: foreground = mask value ≥ V (e.g. 128), the explicit way to "
                   "import JPEG or otherwise lossy masks (default: unset, foreground = any non-zero value)")
    p.add_argument("--binary-instances", choices=("components", "single"), default="components",
                   help="binary masks: one instance per connected component, or one for the whole foreground (default components)")
    p.add_argument("--min-area", type=_min_area, default=0.01, metavar="PX|P%",
                   help="binary masks: components smaller than this (pixels, or percent of the image) are fragments "
                   "merged into the nearest larger component; 0 makes every component an instance (default 1%%)")
    p.add_argument("--category", default="lesion", help="category name of the instances (default lesion)")
    _add_import_common(p)
    p.set_defaults(func=guarded(_cmd_import_masks))

    p = imports.add_parser(
        "coco",
        help="COCO instances JSON + image folder (Supervisely, CVAT exports)",
        description="Import a COCO instances JSON and its image folder. Every polygon of an annotation, "
        "compressed and uncompressed RLE, iscrowd and all categories are kept. Problems (missing images, "
        "annotations for absent images, out-of-bounds polygons, size mismatches) are all listed, exit "
        "code 2, and nothing is registered.",
        epilog=_EPILOG_SPLIT,
    )
    p.add_argument("--annotations", required=True, metavar="JSON", help="COCO instances JSON")
    p.add_argument("--images", required=True, metavar="DIR", help="folder the JSON's file_name entries are relative to")
    _add_import_common(p)
    p.set_defaults(func=guarded(_cmd_import_coco))

    datasets = _subcommand_group(subparsers, "dataset", "datasets in the store: demo data, list, show, preview; push to a remote orchestrator")
    p = datasets.add_parser(
        "demo",
        help="procedural dermoscopy-like images with instance masks",
        description="Generate dermoscopy-like images (textured skin, hairs, optional vignette, 1-3 irregular "
        "pigmented lesions) with exact instance masks. Deterministic per (seed, index). With --out, writes "
        "DIR/images/*.png, DIR/masks/*.png (instance ids, 0 = background) and DIR/annotations.json (COCO); "
        "otherwise registers a 'real' dataset in the store.",
    )
    p.add_argument("--count", type=_positive, required=True, metavar="N", help="number of images")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="S", help="generator seed (default 0)")
    p.add_argument("--size", type=_positive, default=256, metavar="N", help="image side in pixels (default 256)")
    p.add_argument("--out", default="", metavar="DIR", help="write a folder instead of registering in the store")
    p.add_argument("--min-lesions", type=_positive, default=1, metavar="N", help="fewest lesions per image (default 1)")
    p.add_argument("--max-lesions", type=_positive, default=3, metavar="N", help="most lesions per image (default 3)")
    p.add_argument("--hair-probability", type=float, default=0.6, metavar="P", help="share of images with hairs (default 0.6)")
    p.add_argument("--vignette-probability", type=float, default=0.3, metavar="P",
                   help="share of images with a dark dermatoscope vignette (default 0.3)")
    _add_store(p)
    _add_name(p)
    p.add_argument("--workers", type=_non_negative, default=_default_workers(), metavar="N",
                   help=f"generator processes (default {_default_workers()})")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_split(p)
    p.set_defaults(func=guarded(_cmd_dataset_demo))

    p = datasets.add_parser("list", help="named datasets in the store", description="List the named datasets in the store.")
    _add_store(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_cmd_dataset_list))

    p = datasets.add_parser("show", help="one dataset: counts, splits, categories, provenance",
                            description="Show a dataset's counts, splits, categories and provenance.")
    p.add_argument("dataset", metavar="NAME_OR_ID", help="registered name or 32-hex id")
    _add_store(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=guarded(_cmd_dataset_show))

    stores = _subcommand_group(subparsers, "store", "the object store: integrity")
    p = stores.add_parser(
        "verify",
        help="check every object's integrity; --repair deletes the bad ones",
        description="Read every object of the store and check it: blobs against the sha256 in their names, dataset "
        "manifests against their ids, step records and job results against their checksums (and, on S3, every "
        "object against the sha256 stored with it). Objects that depend on a bad or missing one (a dataset naming a "
        "corrupt image, a cached step whose output is gone, a name pointing at a corrupt dataset) are listed as "
        "broken. Exit code 1 while bad objects remain.",
        epilog="--repair deletes every corrupt and broken object (records and names first), so the next "
        "`synthaug run` recomputes what they held; a dataset whose name was deleted must be imported again.",
    )
    _add_store(p)
    p.add_argument("--repair", action="store_true", help="delete the corrupt and broken objects (exit 0 once none remain)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=guarded(_cmd_store_verify))
