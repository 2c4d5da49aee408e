"""What the server holds: the loaded models, the images seen, and an LRU cache of per-image analyses.

Clicking a channel must answer in well under a second, so the expensive part of an image — one forward pass
capturing every conv layer's activations (after its ReLU) plus the class probabilities — is computed once per
(model, image) and kept in a small LRU cache keyed by the image's SHA-256 and the model's slot. Rendered PNGs
(activation grids, maps, deconv projections) are memoised inside the cached entry.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from alexnet.data.preprocess import Preprocessing
from alexnet.errors import AlexnetError, LayerNotFound
from alexnet.models import AlexNetFamily
from alexnet.predict import Prediction, labels_of, predict, preprocessing_of

K = TypeVar("K")
V = TypeVar("V")


class UnknownImage(AlexnetError, KeyError):
    """An image id the server does not hold (never uploaded, or evicted from the cache)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class LRU(Generic[K, V]):
    """A thread-safe least-recently-used mapping with at most ``capacity`` entries, and with ``size``, at most
    ``max_size`` in all (the newest entry is kept even when it alone is larger)."""

    def __init__(
        self, capacity: int, size: Callable[[V], int] | None = None, max_size: int | None = None
    ) -> None:
        self.capacity, self.size, self.max_size = capacity, size, max_size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
            if self.size is not None and self.max_size is not None:
                total = sum(self.size(v) for v in self._data.values())
                while total > self.max_size and len(self._data) > 1:
                    total -= self.size(self._data.popitem(last=False)[1])
            return value

    def get_or_create(self, key: K, make: Callable[[], V]) -> V:
        found = self.get(key)
        # Computed outside the lock: two racing requests may both compute, but never block each other.
        return found if found is not None else self.put(key, make())

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data


@dataclass
class Slot:
    """One loaded model, as the page sees it."""

    key: str  # "a" or "b": the URL segment
    model: AlexNetFamily
    source: str  # weights file, run folder, or "random initialisation"
    trained: bool
    top9_dir: Path | None = None
    preprocessing: Preprocessing = field(init=False)
    labels: list[str] = field(init=False)
    conv_layers: list[str] = field(init=False)  # the ReLU after each conv: the maps the page shows

    def __post_init__(self) -> None:
        self.model.eval()
        self.preprocessing = preprocessing_of(self.model)
        self.labels = labels_of(self.model)
        from alexnet.visualize.activations import conv_stage_layers

        self.conv_layers = conv_stage_layers(self.model, "relu")

    @property
    def name(self) -> str:
        return self.model.config.name

    def check_layer(self, layer: str) -> None:
        if layer not in self.conv_layers:
            raise LayerNotFound(
                f"no layer {layer!r} on the page; choose one of: {', '.join(self.conv_layers)}"
            )

    def describe(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "source": self.source,
            "trained": self.trained,
            "num_classes": self.model.num_classes,
            "input_size": self.preprocessing.input_size,
            "layers": self.conv_layers,
            "classifier": self.model.layer_names()[-1],  # the class scores' layer (fc8): optimised images
            "top9": self.top9_dir is not None,
        }


@dataclass
class Analysis:
    """One image through one model: the input, every conv layer's activations, the top-5; memoised PNGs."""

    image_id: str
    x: torch.Tensor  # 1×3×H×W, normalised
    crop: torch.Tensor  # 3×H×W uint8, what the network sees
    activations: dict[str, torch.Tensor]  # layer → C×H×W
    predictions: list[Prediction]
    pngs: LRU[tuple[Any, ...], bytes] = field(default_factory=lambda: LRU(256))


def image_id_of(image: torch.Tensor) -> str:
    """Content hash of the decoded pixels (and their shape): the same picture always gets the same id."""
    h = hashlib.sha256(repr(tuple(image.shape)).encode())
    h.update(image.contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class ServerState:
    """Models, images (by content hash) and analyses, each in a bounded LRU."""

    def __init__(
        self,
        slots: list[Slot],
        *,
        max_images: int = 64,
        max_analyses: int = 16,
        max_image_bytes: int = 1 << 30,
    ) -> None:
        if not slots:
            raise AlexnetError("no model to serve")
        self.slots = {s.key: s for s in slots}
        # decoded pixels (a PNG upload may be 40 megapixels; a JPEG is decoded at reduced size): at most 1 GiB of
        # them, however many are sent
        self.images: LRU[str, torch.Tensor] = LRU(max_images, lambda t: t.nbytes, max_image_bytes)
        self.analyses: LRU[tuple[str, str], Analysis] = LRU(max_analyses)

    @property
    def min_side(self) -> int:
        """The shorter side an uploaded JPEG is decoded to at least: the largest resize of the loaded models."""
        return max(s.preprocessing.resize for s in self.slots.values())

    def slot(self, key: str) -> Slot:
        if key not in self.slots:
            raise LayerNotFound(f"no model {key!r}; loaded: {', '.join(self.slots)}")
        return self.slots[key]

    def add_image(self, image: torch.Tensor) -> str:
        image_id = image_id_of(image)
        if image_id not in self.images:
            self.images.put(image_id, image)
        return image_id

    def image(self, image_id: str) -> torch.Tensor:
        image = self.images.get(image_id)
        if image is None:
            raise UnknownImage(
                f"unknown image {image_id!r} (expired from the cache?): choose the image again"
            )
        return image

    def analysis(self, key: str, image_id: str) -> Analysis:
        slot = self.slot(key)
        image = self.image(image_id)
        return self.analyses.get_or_create((key, image_id), lambda: analyse(slot, image_id, image))


def analyse(slot: Slot, image_id: str, image: torch.Tensor) -> Analysis:
    """One forward pass (:func:`alexnet.models.capture.capture`) for all conv maps, one for the top-5."""
    from alexnet.inputs import prepare
    from alexnet.models.capture import capture

    prepared = prepare(slot.model, image)
    x = prepared.tensor.unsqueeze(0)
    acts = capture(slot.model, x, slot.conv_layers)
    preds = predict(slot.model, x, topk=5)[0]
    return Analysis(image_id, x, prepared.crop, {k: v[0] for k, v in acts.items()}, preds)
