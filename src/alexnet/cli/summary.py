"""``alexnet summary``: per-layer parameters and computation (and ``--compare`` side by side)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alexnet.cli._common import CommandError, add_command, model_name
from alexnet.errors import InputSizeError


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "summary",
        "per-layer parameters, MACs, FLOPs, activation memory and receptive fields",
        "Per-layer table measured from the model itself (forward hooks). FLOPs count 2 per MAC for conv/fc "
        "plus the element-wise work of ReLU, LRN and pooling (see docs/architecture.md).",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", type=model_name, help="registered model name(s)")
    p.add_argument(
        "--compare", nargs="+", metavar="MODEL", type=model_name, help="side-by-side table of these models"
    )
    p.add_argument("--input-size", type=int, help="input side in pixels (default: each model's own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.analysis import compare_table, summarize, summary_table
    from alexnet.factory import create_model

    names = list(args.models) + list(args.compare or [])
    if not names:
        raise CommandError("name at least one model (see alexnet models)")
    if args.input_size is not None and not 32 <= args.input_size <= 1024:
        raise CommandError(f"--input-size {args.input_size} is out of range (32–1024)")
    summaries = []
    for name in dict.fromkeys(names):
        model = create_model(name)
        try:
            summaries.append(summarize(model, args.input_size))
        except (RuntimeError, InputSizeError) as e:
            raise CommandError(
                f"{name} cannot take a {args.input_size}px input: {str(e).splitlines()[0]}"
            ) from None
    if args.json:
        data = [s.to_dict() for s in summaries]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    elif args.compare:
        print(compare_table(summaries))
    else:
        print("\n\n".join(summary_table(s) for s in summaries))
    return 0
