"""Top-1 / top-5 error of a model on an ImageNet-layout split, with a centre crop or AlexNet §4.1's ten crops.

Ten-crop: the four corner patches, the centre patch and their horizontal reflections; the network's softmax
outputs on the ten patches are averaged (AlexNet §4.1). Under ``torch.distributed`` every rank evaluates a
disjoint shard (no padding duplicates) and the counts are summed, so every validation image counts exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from alexnet.stopping import StopSignals


@dataclass
class EvalResult:
    """Counts are over the whole split (all ranks)."""

    top1_err: float
    top5_err: float
    loss: float
    images: int
    skipped: int = 0
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    complete: bool = True  # False: stopped by Ctrl-C / SIGTERM, the counts are over the images seen so far
    # per output class: its images, and how many of them the network ranked first (top-1 hits)
    class_images: list[int] = field(default_factory=list)
    class_hits: list[int] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)  # the output classes' names, where known

    @property
    def top1_acc(self) -> float:
        return 1.0 - self.top1_err

    @property
    def top5_acc(self) -> float:
        return 1.0 - self.top5_err

    @property
    def class_accuracies(self) -> list[float | None]:
        """Top-1 accuracy of each class's images (``None`` for a class without images)."""
        return [h / n if n else None for h, n in zip(self.class_hits, self.class_images, strict=True)]

    @property
    def mean_class_acc(self) -> float | None:
        """The mean over the classes with images of their top-1 accuracy: the measure of Caltech-101/256 (used by
        Zeiler & Fergus §5.2), where classes hold very different numbers of test images; the plain top-1
        accuracy when every class holds as many."""
        accs = [a for a in self.class_accuracies if a is not None]
        return sum(accs) / len(accs) if accs else None

    @property
    def balanced(self) -> bool:
        """Whether every class with images holds as many (then the mean class accuracy is the top-1 accuracy)."""
        return len({n for n in self.class_images if n}) <= 1

    def to_json(self) -> dict[str, Any]:
        """Exactly the keys ``alexnet eval --json`` prints."""
        return {
            "top1_err": self.top1_err,
            "top5_err": self.top5_err,
            "top1_acc": self.top1_acc,
            "top5_acc": self.top5_acc,
            "mean_class_acc": self.mean_class_acc,
            "images": self.images,
            "skipped": self.skipped,
            "complete": self.complete,
        }


def class_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; a ``N×K×3×S×S`` batch of K crops per image gives the mean over its K crops."""
    if images.ndim == 5:
        n, k = images.shape[:2]
        probs = model(images.flatten(0, 1)).float().softmax(dim=1)
        return probs.view(n, k, -1).mean(dim=1)
    return model(images).float().softmax(dim=1)


@torch.inference_mode()
def evaluate_loader(
    model: nn.Module,
    loader: Any,
    device: torch.device | str = "cpu",
    *,
    progress: bool = False,
    amp: bool = False,
    channels_last: bool = True,
    desc: str = "evaluating",
    stop: Callable[[], bool] | None = None,
) -> EvalResult:
    """Run ``model`` over ``loader`` (batches of ``(images, targets)``) and sum the counts over ranks.

    ``skipped`` counts the files the loader reports in its ``bad`` list (see :mod:`alexnet.data.loader`).
    ``stop``: asked after each batch; when it answers true the pass ends there and the result, over the images
    seen so far, is marked not ``complete`` (one process only: ranks would stop at different batches)."""
    from tqdm import tqdm

    device = torch.device(device)
    was_training = model.training
    model.eval()
    # Top-1 hits, top-5 hits and the loss sum stay on the device until the end: no host read per batch, so on a
    # GPU the next batch's copy and finishing overlap this one's forward pass.
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    per_class: torch.Tensor | None = None  # 2×C: images and top-1 hits of each class
    n = 0
    seen_bad = len(getattr(loader, "bad", []))
    complete = True
    try:
        for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress):
            images, targets = images.to(device), targets.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                probs = class_probabilities(model, images)
            k = min(5, probs.shape[1])
            ranked = probs.topk(k, dim=1).indices
            hits = ranked == targets[:, None]
            loss = F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="sum")
            sums += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), loss]).to(torch.float64)
            if per_class is None:
                per_class = torch.zeros(2, probs.shape[1], dtype=torch.float64, device=device)
            per_class[0].index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))
            per_class[1].index_add_(0, targets, hits[:, 0].to(torch.float64))
            n += len(targets)
            if stop is not None and stop():
                complete = False
                break
    finally:
        model.train(was_training)
    bad = list(getattr(loader, "bad", []))[seen_bad:]
    if per_class is None:  # no batch (a rank with an empty shard): its classes come from the others
        classes = getattr(getattr(model, "module", model), "num_classes", None) or 0
        per_class = torch.zeros(2, classes, dtype=torch.float64, device=device)
    counts = torch.cat(
        [sums, torch.tensor([n, len(bad)], dtype=torch.float64, device=device), per_class.flatten()]
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    values = counts.tolist()
    top1, top5, loss_sum, n, skipped = values[:5]
    class_counts = [int(v) for v in values[5:]]
    n = int(n)
    if n == 0:
        from alexnet.errors import DataError

        raise DataError("no readable validation image to evaluate on")
    return EvalResult(
        top1_err=(n - top1) / n,  # the misses over n: 2 of 1000 is 0.002, not 1 − 0.998
        top5_err=(n - top5) / n,
        loss=loss_sum / n,
        images=n,
        skipped=int(skipped),
        skipped_files=bad,
        complete=complete,
        class_images=class_counts[: len(class_counts) // 2],
        class_hits=class_counts[len(class_counts) // 2 :],
    )


def evaluate(
    model: nn.Module,
    root: str | Path,
    *,
    split: str = "val",
    ten_crop: bool = False,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "cpu",
    classes: list[str] | None = None,
    progress: bool = True,
    signals: StopSignals | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``root/split`` with its weights' preprocessing and class list.

    The class index is the position in ``classes`` (default: the weights' class list, else the split's sorted
    folder names, as torchvision's ImageFolder). Unreadable files are skipped and counted (>1% → DataError).
    With ``signals`` (entered by the caller), Ctrl-C or SIGTERM ends the pass after the batch under way with the
    numbers so far (``complete=False``; ``alexnet eval`` prints them, then exits 130 / 143).
    """
    from alexnet.data.folders import ImageFolder, check_split, class_folders
    from alexnet.data.packed import attach
    from alexnet.errors import DataError
    from alexnet.predict import input_transform, preprocessing_of
    from alexnet.train.data import eval_loader

    if batch_size < 1:
        raise DataError(f"batch size must be at least 1 (got {batch_size})")
    meta = getattr(model, "weights_meta", None)
    names = classes if classes is not None else (meta.classes if meta is not None else None)
    # weights trained on the first N classes (`alexnet train --classes N`) are evaluated on those classes' images
    subset = names is not None and len(names) < len(class_folders(Path(root).expanduser() / split))
    dataset = ImageFolder(
        root,
        split,
        input_transform(model, ten_crop),
        class_names=names,
        other_classes="ignore" if subset else "error",
        min_side=preprocessing_of(model).resize,  # a reduced JPEG decode never below the weights' resize
    )
    attach(dataset, preprocessing_of(model).resize)  # `alexnet data-pack`'s pixels, where there are some
    n_out = getattr(model, "num_classes", None)
    if n_out is not None and len(dataset.classes) > n_out:
        raise DataError(
            f"{Path(root) / split} has {len(dataset.classes)} classes but the model predicts {n_out}"
        )
    check_split(dataset, progress=progress)
    model.to(device)
    from alexnet.data.on_device import finishes_on

    # On CUDA as in training: the workers' uint8 patches finished on the GPU (the same crops), one batch ahead.
    on_cuda = torch.device(device).type == "cuda"
    finish_on = device if finishes_on(device, dataset.transform) else None
    loader = eval_loader(
        dataset, batch_size, workers, augment_device=finish_on, device=device if on_cuda else None
    )
    if signals is not None and signals.signum is not None:  # during the minutes of checking ImageNet's files
        raise signals.interrupted("stopped before the first image was evaluated; nothing to report")
    stop = (lambda: signals.signum is not None) if signals is not None else None
    result = evaluate_loader(model, loader, device, progress=progress, stop=stop)
    # dataset.bad holds the files the up-front check dropped and (appended by the loader) those that failed later.
    result.skipped = len(dataset.bad)
    result.skipped_files = list(dataset.bad)
    from alexnet.data.classes import class_names

    known = names if names is not None else list(dataset.classes)
    result.classes = class_names(
        len(result.class_images), known if len(known) == len(result.class_images) else None
    )
    return result
