"""``alexnet data-pack ROOT``: decode a data set once into pre-resized 256×256 pixels (AlexNet §2)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alexnet.cli._common import CommandError, add_command


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "data-pack",
        "decode an ImageNet-layout data set once into pre-resized 256×256 pixels for fast loading",
        "Decodes every image of ROOT/<split>/<class>/* once, rescales its shorter side to --size and keeps the "
        "central square, as AlexNet §2 prepared ImageNet, and stores the uint8 pixels under "
        "ROOT/.packed/<split>-<size>/ (3·size² bytes per image: 192 KiB at 256, about 250 GB for ImageNet's "
        "training set). `alexnet train`, `alexnet eval`, `alexnet data-stats` and `alexnet bench --data` then "
        "read the pixels instead of decoding the files: the same numbers, several times faster per core. A file "
        "changed or added since packing is decoded from the file, until data-pack runs again and packs just those "
        "files. Interrupted, it resumes where it stopped when run again. ALEXNET_PACKED=0 makes the readers ignore "
        "the store. ROOT not writable (a shared read-only mount)? Set ALEXNET_PACKED_DIR=DIR, for data-pack and "
        "for the commands that read the store: it then lives in DIR/<ROOT's name>-<hash of its path>/.",
    )
    p.add_argument("root", metavar="ROOT", help="data-set folder holding <split>/<class>/<images>")
    p.add_argument(
        "--split",
        action="append",
        help="sub-folder to pack (repeatable; default: train and val, those that exist)",
    )
    p.add_argument(
        "--size", type=int, default=256, help="side of the stored patch (default: 256, AlexNet §2)"
    )
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes (default: 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alexnet.data.packed import pack, summary
    from alexnet.errors import DataError

    if args.workers < 0:
        raise CommandError(f"--workers must be ≥ 0, not {args.workers}")
    if not 16 <= args.size <= 1024:
        raise CommandError(f"--size must be 16–1024 pixels, not {args.size}")
    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise DataError(f"no data folder {root}: expected {root}/<split>/<class>/<image files>")
    splits = (
        list(dict.fromkeys(args.split))
        if args.split
        else [s for s in ("train", "val") if (root / s).is_dir()]
    )
    if not splits:
        raise DataError(f"{root} has neither a train nor a val folder (name one with --split)")
    infos = []
    for split in splits:
        pixels = pack(root, split, args.size, workers=args.workers, progress=not args.json)
        infos.append({"split": split, **summary(pixels)})
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        _print(infos)
    empty = [f"{root / i['split']}" for i in infos if i["packed"] == 0]
    if empty:  # packing ran (its report is above), but training or evaluation from here would find nothing
        raise DataError(f"no readable image in {' or '.join(empty)}: nothing was packed")
    return 0


def _print(infos: list[dict[str, Any]]) -> None:
    from alexnet.data.packed import size_text

    for info in infos:
        print(
            f"{info['split']}: {info['packed']} of {info['images']} images at {info['size']}×{info['size']} "
            f"in {info['store']} ({size_text(info['bytes'])}); {info['unreadable']} unreadable "
            "(read from their files, and skipped, as before)"
            + (f"; {info['unused']} rows of deleted files unused" if info["unused"] else "")
        )
        bad = info["unreadable_files"]
        for path in bad[:10]:
            print(f"  unreadable: {path}")
        if len(bad) > 10:
            print(f"  … and {len(bad) - 10} more (--json lists them all)")
