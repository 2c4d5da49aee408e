"""The training run's data: ImageNet-layout folders, the papers' preprocessing, and the loaders.

Folders, bad-file accounting and subsets are :mod:`alexnet.data.folders`; this module only wires them to a
:class:`~alexnet.train.config.TrainConfig` and to the resumable samplers of :mod:`alexnet.train.sampling`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from alexnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from alexnet.errors import DataError, TrainingError
from alexnet.train.config import TrainConfig

STATS_FILE = "data_stats.safetensors"
# the mean image of a fixed random subset: AlexNet §2's mean, without a full extra epoch over ImageNet
STATS_MAX_IMAGES = 10_000


def run_stats(cfg: TrainConfig, run_dir: Path, progress: bool = True, *, compute: bool = True) -> Any:
    """The data's own statistics (:class:`alexnet.data.stats.DataStats`) this run uses, or ``None``.

    ``cfg.stats`` when given; else, for ``normalize="image"``, the run folder's copy, computed once from (at most
    :data:`STATS_MAX_IMAGES` of) the training split and kept there, so a resumed run uses the same mean image.
    ``compute=False``: a missing copy is a :class:`DataError` (reading a run, not training it).
    """
    from alexnet.data.stats import DataStats, compute_stats, stats_file

    if cfg.stats is not None:
        if not stats_file(cfg.stats).is_file():
            raise DataError(
                f"--stats {cfg.stats}: no such file as {stats_file(cfg.stats)} (write one with "
                "`alexnet data-stats ROOT --out FILE`)"
            )
        return DataStats.load(stats_file(cfg.stats))
    if cfg.normalize != "image":
        return None
    path = run_dir / STATS_FILE
    if path.is_file():
        return DataStats.load(path)
    if not compute:
        raise DataError(f"the run's mean image, {path}, is missing")
    stats = compute_stats(
        resolve_root(cfg, progress), "train", max_images=STATS_MAX_IMAGES, progress=progress
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    stats.save(path)
    return stats


def preprocessing_for(
    cfg: TrainConfig, default_input_size: int, stats: Any = None, default_resize: int = 256
) -> tuple[Preprocessing, torch.Tensor | None]:
    """The run's :class:`Preprocessing` and, for ``normalize="image"``, its mean image (3×resize×resize).

    ``mean``: subtract the per-channel mean from 0–255 pixels (AlexNet §2, Caffe); ``image``: subtract the
    per-pixel mean image instead ("subtracting the mean activity over the training set from each pixel", §2);
    ``meanstd``: torchvision's 0–1 pixels normalised by mean and std. The means are ImageNet's, or the data's own
    when ``stats`` (:func:`run_stats`) is given. The crop is the model's input size (resize 256, AlexNet §2), or
    ``cfg.input_size`` with the resize scaled by the same factor (256/227 of the crop); ``default_resize`` is the
    resize for the default crop (a run starting from weights takes theirs: the ``demo`` recipe's 99 of 112).
    """
    if cfg.normalize == "weights":
        raise TrainingError("normalize 'weights': the starting weights' preprocessing (see input_convention)")
    size = cfg.input_size or default_input_size
    resize = default_resize if cfg.input_size is None else round(size * default_resize / default_input_size)
    mean01 = tuple(stats.mean_rgb) if stats is not None else IMAGENET_MEAN
    if cfg.normalize == "meanstd":
        std01 = tuple(stats.std_rgb) if stats is not None else IMAGENET_STD
        return Preprocessing(input_size=size, resize=resize, mean=mean01, std=std01, pixel_scale=1.0), None
    pre = Preprocessing(
        input_size=size,
        resize=resize,
        mean=(255.0 * mean01[0], 255.0 * mean01[1], 255.0 * mean01[2]),
        std=(1.0, 1.0, 1.0),
        pixel_scale=255.0,
        mean_image=cfg.normalize == "image",
    )
    if not pre.mean_image:
        return pre, None
    if stats is None:
        raise DataError("--normalize image needs the data's mean image (run_stats computes it)")
    return pre, stats.mean_image_for(pre)


def input_convention(
    cfg: TrainConfig,
    default_input_size: int,
    stats: Any = None,
    start: Any = None,
    state: dict[str, Any] | None = None,
) -> tuple[Preprocessing, torch.Tensor | None]:
    """The run's preprocessing and mean image: :func:`preprocessing_for`'s, or for ``normalize="weights"`` the
    ones the starting weights record (``start``, :class:`alexnet.train.finetune.Start`), which a resumed run reads
    back from its checkpoint ``state``."""
    if cfg.normalize != "weights":
        # starting from weights: their crop and resize whatever the normalisation (fc6 is sized for the crop)
        theirs: Preprocessing | None = None
        if start is not None:
            from alexnet.train.finetune import check_input_size

            check_input_size(start, cfg.input_size)
            theirs = start.preprocessing
        elif state is not None and cfg.weights is not None and isinstance(state.get("preprocessing"), dict):
            theirs = Preprocessing.from_dict(state["preprocessing"])
        if theirs is not None:
            return preprocessing_for(cfg, theirs.input_size, stats, theirs.resize)
        return preprocessing_for(cfg, default_input_size, stats)
    if state is not None:
        saved = state.get("preprocessing")
        if not isinstance(saved, dict):
            raise TrainingError("--resume: the checkpoint does not record the preprocessing of its images")
        mean_image = state.get("mean_image")
        return Preprocessing.from_dict(saved), mean_image if isinstance(mean_image, torch.Tensor) else None
    from alexnet.train.finetune import start_input

    if start is None:
        raise TrainingError("normalize 'weights' needs the starting weights (--weights)")
    return start_input(start, cfg.input_size)


def train_transform(
    pre: Preprocessing,
    pca_std: float,
    mean_image: torch.Tensor | None = None,
    stats: Any = None,
    crops: str = "random",
) -> Any:
    """AlexNet §2 + §4.1: shorter side 256, centre 256², random crop (or ZF §3's corners and centre: ``crops=
    "ten"``), horizontal flip, PCA lighting (σ=pca_std) with ImageNet's RGB eigen-decomposition, or the data's own
    when ``stats`` is given."""
    from alexnet.data import transforms

    pca = (stats.pca if stats is not None else "imagenet") if pca_std > 0 else None
    return transforms.train_transform(pre, pca=pca, pca_std=pca_std, mean_image=mean_image, crops=crops)


def eval_transform(pre: Preprocessing, ten_crop: bool = False, mean_image: torch.Tensor | None = None) -> Any:
    """Centre crop, or AlexNet §4.1's ten crops (4 corners + centre, and their mirrors) stacked as 10×3×S×S."""
    from alexnet.data import transforms

    if ten_crop:
        return transforms.ten_crop(pre, mean_image=mean_image)
    return transforms.eval_transform(pre, mean_image=mean_image)


@dataclass
class RunData:
    train: Any  # alexnet.data.folders.ImageFolder
    val: Any
    classes: list[str]
    root: Path
    mean_image: torch.Tensor | None = None  # normalize="image": saved with the weights
    relabelled: int = 0  # training labels --random-labels changed

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [*self.train.bad, *self.val.bad]


def resolve_root(cfg: TrainConfig, progress: bool = True) -> Path:
    """``cfg.data``, or the built-in data set (generated once, cached) when no data folder is given."""
    if cfg.data is not None:
        root = Path(cfg.data).expanduser()
        if not root.is_dir():
            raise DataError(
                f"no data folder {root} (expected {root}/train/<class>/… and {root}/val/<class>/…)"
            )
        return root
    from alexnet.data.synthetic import ensure_builtin_dataset

    return ensure_builtin_dataset(seed=0, progress=progress)


def open_run_data(
    cfg: TrainConfig,
    pre: Preprocessing,
    *,
    progress: bool = True,
    check: bool = True,
    mean_image: torch.Tensor | None = None,
    stats: Any = None,
) -> RunData:
    """Open train and val splits with the config's subset, check every file up front (>1% bad → DataError)."""
    from alexnet.data.folders import ImageFolder, check_split
    from alexnet.data.packed import attach

    root = resolve_root(cfg, progress)
    train = ImageFolder(
        root,
        "train",
        train_transform(pre, cfg.pca_lighting, mean_image, stats, cfg.train_crops),
        classes=cfg.classes,
        images_per_class=cfg.images_per_class,
        min_side=pre.resize,  # a reduced JPEG decode never below the resize (a larger --input-size's too)
    )
    if cfg.classes is not None and cfg.classes > len(train.found):
        raise DataError(f"--classes {cfg.classes}: {root}/train has only {len(train.found)} class folders")
    val = ImageFolder(
        root,
        "val",
        eval_transform(pre, mean_image=mean_image),  # centre crop while training; ten crops at the end
        classes=cfg.classes,  # the first N of train's folders: checked against all of them, not just the N
        class_names=train.found,
        min_side=pre.resize,
    )
    for split in (train, val):  # `alexnet data-pack`'s pixels, where there are some
        attach(split, pre.resize)
    if check:
        check_split(train, progress=progress)
        check_split(val, progress=progress)
    relabelled = 0
    if cfg.random_labels > 0:  # Zhang et al. 2017, §2: training labels only; validation keeps the true ones
        from alexnet.data.labels import corrupt_labels

        relabelled = corrupt_labels(train, cfg.random_labels, cfg.seed)
    return RunData(train, val, list(train.classes), root, mean_image, relabelled)


def train_loader(
    dataset: Dataset,
    cfg: TrainConfig,
    rank: int,
    world: int,
    pin: bool,
    augment_device: Any = None,
    device: Any = None,
) -> Any:
    """:func:`alexnet.data.loader.make_loader`: order a function of (seed, epoch), augmentation seeded per global
    position, DDP ranks reading strided shards whose union is the global batch; call ``set_epoch(e, start)``.
    ``augment_device``: finish the batches there (``--gpu-augment``; ``--gpu-decode`` decodes there too);
    ``device``: deliver them there (on CUDA copied one batch ahead, :mod:`alexnet.data.ahead`)."""
    from alexnet.data.loader import make_loader

    loader = make_loader(
        dataset,
        cfg.batch_size // world,
        train=True,
        workers=cfg.workers,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        pin_memory=pin,
        augment_device=augment_device,
        decode_on_device=cfg.gpu_decode and augment_device is not None,
        device=device,
    )
    # A private generator: starting an epoch's iterator must not draw from the global RNG (dropout masks), or a
    # resumed run would diverge from an uninterrupted one.
    loader.generator = torch.Generator().manual_seed(cfg.seed)
    return loader


def eval_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    rank: int = 0,
    world: int = 1,
    augment_device: Any = None,
    decode_on_device: bool = False,
    device: Any = None,
) -> Any:
    """In file order; rank ``r`` of ``W`` takes images ``r, r+W, …`` with no padding, so each counts once.
    ``augment_device``, ``decode_on_device``: as :func:`train_loader`'s; ``device``: deliver the batches there
    (a CUDA device's pinned, one batch ahead)."""
    from alexnet.data.loader import make_loader

    on_cuda = device is not None and torch.device(device).type == "cuda"
    loader = make_loader(
        dataset,
        batch_size,
        train=False,
        workers=workers,
        rank=rank,
        world_size=world,
        pin_memory=on_cuda,
        augment_device=augment_device,
        decode_on_device=decode_on_device,
        device=device,
    )
    loader.generator = torch.Generator().manual_seed(0)
    return loader


def ten_crop_split(data: RunData, pre: Preprocessing) -> Any:
    """The validation split again, with AlexNet §4.1's ten crops (the files the up-front check kept)."""
    from alexnet.data.folders import ImageFolder

    val = ImageFolder(
        data.root,
        "val",
        eval_transform(pre, ten_crop=True, mean_image=data.mean_image),
        class_names=data.classes,
        other_classes="ignore",  # the samples are the checked split's, below
        min_side=pre.resize,
    )
    val.samples = list(data.val.samples)
    val.pixels = data.val.pixels
    return val
