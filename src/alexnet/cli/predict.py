"""``alexnet predict``: top-k classes for images."""

from __future__ import annotations

import argparse
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
        "Top-k classes for each image: the weights' own preprocessing (shorter side 256, centre crop), "
        "class names from the weights or torchvision's ImageNet list. An unreadable image is one line on "
        "stderr; the others are still classified, and the exit code is 2 if any failed. The network: --weights "
        "FILE or --run DIR (a training run's folder); two or more of them classify with the networks' averaged "
        "softmax (an ensemble, AlexNet §6).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    add_model_arguments(p, ensemble=True, run=True)
    p.add_argument("--topk", type=int, default=5, help="how many classes to show (default 5)")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.predict import predict_files

    if args.topk < 1:
        raise CommandError("--topk must be at least 1")
    device = device_from_args(args)
    model = load_model_from_args(args, need_weights=True)
    failed: list[ImageError] = []

    def report(e: ImageError) -> None:
        failed.append(e)
        print(f"alexnet: error: {e}", file=sys.stderr, flush=True)

    for path, preds in predict_files(model, args.images, topk=args.topk, device=str(device), on_error=report):
        print(path)
        for p in preds:
            print(f"  {p.probability:7.2%}  {p.label}  ({p.index})")
    return EXIT_USAGE if failed else 0
