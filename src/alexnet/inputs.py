"""Images in, model inputs out: the weights' preprocessing, keeping the un-normalised crop for display; and
batches of them decoded in worker processes for the passes over a data set (top-9, the features that retrieval
and the linear probe read). Shared by ``visualize``, ``analysis`` and ``serve``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def as_uint8_image(
    image: torch.Tensor | str | Path, name: str = "", min_side: int | None = None
) -> tuple[torch.Tensor, str]:
    """A path (decoded; a large JPEG at reduced size, shorter side ≥ ``min_side``, as
    :func:`alexnet.data.images.read_image`) or a uint8 RGB 3×H×W tensor (checked)."""
    if isinstance(image, str | Path):
        return read_image(image, min_side=min_side), str(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ImageError(
            f"{name or 'image'}: expected a uint8 RGB 3×H×W tensor, got {image.dtype} {tuple(image.shape)}"
        )
    return image, name


def prepare(model: AlexNetFamily, image: torch.Tensor | str | Path, name: str = "") -> Prepared:
    """The input ``alexnet predict``/``eval`` feed (:func:`alexnet.predict.input_transform`), bit for bit, and
    the uint8 crop it was made from: the file decoded as they decode it (a large JPEG at reduced size, never
    below ``resize``), shorter side → ``resize``, central ``resize`` patch, its central ``input_size`` crop
    (:func:`alexnet.data.transforms.eval_crop`), then the weights' normalisation."""
    pre = preprocessing_of(model)
    img, name = as_uint8_image(image, name, pre.resize)
    crop = eval_crop(pre)(img)
    tensor = normalize_crop(model, crop)
    return Prepared(tensor, crop, name)


def prepare_many(model: AlexNetFamily, images: list[torch.Tensor | str | Path]) -> list[Prepared]:
    return [prepare(model, im) for im in images]


Image = torch.Tensor | str | Path  # a uint8 RGB 3×H×W tensor or an image file


class _Spans(torch.utils.data.Dataset):
    """Item ``i`` → the ``i``-th span's model inputs, stacked (``None`` when none of its images decodes), and
    the places in the span of the images that do not decode. Holds the weights' transform, not the model:
    what a worker process needs."""

    def __init__(
        self, images: Sequence[Image], spans: Sequence[tuple[int, int]], transform: Any, min_side: int
    ) -> None:
        self.images, self.spans, self.transform, self.min_side = images, spans, transform, min_side

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, list[int]]:
        start, stop = self.spans[i]
        tensors, bad = [], []
        for place, image in enumerate(self.images[start:stop]):
            try:
                tensors.append(self.transform(as_uint8_image(image, min_side=self.min_side)[0]))
            except ImageError:
                bad.append(place)
        return (torch.stack(tensors) if tensors else None), bad


def _unchanged(item: Any) -> Any:
    return item


def spans(count: int, size: int, start: int = 0) -> list[tuple[int, int]]:
    """``[start, count)`` cut into consecutive ``(start, stop)`` spans of at most ``size``."""
    return [(i, min(i + size, count)) for i in range(start, count, size)]


def prepared_batches(
    model: AlexNetFamily,
    images: Sequence[Image],
    chunks: Sequence[tuple[int, int]],
    *,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor | None, list[int]]]:
    """For each ``(start, stop)`` span of ``images``, in order: its readable images' model inputs (exactly
    :func:`prepare`'s tensors, stacked; ``None`` if none decodes) and the places in the span of the unreadable
    ones. With ``workers`` > 0 the files are decoded in that many worker processes, a few spans ahead of the
    caller (a GPU then need not wait for the decoding); Ctrl-C and a scheduler's SIGTERM are left to the main
    process (:func:`alexnet.stopping.quiet_worker_signals`). Pinned memory when the model is on CUDA."""
    from alexnet.predict import input_transform
    from alexnet.stopping import quiet_worker_signals

    if workers < 0:
        raise ValueError(f"workers must be at least 0, got {workers}")
    if not chunks:
        return
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(
        _Spans(images, chunks, input_transform(model), preprocessing_of(model).resize),
        batch_size=None,  # each item is already a batch
        collate_fn=_unchanged,  # not torch's default, which turns the pair into a list
        num_workers=min(workers, len(chunks)),
        pin_memory=device.type == "cuda",
        worker_init_fn=quiet_worker_signals if workers else None,
    )
    yield from loader
