"""``alexnet data-split SRC --out DST``: a folder of class folders → an ImageNet-layout train/val split of links."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from alexnet.cli._common import add_command


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "data-split",
        "split a folder of class folders (no train/val) into an ImageNet-layout folder of links",
        "For data that comes as SRC/<class>/<images> with no split, such as Caltech-101's 101_ObjectCategories: "
        "writes DST/train/<class>/ and DST/val/<class>/ as links to SRC's files (or copies, --copy), and "
        "DST/split.json saying how. Each class is shuffled by --seed and its own name, so a class's split stays "
        "the same when others are added or excluded. Zeiler & Fergus §5.2's Caltech-101 protocol, 30 training "
        "images per class and up to 50 others to test on, over five seeds: --train-per-class 30 "
        "--val-per-class 50 --seed 0 (… 4). Without --train-per-class, --val-per-class N or --val-fraction F "
        "(default 0.1) of each class is held out and the rest trained on.",
    )
    p.add_argument(
        "source", metavar="SRC", help="folder holding <class>/<images> (sub-folders of a class count)"
    )
    p.add_argument(
        "--out", "-o", required=True, metavar="DST", help="the new data-set folder (must not exist)"
    )
    p.add_argument("--train-per-class", type=int, metavar="N", help="N random training images per class")
    p.add_argument(
        "--val-per-class",
        type=int,
        metavar="M",
        help="validation images per class (with --train-per-class: at most M of the others, default all of them)",
    )
    p.add_argument(
        "--val-fraction", type=float, metavar="F", help="hold out this share of each class (default 0.1)"
    )
    p.add_argument("--seed", type=int, default=0, help="which random split (default 0)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="CLASS",
        help="leave out this class folder (repeatable; e.g. Caltech-101's BACKGROUND_Google)",
    )
    p.add_argument("--copy", action="store_true", help="copy the files instead of linking to them")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from alexnet.data.split import split_folder

    bars: list[Any] = []

    def progress(placed: int, total: int) -> None:  # a bar once the split is planned (none before an error)
        if not bars:
            bars.append(tqdm(total=total, desc="copying" if args.copy else "linking", unit="file"))
        bars[0].update(placed - bars[0].n)

    try:
        summary = split_folder(
            args.source,
            args.out,
            train_per_class=args.train_per_class,
            val_per_class=args.val_per_class,
            val_fraction=args.val_fraction,
            seed=args.seed,
            exclude=args.exclude,
            copy=args.copy,
            progress=None if args.quiet or args.json else progress,
        )
    finally:
        for bar in bars:
            bar.close()
    if summary.loose:  # a stray image beside the class folders belongs to no class: say so, not silently
        names = ", ".join(summary.loose[:3]) + (" …" if len(summary.loose) > 3 else "")
        print(
            f"alexnet: note: {len(summary.loose)} file{'s' if len(summary.loose) > 1 else ''} directly in "
            f"{args.source}, in no class folder, left out ({names})",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({k: v for k, v in vars(summary).items() if k != "per_class"}))
        return 0
    sizes = (
        sorted({t for t, _ in summary.per_class.values()}),
        sorted({v for _, v in summary.per_class.values()}),
    )
    span = [f"{s[0]}" if len(s) == 1 else f"{s[0]}–{s[-1]}" for s in sizes]
    print(
        f"{summary.out}: {summary.classes} classes, {summary.train} train / {summary.val} val images "
        f"({span[0]} / {span[1]} per class, seed {summary.seed}; "
        f"{'copies of' if args.copy else 'links to'} {summary.source})"
    )
    return 0
