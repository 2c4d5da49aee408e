"""``alexnet predict``: top-k classes for images."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from alexnet.cli._common import (
    EXIT_USAGE,
    CommandError,
    add_command,
    add_device_argument,
    add_model_arguments,
    device_from_args,
    load_model_from_args,
)
from alexnet.errors import ImageError


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "predict",
        "classify images with a trained model",
        "Top-k classes for each image: the weights' own preprocessing (shorter side 256, centre crop, or ten "
        "crops with --ten-crop), "
        "class names from the weights or torchvision's ImageNet list. IMAGE is a file or a folder (its image "
        "files, sub-folders too, sorted: .jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm .pgm). An unreadable "
        "image is one line on stderr; the others are still classified, and the exit code is 2 if any failed. "
        "The network: --weights FILE or --run DIR (a training run's folder); two or more of them classify with "
        "the networks' averaged softmax (an ensemble, AlexNet §6). Ctrl-C or SIGTERM stops after the batch "
        "under way, its results printed.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="an image file or a folder of them")
    add_model_arguments(p, ensemble=True, run=True)
    p.add_argument("--topk", type=int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--ten-crop",
        action="store_true",
        help="average the softmax over ten crops: the four corners and the centre, and their mirrors (AlexNet §4.1)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON list instead of text: per image {image, top: [{index, label, probability}]} or "
        "{image, error}",
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bar (shown for --json or output to a file)"
    )
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from alexnet.predict import image_paths, predict_files
    from alexnet.stopping import StopSignals

    if args.topk < 1:
        raise CommandError("--topk must be at least 1")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1 (got {args.batch_size})")
    device = device_from_args(args)
    model = load_model_from_args(args, need_weights=True)
    paths = image_paths(args.images)
    records: list[dict[str, Any]] = []  # --json
    failed: list[ImageError] = []
    # The printed lines show the progress on a terminal; a bar when they go to a file, or nothing is printed yet.
    bar = tqdm(
        total=len(paths),
        unit="image",
        desc="predict",
        disable=args.quiet or len(paths) <= args.batch_size or (sys.stdout.isatty() and not args.json),
    )

    def report(e: ImageError) -> None:
        failed.append(e)
        bar.update()
        if args.json:
            records.append({"image": e.path, "error": str(e)})
        bar.write(f"alexnet: error: {e}", file=sys.stderr)

    signals = StopSignals("stopping after this batch, its results printed")
    done = 0
    with signals, bar:
        for path, preds in predict_files(
            model,
            paths,
            topk=args.topk,
            device=str(device),
            on_error=report,
            batch_size=args.batch_size,
            stop=lambda: signals.signum is not None,
            ten_crop=args.ten_crop,
        ):
            done += 1
            bar.update()
            if args.json:
                records.append(
                    {
                        "image": path,
                        "top": [
                            # float32's digits, not its float64 spelling (0.4036493, not 0.40364930033683777)
                            {"index": p.index, "label": p.label, "probability": float(f"{p.probability:.7g}")}
                            for p in preds
                        ],
                    }
                )
                continue
            print(path)
            for p in preds:
                print(f"  {p.probability:7.2%}  {p.label}  ({p.index})")
    if args.json:
        print(json.dumps(records, indent=1))
    if signals.signum is not None:
        raise signals.interrupted(f"stopped after {done + len(failed)} of {len(paths)} images")
    return EXIT_USAGE if failed else 0
