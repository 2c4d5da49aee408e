"""A short probe run: train a model for a few dozen steps with :class:`HealthMonitor` attached.

``alexnet doctor --model M`` uses it to answer "would this set-up train?" before a long run. It is a deliberately
small loop (SGD or AdamW, cross-entropy, no augmentation) that drives the same callback protocol as the real
training loop (:mod:`alexnet.train.callbacks`), so the health log it leaves is the one a real run would leave.
Data is either an ImageNet-layout folder (``ROOT/<class>/<image>``) or, by default, a built-in task of coloured
gratings that any working network separates within a few hundred steps.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.diagnostics.health import HealthMonitor
from alexnet.diagnostics.rules import Thresholds
from alexnet.errors import DataError, TrainingError
from alexnet.files import atomic_write
from alexnet.train.callbacks import Callback, TrainContext


def gratings(num_classes: int, per_class: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Coloured sinusoidal gratings: class ``c`` has its own hue and orientation; phase, frequency, contrast
    and pixel noise vary per image. Returns float images in 0–1 (``N×3×size×size``) and labels."""
    g = torch.Generator().manual_seed(seed)
    n = num_classes * per_class
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    theta = labels.float() * math.pi / num_classes
    hue = labels.float() / num_classes
    freq = 0.15 + 0.2 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    u = xx[None] * torch.cos(theta)[:, None, None] + yy[None] * torch.sin(theta)[:, None, None]
    wave = 0.5 + 0.5 * torch.sin(freq[:, None, None] * u + phase[:, None, None])  # N×H×W in 0–1
    # a colour per class from its hue (the three phase-shifted cosines of an HSV-like wheel)
    shifts = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    colour = 0.5 + 0.5 * torch.cos(2 * math.pi * hue[:, None] - shifts[None])  # N×3
    images = wave[:, None] * colour[:, :, None, None]
    images = images + 0.05 * torch.randn(images.shape, generator=g)
    perm = torch.randperm(n, generator=g)
    return images.clamp(0, 1)[perm], labels[perm]


def folder_images(
    root: Path, size: int, per_class: int, max_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Up to ``per_class`` images from each ``root/<class>/`` folder, resized (shorter side) and centre-cropped.
    An ImageNet-layout ``root`` (with ``train/``), as every other command takes, is read from ``root/train``."""
    from torchvision.transforms import v2

    from alexnet.data.folders import class_folders, files_under, log_unreadable
    from alexnet.data.images import IMAGE_SUFFIXES, read_image
    from alexnet.errors import ImageError

    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected ROOT/train/<class>/<image files> or ROOT/<class>/…)")
    if (root / "train").is_dir():
        root = root / "train"
    classes = class_folders(root)
    classes = classes[:max_classes] if max_classes else classes
    if len(classes) < 2:
        raise DataError(f"{root}: needs at least two class folders, found {len(classes)}")
    tf = v2.Compose(
        [v2.Resize(size, antialias=True), v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True)]
    )
    xs, ys = [], []
    bad: list[tuple[str, str]] = []
    for label, c in enumerate(classes):
        taken = 0
        for p in (p for p in files_under(root / c) if p.suffix.lower() in IMAGE_SUFFIXES):
            if taken == per_class:
                break
            try:
                image = read_image(p)
            except ImageError as e:  # skipped and named, as training skips it; the next file takes its place
                bad.append((str(p), str(e).removeprefix(f"{p}: ")))
                continue
            xs.append(tf(image))
            ys.append(label)
            taken += 1
    log_unreadable(bad)
    if not xs:
        raise DataError(f"{root}: no readable images in the class folders")
    return torch.stack(xs), torch.tensor(ys), classes


@dataclass
class ProbeConfig:
    model: str = "alexnet"
    steps: int = 200
    batch_size: int = 32
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" (momentum 0.9, AlexNet §5) or "adamw"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    input_size: int = 67
    num_classes: int = 10
    per_class: int = 64
    every: int = 10
    seed: int = 0
    init: str | None = None  # None: the model's own (paper) init; "he": Kaiming normal, biases 0
    init_std: float | None = None  # override every layer's N(0, std)
    bias: float | None = None  # override every non-zero bias
    data: str | None = None
    fc_width: int | None = None  # narrower fc6/fc7 for quick probes (the paper: 4096)
    device: str = "auto"  # as `alexnet train`: the GPU when CUDA is available, else the CPU


def apply_init(model: nn.Module, init: str | None, std: float | None, bias: float | None) -> None:
    """Re-initialise conv/fc layers: He et al. 2015 (``init="he"``), or a given weight std and/or bias."""
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, nn.Conv2d | nn.Linear):
                continue
            if init == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            if std is not None:
                nn.init.normal_(m.weight, 0.0, std)
            if bias is not None and bool((m.bias != 0).any()):
                nn.init.constant_(m.bias, bias)


def run_callbacks(callbacks: list[Callback], hook: str, ctx: TrainContext, *args: Any) -> list[str]:
    out: list[str] = []
    for cb in callbacks:
        out.extend(getattr(cb, hook)(ctx, *args) or [])
    return out


def probe(
    cfg: ProbeConfig,
    run_dir: Path,
    *,
    thresholds: Thresholds | None = None,
    on_warning: Callable[[str], None] | None = None,
    progress: bool = False,
) -> HealthMonitor:
    """Train ``cfg.model`` for ``cfg.steps`` steps, leaving ``health.csv``, ``metrics.csv``, ``config.json``.

    The images stay on the CPU; each batch goes to ``cfg.device`` as the training loop's do."""
    from alexnet.models import ablate, build_model, get_config
    from alexnet.train.distributed import pick_device

    device = pick_device(cfg.device)

    torch.manual_seed(cfg.seed)
    if cfg.data:
        x, y, classes = folder_images(Path(cfg.data), cfg.input_size, cfg.per_class)
        num_classes = len(classes)
    else:
        num_classes = cfg.num_classes
        x, y = gratings(num_classes, cfg.per_class, cfg.input_size, seed=cfg.seed)
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    arch = ablate(get_config(cfg.model).with_overrides(input_size=cfg.input_size), fc_width=cfg.fc_width)
    model = build_model(arch, num_classes=num_classes)
    apply_init(model, cfg.init, cfg.init_std, cfg.bias)  # on the CPU: the same draws on every device
    model.to(device).train()
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        raise TrainingError(f"unknown optimizer {cfg.optimizer!r} (sgd or adamw)")

    run_dir.mkdir(parents=True, exist_ok=True)
    config = json.dumps(
        {**asdict(cfg), "device": str(device), "num_classes": num_classes, "probe": True}, indent=2
    )
    atomic_write(run_dir / "config.json", lambda tmp: Path(tmp).write_text(config))
    monitor = HealthMonitor(every=cfg.every, thresholds=thresholds)
    callbacks: list[Callback] = [monitor]
    ctx = TrainContext(model=model, optimizer=opt, run_dir=run_dir, num_classes=num_classes, lr=cfg.lr)
    say = on_warning or (lambda _w: None)
    for w in run_callbacks(callbacks, "on_train_start", ctx):
        say(w)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rows: list[tuple[int, float, float]] = []
    steps: Any = range(cfg.steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"probe {cfg.model}", unit="step", leave=False)
    for _ in steps:
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=g)
        ctx.inputs, labels = x[idx].to(device), y[idx].to(device)
        for w in run_callbacks(callbacks, "on_step_start", ctx):
            say(w)
        logits = model(ctx.inputs)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.loss = loss.detach()
        for w in run_callbacks(callbacks, "on_after_backward", ctx):
            say(w)
        value = float(ctx.loss)
        acc = float((logits.argmax(1) == labels).float().mean())
        if not math.isfinite(value):
            # as the training loop does: stop; HealthMonitor has already located the first bad layer
            _write_metrics(run_dir, [*rows, (ctx.step + 1, value, acc)])
            run_callbacks(callbacks, "on_train_end", ctx)
            say(f"stopped at step {ctx.step + 1}: the loss is {value}")
            return monitor
        opt.step()
        ctx.step += 1
        rows.append((ctx.step, value, acc))
        for w in run_callbacks(callbacks, "on_step_end", ctx):
            say(w)
        if progress:
            steps.set_postfix(loss=f"{value:.3f}")
    run_callbacks(callbacks, "on_train_end", ctx)
    _write_metrics(run_dir, rows)
    return monitor


def _write_metrics(run_dir: Path, rows: list[tuple[int, float, float]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["step", "train_loss", "train_acc"])
            w.writerows(rows)

    atomic_write(run_dir / "metrics.csv", write)


def probe_with_recipe(
    recipe: str,
    *,
    model: str,
    run_dir: Path,
    steps: int,
    batch_size: int,
    every: int,
    data: str | None = None,
    lr: float | None = None,
    classes: int | None = None,
    device: str | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> HealthMonitor:
    """A short run through the real training loop (:func:`alexnet.train.loop.train`) with a recipe.

    ``classes`` restricts the data set to its first classes (the loop validates on their val images at the
    end). A run the loop stops (NaN loss) is still diagnosable: the stop is recorded in the health events.
    """
    from alexnet.diagnostics.health import HEALTH_EVENTS
    from alexnet.train.loop import train
    from alexnet.train.recipes import resolve_recipe

    cfg = resolve_recipe(
        recipe,
        model=model,
        data=data,
        out=str(run_dir),
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        classes=classes,
        device=device,
        checkpoint_every=max(steps, 1),
    )
    monitor = HealthMonitor(every=every)
    say = on_warning or (lambda _w: None)
    try:
        train(cfg, callbacks=[monitor], progress=True)  # the loop shows warnings in its progress bar
    except TrainingError as e:
        if "loss is" not in str(e):
            raise
        layer, where = monitor.locate_last_batch()
        message = f"{e}" + (f"; {where}" if where else "")
        say(f"stopped: {message}")
        event = {"step": monitor.records[-1].step if monitor.records else 0, "code": "nonfinite"}
        with (run_dir / HEALTH_EVENTS).open("a") as fh:
            fh.write(json.dumps({**event, "layer": layer, "message": message}) + "\n")
    return monitor
