"""``alexnet weights``: import published weights (torchvision, ONNX, Caffe) and verify them against ONNX runtimes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alexnet.cli._common import CommandError, add_command, writable_file


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "weights",
        "import published weights (torchvision, ONNX model zoo, Caffe) and verify them",
        "Import pretrained weights into one of our models and write them, with their preprocessing and licence, "
        "as a .safetensors file; verify an import against onnxruntime; list the known published files.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    actions.required = True

    imp = add_command(
        actions,
        "import",
        "import weights into one of our models",
        "SOURCE is 'torchvision', an .onnx file (ONNX model zoo or our export), a .caffemodel (V1 or V2), or "
        "the name of a published file (see 'alexnet weights sources'), downloaded to the cache and checked "
        "against its published digest. ONNX imports are checked against onnxruntime before anything is written.",
    )
    imp.add_argument("source", metavar="SOURCE")
    imp.add_argument(
        "--model",
        "-m",
        default="auto",
        help="registered model to load into, or 'auto' (default): the registered model the file matches, "
        "else a configuration read from the file",
    )
    imp.add_argument("--name", help="name for an inferred configuration (default: from the file name)")
    imp.add_argument("--out", "-o", required=True, help="output .safetensors file")
    imp.add_argument(
        "--mean-file",
        help="Caffe mean image (imagenet_mean.binaryproto) to record with a .caffemodel import "
        "(default: Caffe's mean pixel 104, 117, 123 BGR)",
    )
    imp.add_argument(
        "--input-convention",
        choices=["caffe", "imagenet"],
        default=_ONLY_FOR["input_convention"][2],
        help="what an ONNX graph without our metadata expects: caffe (BGR, 0-255, minus the mean pixel; the "
        "zoo's AlexNet family, default) or imagenet (RGB, 0-1, mean/std)",
    )
    imp.add_argument(
        "--rgb",
        action="store_true",
        help="convert Caffe-convention (BGR) weights to take RGB input: conv1's input channels and the mean "
        "are reversed (default: keep the file's BGR filters and record channel_order=BGR)",
    )
    imp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    imp.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the onnxruntime comparison (only for graphs onnxruntime cannot run, e.g. opset 3)",
    )
    imp.set_defaults(func=run_import)

    ver = add_command(
        actions,
        "verify",
        "compare an imported model with the ONNX file it came from, in onnxruntime",
        "Runs FILE.onnx in onnxruntime and the weights in PyTorch on the same random batch and reports the "
        "largest logit difference (the Softmax at the end of zoo graphs is stripped: logits are compared).",
    )
    ver.add_argument("onnx", metavar="FILE.onnx")
    ver.add_argument("--weights", "-w", required=True, help="our .safetensors file")
    ver.add_argument("--model", "-m", help="model name (default: the one recorded in --weights)")
    ver.set_defaults(func=run_verify)

    src = add_command(actions, "sources", "list published weights files, their digests and cache state")
    src.set_defaults(func=run_sources)

    info = add_command(actions, "info", "show the metadata stored with a weights file")
    info.add_argument(
        "file",
        metavar="FILE",
        help="a .safetensors file, a .pth/.pt state dict or training checkpoint, or an .onnx / .caffemodel file "
        "(read by structure)",
    )
    info.set_defaults(func=run_info)


def _check_out(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise CommandError(f"--out {out}: write a .safetensors file")
    writable_file(out)  # a folder is named as one before --force is suggested
    if out.exists() and not args.force:
        raise CommandError(f"--out {out} exists; pass --force to overwrite it")
    return out


# The import flags that apply to only some sources, with their defaults: refused elsewhere, not ignored.
_ONLY_FOR: dict[str, tuple[str, tuple[str, ...], Any]] = {
    "name": ("an .onnx or .caffemodel import", (".onnx", ".caffemodel"), None),
    "mean_file": ("a .caffemodel import", (".caffemodel",), None),
    "rgb": ("an .onnx or .caffemodel import", (".onnx", ".caffemodel"), False),
    "no_verify": ("an .onnx import", (".onnx",), False),
    "input_convention": ("an .onnx import", (".onnx",), "caffe"),
}


def _refuse_flags_that_do_not_apply(args: argparse.Namespace, kind: str) -> None:
    for dest, (what, kinds, default) in _ONLY_FOR.items():
        if kind not in kinds and getattr(args, dest) != default:
            raise CommandError(f"--{dest.replace('_', '-')} goes with {what}, not with {args.source}")


def run_import(args: argparse.Namespace) -> int:
    from alexnet.weights import save_weights
    from alexnet.weights.sources import SOURCES, check_fits, fetch

    out = _check_out(args)
    source = args.source
    if source == "torchvision":
        _refuse_flags_that_do_not_apply(args, "torchvision")
        from alexnet.weights import load_pretrained

        model = load_pretrained(None if args.model == "auto" else args.model, "torchvision")
        path = save_weights(model, out, model.weights_meta)
        print(f"torchvision IMAGENET1K_V1 → {model.config.name}: wrote {path}")
        return 0
    if Path(source).is_dir():
        raise CommandError(f"{source} is a folder; give an .onnx or .caffemodel file or a source name")
    if not Path(source).exists() and source in SOURCES:
        _refuse_flags_that_do_not_apply(args, Path(SOURCES[source].filename).suffix)
        check_fits(SOURCES[source], args.model)  # before a download of hundreds of megabytes
        source = str(fetch(source))
        if args.model == "auto" and SOURCES[args.source].model != "auto":
            args.model = SOURCES[args.source].model
    path_in = Path(source)
    if not path_in.exists():
        raise CommandError(f"{source}: no such file, and not a known source (see 'alexnet weights sources')")
    if path_in.suffix in (".onnx", ".caffemodel"):
        _refuse_flags_that_do_not_apply(args, path_in.suffix)
    if path_in.suffix == ".onnx":
        from alexnet.weights.onnx import import_onnx

        model, report, _ = import_onnx(
            path_in,
            args.model,
            args.name,
            check=not args.no_verify,
            convention=args.input_convention,
            rgb=args.rgb,
        )
        print(
            f"{path_in.name} → {model.config.name}: {report or 'NOT verified against onnxruntime (--no-verify)'}"
        )
    elif path_in.suffix == ".caffemodel":
        from alexnet.weights.caffe import import_caffemodel

        model = import_caffemodel(path_in, args.model, args.name, args.mean_file, rgb=args.rgb)
        print(
            f"{path_in.name} → {model.config.name}: every blob copied bit for bit (no Caffe runtime to compare)"
        )
    else:
        raise CommandError(f"{source}: unknown format {path_in.suffix!r}; expected .onnx or .caffemodel")
    path = save_weights(model, out, model.weights_meta)
    pre = model.weights_meta.preprocessing
    print(f"wrote {path}: {model.config.name}, {model.num_classes} classes, input {pre.describe()}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from alexnet.weights import load_pretrained
    from alexnet.weights.onnx import verify

    if not Path(args.weights).is_file():
        raise CommandError(f"{args.weights}: no such weights file")
    model = load_pretrained(args.model, args.weights)
    report = verify(args.onnx, model)
    print(report)
    if not report.ok:
        raise CommandError(f"{args.weights} does not reproduce {args.onnx} (tolerance 1e-4 relative)")
    return 0


def run_sources(args: argparse.Namespace) -> int:
    from alexnet.weights.sources import SOURCES, cache_dir

    print(f"cache: {cache_dir()}")
    for s in SOURCES.values():
        cached = "cached" if (cache_dir() / s.filename).is_file() else "not cached"
        digest = f"{s.algorithm} {s.digest}" if s.digest else "no published digest (not verifiable)"
        print(f"{s.name:<24} → {s.model:<13} {cached:<10}  {digest}")
        print(f"{'':<24}   {s.url}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import json

    from alexnet.weights import read_weights
    from alexnet.weights.sources import FOREIGN_SUFFIXES, load_foreign

    path = Path(args.file)
    if path.suffix in FOREIGN_SUFFIXES and path.is_file():
        # what `weights import` would record, read by structure (an ONNX graph is checked in onnxruntime too)
        imported = load_foreign(path)
        state, meta = imported.state_dict(), imported.weights_meta
        kind = "an ONNX graph" if path.suffix == ".onnx" else "a Caffe model"
        print(
            f"file:           {kind}; `alexnet weights import {path} --out FILE.safetensors` writes it as ours"
        )
    else:
        state, meta = read_weights(path)
    params = sum(t.numel() for t in state.values())
    model = meta.model or "unknown (the file records no metadata: a plain state dict)"
    classes = f"{meta.num_classes} classes, " if meta.num_classes is not None else ""
    print(f"model:          {model}  ({classes}{params:,} parameters)")
    if ablation := (meta.config or {}).get("ablation"):
        print(f"ablation:       {ablation}")
    if meta.preprocessing is not None:
        print(f"preprocessing:  {json.dumps(meta.preprocessing.to_dict())}")
    print(f"source:         {meta.source or '-'}")
    print(f"license:        {meta.license or '-'}")
    for key, value in meta.extra.items():
        if value not in ("", None):
            shown = f"{value:.6g}" if isinstance(value, float) else value  # 0.002, not 0.0020000000000000018
            print(f"{key + ':':<15} {shown}")
    return 0
