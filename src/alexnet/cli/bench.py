"""``alexnet bench``: images/s and achieved FLOP/s against torchvision's AlexNet and the machine's matmul rate."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from alexnet.cli._common import CommandError, add_command, model_name

DEFAULT_MODELS = ("alexnet", "caffenet", "zfnet")


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "bench",
        "throughput (images/s, GFLOP/s, %% of the measured fp32 matmul rate) and training memory",
        "Times training steps and/or inference of each MODEL (default: alexnet caffenet zfnet) on random inputs, "
        "with torchvision's alexnet always included as the reference row: warm-up, then the median of the "
        "repeats. A training step counts 3x the forward FLOPs of `alexnet summary`. '% mm' is of an fp32 "
        "torch.mm rate measured in the same process before each row (2048x2048 on CPU; 8192x8192 on CUDA, on "
        "TF32 tensor cores when cuDNN uses them for the convolutions). Also: peak memory of a training step at "
        "batch 128 per model (CPU: resident set, fresh process each; CUDA: the allocator's peak), and with "
        "--data ROOT the training input pipeline against torchvision's stock ImageFolder + PIL pipeline (from "
        "`alexnet data-pack ROOT`'s pre-resized pixels too when ROOT has them; on CUDA also --gpu-augment's "
        "and --gpu-decode's). For A/B runs: ALEXNET_NATIVE=0 runs the CPU LRN as "
        "PyTorch ops instead of the fused C++ kernel, ALEXNET_FUSE=0 runs each conv stage's ReLU, LRN and "
        "max-pool as three modules instead of one kernel (channels-last only; C++ on CPU, Triton on CUDA), "
        "ALEXNET_TRITON=0 the CUDA LRN and stages as PyTorch ops instead of Triton kernels, ALEXNET_S2D=0 the "
        "first conv on CUDA in bf16 as cuDNN's 3-channel conv instead of space-to-depth, ALEXNET_FIRST_CONV=0 the "
        "first conv's weight gradient in CPU training by oneDNN instead of its own C++ kernel (and a frozen first "
        "conv's image gradient, as in visualize maximize, by oneDNN instead of the deconvnet's phase form), "
        "ALEXNET_FIRST_STAGE=0 that gradient from the full-size map even where relu -> pool -> norm follows conv1 "
        "(caffenet, zfnet) instead of from the pooled maps' gradient, ALEXNET_CONV_STAGE=0 conv2's weight "
        "gradient there by oneDNN from the full-size map, ALEXNET_AVX512=0 "
        "the CPU conv stages in fp32 and bf16 by the generic C++ loops instead of the AVX-512 code, ALEXNET_POSTOPS=0 "
        "conv3-5 and fc6-8 in CPU inference as modules instead of oneDNN primitives, "
        "ALEXNET_LINEAR=0 fc6-8 in CPU training as nn.Linear (MKL) instead of oneDNN's products, "
        "ALEXNET_CUDNN_BENCHMARK=0 cuDNN's algorithms chosen by its heuristics instead of timed per shape; "
        "the other way round, ALEXNET_FAST_LOG2=1, ALEXNET_KEEP_DENOMINATOR=1 and ALEXNET_STAGE_ROWS=1 turn on "
        "CUDA stage kernels not yet timed on a GPU (lg2.approx; the LRN denominators kept for the backward; "
        "the pooling windows' rows carried); "
        "ALEXNET_MALLOC=system keeps glibc's default allocator "
        "(docs/performance.md).",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", type=model_name, help="registered model names")
    p.add_argument(
        "--mode",
        choices=("train", "infer", "both"),
        default="both",
        help="train: a training step (forward, cross-entropy, backward, SGD update); infer: the forward pass in "
        "inference mode; both (default): a row of each per model",
    )
    p.add_argument(
        "--batch-size",
        "-b",
        type=int,
        default=64,
        help="batch size of the timed steps and of the --data pipeline (64)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per row; the median is reported (5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (2)")
    p.add_argument("--compile", action="store_true", help="torch.compile each model (compile time reported)")
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="CUDA only: capture each row's step as one CUDA graph and time its replays, so that the rows "
        "compare the GPU's work without the host's cost of launching it (every row, torchvision's too)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="models and batches in channels-last (default NCHW, where the paper models copy the batch to "
        "channels-last themselves on CPU and torchvision's runs as given)",
    )
    p.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast (as `alexnet train --amp`); '%% mm' is then of the bf16 matmul rate",
    )
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--memory-batch-size", type=int, default=128, help="batch of the memory measurement (128)")
    p.add_argument("--no-memory", action="store_true", help="skip the training-memory measurement")
    p.add_argument(
        "--interleave",
        action="store_true",
        help="time the models round-robin, one step each per round (steadier ratios on a shared machine; all "
        "models in memory at once)",
    )
    p.add_argument("--data", metavar="ROOT", help="also time the input pipeline on ROOT/train (or 'builtin')")
    p.add_argument(
        "--data-images",
        type=int,
        default=512,
        help="images per input-pipeline run, cycling through the folder if it has fewer (512)",
    )
    p.add_argument("--workers", type=int, default=0, help="loader worker processes for --data (0)")
    p.add_argument("--only-data", action="store_true", help="with --data: skip the model rows")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from alexnet.bench import Report, bench_data, format_report, machine_info, resolve_device, run_bench

    for opt in ("batch_size", "repeats", "memory_batch_size", "data_images"):
        if getattr(args, opt) < 1:
            raise CommandError(f"--{opt.replace('_', '-')} must be ≥ 1")
    for opt in ("warmup", "workers"):
        if getattr(args, opt) < 0:
            raise CommandError(f"--{opt} must be ≥ 0, not {getattr(args, opt)}")
    if args.only_data and not args.data:
        raise CommandError("--only-data needs --data ROOT")
    if args.data and args.data_images <= args.batch_size:  # before the model table, not after it
        raise CommandError(
            f"--data-images {args.data_images}: the input pipeline is timed after its first batch of "
            f"{args.batch_size}, so it needs more images than --batch-size"
        )
    if args.data and args.data != "builtin":  # a typo must not cost the whole model table first
        from alexnet.data.folders import ImageFolder

        ImageFolder(args.data, "train")
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)

    def progress(what: str) -> None:
        if not args.json:
            print(f"… {what}", file=sys.stderr, flush=True)

    if args.warmup == 0 and not args.only_data:
        progress(
            "--warmup 0: the first timed step pays for allocations and kernel set-up; compare rows with care"
        )
    if args.only_data:
        report = Report(machine_info(resolve_device(args.device)), {})
    else:
        report = run_bench(
            args.models or DEFAULT_MODELS,
            modes=("train", "infer") if args.mode == "both" else (args.mode,),
            batch_size=args.batch_size,
            device=args.device,
            repeats=args.repeats,
            warmup=args.warmup,
            compile=args.compile,
            channels_last=args.channels_last,
            amp=args.amp,
            memory=not args.no_memory,
            memory_batch_size=args.memory_batch_size,
            interleave=args.interleave,
            cuda_graph=args.cuda_graph,
            progress=progress,
        )
    if args.data:
        root = args.data
        if root == "builtin":
            from alexnet.data.synthetic import ensure_builtin_dataset

            root = ensure_builtin_dataset(progress=not args.json)
        progress(f"input pipeline on {root}")
        report.data = bench_data(
            root,
            images=args.data_images,
            workers=args.workers,
            device=args.device,
            batch_size=args.batch_size,
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    for row in report.data if args.json else []:  # the table says so in its row
        if row.stopped is not None:
            print(f"alexnet: warning: {row.pipeline} not timed: stopped {row.stopped}", file=sys.stderr)
    return 0
