"""Classify images with a model and its weights' preprocessing and class names."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet.data.classes import class_names
from alexnet.data.images import read_image
from alexnet.data.preprocess import Preprocessing
from alexnet.errors import ImageError, ModelOptionError
from alexnet.models import AlexNetFamily


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def preprocessing_of(model: AlexNetFamily) -> Preprocessing:
    """The preprocessing recorded with the model's weights, else ImageNet RGB normalisation at its input size
    (:meth:`alexnet.weights.WeightsMeta.eval_preprocessing`)."""
    meta = getattr(model, "weights_meta", None)
    if meta is not None:
        return meta.eval_preprocessing(model.default_input_size)
    return Preprocessing(input_size=model.default_input_size)


def mean_image_of(model: AlexNetFamily) -> torch.Tensor | None:
    """The per-pixel mean image (3×resize×resize, model convention) when the weights' preprocessing subtracts one
    (AlexNet §2), else ``None``. It travels in the weights file (``WeightsMeta.tensors["mean_image"]``;
    :meth:`alexnet.weights.WeightsMeta.mean_image`)."""
    meta = getattr(model, "weights_meta", None)
    return meta.mean_image() if meta is not None else None


def input_transform(model: AlexNetFamily, ten_crop: bool = False) -> Any:
    """uint8 RGB image → the model's input, exactly as its weights were trained: centre crop (3×S×S) or AlexNet
    §4.1's ten crops (10×3×S×S), per-channel mean/std or the per-pixel mean image. The same steps as
    ``model.weights_meta.transforms()`` (torchvision's ``weights.transforms()``)."""
    from alexnet.data import transforms

    pre, mean = preprocessing_of(model), mean_image_of(model)
    return (
        transforms.ten_crop(pre, mean_image=mean)
        if ten_crop
        else transforms.eval_transform(pre, mean_image=mean)
    )


def normalize_crop(model: AlexNetFamily, crop: torch.Tensor) -> torch.Tensor:
    """A uint8 RGB S×S crop taken from the centre of the resized image's central patch → the model's input (for
    tools that crop, rotate or occlude the image themselves); with a mean image, its centre S×S region is
    subtracted. The same conversion as :func:`input_transform`'s last step
    (:func:`alexnet.data.transforms.crop_to_input`), so the numbers are identical."""
    from alexnet.data.transforms import crop_to_input

    return crop_to_input(preprocessing_of(model), mean_image=mean_image_of(model))(crop)


def labels_of(model: AlexNetFamily) -> list[str]:
    meta = getattr(model, "weights_meta", None)
    return class_names(model.num_classes, meta.classes if meta is not None else None)


@torch.inference_mode()
def predict(model: AlexNetFamily, images: torch.Tensor, topk: int = 5) -> list[list[Prediction]]:
    """``images``: a normalised batch (N×3×H×W, or N×K×3×H×W for K crops of each image, whose softmax outputs are
    averaged: AlexNet §4.1's ten-crop test), moved to the model's device. Returns the top-k predictions of each
    image."""
    from alexnet.evaluate import class_probabilities

    if topk < 1:  # topk(0) would return empty lists, silently
        raise ValueError(f"topk must be at least 1, got {topk}")
    if model.num_classes == 0:
        raise ModelOptionError(
            f"{model.config.name} was built without its classifier layer (num_classes=0): it returns fc7's "
            "features, not class scores"
        )
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            probs = class_probabilities(model, images.to(next(model.parameters()).device))
    finally:
        model.train(was_training)  # the caller's mode, as capture() and summarize() leave it
    k = min(topk, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    labels = labels_of(model)
    return [
        [Prediction(int(i), labels[int(i)], float(v)) for v, i in zip(vs, ix, strict=True)]
        for vs, ix in zip(values, indices, strict=True)
    ]


def image_paths(paths: Sequence[str | Path]) -> list[Path | ImageError]:
    """The images named: a file as given (any name: it is decoded to see), a folder as the image files under it
    (:data:`~alexnet.data.images.IMAGE_SUFFIXES`, sub-folders too, in
    :func:`~alexnet.data.folders.files_under`'s order). A folder holding none is an :class:`ImageError` in its
    place, for the caller to report."""
    from alexnet.data.folders import files_under
    from alexnet.data.images import IMAGE_SUFFIXES

    found: list[Path | ImageError] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            found.append(path)
            continue
        images = [f for f in files_under(path) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            error = ImageError(f"{path}: no image files in this folder")
            error.path = str(path)
            images = [error]
        found.extend(images)
    return found


def predict_files(
    model: AlexNetFamily,
    paths: Sequence[str | Path | ImageError],
    topk: int = 5,
    device: str = "cpu",
    on_error: Callable[[ImageError], None] | None = None,
    *,
    batch_size: int = 32,
    threads: int | None = None,
    stop: Callable[[], bool] | None = None,
    ten_crop: bool = False,
) -> Iterator[tuple[str, list[Prediction]]]:
    """Decode each file, apply the weights' preprocessing (centre crop) and yield its top-k, in the order given.
    A large JPEG is decoded at reduced size, never below the preprocessing's resize, as ``alexnet eval`` decodes
    it (:func:`alexnet.data.images.decode_rgb`): the same input for the same file, several times faster.

    Images go through the network ``batch_size`` at a time, decoded by ``threads`` threads (default: up to 4)
    while the batch before them runs. ``stop``: asked before each batch; once true, the rest is not read.
    ``ten_crop``: the softmax averaged over the four corner and centre crops and their mirrors (AlexNet §4.1), as
    ``alexnet eval --ten-crop``.

    A file that is not a readable image (or an :class:`ImageError` in ``paths``, see :func:`image_paths`) raises
    :class:`ImageError`; with ``on_error`` it is passed the error instead and skipped, so one bad file among many
    does not stop the rest."""
    from concurrent.futures import Future, ThreadPoolExecutor

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    transform = input_transform(model, ten_crop=ten_crop)
    min_side = preprocessing_of(model).resize
    model.to(device)

    def load(path: str | Path | ImageError) -> torch.Tensor | ImageError:
        if isinstance(path, ImageError):
            return path
        try:
            return transform(read_image(path, min_side=min_side))
        except ImageError as e:
            e.path = e.path or str(path)
            return e

    def run(
        batch: list[tuple[str, Future[torch.Tensor | ImageError]]],
    ) -> Iterator[tuple[str, list[Prediction]]]:
        loaded = [(name, future.result()) for name, future in batch]
        good = [x for _, x in loaded if isinstance(x, torch.Tensor)]
        preds = iter(predict(model, torch.stack(good).to(device), topk) if good else [])
        for name, x in loaded:
            if isinstance(x, ImageError):
                if on_error is None:
                    raise x
                on_error(x)
            else:
                yield name, next(preds)

    workers = threads if threads is not None else min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="predict-decode")

    def submit(start: int) -> list[tuple[str, Future[torch.Tensor | ImageError]]]:
        return [(str(p), pool.submit(load, p)) for p in paths[start : start + batch_size]]

    try:
        current = submit(0)
        for start in range(0, len(paths), batch_size):
            if stop is not None and stop():
                break
            upcoming = submit(start + batch_size)  # decoded in the threads while this batch runs
            yield from run(current)
            current = upcoming
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # an early stop: what is not yet decoding never starts
