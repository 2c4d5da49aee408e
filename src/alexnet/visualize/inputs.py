"""Images in, model inputs out: the weights' preprocessing, keeping the un-normalised crop for display."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet.data.images import read_image
from alexnet.data.transforms import eval_crop
from alexnet.errors import ImageError
from alexnet.models import AlexNetFamily
from alexnet.predict import normalize_crop, preprocessing_of


@dataclass(frozen=True)
class Prepared:
    """A model input and what it looks like: ``tensor`` (normalised 3×S×S) and ``crop`` (uint8 RGB 3×S×S)."""

    tensor: torch.Tensor
    crop: torch.Tensor
    name: str = ""


def as_uint8_image(image: torch.Tensor | str | Path, name: str = "") -> tuple[torch.Tensor, str]:
    """A path (decoded) or a uint8 RGB 3×H×W tensor (checked)."""
    if isinstance(image, str | Path):
        return read_image(image), str(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ImageError(
            f"{name or 'image'}: expected a uint8 RGB 3×H×W tensor, got {image.dtype} {tuple(image.shape)}"
        )
    return image, name


def prepare(model: AlexNetFamily, image: torch.Tensor | str | Path, name: str = "") -> Prepared:
    """The input ``alexnet predict``/``eval`` feed (:func:`alexnet.predict.input_transform`), bit for bit, and
    the uint8 crop it was made from: shorter side → ``resize``, central ``resize`` patch, its central
    ``input_size`` crop (:func:`alexnet.data.transforms.eval_crop`), then the weights' normalisation."""
    img, name = as_uint8_image(image, name)
    crop = eval_crop(preprocessing_of(model))(img)
    tensor = normalize_crop(model, crop)
    return Prepared(tensor, crop, name)


def prepare_many(model: AlexNetFamily, images: list[torch.Tensor | str | Path]) -> list[Prepared]:
    return [prepare(model, im) for im in images]
