"""``alexnet data-stats ROOT``: mean, std, per-pixel mean image and RGB PCA of a training set."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alexnet.cli._common import CommandError, add_command, writable_file


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "data-stats",
        "mean, std, per-pixel mean image and RGB PCA of an ImageNet-layout training set",
        "One streaming pass over ROOT/<split>/<class>/* after rescaling the shorter side to --size and taking "
        "the central square (AlexNet §2): per-channel mean and std, the per-pixel mean image (AlexNet §2) and "
        "the eigen-decomposition of the RGB covariance used by PCA colour augmentation (AlexNet §4.1). "
        "Pixels are RGB in 0–1. --out writes FILE.safetensors (with the mean image) and FILE.json "
        "(stats.json → stats.safetensors + stats.json); `alexnet train --stats FILE` reads it.",
    )
    p.add_argument("root", metavar="ROOT", help="data-set folder holding <split>/<class>/<images>")
    p.add_argument("--split", default="train", help="sub-folder to measure (default: train)")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the statistics to FILE.safetensors and FILE.json (either suffix optional)",
    )
    p.add_argument("--max-images", type=int, metavar="N", help="use N images (a fixed random subset)")
    p.add_argument("--size", type=int, default=256, help="side of the centre patch (default: 256)")
    p.add_argument("--workers", type=int, default=0, help="decoding worker processes (default: 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alexnet.data.stats import compute_stats, stats_file

    if args.workers < 0:
        raise CommandError(f"--workers must be ≥ 0, not {args.workers}")
    out = None
    if args.out:
        if Path(args.out).is_dir() or args.out.endswith(("/", "\\")):
            raise CommandError(
                f"--out {args.out} is a folder; give a file name (FILE.safetensors and FILE.json)"
            )
        out = writable_file(stats_file(args.out))
    stats = compute_stats(
        args.root,
        args.split,
        size=args.size,
        max_images=args.max_images,
        progress=not args.json,
        workers=args.workers,
    )
    if out is not None:
        stats.save(out)
    info = stats.summary()
    if args.json:
        if out is not None:
            info["out"] = str(out)
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{info['images']} images of {Path(args.root) / args.split} ({info['skipped']} skipped), {args.size}px"
    )
    print("            R        G        B")
    print("mean   " + "".join(f"{v:9.4f}" for v in stats.mean_rgb))
    print("std    " + "".join(f"{v:9.4f}" for v in stats.std_rgb))
    print("PCA (AlexNet §4.1): eigenvalue, eigenvector (R, G, B)")
    for j, val in enumerate(stats.eigval):
        vec = ", ".join(f"{stats.eigvec[i][j]:+.4f}" for i in range(3))
        print(f"  λ{j + 1} = {val:.5f}   p{j + 1} = ({vec})")
    if out is not None:
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
