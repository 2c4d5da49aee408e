"""The input pipeline's batch-level part on the training device (``alexnet train --gpu-augment``/``--gpu-decode``).

The CPU loader's workers run a sample's whole transform and hand over float images. Here the split is later or
earlier, and the main process finishes each batch on the device, every random parameter drawn under the
sample's own seed (:func:`alexnet.data.loader.sample_seed`) in the order the CPU pipeline draws it:

* **augment on the device** (``make_loader(..., augment_device="cuda")``): a worker decodes the file as the CPU
  loader does (DCT-domain reduced JPEG decoding included) and applies the deterministic head of the transform,
  AlexNet §2's resize to 256 and central 256×256 patch, and the worker's collate draws the batch's random
  parameters and cuts each patch to its §4.1 random crop as it stacks the batch; the batch crosses processes as
  ``uint8`` crops (a quarter of the bytes of float crops) with those parameters (:class:`Patches`), and the
  device takes the mirror and PCA lighting and the normalisation for the whole batch in a few kernels
  (:class:`_Plan`). The pixels equal the CPU loader's up to
  fp32 rounding. Drawing in the workers keeps the main process, which also drives the training step, free of
  30 µs of Python per image (7.75 ms per batch of 256 on one core, about an H100's whole training step); drawing
  for the whole batch at once, not per image, keeps that loop in the cache (after decoding an image the same
  draw took 178 µs).
* **decode on the device** (``decode_on_device=True`` too): a worker only reads the file's bytes; the main process
  decodes the batch's JPEGs in one ``torchvision.io.decode_jpeg(list, device="cuda")`` call (nvJPEG), resizes
  each image there, then proceeds as above. The JPEG is decoded at full size (nvJPEG has no DCT-domain
  reduction) and resampled in float, so pixels may differ from the CPU loader's by a level or two. A file that is
  not a JPEG is decoded by its worker; a JPEG nvJPEG refuses (CMYK, corrupt) is retried on the CPU with
  :func:`alexnet.data.images.decode_rgb` and reported as a bad file only if that fails too.

The standard transforms (:func:`alexnet.data.transforms.train_transform` and ``eval_transform`` with a
per-channel mean) run batched; any other (ten crops, a per-pixel mean image) runs image by image on the device
from the decoded image, which is exact but launches more kernels. ``augment_device="cpu"`` runs the same code on
the CPU: that is how the tests compare it with the CPU loader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from alexnet.data.folders import BadSample, _reason
from alexnet.data.images import (
    JPEG_HEADER_SCAN,
    JPEG_SOI,
    MAX_PIXELS,
    decode_rgb,
    elongation_problem,
    jpeg_orientation,
    jpeg_size,
    read_bytes,
)
from alexnet.data.loader import seeded
from alexnet.data.shm_pool import BatchPool, Slot
from alexnet.data.transforms import CORNERS, CornerCrop, ToModelInput, corner_offset
from alexnet.errors import DataError, ImageError


@dataclass(frozen=True)
class Encoded:
    """A sample as a worker hands it over: a JPEG's bytes (1-D ``uint8``), or decoded pixels (3×H×W ``uint8``),
    already resized to the plan's central patch when ``patched``."""

    path: str
    data: torch.Tensor
    patched: bool = False
    # ``data`` is a read-only view of the packed store's map: stacked into a batch, or copied before it leaves
    borrowed: bool = False


class Patches(NamedTuple):
    """A batch of central patches as the workers hand it over: ``pixels`` N×3×P×P ``uint8`` (with a plan, each
    patch already cut to its crop, :meth:`_Plan.cropped`), and the samples' random parameters drawn under their
    seeds, ``params`` N×3 (top, left, mirrored; top and left 0 once cropped) and lighting ``offsets`` N×3, or
    ``None`` where the plan has none. ``slot``: the worker's reusable buffer the pixels travel in
    (:mod:`alexnet.data.shm_pool`), freed once they are pinned or finished on the device.

    From a worker, ``params`` and ``offsets`` are NumPy arrays: they cross processes by value, inside the pickled
    message, where a tensor would get a shared-memory block and a file descriptor of its own (7 % of a worker's
    rate from the store, docs/performance.md); :meth:`tensors` makes them tensors again."""

    pixels: torch.Tensor
    params: torch.Tensor | np.ndarray | None
    offsets: torch.Tensor | np.ndarray | None
    slot: Slot | None = None

    def tensors(self) -> Patches:
        """The same batch with ``params`` and ``offsets`` as tensors (no copy)."""
        return self._replace(params=_tensor(self.params), offsets=_tensor(self.offsets))

    def pin_memory(self) -> Patches:
        """What the DataLoader's pin thread calls: pinned copies, and the slot free again at once."""
        t = self.tensors()
        pinned = Patches(
            t.pixels.pin_memory(),
            None if t.params is None else t.params.pin_memory(),
            None if t.offsets is None else t.offsets.pin_memory(),
        )
        self.release()
        return pinned

    def release(self) -> None:
        """Nothing reads ``pixels`` any more: the worker may reuse its buffer."""
        if self.slot is not None:
            self.slot.keep_mapping(self.pixels.untyped_storage())
            self.slot.free()


def _tensor(x: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


class EncodedItems(Dataset):
    """``(index, seed) → (Encoded | BadSample, target, seed)`` over an :class:`~alexnet.data.folders.ImageFolder`
    (anything with its ``samples``, ``transform`` and ``load``). ``decode``: the worker decodes (and resizes to the central
    patch when the transform has a batched plan); otherwise it reads the bytes and decodes only non-JPEGs. Either
    way a file the dataset's packed store holds (:mod:`alexnet.data.packed`) comes from the store."""

    def __init__(self, dataset: Any, *, decode: bool = True) -> None:
        if not all(hasattr(dataset, a) for a in ("samples", "transform", "load")):
            raise DataError("augmenting on the device needs an image-folder data set (files and a transform)")
        self.dataset = dataset
        self.decode = decode
        self.plan = _Plan.of(dataset.transform) if decode else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _stored(self, path: Any, copy: bool = False) -> torch.Tensor | None:
        """The packed store's pixels of ``path`` (:mod:`alexnet.data.packed`), or ``None``."""
        pixels = getattr(self.dataset, "pixels", None)
        return pixels.image(path, copy=copy) if pixels is not None else None

    def __getitem__(self, key: tuple[int, int]) -> tuple[Encoded | BadSample, int, int]:
        index, seed = key
        path, target = self.dataset.samples[index]
        if self.decode:  # as the CPU loader decodes, then the deterministic head of the transform
            if self.plan is not None:  # a stored patch is stacked straight from the store: one copy, not two
                view = self._stored(path)
                if view is not None and self.plan.head(view) is view:
                    return Encoded(str(path), view, patched=True, borrowed=True), target, seed
            image, _ = self.dataset.load(index)
            if isinstance(image, BadSample):
                return image, target, seed
            if self.plan is None:
                return Encoded(str(path), image), target, seed
            return Encoded(str(path), self.plan.head(image), patched=True), target, seed
        packed = self._stored(path, copy=True)  # `alexnet data-pack`'s: nothing to decode
        if packed is not None:
            return Encoded(str(path), packed), target, seed
        try:
            data = read_bytes(path)
        except ImageError as e:
            return BadSample(str(path), _reason(e, path)), target, seed
        if data[:3] == JPEG_SOI:
            head = data[:JPEG_HEADER_SCAN]
            size = jpeg_size(head)
            # nvJPEG does not apply an EXIF orientation: a turned photo is decoded here, upright
            if (
                size is not None
                and 0 < size[0] * size[1] <= MAX_PIXELS
                and elongation_problem(*size) is None
                and jpeg_orientation(head) == 1
            ):
                return Encoded(str(path), torch.frombuffer(bytearray(data), dtype=torch.uint8)), target, seed
        try:  # not a JPEG, or one whose header the CPU decoder should judge
            image = decode_rgb(data, str(path), min_side=getattr(self.dataset, "min_side", None))
        except ImageError as e:
            return BadSample(str(path), _reason(e, path)), target, seed
        return Encoded(str(path), image), target, seed


Items = list[Encoded] | Patches


def finishes_on(device: str | torch.device, transform: Any) -> bool:
    """Whether batches for ``device`` are finished there by default: on CUDA, wherever the device finishes whole
    batches of ``transform``'s images in a few kernels (the standard transforms with a per-channel mean; others
    run image by image), the same batches as the workers' and a third of their work."""
    return torch.device(device).type == "cuda" and _Plan.of(transform) is not None


def collate_encoded(
    batch: list[tuple[Encoded | BadSample, int, int]],
    plan: _Plan | None = None,
    pool: BatchPool | None = None,
) -> tuple[Items, np.ndarray, list[int], list[tuple[str, str]]]:
    """``(items, targets, seeds, bad)``: ``items`` one :class:`Patches` when every sample is a patch (one
    shared-memory block per batch, a slot of ``pool`` when there is one free, pinned by the loader), with the
    random parameters ``plan`` draws for them, else the list of :class:`Encoded`; unreadable files go to ``bad``
    as ``(path, reason)``."""
    good = [b for b in batch if isinstance(b[0], Encoded)]
    bad = [(b[0].path, b[0].reason) for b in batch if isinstance(b[0], BadSample)]
    encoded: list[Encoded] = [b[0] for b in good]  # type: ignore[misc]
    seeds = [b[2] for b in good]
    items: Items
    if not encoded or not all(e.patched for e in encoded):
        # sent one by one, so nothing may point into the store
        items = [Encoded(e.path, e.data.clone(), e.patched) if e.borrowed else e for e in encoded]
    else:
        data = [e.data for e in encoded]
        params = offsets = None
        if plan is not None:  # the crops, not the patches, cross to the main process (below)
            data, params, offsets = plan.cropped(
                seeds, data, os.environ.get("ALEXNET_WORKER_CROP", "1") != "0"
            )
        pixels, slot = pool.stack(data) if pool is not None else (torch.stack(data), None)
        items = Patches(pixels, params, offsets, slot)
    # NumPy, by value (see Patches); BatchDecoder makes them tensors again
    return items, np.array([b[1] for b in good], dtype=np.int64), seeds, bad


@dataclass
class _Plan:
    """A standard pipeline split into its per-image part (resize, central patch) and a batched rest (random,
    corner or central crop, mirror, conversion with PCA lighting)."""

    resize: v2.Resize
    patch: v2.CenterCrop
    crop: v2.RandomCrop | CornerCrop | v2.CenterCrop
    flip: v2.RandomHorizontalFlip | None
    to_input: ToModelInput

    @staticmethod
    def of(transform: Any) -> _Plan | None:
        ts = list(transform.transforms) if isinstance(transform, v2.Compose) else []
        if len(ts) not in (4, 5) or not isinstance(ts[-1], ToModelInput):
            return None
        resize, patch, crop, *flip = ts[:-1]
        if not (isinstance(resize, v2.Resize) and isinstance(patch, v2.CenterCrop)):
            return None
        if isinstance(crop, v2.RandomCrop):
            if crop.padding is not None or crop.pad_if_needed:
                return None
        elif not (isinstance(crop, CornerCrop) or (isinstance(crop, v2.CenterCrop) and not flip)):
            return None
        if flip and not isinstance(flip[0], v2.RandomHorizontalFlip):
            return None
        return _Plan(resize, patch, crop, flip[0] if flip else None, ts[-1])

    def head(self, image: torch.Tensor) -> torch.Tensor:
        """The deterministic part: resize (shorter side 256) and the central patch, ``uint8`` 3×P×P."""
        if self._is_patch(image):  # `alexnet data-pack`'s pixels: both steps would return them as they are
            return image
        return self.patch(self.resize(image))

    def _is_patch(self, image: torch.Tensor) -> bool:
        side = image.shape[-1]
        return (
            image.shape[-2] == side
            and list(self.patch.size) == [side, side]
            and list(self.resize.size) in ([side], [side, side])
            and self.resize.max_size is None
        )

    def draw(self, seeds: Sequence[int], patch: torch.Tensor) -> tuple[list[list[int]], torch.Tensor | None]:
        """Per sample ``[top, left, mirrored]`` and lighting offsets, each drawn under the sample's seed in the
        order the composed transform draws them: the crop's row and column (``RandomCrop.make_params``, which
        draws nothing along a side the crop fills) or its corner (``CornerCrop.make_params``), the mirror coin
        (v2's random-apply transforms mirror when ``torch.rand(1) < p``, in float32), then α
        (``PCALighting.offsets``). The same draws as the transforms make, a third of their time: no per-call
        parameter dicts, and α turned into offsets for the whole batch in one product."""
        height, width = patch.shape[-2:]
        rows, cols = height - self.crop.size[0], width - self.crop.size[1]
        random_crop = isinstance(self.crop, v2.RandomCrop)
        corner_crop = isinstance(self.crop, CornerCrop)
        # a float32 threshold: the tensor comparison casts p to the random number's dtype
        p = float(torch.tensor(self.flip.p, dtype=torch.float32)) if self.flip is not None else None
        lighting = self.to_input.lighting
        if lighting is not None and lighting.std == 0:  # ToModelInput.draw draws nothing then
            lighting = None
        params: list[list[int]] = []
        alphas: list[torch.Tensor] = []
        generator = torch.default_generator
        with torch.random.fork_rng(devices=[]):  # as loader.seeded, with one fork for the whole batch
            for seed in seeds:
                generator.manual_seed(seed)
                if corner_crop:
                    index = int(torch.randint(0, len(CORNERS), size=()))
                    top, left = corner_offset(index, height, width, self.crop.size[0])
                else:
                    top = int(torch.randint(0, rows + 1, size=())) if random_crop and rows > 0 else 0
                    left = int(torch.randint(0, cols + 1, size=())) if random_crop and cols > 0 else 0
                mirrored = p is not None and float(torch.rand(1)) < p
                params.append([top, left, int(mirrored)])
                if lighting is not None:
                    alphas.append(torch.randn(1, 3))
        if lighting is None or not alphas:
            return params, None
        alpha = torch.cat(alphas) * lighting.std
        return params, (alpha * lighting.eigval) @ lighting.eigvec.T

    def cropped(
        self, seeds: Sequence[int], patches: Sequence[torch.Tensor], cut: bool = True
    ) -> tuple[Sequence[torch.Tensor], np.ndarray | None, np.ndarray | None]:
        """A worker's share of the batched part: ``(crops, params, offsets)``. Each patch's random parameters
        drawn under its seed (:meth:`draw`), and, with ``cut``, the patch cut to its crop, which is what the
        device would gather from it: 227² of 256² is 79 % of the bytes to stack, pin, copy to the device and read
        there, and the same pixels. ``params`` then keep only the mirror coin (top and left 0); a central crop
        (evaluation) has none. ``ALEXNET_WORKER_CROP=0`` sends the whole patches, for an A/B."""
        if isinstance(self.crop, v2.CenterCrop):
            return ([self.crop(p) for p in patches] if cut else patches), None, None
        drawn, offsets_ = self.draw(seeds, patches[0])
        offsets = None if offsets_ is None else offsets_.numpy()
        if not cut:
            return patches, np.array(drawn, dtype=np.int64), offsets
        h, w = self.crop.size
        crops = [
            p[:, top : top + h, left : left + w] for p, (top, left, _) in zip(patches, drawn, strict=True)
        ]
        return crops, np.array([[0, 0, mirrored] for _, _, mirrored in drawn], dtype=np.int64), offsets

    def __call__(
        self,
        patches: torch.Tensor,
        seeds: Sequence[int],
        drawn: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """N×3×P×P ``uint8`` patches on the device → the model's input batch; the random parameters are
        ``drawn`` (the workers drew them, :class:`Patches`) or drawn here under ``seeds``. The workers' patches
        arrive already cropped (:meth:`cropped`): then the crop is the whole patch and only mirrors move
        pixels."""
        if isinstance(self.crop, v2.CenterCrop):
            return self.to_input.apply(self.crop(patches), None)
        params, offsets = drawn if drawn is not None else self.draw(seeds, patches[0])
        h, w = self.crop.size
        p = torch.as_tensor(params, dtype=torch.long).to(patches.device, non_blocking=True)
        rows = p[:, :1] + torch.arange(h, device=p.device)  # N×h
        cols = torch.arange(w, device=p.device).expand(len(patches), w)
        cols = p[:, 1:2] + torch.where(p[:, 2:3].bool(), w - 1 - cols, cols)  # N×w, reversed when mirrored
        n = torch.arange(len(patches), device=p.device)[:, None, None]
        crops = patches[n, :, rows[:, :, None], cols[:, None, :]]  # one gather: N×h×w×3
        return self.to_input.apply(crops.permute(0, 3, 1, 2), offsets)  # N×3×h×w, channels-last in memory


class BatchDecoder:
    """Finishes a collated batch on ``device``: decodes what is still encoded, then applies ``transform`` (its
    random part under each sample's seed); see the module docstring."""

    def __init__(self, transform: Any, device: str | torch.device) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DataError("augmenting on cuda was asked for, but no CUDA GPU is available")
        if self.device.type not in ("cpu", "cuda"):
            raise DataError(f"the batched input pipeline runs on cpu or cuda, not {self.device.type}")
        self.transform = transform
        self.plan = _Plan.of(transform)

    def decode(self, items: Sequence[Encoded]) -> tuple[list[torch.Tensor | None], list[tuple[str, str]]]:
        """Pixels on the device (``None`` for a file neither decoder can read) and the ``(path, reason)`` list."""
        out: list[torch.Tensor | None] = [None] * len(items)
        bad: list[tuple[str, str]] = []
        jpegs = [i for i, e in enumerate(items) if e.data.dim() == 1]
        for i, e in enumerate(items):
            if e.data.dim() == 3:
                out[i] = e.data.to(self.device, non_blocking=True)
        if jpegs:
            try:
                decoded = decode_jpeg(
                    [items[i].data for i in jpegs], mode=ImageReadMode.RGB, device=self.device
                )
            except RuntimeError:  # one bad file fails the whole batched call: find it
                decoded = [self._decode_one(items[i], bad) for i in jpegs]
            for i, img in zip(jpegs, decoded, strict=True):
                out[i] = img
        return out, bad

    def _decode_one(self, item: Encoded, bad: list[tuple[str, str]]) -> torch.Tensor | None:
        try:
            return decode_jpeg(item.data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            pass
        try:  # CMYK and other JPEGs nvJPEG refuses; the CPU decoder's message for a truly bad file
            return decode_rgb(item.data, item.path).to(self.device)
        except ImageError as e:
            bad.append((item.path, _reason(e, item.path)))
            return None

    def _one(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        with seeded(seed):
            return self.transform(image)

    def __call__(
        self, batch: tuple[Items, torch.Tensor | np.ndarray, list[int], list[tuple[str, str]]]
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        """A collated batch (:func:`collate_encoded`) → ``(images on the device, targets, bad)``."""
        items, targets, seeds, bad = batch
        targets = torch.as_tensor(targets)
        if isinstance(items, Patches):  # from the workers: only the batched random part is left
            items = items.tensors()
            # (a copy from memory that is not pinned is made before .to() returns, even non-blocking)
            pixels = items.pixels.to(self.device, non_blocking=True)
            drawn = (items.params, items.offsets) if items.params is not None else None
            out = self.plan(pixels, seeds, drawn)  # type: ignore[misc]
            del pixels
            items.release()
            return out, targets, bad
        images, failed = self.decode(items)
        keep = [i for i, img in enumerate(images) if img is not None]
        if not keep:
            return torch.empty(0, device=self.device), torch.empty(0, dtype=torch.long), bad + failed
        good = [images[i] for i in keep]
        kept_seeds = [seeds[i] for i in keep]
        if self.plan is not None:
            patches = [
                img if e.patched else self.plan.head(img)
                for img, e in zip(good, (items[i] for i in keep), strict=True)
            ]  # type: ignore[union-attr]
            out = self.plan(torch.stack(patches), kept_seeds)  # type: ignore[arg-type]
        else:
            out = torch.stack([self._one(img, s) for img, s in zip(good, kept_seeds, strict=True)])  # type: ignore[arg-type]
        return out, targets[keep], bad + failed
