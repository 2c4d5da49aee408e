"""``alexnet summary``: per-layer parameters and computation (and ``--compare`` side by side)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alexnet.cli._common import CommandError, add_command, layer_list, model_name
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
    ablation = p.add_argument_group(
        "the papers' ablations (as alexnet train takes them; applied to every model named)"
    )
    ablation.add_argument(
        "--remove",
        type=layer_list,
        default=(),
        metavar="LAYERS",
        help="without these layers, e.g. conv3,conv4",
    )
    ablation.add_argument("--no-lrn", dest="lrn", action="store_false", help="without response normalisation")
    ablation.add_argument(
        "--no-overlapping-pool", dest="overlapping_pool", action="store_false", help="2×2 pooling at stride 2"
    )
    ablation.add_argument("--fc-width", type=int, metavar="N", help="fc6 and fc7 N units wide")
    ablation.add_argument("--one-tower", action="store_true", help="AlexNet's one-GPU net (§3.2)")
    ablation.add_argument(
        "--with-original",
        action="store_true",
        help="with --compare: each model also as it is, beside its ablation",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.analysis import compare_table, summary_table
    from alexnet.models import ablate, build_model, get_config

    names = list(args.models) + list(args.compare or [])
    if not names:
        raise CommandError("name at least one model (see alexnet models)")
    if args.input_size is not None and not 32 <= args.input_size <= 1024:
        raise CommandError(f"--input-size {args.input_size} is out of range (32–1024)")
    if args.with_original and not args.compare:
        raise CommandError("--with-original sets a model beside its ablation: use it with --compare")
    summaries = []
    for name in dict.fromkeys(names):
        config = ablate(
            get_config(name),
            remove=args.remove,
            lrn=args.lrn,
            overlapping_pool=args.overlapping_pool,
            fc_width=args.fc_width,
            one_tower=args.one_tower,
        )
        configs = [get_config(name), config] if args.with_original and config.ablation else [config]
        for config in configs:
            summaries.append(_summary(build_model(config), name, args.input_size))
    if args.json:
        data = [s.to_dict() for s in summaries]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    elif args.compare:
        print(compare_table(summaries))
    else:
        print("\n\n".join(summary_table(s) for s in summaries))
    return 0


def _summary(model: Any, name: str, input_size: int | None) -> Any:
    from alexnet.analysis import summarize

    try:
        return summarize(model, input_size)
    except (RuntimeError, InputSizeError) as e:
        raise CommandError(f"{name} cannot take a {input_size}px input: {str(e).splitlines()[0]}") from None
