"""``alexnet train``: train a model with a named recipe; every recipe value can be overridden by a flag."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from alexnet.cli._common import CommandError, add_command, layer_list, model_name, seed, writable_folder

# flag → (TrainConfig field, type, help). Every flag defaults to None = "the recipe's value".
_VALUE_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--data",
        "data",
        str,
        "ImageNet-layout folder (ROOT/train/<class>/*, ROOT/val/<class>/*); default: built-in set",
    ),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--max-steps", "max_steps", int, "stop after this many optimizer steps"),
    ("--batch-size", "batch_size", int, "global batch size (split over DDP processes)"),
    ("--lr", "lr", float, "base learning rate"),
    ("--momentum", "momentum", float, "momentum"),
    ("--weight-decay", "weight_decay", float, "weight decay"),
    ("--optimizer", "optimizer", str, "paper_sgd (AlexNet §5 form), sgd (PyTorch form) or adamw"),
    ("--schedule", "schedule", str, "plateau, step, cosine or constant"),
    (
        "--bias-lr-mult",
        "bias_lr_mult",
        float,
        "the biases' learning rate as a multiple of the weights' (Caffe's lr_mult: 2 in the caffe recipe)",
    ),
    (
        "--bias-decay-mult",
        "bias_decay_mult",
        float,
        "the biases' weight decay as a multiple of --weight-decay (Caffe's decay_mult: 0 in the caffe recipe)",
    ),
    (
        "--classifier-lr-mult",
        "classifier_lr_mult",
        float,
        "the classifier layer's (fc8's) learning rate as a multiple of the other layers' (Caffe's fine-tuning "
        "example gives a new last layer 10; default 1)",
    ),
    ("--lr-factor", "lr_factor", float, "learning-rate multiplier of the step/plateau schedules"),
    ("--step-every", "step_every", int, "step schedule period (in --step-unit)"),
    ("--step-unit", "step_unit", str, "iter or epoch"),
    (
        "--plateau-patience",
        "plateau_patience",
        int,
        "plateau schedule: evaluations without a lower validation error before the rate is multiplied by "
        "--lr-factor",
    ),
    (
        "--max-reductions",
        "max_reductions",
        int,
        "plateau schedule: at most this many reductions (AlexNet §5: 3)",
    ),
    ("--min-lr", "min_lr", float, "cosine schedule: the learning rate it decays to"),
    ("--warmup-steps", "warmup_steps", int, "linear warm-up steps"),
    (
        "--grad-clip",
        "grad_clip",
        float,
        "clip the gradients' global L2 norm to this value before each update (default: no clipping)",
    ),
    ("--label-smoothing", "label_smoothing", float, "label smoothing of the cross-entropy"),
    ("--dropout", "dropout", float, "dropout probability of fc6/fc7"),
    ("--init", "init", str, "paper (the model's N(0,σ) init) or kaiming"),
    (
        "--bias-init",
        "bias_init",
        float,
        "with --init paper: the biases the model initialises non-zero (AlexNet §5: 1, in conv2/4/5 and fc6/7) "
        "start at this value instead (Caffe's bvlc_alexnet: 0.1)",
    ),
    ("--renorm-rms", "renorm_rms", float, "renormalise conv filters to this RMS after every update (ZF §3)"),
    (
        "--normalize",
        "normalize",
        str,
        "mean (0–255 minus the per-channel mean), image (0–255 minus the per-pixel mean image of the training "
        "set, AlexNet §2; computed into the run folder unless --stats gives it), meanstd (torchvision) or "
        "weights (as the --weights record; their default)",
    ),
    (
        "--stats",
        "stats",
        str,
        "statistics file from `alexnet data-stats ROOT --out FILE`: its mean (image) and RGB eigenvectors replace "
        "ImageNet's in the normalisation and the PCA colour augmentation (AlexNet §4.1)",
    ),
    (
        "--pca-lighting",
        "pca_lighting",
        float,
        "σ of the PCA colour augmentation (AlexNet §4.1: 0.1; 0 = off)",
    ),
    (
        "--train-crops",
        "train_crops",
        str,
        "random (any position of the 256 patch, AlexNet §4.1) or ten (one of the four corners or the centre, "
        "mirrored or not: ZF §3's ten sub-crops)",
    ),
    ("--input-size", "input_size", int, "crop side (default: the model's 227/224; the resize scales alike)"),
    (
        "--remove",
        "remove",
        layer_list,
        "ablation: train the model without these layers, e.g. conv3,conv4 or fc6,fc7 (ZF Table 3; AlexNet §7: "
        "any middle layer costs about 2%% top-1); the others keep their paper names",
    ),
    (
        "--fc-width",
        "fc_width",
        int,
        "ablation: fc6 and fc7 this many units wide instead of 4096 (ZF Table 3: 2048, 8192)",
    ),
    (
        "--weights",
        "weights",
        str,
        "start from trained weights instead of the init (fine-tuning): a weights file, a checkpoint, a run "
        "folder, torchvision, or a published source name (`alexnet weights sources`). The images are prepared "
        "as the weights record (--normalize weights); the classifier layer is replaced by a fresh one unless the "
        "weights predict the data's very classes; --model defaults to the weights' model",
    ),
    (
        "--freeze",
        "freeze",
        str,
        "keep the weights of every layer up to and including this one fixed: fc7 trains only a new classifier "
        "layer on the features of layers 1–7 (ZF §5.2), conv5 trains fc6–fc8",
    ),
    ("--classes", "classes", int, "use only the first N classes (sorted folder names)"),
    ("--images-per-class", "images_per_class", int, "use only the first K training images of each class"),
    (
        "--random-labels",
        "random_labels",
        float,
        "replace each training label, with this probability, by a uniformly random class (Zhang et al. 2017, §2: "
        "1 = all random; the network still learns them by heart); validation keeps the true labels",
    ),
    ("--workers", "workers", int, "data-loading worker processes"),
    ("--seed", "seed", seed, "seed of the data order, augmentation, init and dropout"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:N, mps"),
    (
        "--checkpoint-every",
        "checkpoint_every",
        int,
        "write a checkpoint every N steps (and at each epoch end)",
    ),
    ("--keep-checkpoints", "keep_checkpoints", int, "how many checkpoints to keep"),
    ("--eval-every", "eval_every", int, "also evaluate every N steps (0: only at epoch ends)"),
]
_BOOL_FLAGS = [
    ("--ten-crop", "ten_crop", "finish with a ten-crop evaluation (AlexNet §4.1)"),
    ("--amp", "amp", "bf16 autocast"),
    (
        "--channels-last",
        "channels_last",
        "channels-last memory format (default: on; faster on CPU, docs/performance.md)",
    ),
    ("--compile", "compile", "torch.compile the model"),
    (
        "--lrn",
        "lrn",
        "response normalisation (default: on; --no-lrn is AlexNet §3.3's ablation, +1.4%% top-1)",
    ),
    (
        "--overlapping-pool",
        "overlapping_pool",
        "3×3 pooling windows at stride 2 (default: on; --no-overlapping-pool is AlexNet §3.4's ablation, "
        "2×2 windows at stride 2, +0.4%% top-1)",
    ),
    (
        "--one-tower",
        "one_tower",
        "ablation: AlexNet's one-GPU net (§3.2): conv1–conv4 at half width, conv5 whole, no groups (+1.7%% top-1)",
    ),
    (
        "--cuda-graph",
        "cuda_graph",
        "replay each training step's forward and backward from two CUDA graphs captured once, so the host "
        "launches two graphs instead of a few hundred kernels (CUDA, one process; health-check steps and a last "
        "shorter batch run eagerly; docs/training.md)",
    ),
    (
        "--gpu-augment",
        "gpu_augment",
        "the workers decode and resize to 256x256 uint8 patches; the GPU takes the random crops, mirrors, PCA "
        "lighting and normalisation of whole batches, with the same numbers (CUDA only; default: on for a CUDA "
        "run whose preprocessing runs batched, as every recipe's; --no-gpu-augment for the workers' own)",
    ),
    (
        "--gpu-decode",
        "gpu_decode",
        "as --gpu-augment, and the GPU decodes the JPEGs too (nvJPEG through torchvision.io.decode_jpeg); the "
        "workers only read files (CUDA only)",
    ),
]


def register(sub: Any) -> None:
    from alexnet.train.recipes import list_recipes

    p = add_command(
        sub,
        "train",
        "train a model with a paper recipe",
        "Train an AlexNet-family model on an ImageNet-layout folder (or the built-in shapes set) with a named "
        "recipe; every recipe value can be overridden by a flag. --weights starts from trained weights instead of "
        "the init (fine-tuning; with --freeze fc7 only a new classifier layer learns, as in ZF §5.2). The run "
        "folder gets config.json, metrics.csv, "
        "steps.csv, train.log, TensorBoard events, learning_curve.png, results.json, checkpoints/, "
        "model.safetensors, the health log for `alexnet doctor` (health.csv, health_meta.json, and "
        "health_events.jsonl when a warning fired) and, with --normalize image and no --stats, "
        "data_stats.safetensors/.json. "
        "Launch under torchrun for DDP. On CUDA each loss is read one step late and batches are copied one "
        "ahead on a side stream, so the host never waits for the GPU between checkpoints; for an A/B, "
        "ALEXNET_LOSS_LAG=0 reads each loss before its backward pass and ALEXNET_PREFETCH=0 copies each batch "
        "on the compute stream.",
    )
    p.add_argument(
        "--model",
        "-m",
        default=None,
        type=model_name,
        help="model name (see alexnet models); default: the recipe's (alexnet; bvlc_alexnet for caffe, "
        "zfnet for zeiler2013, alexnet_owt for torchvision)",
    )
    p.add_argument(
        "--recipe", "-r", default=None, help=f"one of {', '.join(list_recipes())} (default krizhevsky2012)"
    )
    p.add_argument("--out", "-o", default=None, help="run folder (default runs/<model>-<recipe>-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint (Ctrl-C or SIGTERM stops a run after the step "
        "under way with a checkpoint; a second Ctrl-C stops at once)",
    )
    metavars = {
        "--weights": "WEIGHTS",
        "--freeze": "LAYER",
        "--data": "ROOT",
        "--stats": "FILE",
        "--remove": "LAYERS",
    }
    for flag, dest, typ, help_ in _VALUE_FLAGS:
        p.add_argument(flag, dest=dest, type=typ, default=None, help=help_, metavar=metavars.get(flag))
    for flag, dest, help_ in _BOOL_FLAGS:
        p.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_)
    p.add_argument(
        "--health-every",
        type=int,
        default=50,
        metavar="N",
        help="per-layer health (activations, dead units, gradient/update norms, LRN) every N steps into "
        "health.csv and TensorBoard, with live warnings; read it with `alexnet doctor RUN`. 0 = off (default 50)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> Any:
    """The recipe (or, with ``--resume``, the run's saved config.json) with the given flags on top."""
    import time

    from alexnet.train.config import TrainConfig
    from alexnet.train.recipes import resolve_recipe

    overrides = {dest: getattr(args, dest) for _, dest, _, _ in _VALUE_FLAGS}
    overrides.update({dest: getattr(args, dest) for _, dest, _ in _BOOL_FLAGS})
    # paths recorded in config.json: valid from any working directory later ("torchvision" is no path)
    for key in ("data", "stats", "weights"):
        if overrides.get(key) is not None and (key != "weights" or Path(overrides[key]).exists()):
            overrides[key] = str(Path(overrides[key]).absolute())
    if args.resume:
        if args.out is None:
            raise CommandError("--resume needs --out RUN_DIR (the run folder to continue)")
        saved = Path(args.out) / "config.json"
        if not saved.is_file():
            raise CommandError(f"--resume: {args.out} is not a run folder (no config.json)")
        cfg = TrainConfig.load(saved)
        for key, value in (("model", args.model), ("recipe", args.recipe)):
            if value is not None and value != getattr(cfg, key):
                raise CommandError(
                    f"--resume: the run in {args.out} uses --{key} {getattr(cfg, key)}, not {value}"
                )
        # the folder given now, not the one recorded: a copied or moved run continues where it is
        return cfg.with_overrides(**overrides, out=args.out)
    recipe = args.recipe or "krizhevsky2012"
    model = args.model
    if args.weights is not None and model is None:  # fine-tuning: the weights' model
        model = _weights_model(args.weights)
    # no --model: the recipe's; with --weights, the images prepared as the weights record
    cfg = resolve_recipe(recipe, model=model, **overrides)
    return cfg.with_overrides(out=args.out or f"runs/{cfg.model}-{recipe}-{time.strftime('%Y%m%d-%H%M%S')}")


def _weights_model(weights: str) -> str:
    """The model that ``--weights`` are for (the run's model when ``--model`` is not given)."""
    from alexnet.train.finetune import load_start

    return str(load_start(weights, None).model.config.name)


def run(args: argparse.Namespace) -> int:
    from alexnet.train.loop import train

    if args.health_every < 0:
        raise CommandError(f"--health-every must be >= 0 (got {args.health_every})")
    cfg = resolve_config(args)
    writable_folder(cfg.out)  # before the data is checked and the model built
    callbacks = []
    if args.health_every:
        from alexnet.diagnostics.health import HealthMonitor

        callbacks.append(HealthMonitor(every=args.health_every))
    result = train(cfg, resume=args.resume, progress=not args.quiet, callbacks=callbacks)
    if result.weights is None:  # not rank 0
        return 0
    steps = f"{result.steps} step" + ("" if result.steps == 1 else "s")
    print(f"run folder: {result.run_dir}  ({steps}, {result.minutes:.1f} min)")
    if result.final is not None:
        f = result.final
        print(
            f"validation (centre crop, {f.images} images): top-1 error {100 * f.top1_err:.2f}%, "
            f"top-5 error {100 * f.top5_err:.2f}%"
        )
    if result.ten_crop is not None:
        t = result.ten_crop
        print(
            f"validation (ten crops, {t.images} images): top-1 error {100 * t.top1_err:.2f}%, "
            f"top-5 error {100 * t.top5_err:.2f}%"
        )
    print(f"weights: {result.weights}")
    return 0
