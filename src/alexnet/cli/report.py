"""``alexnet report``: one self-contained HTML page about a training run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alexnet.cli._common import (
    CommandError,
    add_command,
    add_device_argument,
    device_from_args,
    image_files,
    writable_file,
)


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "report",
        "write one self-contained HTML report of a training run",
        "One HTML file with everything inline (no server, no network): the per-layer summary table, learning "
        "curves from metrics.csv, conv1 filters, activation maps, deconvnet top-9 grids (from RUN_DIR/top9/ or a "
        "small top-9 over a few validation images) and occlusion maps of the run's model.",
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a training run folder (model.safetensors, metrics.csv …)"
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="IMAGE",
        help="images for activation and occlusion maps (files, or folders standing for their image files)",
    )
    p.add_argument("--out", help="output file (default RUN_DIR/report.html)")
    p.add_argument("--top9-layer", help="layer of the top-9 grids (default: the last conv layer, conv5)")
    p.add_argument(
        "--top9-images", type=int, default=60, help="validation images streamed for the top-9 (default 60)"
    )
    p.add_argument("--top9-channels", type=int, default=6, help="feature maps shown in the top-9 (default 6)")
    p.add_argument("--occlusion-stride", type=int, default=16, help="occluder stride in pixels (default 16)")
    p.add_argument(
        "--maximize-classes",
        type=int,
        default=10,
        help="optimised images of the first N classes (Yosinski et al. 2015; default 10; 0: none)",
    )
    p.add_argument(
        "--maximize-steps", type=int, default=200, help="gradient steps for those images (default 200)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.visualize.report import ReportOptions, build_report

    if args.top9_images < 1:
        raise CommandError("--top9-images must be at least 1")
    if args.top9_channels < 1:
        raise CommandError("--top9-channels must be at least 1")
    if args.occlusion_stride < 1:
        raise CommandError("--occlusion-stride must be at least 1")
    if args.maximize_classes < 0:
        raise CommandError("--maximize-classes must be at least 0")
    if args.maximize_steps < 1:
        raise CommandError("--maximize-steps must be at least 1")
    device = device_from_args(args)
    options = ReportOptions(
        images=[Path(i) for i in image_files(args.images or [])],
        top9_layer=args.top9_layer,
        top9_images=args.top9_images,
        top9_channels=args.top9_channels,
        occlusion_stride=args.occlusion_stride,
        maximize_classes=args.maximize_classes,
        maximize_steps=args.maximize_steps,
        progress=not args.quiet,
        device=str(device),
    )
    if args.out is not None:
        writable_file(args.out)
    path = build_report(args.run_dir, args.out, options)
    print(path)
    return 0
