"""``alexnet export``: write a model (with its weights) as ONNX, checked against onnxruntime."""

from __future__ import annotations

import argparse
from typing import Any

from alexnet.cli._common import (
    CommandError,
    add_command,
    add_model_arguments,
    load_model_from_args,
    writable_file,
)


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "export",
        "export a model to ONNX (dynamic batch, LRN as ONNX LRN), checked in onnxruntime",
        "Writes one ONNX node per layer, named as in the papers (conv1, norm1, pool1 … fc8), with a dynamic "
        "batch dimension and the weights' metadata; the file is written only if onnxruntime reproduces "
        "PyTorch's logits (relative tolerance 1e-4).",
    )
    add_model_arguments(p, run=True)
    p.add_argument("--format", default="onnx", choices=["onnx"], help="output format (onnx)")
    p.add_argument("--out", "-o", required=True, help="output .onnx file")
    p.add_argument("--input-size", type=int, help="image side in pixels (default: the weights' or model's)")
    p.add_argument(
        "--opset",
        type=int,
        default=17,
        help="ONNX opset (10 up to the newest the installed onnx and onnxruntime run; default 17)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.weights.export import export_onnx

    out = writable_file(args.out)  # a folder is named as one before --force is suggested
    if out.exists() and not args.force:
        raise CommandError(f"--out {out} exists; pass --force to overwrite it")
    if args.input_size is not None and not 32 <= args.input_size <= 1024:
        raise CommandError(f"--input-size {args.input_size} is out of range (32–1024)")
    model = load_model_from_args(args)
    report = export_onnx(model, out, args.input_size, args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, opset {args.opset}): {report}")
    return 0
