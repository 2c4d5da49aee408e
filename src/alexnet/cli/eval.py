"""``alexnet eval``: top-1 / top-5 error of trained weights on an ImageNet-layout split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alexnet.cli._common import (
    CommandError,
    add_command,
    add_device_argument,
    add_model_arguments,
    check_weights_exist,
    device_from_args,
    load_weights_list,
    with_run_weights,
)


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "eval",
        "top-1/top-5 error of trained weights on a data folder",
        "Evaluate weights (--weights FILE, or --run DIR for a run folder's model.safetensors) on ROOT/<split> "
        "with the weights' own preprocessing and class list: centre crop, or --ten-crop (softmax averaged over "
        "the 4 corner and centre crops and their mirrors, AlexNet §4.1). Unreadable files are skipped, counted "
        "and named on stderr (the first 10; the rest counted); more than 1% of them is an error (exit code 2), "
        "as in training. Several --weights / --run are evaluated as one ensemble: their softmax outputs averaged "
        "(AlexNet §6), with ten crops each if asked.",
    )
    add_model_arguments(p, ensemble=True, run=True)
    p.add_argument("--data", help="ImageNet-layout folder (default: the run's data, or the built-in set)")
    p.add_argument("--split", default="val", help="sub-folder to evaluate (default val)")
    p.add_argument(
        "--ten-crop", action="store_true", help="average the softmax over ten crops (AlexNet §4.1)"
    )
    p.add_argument(
        "--per-class",
        action="store_true",
        help="also each class's images and top-1 accuracy (the mean over classes, Caltech's measure, is printed "
        "whenever the classes hold different numbers of images)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default 2)")
    add_device_argument(p)
    p.set_defaults(func=run)


def _weights_and_data(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """The weights files to evaluate (two or more: an ensemble) and the data folder: --data, else the first
    --run's recorded data."""
    if not args.weights and not args.run:
        raise CommandError("give --weights FILE or --run DIR (either repeated, for an ensemble)")
    weights = with_run_weights(args.weights, args.run) if args.run else args.weights  # --weights first
    data = args.data
    for folder in args.run or []:
        if data is None and (Path(folder) / "config.json").is_file():
            data = _run_data(Path(folder) / "config.json")
    return list(weights), data


def _run_data(config: Path) -> str | None:
    """The data folder recorded in a run's config.json (``None``: the built-in set). Read here rather than
    through ``TrainConfig.load`` so that a file that is valid JSON but not an object is one line, too."""
    try:
        cfg = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CommandError(f"--run: {config} is not a readable config.json ({e})") from None
    if not isinstance(cfg, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(cfg), "a number"
        )
        raise CommandError(f"--run: {config} holds {kind}, not a JSON object of settings")
    data = cfg.get("data")
    if data is not None and not isinstance(data, str):
        raise CommandError(f"--run: {config}: 'data' should be a folder name, not {data!r}")
    return data


def _print_per_class(result: Any) -> None:
    """One line per class with images: its name, its images and their top-1 accuracy."""
    rows = [
        (name, n, acc)
        for name, n, acc in zip(result.classes, result.class_images, result.class_accuracies, strict=True)
        if n
    ]
    width = max((len(name) for name, _, _ in rows), default=5)
    print(f"{'class':<{width}}  images  top-1 acc")
    for name, n, acc in rows:
        print(f"{name:<{width}}  {n:>6}  {100 * acc:8.2f}%")


def run(args: argparse.Namespace) -> int:
    from alexnet.evaluate import evaluate
    from alexnet.stopping import StopSignals

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.workers < 0:
        raise CommandError(f"--workers must be >= 0 (got {args.workers})")
    device = device_from_args(args)
    weights, data = _weights_and_data(args)
    for w in weights:  # before the built-in set is generated (a minute, the first time)
        check_weights_exist(w)
    if data is None:
        from alexnet.data.synthetic import ensure_builtin_dataset

        data = str(ensure_builtin_dataset(progress=not args.json))
    model = load_weights_list(args.model, weights)
    # Ctrl-C or SIGTERM: the batch under way is counted and the numbers so far are printed, marked as such
    signals = StopSignals(None if args.json else "stopping after this batch, with the numbers so far")
    with signals:
        result = evaluate(
            model,
            data,
            split=args.split,
            ten_crop=args.ten_crop,
            batch_size=args.batch_size,
            workers=args.workers,
            device=device,
            progress=not args.json,
            signals=signals,
        )
    if args.json:
        out = result.to_json()
        if args.per_class:
            out["per_class"] = [
                {"class": name, "images": n, "top1_acc": acc}
                for name, n, acc in zip(
                    result.classes, result.class_images, result.class_accuracies, strict=True
                )
            ]
        print(json.dumps(out))
    else:
        crops = "ten crops" if args.ten_crop else "centre crop"
        if len(weights) > 1:
            crops += f", an ensemble of {len(weights)} networks' averaged softmax"
        so_far = "" if result.complete else " so far (stopped early: not the split's result)"
        print(
            f"{Path(data) / args.split}: {result.images} images ({crops}), {result.skipped} skipped{so_far}"
        )
        print(f"top-1 error {100 * result.top1_err:.2f}%  (accuracy {100 * result.top1_acc:.2f}%)")
        print(f"top-5 error {100 * result.top5_err:.2f}%  (accuracy {100 * result.top5_acc:.2f}%)")
        if not result.balanced and result.mean_class_acc is not None:
            tested = sum(1 for n in result.class_images if n)
            print(
                f"mean per-class top-1 accuracy {100 * result.mean_class_acc:.2f}%  (over {tested} classes)"
            )
        if args.per_class:
            _print_per_class(result)
    if not result.complete:
        raise signals.interrupted(
            f"stopped after {result.images} images of {Path(data) / args.split}; the numbers printed are over "
            "those only"
        )
    return 0
