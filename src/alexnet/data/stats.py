"""Training-set statistics the papers' preprocessing needs: the mean (per channel and per pixel) and the PCA of
RGB pixel values.

* AlexNet §2: "subtracting the mean activity over the training set from each pixel" — the per-pixel mean image
  of the 256×256 centre patches (shorter side rescaled to 256, as the network sees them).
* AlexNet §4.1: "PCA on the set of RGB pixel values throughout the ImageNet training set" — the eigenvalues and
  eigenvectors of the 3×3 covariance of all pixels, used by :class:`alexnet.data.transforms.PCALighting`.

One streaming pass, memory independent of the data-set size: float64 running sums of pixels (per position, for
the mean image), of squared pixels per channel and of the 3×3 outer products. Pixels are RGB in 0–1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet.data.preprocess import Preprocessing
from alexnet.errors import DataError


def stats_file(path: str | Path) -> Path:
    """The ``.safetensors`` file that ``data-stats --out PATH`` writes and ``train --stats PATH`` reads: ``PATH``
    itself when it ends in ``.safetensors``, ``stats.safetensors`` for ``stats.json`` (the summary beside it),
    else ``PATH.safetensors``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path
    if path.suffix == ".json":
        return path.with_suffix(".safetensors")
    return path.with_name(path.name + ".safetensors")


@dataclass
class DataStats:
    """``mean_rgb``/``std_rgb``: per channel (0–1); ``eigval`` (descending) and ``eigvec`` (column j = j-th
    eigenvector, rows R, G, B) of the RGB covariance; ``mean_image``: 3×size×size; ``images``: how many."""

    mean_rgb: tuple[float, float, float]
    std_rgb: tuple[float, float, float]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, float, float], ...]
    mean_image: torch.Tensor
    images: int
    skipped: int = 0
    root: str = ""
    split: str = "train"

    def summary(self) -> dict[str, Any]:
        """Everything but the mean image, JSON-ready."""
        return {
            "root": self.root,
            "split": self.split,
            "images": self.images,
            "skipped": self.skipped,
            "size": int(self.mean_image.shape[-1]),
            "mean_rgb": list(self.mean_rgb),
            "std_rgb": list(self.std_rgb),
            "eigval": list(self.eigval),
            "eigvec": [list(r) for r in self.eigvec],
        }

    @property
    def pca(self) -> tuple[tuple[float, float, float], tuple[tuple[float, float, float], ...]]:
        """``(eigval, eigvec)`` for :func:`alexnet.data.transforms.train_transform`'s ``pca``."""
        return self.eigval, self.eigvec

    def mean_image_for(self, pre: Preprocessing) -> torch.Tensor:
        """The mean image in ``pre``'s convention (pixel scale, channel order), resized to ``pre.resize`` if
        needed: the ``mean_image`` argument of :mod:`alexnet.data.transforms` when ``pre.mean_image``."""
        img = self.mean_image.to(torch.float32)
        if img.shape[-1] != pre.resize:
            img = torch.nn.functional.interpolate(
                img[None], size=(pre.resize, pre.resize), mode="bilinear", align_corners=False, antialias=True
            )[0]
        img = img * pre.pixel_scale
        return img.flip(0) if pre.channel_order == "BGR" else img

    def save(self, path: str | Path) -> Path:
        """``path`` (.safetensors: all tensors + the summary as metadata) and ``path`` with ``.json`` (summary)."""
        from safetensors.torch import save_file

        from alexnet.files import atomic_write

        path = Path(path)
        info = self.summary()
        tensors = {
            "mean_image": self.mean_image.to(torch.float32).contiguous(),
            "mean_rgb": torch.tensor(self.mean_rgb, dtype=torch.float32),
            "std_rgb": torch.tensor(self.std_rgb, dtype=torch.float32),
            "eigval": torch.tensor(self.eigval, dtype=torch.float32),
            "eigvec": torch.tensor(self.eigvec, dtype=torch.float32),
        }
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"data_stats": json.dumps(info)}))
        atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(info, indent=2)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> DataStats:
        """Read ``path`` (named as :func:`stats_file` names it)."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                info = json.loads((f.metadata() or {})["data_stats"])
                mean_image = f.get_tensor("mean_image")
        except (OSError, KeyError, ValueError, SafetensorError) as e:
            raise DataError(f"{path}: not a data-stats file written by alexnet data-stats ({e})") from None
        return cls(
            mean_rgb=tuple(info["mean_rgb"]),
            std_rgb=tuple(info["std_rgb"]),
            eigval=tuple(info["eigval"]),
            eigvec=tuple(tuple(r) for r in info["eigvec"]),
            mean_image=mean_image,
            images=int(info["images"]),
            skipped=int(info.get("skipped", 0)),
            root=info.get("root", ""),
            split=info.get("split", "train"),
        )


class _Accumulator:
    """Streaming sums for the mean image, channel moments and the 3×3 second-moment matrix (float64)."""

    def __init__(self, size: int) -> None:
        self.image_sum = torch.zeros(3, size, size, dtype=torch.float64)
        self.outer = torch.zeros(3, 3, dtype=torch.float64)
        self.images = 0

    def add(self, batch: torch.Tensor) -> None:
        """``batch``: N×3×S×S float RGB in 0–1."""
        x = batch.to(torch.float64)
        self.image_sum += x.sum(0)
        flat = x.permute(1, 0, 2, 3).reshape(3, -1)
        self.outer += flat @ flat.T
        self.images += x.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean image, per-channel mean, covariance) over all pixels seen."""
        mean_image = self.image_sum / self.images
        pixels = self.images * mean_image.shape[1] * mean_image.shape[2]
        mean = mean_image.mean((1, 2))
        cov = self.outer / pixels - torch.outer(mean, mean)
        return mean_image, mean, cov * pixels / max(1, pixels - 1)  # unbiased, as numpy.cov


def eigen(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric 3×3 matrix; each eigenvector's sign is
    fixed so that its entries sum to ≤ 0 (the convention of the published ImageNet vectors, whose first is all
    negative), making the result reproducible."""
    val, vec = torch.linalg.eigh(cov)
    order = torch.argsort(val, descending=True)
    val, vec = val[order], vec[:, order]
    signs = torch.where(vec.sum(0) > 0, -1.0, 1.0).to(vec.dtype)
    return val.clamp_min(0), vec * signs


def compute_stats(
    root: str | Path,
    split: str = "train",
    *,
    size: int = 256,
    max_images: int | None = None,
    progress: bool = True,
    batch_size: int = 32,
    workers: int = 0,
) -> DataStats:
    """Mean, std, mean image and RGB PCA of ``ROOT/<split>`` (every readable image, or the readable ones among
    ``max_images`` files drawn by a fixed seed-0 shuffle) after the papers' rescale-and-centre-crop to
    ``size``×``size``."""
    from torchvision.transforms import v2
    from tqdm import tqdm

    from alexnet.data.folders import ImageFolder, check_split
    from alexnet.data.loader import make_loader
    from alexnet.data.packed import attach
    from alexnet.data.transforms import central_patch

    if not 16 <= size <= 1024:
        raise DataError(f"size (--size) must be 16–1024 pixels, not {size}")
    if max_images is not None and max_images < 1:
        raise DataError(f"max_images (--max-images) must be ≥ 1, not {max_images}")
    transform = v2.Compose([*central_patch(size).transforms, v2.ToDtype(torch.float32, scale=True)])
    dataset = ImageFolder(root, split, transform, min_side=size)
    attach(dataset, size)  # `alexnet data-pack`'s pixels are this transform's first two steps
    if max_images is not None and max_images < len(dataset):
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_images]
        dataset.samples = [dataset.samples[i] for i in sorted(keep.tolist())]
    bad = check_split(dataset, max_bad_fraction=1.0, progress=progress)
    loader = make_loader(dataset, batch_size, train=False, workers=workers)
    acc = _Accumulator(size)
    for images, _ in tqdm(loader, desc=f"statistics of {split}", unit="batch", disable=not progress):
        acc.add(images)
    if acc.images == 0:
        raise DataError(f"no readable image in {Path(root) / split}")
    mean_image, mean, cov = acc.result()
    val, vec = eigen(cov)
    std = cov.diagonal().sqrt()
    return DataStats(
        mean_rgb=_t3(mean),
        std_rgb=_t3(std),
        eigval=_t3(val),
        eigvec=tuple(_t3(r) for r in vec),
        mean_image=mean_image.to(torch.float32),
        images=acc.images,
        skipped=len(bad) + len(loader.bad),
        root=str(root),
        split=split,
    )


def _t3(t: torch.Tensor) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in t.tolist())
    return a, b, c
