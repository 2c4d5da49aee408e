"""``alexnet models``: the registered architectures."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alexnet.cli._common import add_command


def register(sub: Any) -> None:
    p = add_command(sub, "models", "list the registered models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run, without_torch=True)


def run(args: argparse.Namespace) -> int:
    from alexnet.models import CONFIGS

    rows = [
        {"name": c.name, "input_size": c.input_size, "description": c.description, "reference": c.reference}
        for c in CONFIGS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['input_size']}px  {r['description']}")
        print(f"{'':<{width}}         {r['reference']}")
    return 0
