"""Images in, model inputs out: the weights' preprocessing, keeping the un-normalised crop for display."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms import v2

from alexnet.data.images import read_image
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
    """Resize the shorter side and centre-crop as the weights' preprocessing says; normalise a copy."""
    img, name = as_uint8_image(image, name)
    prep = preprocessing_of(model)
    crop = v2.CenterCrop(prep.input_size)(v2.Resize(prep.resize, antialias=True)(img))
    tensor = normalize_crop(model, crop)
    return Prepared(tensor, crop, name)


def prepare_many(model: AlexNetFamily, images: list[torch.Tensor | str | Path]) -> list[Prepared]:
    return [prepare(model, im) for im in images]
