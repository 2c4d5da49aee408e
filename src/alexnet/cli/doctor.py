"""``alexnet doctor``: diagnose a training run from its health log, or probe a set-up with a short run."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from alexnet.cli._common import (
    CommandError,
    add_command,
    add_device_argument,
    device_from_args,
    model_name,
    writable_file,
)

# The probe's flags and their defaults: with RUN_DIR none of them applies, and with --recipe only some do.
PROBE_DEFAULTS: dict[str, Any] = dict(
    data=None,
    recipe=None,
    steps=200,
    batch_size=32,
    lr=None,
    optimizer="sgd",
    init="paper",
    init_std=None,
    bias=None,
    classes=10,
    input_size=67,
    fc_width=None,
    every=10,
    save=None,
    device="auto",
)
RECIPE_SETS = ("optimizer", "init", "init_std", "bias", "input_size", "fc_width")  # the recipe decides these


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args: argparse.Namespace, names: Any) -> list[str]:
    return [_flag(n) for n in names if getattr(args, n) != PROBE_DEFAULTS[n]]


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "doctor",
        "why won't my network train? diagnose a run's health log (or probe a set-up) and plot health curves",
        "Reads RUN_DIR/health.csv (written by the HealthMonitor callback during training), health_meta.json, "
        "config.json and metrics.csv, and prints each problem found (loss stuck at chance, vanishing or "
        "exploding gradients, NaN with the first bad layer, dead ReLUs, LRN denominator range) with the "
        "numbers and a remedy from the literature. Without RUN_DIR, --model M runs a short probe first: a "
        "few hundred steps on a built-in task of coloured gratings (or --data ROOT), or with --recipe R "
        "through the training loop itself. Exit code 0 when a diagnosis was produced, 2 for a bad run folder.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a training run folder")
    p.add_argument("--out", help="where to write the health-curves PNG (default: RUN_DIR/health.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    g = p.add_argument_group("probe run (without RUN_DIR)")
    g.add_argument("--model", "-m", type=model_name, help="model to probe (alexnet, caffenet, zfnet …)")
    g.add_argument(
        "--data",
        help="ImageNet-layout folder ROOT/train/<class>/<images> (or ROOT/<class>/…; default: built-in gratings)",
    )
    g.add_argument("--recipe", help="probe through the training loop with this recipe (see alexnet train)")
    g.add_argument("--steps", type=int, default=PROBE_DEFAULTS["steps"], help="optimizer steps (default 200)")
    g.add_argument(
        "--batch-size", type=int, default=PROBE_DEFAULTS["batch_size"], help="batch size (default 32)"
    )
    g.add_argument("--lr", type=float, help="learning rate (default 0.01, or the recipe's)")
    g.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default=PROBE_DEFAULTS["optimizer"],
        help="optimiser (default sgd)",
    )
    g.add_argument(
        "--init",
        choices=("paper", "kaiming", "he"),
        default=PROBE_DEFAULTS["init"],
        help="paper: the model's own N(0, std) and biases (AlexNet §5); kaiming (or he): He et al. 2015, as "
        "`alexnet train --init kaiming`",
    )
    g.add_argument("--init-std", type=float, help="override every layer's weight std")
    g.add_argument("--bias", type=float, help="override every non-zero bias (the paper: 1; Caffe: 0.1)")
    g.add_argument(
        "--classes",
        type=int,
        default=PROBE_DEFAULTS["classes"],
        help="classes of the built-in gratings (default 10); with --recipe, use the data set's first N classes "
        "(the loop validates on them at the end: 2 keeps a probe short)",
    )
    g.add_argument(
        "--input-size",
        type=int,
        default=PROBE_DEFAULTS["input_size"],
        help="input side in pixels (default 67)",
    )
    g.add_argument("--fc-width", type=int, help="narrower fc6/fc7 for a faster probe (the paper: 4096)")
    g.add_argument(
        "--every",
        type=int,
        default=PROBE_DEFAULTS["every"],
        help="health measurement interval in steps (default 10)",
    )
    g.add_argument("--save", help="folder for the probe run (default: runs/doctor-MODEL-DATE-TIME)")
    add_device_argument(g)
    p.set_defaults(func=run)


def _probe(args: argparse.Namespace) -> Path:
    from alexnet.diagnostics.probe import ProbeConfig, probe, probe_with_recipe

    for name in ("steps", "batch_size", "every", "classes"):
        if getattr(args, name) < 1 or (name == "classes" and args.classes < 2):
            raise CommandError(f"--{name.replace('_', '-')} must be at least {2 if name == 'classes' else 1}")
    if not 32 <= args.input_size <= 512:
        raise CommandError(f"--input-size {args.input_size} is out of range (32–512)")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise CommandError(f"--lr must be a positive number (got {args.lr})")
    if args.fc_width is not None and args.fc_width < 1:
        raise CommandError(f"--fc-width must be at least 1 (got {args.fc_width})")
    # std 0 (all-zero weights) is a legitimate set-up to diagnose; a negative or NaN std is not
    if args.init_std is not None and not (math.isfinite(args.init_std) and args.init_std >= 0):
        raise CommandError(f"--init-std must be a finite number ≥ 0 (got {args.init_std})")
    if args.bias is not None and not math.isfinite(args.bias):
        raise CommandError(f"--bias must be a finite number (got {args.bias})")
    if args.recipe and (ignored := _given(args, RECIPE_SETS)):
        raise CommandError(
            f"{', '.join(ignored)}: the recipe sets these in a --recipe probe; probe without it to set them"
        )
    device = device_from_args(args)  # a bad --device is one line before any folder is made
    # a fresh folder per probe: never overwrite (or resume) an earlier run
    run_dir = Path(args.save or f"runs/doctor-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}")
    _fresh_folder(run_dir)
    say = (lambda w: None) if args.json else (lambda w: print(w, file=sys.stderr))
    if args.recipe:
        probe_with_recipe(
            args.recipe,
            model=args.model,
            data=args.data,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            classes=args.classes,
            every=args.every,
            run_dir=run_dir,
            device=args.device,
            on_warning=say,
        )
        return run_dir
    cfg = ProbeConfig(
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=0.01 if args.lr is None else args.lr,
        optimizer=args.optimizer,
        input_size=args.input_size,
        num_classes=args.classes,
        every=args.every,
        init="he" if args.init in ("kaiming", "he") else None,
        init_std=args.init_std,
        bias=args.bias,
        data=args.data,
        fc_width=args.fc_width,
        device=str(device),
    )
    probe(cfg, run_dir, on_warning=say, progress=not args.json)
    return run_dir


def _fresh_folder(path: Path) -> None:
    """A probe's run folder: new, or an empty folder; never an earlier run's (its config and health log would be
    overwritten) nor a file."""
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise CommandError(f"--save {path}: {parent} is a file, not a folder")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        what = "a file" if not path.is_dir() else "a folder that is not empty"
        raise CommandError(f"--save {path} is {what}: give a new folder (a probe never overwrites a run)")


def run(args: argparse.Namespace) -> int:
    from alexnet.diagnostics.doctor import diagnose_run, format_report

    if args.run_dir is None and args.model is None:
        raise CommandError("give a RUN_DIR to diagnose, or --model M for a probe run")
    if args.run_dir is not None and args.model is not None:
        raise CommandError("give either RUN_DIR or --model, not both")
    if args.run_dir is not None and (probe_flags := _given(args, PROBE_DEFAULTS)):
        raise CommandError(f"{', '.join(probe_flags)}: for a probe run (--model M) only, not with RUN_DIR")
    if args.out is not None and not args.no_plot:
        writable_file(args.out)
    run_dir = Path(args.run_dir) if args.run_dir is not None else _probe(args)
    report = diagnose_run(run_dir)
    plot = None
    if not args.no_plot:
        from alexnet.diagnostics.plots import plot_health

        s = report.to_dict()["summary"]
        title = f"{run_dir.name}: {s['model'] or ''} {s['optimizer'] or ''} lr {s['lr']}"
        plot = plot_health(report.run.records, args.out or run_dir / "health.png", title=title)
    if args.json:
        data = report.to_dict()
        data["plot"] = str(plot) if plot else None
        print(json.dumps(data, indent=2, allow_nan=False))
    else:
        print(format_report(report))
        if plot:
            print(f"\nhealth curves: {plot}")
    return 0
