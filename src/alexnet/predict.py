"""Classify images with a model and its weights' preprocessing and class names."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alexnet.data.classes import class_names
from alexnet.data.images import read_image
from alexnet.data.preprocess import Preprocessing
from alexnet.models import AlexNetFamily


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


def preprocessing_of(model: AlexNetFamily) -> Preprocessing:
    """The preprocessing recorded with the model's weights, else ImageNet RGB normalisation at its input size."""
    meta = getattr(model, "weights_meta", None)
    if meta is not None and meta.preprocessing is not None:
        return meta.preprocessing
    return Preprocessing(input_size=model.default_input_size)


def labels_of(model: AlexNetFamily) -> list[str]:
    meta = getattr(model, "weights_meta", None)
    return class_names(model.num_classes, meta.classes if meta is not None else None)


@torch.inference_mode()
def predict(model: AlexNetFamily, images: torch.Tensor, topk: int = 5) -> list[list[Prediction]]:
    """``images``: a normalised batch (N×3×H×W). Returns the top-k predictions of each image."""
    model.eval()
    probs = model(images).softmax(dim=1)
    k = min(topk, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    labels = labels_of(model)
    return [
        [Prediction(int(i), labels[int(i)], float(v)) for v, i in zip(vs, ix, strict=True)]
        for vs, ix in zip(values, indices, strict=True)
    ]


def predict_files(
    model: AlexNetFamily, paths: Sequence[str | Path], topk: int = 5, device: str = "cpu"
) -> Iterator[tuple[str, list[Prediction]]]:
    """Decode each file, apply the weights' preprocessing (centre crop) and yield its top-k."""
    transform = preprocessing_of(model).eval_transform()
    model.to(device)
    for path in paths:
        x = transform(read_image(path)).unsqueeze(0).to(device)
        yield str(path), predict(model, x, topk)[0]
