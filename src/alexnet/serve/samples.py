"""The built-in sample gallery: scikit-image's photographs and images of the built-in shapes data set.

The client names samples by id only (never a path). Photographs come from ``skimage.data`` (bundled with
scikit-image, no download). Shapes are rendered on demand with the built-in data set's own generator
(:func:`alexnet.data.synthetic.render_image`) and the seed of its first validation image per class, so they are
exactly images of that set without generating it on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from alexnet.errors import ImageError


class SampleNotFound(ImageError):
    """An unknown sample id."""


@dataclass(frozen=True)
class Sample:
    id: str
    title: str
    group: str  # "photographs" or "built-in data set"


_PHOTOS: dict[str, str] = {
    "chelsea": "Chelsea the cat",
    "coffee": "A cup of coffee",
    "astronaut": "Eileen Collins, astronaut",
    "rocket": "A rocket on the launch pad",
    "hubble_deep_field": "Hubble deep field",
    "immunohistochemistry": "Immunohistochemistry stain",
}


def _shape_names() -> list[str]:
    try:
        from alexnet.data.synthetic import SHAPES
    except ImportError:  # the data set module is optional for the gallery
        return []
    return list(SHAPES)


def list_samples() -> list[Sample]:
    photos = [Sample(key, title, "photographs") for key, title in _PHOTOS.items()]
    shapes = [
        Sample(f"shape-{name}", f"{name} (built-in data set)", "built-in data set") for name in _shape_names()
    ]
    return photos + shapes


def _photo(key: str) -> Callable[[], np.ndarray]:
    import skimage.data

    return getattr(skimage.data, key)


@cache
def load_sample(sample_id: str) -> torch.Tensor:
    """The sample's pixels as a ``uint8`` RGB tensor (3×H×W); :class:`SampleNotFound` for an unknown id."""
    if sample_id in _PHOTOS:
        arr = np.asarray(_photo(sample_id)())
    elif sample_id.startswith("shape-") and sample_id[6:] in _shape_names():
        from alexnet.data.synthetic import SHAPES, SPLITS, render_image

        shape = sample_id[6:]
        class_id, split_id = list(SHAPES).index(shape), SPLITS.index("val")
        rng = np.random.default_rng(np.random.SeedSequence((0, split_id, class_id, 0)))
        arr = np.asarray(render_image(shape, rng))
    else:
        known = ", ".join(s.id for s in list_samples())
        raise SampleNotFound(f"no sample {sample_id!r}; samples: {known}")
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return torch.from_numpy(np.array(arr[..., :3], dtype=np.uint8)).permute(2, 0, 1).contiguous()
