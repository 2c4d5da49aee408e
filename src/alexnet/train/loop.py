"""The training loop: one function, :func:`train`, from a resolved :class:`TrainConfig` to a run folder.

Per step: forward (optionally bf16 autocast), cross-entropy, a finiteness check (all ranks agree, so they stop
together), backward, the optimizer update in the recipe's form, ZF §3 filter renormalisation when the recipe
asks, then callbacks. On CUDA the loss and its check are read one step late (:mod:`alexnet.train.loss_reader`),
so that the host never waits for the device within a run of steps. Checkpoints every ``checkpoint_every`` steps and at each epoch end; evaluation at each epoch
end (and every ``eval_every`` steps). See :mod:`alexnet.train.callbacks` for the hook order.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from alexnet.data.folders import log_unreadable
from alexnet.errors import DataError, Interrupted, StoppedByMainRank, TrainingError
from alexnet.evaluate import EvalResult, evaluate_loader
from alexnet.train import distributed as dist_utils
from alexnet.train.callbacks import Callback, TrainContext
from alexnet.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from alexnet.train.config import TrainConfig
from alexnet.train.cuda_graph import GraphedForward
from alexnet.train.data import (
    RunData,
    eval_loader,
    input_convention,
    open_run_data,
    run_stats,
    train_loader,
)
from alexnet.train.finetune import Start, adapt, check_freeze, describe_difference, freeze_, load_start
from alexnet.train.interrupt import StopRequest
from alexnet.train.loss_reader import LossReader, StepRecord, default_lag
from alexnet.train.optim import LRSchedule, build_optimizer, load_optimizer_state
from alexnet.train.run_folder import WEIGHTS
from alexnet.train.runlog import (
    METRIC_FIELDS,
    METRICS,
    ON_CONSOLE,
    STEP_FIELDS,
    STEPS,
    CsvLog,
    attach_log_file,
    detach_log_file,
    plot_learning_curve,
)

log = logging.getLogger("alexnet.train")

# a live health warning stays in the progress bar this long (it stays in train.log for good)
WARNING_SHOWN_STEPS = 100
CONFIG = "config.json"


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    epochs_done: float
    final: EvalResult | None
    ten_crop: EvalResult | None
    weights: Path | None
    minutes: float


def _build_model(
    cfg: TrainConfig, classes: list[str], start: Start | None, state: dict[str, Any] | None
) -> tuple[Any, list[str]]:
    """The run's network: from the starting weights (``--weights``), else initialised as ``cfg.init`` says; a
    resumed run starting from weights is rebuilt from its checkpoint's architecture record (the weights' own, which
    may be no registered model's). Then ``--freeze`` fixes the layers up to the one it names. Also the lines for
    the run's log that say so."""
    notes: list[str] = []
    if start is not None:
        model, note = adapt(start, classes, cfg.dropout)
        notes.append(note)
    else:
        model = _fresh_model(cfg, len(classes), state)
        if cfg.ablated():
            weighted = [name for name, m in model.named_layers() if any(True for _ in m.parameters())]
            params = sum(p.numel() for p in model.parameters())
            notes.append(f"{cfg.ablation_flags()}: {' → '.join(weighted)}, {params:,} parameters")
    if cfg.freeze is not None:
        fixed = freeze_(model, cfg.freeze)
        notes.append(f"--freeze {cfg.freeze}: {', '.join(fixed) or 'no layer with weights'} fixed")
    return model, notes


def _fresh_model(cfg: TrainConfig, num_classes: int, state: dict[str, Any] | None = None) -> Any:
    from alexnet.models import ArchConfig, build_model
    from alexnet.train.init import kaiming_init_, set_nonzero_biases_

    if cfg.weights is not None and state is not None and isinstance(state.get("architecture"), dict):
        arch = ArchConfig.from_dict(state["architecture"]).with_overrides(dropout=cfg.dropout)
        return build_model(arch, num_classes=num_classes)  # the checkpoint's weights are loaded next
    model = build_model(cfg.architecture(), num_classes=num_classes)
    if cfg.init == "kaiming":
        kaiming_init_(model)
    if cfg.bias_init is not None and not set_nonzero_biases_(model, cfg.bias_init):
        raise TrainingError(
            f"--bias-init {cfg.bias_init:g}: {cfg.model}'s init sets no bias to a non-zero constant, so there is "
            "nothing to change"
        )
    return model


def _run_callbacks(callbacks: Sequence[Callback], hook: str, ctx: TrainContext, *args: Any) -> list[str]:
    warnings: list[str] = []
    for cb in callbacks:
        out = getattr(cb, hook)(ctx, *args)
        if out:
            warnings.extend(out)
    for w in warnings:
        log.warning("%s", w)
    return warnings


def _params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` with ``cfg`` into the run folder ``cfg.out``; ``resume`` continues from its newest
    checkpoint. Raises :class:`TrainingError` / :class:`DataError` for anything the user can fix, and
    :class:`~alexnet.errors.Interrupted` after Ctrl-C or SIGTERM, once the step under way is checkpointed
    (:mod:`alexnet.train.interrupt`)."""
    info = dist_utils.setup(cfg.device)
    try:
        return _train(cfg, info, resume, callbacks, progress)
    finally:
        dist_utils.teardown()


# What a checkpoint's position and weights depend on: changed on --resume, the run would silently skip or repeat
# images (batch size, seed), relabel them (classes, random labels) or not fit the weights (input size); and how
# its weights began (init, bias init), which config.json records for `alexnet doctor`. The data folder may move:
# the checkpoint's class list and number of training images are checked against the data instead.
_FIXED_ON_RESUME = (
    "classes",
    "images_per_class",
    "random_labels",
    "batch_size",
    "seed",
    "input_size",
    "normalize",
    "stats",
    "init",
    "bias_init",
    "weights",
    "freeze",
    # the architecture the checkpoints hold (the papers' ablations)
    "remove",
    "lrn",
    "overlapping_pool",
    "fc_width",
    "one_tower",
)


def _check_resumable(cfg: TrainConfig, state: dict[str, Any]) -> None:
    # a checkpoint from before --weights and --freeze existed was trained without them
    saved = {"weights": None, "freeze": None, "random_labels": 0.0, **(state.get("config") or {})}
    for key in _FIXED_ON_RESUME:
        if key in saved and _shown(saved[key]) != _shown(getattr(cfg, key)):
            was, now = _shown(saved[key]), _shown(getattr(cfg, key))
            paths = key in ("stats", "weights") and was is not None and now is not None
            if paths and Path(was).absolute() == Path(now).absolute():  # relative in an older config.json
                continue
            flag = "--" + key.replace("_", "-")
            trained = f"without {flag}" if was is None else f"with {flag} {was}"
            given = f"without {flag}" if now is None else f"with {flag} {now}" if was is None else str(now)
            if isinstance(was, bool):  # --lrn / --no-lrn
                trained, given = (f"with --{'' if v else 'no-'}{flag[2:]}" for v in (was, now))
            raise TrainingError(
                f"--resume: the run was trained {trained}, not {given}; resume with the same value, or start a "
                "new run"
            )


def _shown(value: Any) -> Any:
    """A config value as a flag takes it: ``--remove conv3,conv4`` (a list in config.json, a tuple in memory)."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else value


def _names(classes: Sequence[str]) -> str:
    return ", ".join(classes[:4]) + (", …" if len(classes) > 4 else "")


def _finish_on_device(cfg: TrainConfig, device: torch.device, train_set: Any) -> bool:
    """Whether the batches' random crops, mirrors, lighting and normalisation run on the training device
    (``--gpu-augment``; ``--gpu-decode`` decodes there too). Unset, on a CUDA device wherever the transform runs
    batched there (every recipe's): the same batches as the workers make, and the workers do a third of the work."""
    if cfg.gpu_decode:
        return True
    if cfg.gpu_augment is not None:
        return cfg.gpu_augment
    from alexnet.data.on_device import finishes_on

    return finishes_on(device, getattr(train_set, "transform", None))


def _train(
    cfg: TrainConfig,
    info: dist_utils.DistInfo,
    resume: bool,
    callbacks: Sequence[Callback],
    progress: bool,
) -> TrainResult:
    t_start = time.monotonic()
    run_dir = Path(cfg.out)
    if (cfg.gpu_augment or cfg.gpu_decode or cfg.cuda_graph) and info.device.type != "cuda":
        flag = "--gpu-decode" if cfg.gpu_decode else "--gpu-augment" if cfg.gpu_augment else "--cuda-graph"
        raise TrainingError(f"{flag} needs a CUDA GPU, but this run's device is {info.device}")
    if cfg.amp and info.device.type == "cpu" and info.is_main:
        from alexnet.models import postops

        if not postops.bf16_supported():
            log.warning(
                "--amp: %s; bf16 runs emulated here, several times slower than without --amp",
                postops.NO_BF16_KERNELS,
            )
    if cfg.cuda_graph and info.distributed:
        raise TrainingError(
            "--cuda-graph runs in one process: DistributedDataParallel's all-reduce is not captured here"
        )
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = (
            True  # training batches all have one shape: time cuDNN's algorithms once
        )
    if cfg.batch_size % info.world_size:
        raise TrainingError(
            f"batch size {cfg.batch_size} is not divisible by the {info.world_size} processes"
        )
    # a folder whose run stopped before its first checkpoint (config.json only) may be trained into again
    if not resume and (list_checkpoints(run_dir) or (run_dir / WEIGHTS).is_file()):
        raise TrainingError(
            f"{run_dir} already holds a run: add --resume to continue it, or pick another --out (or delete it)"
        )
    notes: list[str] = []
    state = latest_checkpoint(run_dir, notes) if resume else None
    if state is not None:
        _check_resumable(cfg, state)

    torch.manual_seed(cfg.seed)

    start: Start | None = None  # --weights: the loaded network, read before the data (its input convention)

    def open_data(progress_: bool) -> tuple[Any, RunData]:
        nonlocal start
        if cfg.weights is not None and state is None:
            start = load_start(cfg.weights, cfg.model)
        if cfg.freeze is not None and state is None:  # an unknown layer is refused before the data is read
            check_freeze(start.model if start is not None else cfg.model, cfg.freeze, cfg.input_size)
        stats = run_stats(cfg, run_dir, progress_)
        size = start.model.config.input_size if start is not None else _input_size(cfg.model)
        pre_, mean_image = input_convention(cfg, size, stats, start, state)
        return pre_, open_run_data(cfg, pre_, progress=progress_, mean_image=mean_image, stats=stats)

    # Rank 0 generates / checks the data and computes its statistics first (all cached), then the others open it.
    # Its outcome is shared: a bad folder is the same one line on every rank, not a peer's broken connection.
    if info.is_main:
        try:
            pre, data = open_data(progress)
        except Exception as e:
            dist_utils.share_from_main(info, str(e) or type(e).__name__)
            raise
        dist_utils.share_from_main(info, None)
    else:
        failed = dist_utils.share_from_main(info, None)
        if failed is not None:
            raise StoppedByMainRank(failed)
        pre, data = open_data(False)
    # --weights with --normalize: the run's choice, but the network learnt other inputs
    if start is not None and cfg.normalize != "weights" and (note := describe_difference(start, pre)):
        notes.append(note)
    if cfg.random_labels > 0:
        notes.append(
            f"--random-labels {cfg.random_labels:g} (Zhang et al. 2017, §2): {data.relabelled} of {len(data.train)} "
            f"training labels replaced by random classes (seed {cfg.seed}); the validation labels are the true ones"
        )
    on_gpu = info.device if _finish_on_device(cfg, info.device, data.train) else None  # where batches end
    on_cuda = info.device.type == "cuda"
    loader = train_loader(
        data.train, cfg, info.rank, info.world_size, on_cuda, on_gpu, info.device if on_cuda else None
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise DataError(
            f"batch size {cfg.batch_size} is larger than the training set ({len(data.train)} images); "
            "use a smaller --batch-size"
        )
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    torch.manual_seed(cfg.seed)
    model, built = _build_model(cfg, data.classes, start, state)
    start = None  # the network is the model now (or was copied into it)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    reader = LossReader(optimizer, info, default_lag(info.device, optimizer))
    schedule = LRSchedule(cfg, total_steps, steps_per_epoch)
    epoch, in_epoch, step = 0, 0, 0
    if state is not None:
        saved_classes, saved_images = state.get("classes"), state.get("train_images")
        if saved_classes is not None and list(saved_classes) != list(data.classes):
            raise TrainingError(
                f"--resume: the checkpoint learnt {len(saved_classes)} classes ({_names(saved_classes)}), the "
                f"data now has {len(data.classes)} ({_names(data.classes)}): resume with the same data"
            )
        if saved_images is not None and saved_images != len(data.train):  # the epochs' order would differ
            raise TrainingError(
                f"--resume: the checkpoint's epochs went over {saved_images} training images, the data now has "
                f"{len(data.train)}: resume with the same data"
            )
        for key, ours in model.state_dict().items():  # older checkpoints record no class list
            theirs = state["model"].get(key)
            if theirs is not None and theirs.shape != ours.shape:
                raise TrainingError(
                    f"--resume: the checkpoint's {key} is {list(theirs.shape)}, this run's model has "
                    f"{list(ours.shape)}: resume with the same data and input size"
                )
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"], model, cfg)
        schedule.load_state_dict(state["schedule"])
        epoch, in_epoch, step = int(state["epoch"]), int(state["in_epoch"]), int(state["step"])
    # Different dropout masks per rank, reproducible per (seed, rank); a checkpoint restores the exact state.
    torch.manual_seed(cfg.seed * 1000 + info.rank)
    if state is not None:
        rng = state["rng"][info.rank] if info.rank < len(state["rng"]) else state["rng"][0]
        set_rng_state(rng)
    net = dist_utils.wrap(model, info)
    if cfg.compile:
        net = torch.compile(net)
    # the training steps' forward: the module, or its replay from CUDA graphs (evaluation always uses `net`)
    forward = GraphedForward(net, cfg.amp) if cfg.cuda_graph else net

    writer = None
    handler: list[Any] | None = None
    steps_log = metrics_log = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG)
        handler = attach_log_file(run_dir)
        # a new run starts its logs anew (an earlier one may have been killed before its first checkpoint)
        steps_log = CsvLog(run_dir / STEPS, STEP_FIELDS, fresh=state is None)
        metrics_log = CsvLog(run_dir / METRICS, METRIC_FIELDS, fresh=state is None)
        if state is not None:
            steps_log.truncate_after(step)
            metrics_log.truncate_after(step)
        from torch.utils.tensorboard import SummaryWriter

        # TensorBoard hides the events of re-done steps (of every earlier step, for a new run)
        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step)
        log.info(
            "%s %s: model %s, data %s (%d classes, %d train / %d val images, %d skipped, %s), %s on "
            "%s, %d steps of batch %d",
            "resuming" if state else "starting",
            run_dir,
            cfg.model,
            data.root,
            len(data.classes),
            len(data.train),
            len(data.val),
            len(data.skipped),
            # alexnet data-pack's store, or JPEG decoding in the loader; finished by the workers or the GPU
            (
                f"pixels from {data.train.pixels.store}"
                if data.train.pixels is not None
                else "decoded from the files"
            )
            + (", crops, mirrors and lighting on the GPU" if on_gpu is not None else ""),
            f"{info.world_size} process" + ("es" if info.world_size > 1 else ""),
            info.device,
            total_steps,
            cfg.batch_size,
        )
        for line in built:  # where the weights came from and what stays fixed
            log.info("%s", line)
        log_unreadable(data.skipped, verb="skipped")  # the up-front check's, now into train.log too
        if empty := data.train.empty_classes:  # e.g. one of ILSVRC's 1000 class archives left unextracted
            log.warning(
                "%d class folder%s of %s hold%s no images (%s%s): the network has an output for each that no "
                "training image teaches",
                len(empty),
                "s" if len(empty) > 1 else "",
                data.train.root / data.train.split,
                "" if len(empty) > 1 else "s",
                ", ".join(empty[:5]),
                " …" if len(empty) > 5 else "",
                extra=ON_CONSOLE,
            )
        for note in notes:
            log.warning("%s", note, extra=ON_CONSOLE)
        if state is not None and step >= total_steps:  # e.g. --resume with a --max-steps below the run's step
            log.warning(
                "--resume: the checkpoint is at step %d, at or past this run's last step (%d): nothing is "
                "trained; the run ends with the checkpoint's weights%s",
                step,
                total_steps,
                " (a longer run: a larger --max-steps or --epochs)" if step == total_steps else "",
                extra=ON_CONSOLE,
            )

    ctx = TrainContext(
        model=model,
        optimizer=optimizer,
        run_dir=run_dir if info.is_main else None,
        num_classes=len(data.classes),
        step=step,
        epoch=epoch,
        writer=writer,
        is_main=info.is_main,
        loss_checked=True,
    )
    ctx.extra["config"] = cfg
    ctx.extra["world_size"] = info.world_size
    window_loss, window_n, window_images, window_time, window_data = 0.0, 0, 0, 0.0, 0.0
    last_loss: float | None = None  # the newest loss read (the progress bar's)

    def account(records: list[StepRecord]) -> None:
        """Log the steps whose losses were just read; stop at a non-finite one."""
        nonlocal window_loss, window_n, last_loss
        for rec in records:
            if not rec.finite:
                stop_nonfinite(rec)
            window_loss, window_n, last_loss = window_loss + rec.loss, window_n + 1, rec.loss
            if info.is_main and steps_log is not None:
                steps_log.append(
                    {"step": rec.step + 1, "epoch": rec.epoch + 1, "lr": rec.lr, "loss": rec.loss}
                )
                if writer is not None:
                    writer.add_scalar("train/loss", rec.loss, rec.step + 1)
                    writer.add_scalar("train/lr", rec.lr, rec.step + 1)

    def stop_nonfinite(rec: StepRecord) -> None:
        # The updates since the bad step were skipped on the device (LossReader): the weights are the ones it saw.
        from alexnet.diagnostics.health import locate_nonfinite

        ctx.inputs = rec.images  # for callbacks that look at the batch of the failed step
        where = locate_nonfinite(model, rec.images) or "the forward pass is finite; the loss is not"
        raise TrainingError(
            f"loss is {rec.loss} at step {rec.step + 1} (epoch {rec.epoch + 1}): {where}; stopping. "
            + (
                f"The last good checkpoint is kept in {run_dir / 'checkpoints'}; "
                if list_checkpoints(run_dir)
                else "No checkpoint was written before it; "
            )
            + f"try a lower --lr "
            f"(now {rec.lr:g}), or run `alexnet doctor {run_dir}`"
        )

    def checkpoint(epoch_: int, in_epoch_: int) -> None:
        account(reader.flush())  # no checkpoint after a non-finite loss
        if not _params_finite(model):
            raise TrainingError(
                f"weights became non-finite at step {step}; not writing a checkpoint "
                f"(the last good one is kept in {run_dir / 'checkpoints'})"
            )
        states = _gather_rng(info)
        if info.is_main:
            save_checkpoint(
                run_dir,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "rng": states,
                    "epoch": epoch_,
                    "in_epoch": in_epoch_,
                    "step": step,
                    "config": cfg.to_dict(),
                    "classes": list(data.classes),
                    "train_images": len(data.train),
                    # what the final weights file records, so that a checkpoint loads as weights too
                    # (alexnet.train.checkpoint.checkpoint_meta): the network as built (an unregistered variant
                    # too), its input's preprocessing and mean image
                    "architecture": model.config.to_dict(),
                    "preprocessing": pre.to_dict(),
                    "mean_image": data.mean_image,
                },
                step,
                keep=cfg.keep_checkpoints,
            )
        dist_utils.barrier(info)

    val_loader = eval_loader(
        data.val,
        max(1, cfg.batch_size // info.world_size),
        cfg.workers,
        info.rank,
        info.world_size,
        on_gpu,
        cfg.gpu_decode,
        info.device if on_cuda else None,
    )
    last: EvalResult | None = None
    ten_result: EvalResult | None = None
    last_eval_step = -1
    warn_text, warn_step = "", 0

    def run_eval(epoch_: int) -> EvalResult:
        nonlocal window_loss, window_n, window_images, window_time, window_data, last, last_eval_step
        account(reader.flush())
        result = evaluate_loader(
            net,
            val_loader,
            info.device,
            amp=cfg.amp,
            channels_last=cfg.channels_last,
            desc="validation",
            progress=progress and info.is_main,
        )
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_mult", 1.0)
        row = {
            "epoch": epoch_,
            "step": step,
            "lr": lr,
            "train_loss": window_loss / window_n if window_n else None,
            "val_loss": result.loss,
            "val_top1_err": result.top1_err,
            "val_top5_err": result.top5_err,
            "images_per_s": window_images / window_time if window_time > 0 else None,
            "data_wait": min(1.0, window_data / window_time) if window_time > 0 else None,
        }
        if info.is_main and metrics_log is not None:
            metrics_log.append(row)  # (the loader has logged the files it skipped)
            log.info(
                "epoch %d step %d: val top-1 error %.2f%%, top-5 error %.2f%%, val loss %.4f%s",
                epoch_,
                step,
                100 * result.top1_err,
                100 * result.top5_err,
                result.loss,
                ""
                if row["data_wait"] is None
                else f"; training {row['images_per_s']:.1f} images/s, {100 * row['data_wait']:.0f}% of the time "
                "getting batches",
            )
            if writer is not None:
                writer.add_scalar("val/top1_err", result.top1_err, step)
                writer.add_scalar("val/top5_err", result.top5_err, step)
                writer.add_scalar("val/loss", result.loss, step)
                if row["data_wait"] is not None:
                    writer.add_scalar("train/data_wait", row["data_wait"], step)
        ctx.step, ctx.epoch = step, epoch_
        _run_callbacks(callbacks, "on_eval", ctx, {k: v for k, v in row.items() if v is not None})
        window_loss, window_n, window_images, window_time, window_data = 0.0, 0, 0, 0.0, 0.0
        last, last_eval_step = result, step
        return result

    from tqdm import tqdm

    def interrupted(signum: int) -> None:
        """After the checkpoint: say where the run stopped, then stop every rank with the signal's exit code."""
        name = signal.Signals(signum).name
        message = (
            f"{name}: stopped after step {step} of {total_steps}; checkpoint saved: continue with "
            f"`alexnet train --resume --out {run_dir}`"
        )
        if info.is_main:
            log.warning("%s", message)
        dist_utils.barrier(info)  # rank 0 has logged before any rank exits (torchrun stops the rest then)
        raise Interrupted(message, signum, quiet=not info.is_main)

    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=f"training {cfg.model}",
        unit="step",
        disable=not (progress and info.is_main),
        dynamic_ncols=True,
    )
    _run_callbacks(callbacks, "on_train_start", ctx)
    net.train()
    trained = False
    try:
        with StopRequest(info, announce=progress) as stop:
            while epoch < cfg.epochs and step < total_steps:
                loader.set_epoch(epoch, in_epoch)
                t0 = time.monotonic()
                batches = iter(loader)
                while True:
                    try:  # the time to get a batch: the workers, and with --gpu-augment its launch on the GPU
                        images, targets = next(batches)
                    except StopIteration:
                        break
                    window_data += time.monotonic() - t0
                    in_epoch += 1
                    images = images.to(info.device, non_blocking=True)
                    targets = targets.to(info.device, non_blocking=True)
                    if cfg.channels_last:
                        images = images.contiguous(memory_format=torch.channels_last)
                    lr = schedule.apply(optimizer, step)
                    ctx.step, ctx.epoch, ctx.lr, ctx.inputs, ctx.loss = step, epoch, lr, images, None
                    _run_callbacks(callbacks, "on_step_start", ctx)
                    with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                        logits = forward(images)
                    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
                    # lag 0: this step's loss, read (and a non-finite one stopped) before its backward pass
                    account(reader.push(loss, StepRecord(step, epoch, lr, images)))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    ctx.loss = loss.detach()
                    _run_callbacks(callbacks, "on_after_backward", ctx)
                    if cfg.grad_clip:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    optimizer.step()
                    if cfg.renorm_rms is not None:
                        from alexnet.models import renormalize_filters_

                        renormalize_filters_(model, cfg.renorm_rms)
                    step += 1
                    ctx.step = step
                    warns = _run_callbacks(callbacks, "on_step_end", ctx)
                    if warns:
                        warn_text, warn_step = warns[-1], step
                    elif warn_text and step - warn_step >= WARNING_SHOWN_STEPS:
                        warn_text = (
                            ""  # a passing problem (the plateau before learning starts) leaves the bar
                        )
                    dt = time.monotonic() - t0
                    t0 = time.monotonic()
                    window_images += len(targets) * info.world_size
                    window_time += dt
                    ips = window_images / window_time if window_time > 0 else 0.0
                    bar.set_postfix_str(
                        f"epoch {epoch + 1}"
                        + (f" loss {last_loss:.4f}" if last_loss is not None else "")
                        + f" {ips:.1f} img/s"
                        + (f" ! {warn_text}" if warn_text else ""),
                        refresh=False,  # update() redraws at most 10 times a second: 40 µs a step less
                    )
                    bar.update(1)
                    stopping = stop.should_stop(step)  # Ctrl-C or SIGTERM: this step is the last
                    if step % cfg.checkpoint_every == 0 or stopping:
                        checkpoint(epoch, in_epoch)
                    if stopping:
                        interrupted(stop.agreed or signal.SIGINT)
                    if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                        run_eval(epoch)
                        net.train()
                    if step >= total_steps:
                        break
                    t0 = time.monotonic()
                if (
                    in_epoch >= steps_per_epoch
                ):  # a full epoch: evaluate, let the plateau schedule decide, checkpoint
                    result = run_eval(epoch + 1)
                    net.train()
                    if schedule.on_eval(result.top1_err) and info.is_main:
                        log.info("validation error stopped improving: learning rate × %g", cfg.lr_factor)
                    epoch, in_epoch = epoch + 1, 0
                    checkpoint(epoch, in_epoch)
        account(reader.flush())
        if in_epoch:  # cut short by max_steps: a checkpoint so that a longer --max-steps can --resume it
            checkpoint(epoch, in_epoch)
        if last_eval_step != step:  # a run cut short by max_steps still ends with an evaluation
            run_eval(epoch + (1 if in_epoch else 0))
        if cfg.ten_crop:
            from alexnet.train.data import ten_crop_split

            ten = eval_loader(
                ten_crop_split(data, pre),
                max(1, cfg.batch_size // (10 * info.world_size)),
                cfg.workers,
                info.rank,
                info.world_size,
                on_gpu,
                cfg.gpu_decode,
                info.device if on_cuda else None,
            )
            ten_result = evaluate_loader(
                net,
                ten,
                info.device,
                amp=cfg.amp,
                desc="ten-crop evaluation",
                progress=progress and info.is_main,
            )
            if info.is_main:
                log.info(
                    "ten-crop: val top-1 error %.2f%%, top-5 error %.2f%%",
                    100 * ten_result.top1_err,
                    100 * ten_result.top5_err,
                )
        _run_callbacks(callbacks, "on_train_end", ctx)
        trained = True
    except TrainingError as e:
        if info.is_main:
            log.error("%s", e)
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        # a stopped or failed run lets go of its logs: a later run in this process logs alone
        if not trained and handler is not None:
            detach_log_file(handler)

    weights = None
    if info.is_main:
        weights = _save_final(model, cfg, data, pre, run_dir, last)
        _write_results(run_dir, last, ten_result, step, time.monotonic() - t_start)
        plot_learning_curve(run_dir)
        log.info(
            "done: %d step%s in %.1f min; weights %s",
            step,
            "" if step == 1 else "s",
            (time.monotonic() - t_start) / 60,
            weights,
        )
        if handler is not None:
            detach_log_file(handler)
    dist_utils.barrier(info)
    return TrainResult(
        run_dir=run_dir,
        steps=step,
        epochs_done=step / steps_per_epoch,
        final=last,
        ten_crop=ten_result,
        weights=weights,
        minutes=(time.monotonic() - t_start) / 60,
    )


def _input_size(model_name: str) -> int:
    from alexnet.models import get_config

    return get_config(model_name).input_size


def _gather_rng(info: dist_utils.DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG states (rank order), so a resumed DDP run redraws the same dropout masks."""
    mine = rng_state()
    if not info.distributed:
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, mine)
    return out


def _write_results(
    run_dir: Path, centre: EvalResult | None, ten: EvalResult | None, steps: int, seconds: float
) -> None:
    """``results.json``: the final validation numbers (centre crop, and ten-crop when asked) and the wall time."""
    import json

    from alexnet.files import atomic_write

    out: dict[str, Any] = {"steps": steps, "minutes": round(seconds / 60, 2)}
    if centre is not None:
        out["center_crop"] = centre.to_json()
    if ten is not None:
        out["ten_crop"] = ten.to_json()
    text = json.dumps(out, indent=2) + "\n"
    atomic_write(run_dir / "results.json", lambda tmp: Path(tmp).write_text(text))


def _save_final(
    model: torch.nn.Module, cfg: TrainConfig, data: RunData, pre: Any, run_dir: Path, last: EvalResult | None
) -> Path:
    from alexnet.weights import WeightsMeta, save_weights

    extra: dict[str, Any] = {"recipe": cfg.recipe, "trained_on": str(data.root)}
    if cfg.weights is not None:  # fine-tuned (alexnet.train.finetune)
        extra["started_from"] = cfg.weights
    if cfg.freeze is not None:
        extra["fixed_through"] = cfg.freeze
    if last is not None:
        extra.update(val_top1_err=last.top1_err, val_top5_err=last.top5_err, val_images=last.images)
    meta = WeightsMeta(
        model=cfg.model,
        num_classes=len(data.classes),
        classes=list(data.classes),
        preprocessing=pre,
        source=f"alexnet train --recipe {cfg.recipe}"
        + (f" --weights {cfg.weights}" if cfg.weights is not None else "")
        + (f" --freeze {cfg.freeze}" if cfg.freeze is not None else "")
        + f" ({run_dir})",
        extra=extra,
        tensors={} if data.mean_image is None else {"mean_image": data.mean_image},
    )
    return save_weights(model, run_dir / WEIGHTS, meta)


__all__ = ["TrainResult", "train"]
