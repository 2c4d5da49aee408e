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
from alexnet.errors import DataError
from alexnet.train.config import TrainConfig


def preprocessing_for(cfg: TrainConfig, default_input_size: int) -> Preprocessing:
    """``mean``: subtract the per-channel mean from 0–255 pixels (AlexNet §2, Caffe); ``meanstd``: torchvision's
    0–1 pixels normalised by ImageNet mean and std. The crop is the model's input size (resize 256, AlexNet §2),
    or ``cfg.input_size`` with the resize scaled by the same factor (256/227 of the crop)."""
    size = cfg.input_size or default_input_size
    resize = 256 if cfg.input_size is None else round(size * 256 / default_input_size)
    if cfg.normalize == "mean":
        mean = (255.0 * IMAGENET_MEAN[0], 255.0 * IMAGENET_MEAN[1], 255.0 * IMAGENET_MEAN[2])
        return Preprocessing(
            input_size=size, resize=resize, mean=mean, std=(1.0, 1.0, 1.0), pixel_scale=255.0
        )
    return Preprocessing(
        input_size=size, resize=resize, mean=IMAGENET_MEAN, std=IMAGENET_STD, pixel_scale=1.0
    )


def train_transform(pre: Preprocessing, pca_std: float) -> Any:
    """AlexNet §2 + §4.1: shorter side 256, centre 256², random crop, horizontal flip, PCA lighting (σ=pca_std)."""
    from alexnet.data import transforms

    return transforms.train_transform(pre, pca="imagenet" if pca_std > 0 else None, pca_std=pca_std)


def eval_transform(pre: Preprocessing, ten_crop: bool = False) -> Any:
    """Centre crop, or AlexNet §4.1's ten crops (4 corners + centre, and their mirrors) stacked as 10×3×S×S."""
    from alexnet.data import transforms

    return transforms.ten_crop(pre) if ten_crop else transforms.eval_transform(pre)


@dataclass
class RunData:
    train: Any  # alexnet.data.folders.ImageFolder
    val: Any
    classes: list[str]
    root: Path

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
    cfg: TrainConfig, pre: Preprocessing, *, progress: bool = True, check: bool = True
) -> RunData:
    """Open train and val splits with the config's subset, check every file up front (>1% bad → DataError)."""
    from alexnet.data.folders import ImageFolder, check_split

    root = resolve_root(cfg, progress)
    train = ImageFolder(
        root,
        "train",
        train_transform(pre, cfg.pca_lighting),
        classes=cfg.classes,
        images_per_class=cfg.images_per_class,
    )
    val = ImageFolder(
        root,
        "val",
        eval_transform(pre),  # centre crop while training; ten crops once at the end (train.loop)
        classes=cfg.classes,
        class_names=train.classes,
    )
    if check:
        check_split(train, progress=progress)
        check_split(val, progress=progress)
    return RunData(train, val, list(train.classes), root)


def train_loader(dataset: Dataset, cfg: TrainConfig, rank: int, world: int, pin: bool) -> Any:
    """:func:`alexnet.data.loader.make_loader`: order a function of (seed, epoch), augmentation seeded per global
    position, DDP ranks reading strided shards whose union is the global batch; call ``set_epoch(e, start)``."""
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
    )
    # A private generator: starting an epoch's iterator must not draw from the global RNG (dropout masks), or a
    # resumed run would diverge from an uninterrupted one.
    loader.generator = torch.Generator().manual_seed(cfg.seed)
    return loader


def eval_loader(dataset: Dataset, batch_size: int, workers: int, rank: int = 0, world: int = 1) -> Any:
    """In file order; rank ``r`` of ``W`` takes images ``r, r+W, …`` with no padding, so each counts once."""
    from alexnet.data.loader import make_loader

    loader = make_loader(
        dataset, batch_size, train=False, workers=workers, rank=rank, world_size=world, pin_memory=False
    )
    loader.generator = torch.Generator().manual_seed(0)
    return loader


def ten_crop_split(data: RunData, pre: Preprocessing) -> Any:
    """The validation split again, with AlexNet §4.1's ten crops (the files the up-front check kept)."""
    from alexnet.data.folders import ImageFolder

    val = ImageFolder(data.root, "val", eval_transform(pre, ten_crop=True), class_names=data.classes)
    val.samples = list(data.val.samples)
    return val
