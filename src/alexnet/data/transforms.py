"""The papers' preprocessing and augmentation, as torchvision transforms v2 on ``uint8`` RGB 3×H×W tensors.

* Both: rescale the shorter side to ``pre.resize`` (256) and take the central 256×256 patch (AlexNet §2), then
  subtract the mean — per channel, or the per-pixel mean image when ``pre.mean_image`` (AlexNet §2).
* Training (AlexNet §4.1): a random ``pre.input_size`` crop (227 or 224: the model's ``default_input_size``), a
  random horizontal flip, and PCA colour augmentation (:class:`PCALighting`). ZF §3 trains on "10 different
  sub-crops of size 224×224 (corners + center with(out) horizontal flips)": ``crops="ten"`` takes one of those
  ten at random (:class:`CornerCrop`, then the flip).
* Testing: the centre crop (:func:`eval_transform`), or ten crops — the four corners and the centre, and their
  horizontal mirrors — whose softmax outputs the evaluator averages (AlexNet §4.1; :func:`ten_crop`).

Pixels stay ``uint8`` through resizing, cropping and flipping; the conversion to float is the last step (with a
per-pixel mean image, the mean is subtracted on the 256×256 patch *before* cropping, so each crop loses exactly
its own part of the mean, as Caffe does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from alexnet.data.preprocess import Preprocessing
from alexnet.errors import DataError

# ImageNet RGB statistics (pixels in 0–1), as used by fb.resnet.torch's "Lighting" transform.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (  # rows: R, G, B; column j is the j-th eigenvector
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

PCA = tuple[Sequence[float] | torch.Tensor, Sequence[Sequence[float]] | torch.Tensor]


class PCALighting(nn.Module):
    """AlexNet §4.1 colour augmentation: add ``[p1 p2 p3][α1λ1 α2λ2 α3λ3]ᵀ`` to every RGB pixel.

    ``pᵢ``/``λᵢ`` are the eigenvectors (columns of ``eigvec``) and eigenvalues of the 3×3 covariance of RGB pixel
    values over the training set; ``αᵢ ~ N(0, std)`` (std 0.1 in the paper) is drawn once per image each time the
    image is used, so all pixels of one image get the same offset. Input: float RGB in 0–1, 3×H×W or N×3×H×W
    (one draw per image). No clipping, as in the paper and fb.resnet.torch.
    """

    def __init__(
        self,
        eigval: Sequence[float] | torch.Tensor = IMAGENET_EIGVAL,
        eigvec: Sequence[Sequence[float]] | torch.Tensor = IMAGENET_EIGVEC,
        std: float = 0.1,
    ) -> None:
        super().__init__()
        val = torch.as_tensor(eigval, dtype=torch.float32).reshape(3)
        vec = torch.as_tensor(eigvec, dtype=torch.float32).reshape(3, 3)
        self.register_buffer("eigval", val)
        self.register_buffer("eigvec", vec)
        self.std = float(std)

    def offsets(self, n: int) -> torch.Tensor:
        """``n`` random RGB offsets (n×3): ``eigvec @ (α * eigval)`` with α ~ N(0, std)."""
        alpha = torch.randn(n, 3) * self.std
        return (alpha * self.eigval) @ self.eigvec.T

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if not img.is_floating_point():
            raise DataError("PCALighting expects a float image in 0–1 (apply ToDtype(scale=True) first)")
        if self.std == 0:
            return img
        batch = img.shape[:-3]
        offset = self.offsets(max(1, batch.numel())).to(img.device, img.dtype).reshape(*batch, 3, 1, 1)
        return img + offset

    def extra_repr(self) -> str:
        return f"eigval={tuple(round(v, 4) for v in self.eigval.tolist())}, std={self.std}"


class Normalize(nn.Module):
    """float RGB in 0–1 → the model's input convention (:meth:`Preprocessing.normalize`), optionally minus a
    per-pixel ``mean_image`` (3×S×S, model convention) instead of the per-channel mean."""

    def __init__(self, pre: Preprocessing, mean_image: torch.Tensor | None = None) -> None:
        super().__init__()
        self.pre = pre
        self.mean_image = mean_image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean_image is None:
            return self.pre.normalize(x)
        x = x * self.pre.pixel_scale
        if self.pre.channel_order == "BGR":
            x = x.flip(-3)
        std = torch.tensor(self.pre.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - self.mean_image.to(x.device, x.dtype)) / std


class ToModelInput(nn.Module):
    """``uint8`` RGB → the model's input in one fused pass: ``ToDtype(scale=True)``, optional
    :class:`PCALighting`, then :class:`Normalize` (per-channel mean) — the same numbers (fp32 rounding aside)
    with two passes over the pixels instead of six, which matters on the input pipeline's CPU budget.

    Everything per channel is affine: ``out_c = (x_c/255 + offset_c)·scale/std_c − mean_c/std_c``, so the
    lighting offset folds into the bias.
    """

    def __init__(self, pre: Preprocessing, lighting: PCALighting | None = None) -> None:
        super().__init__()
        self.pre = pre
        self.lighting = lighting
        std = torch.tensor(pre.std, dtype=torch.float32)
        self.gain = (pre.pixel_scale / 255.0) / std  # model channel order
        self.bias = -torch.tensor(pre.mean, dtype=torch.float32) / std
        self.bgr = pre.channel_order == "BGR"
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # a worker process gets the CPU constants, never another process's device copies
        return {**self.__dict__, "_on_device": {}}

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``gain`` and ``bias`` on ``device``, copied there once: a copy from pageable memory per batch may make
        the host wait for the device's stream."""
        if device.type == "cpu":
            return self.gain, self.bias
        if device not in self._on_device:  # blocking, once: then every stream may read them
            self._on_device[device] = (self.gain.to(device), self.bias.to(device))
        return self._on_device[device]

    def draw(self, n: int) -> torch.Tensor | None:
        """``n`` PCA-lighting offsets (n×3, RGB, 0–1 scale) from torch's RNG, or ``None`` without lighting."""
        if self.lighting is None or self.lighting.std == 0:
            return None
        return self.lighting.offsets(n)

    def apply(self, img: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
        """The conversion with given lighting ``offsets`` (one row per image of ``img``'s batch dims), on
        ``img``'s device: :meth:`forward` draws them; the GPU batch decoder draws them per sample."""
        batch = img.shape[:-3]
        gain, bias = self._constants(img.device)
        bias = bias.expand(*batch, 3)
        if offsets is not None:
            offset = offsets.to(img.device, non_blocking=True).reshape(*batch, 3)  # RGB, 0–1 scale
            if self.bgr:
                offset = offset.flip(-1)
            bias = bias + offset * (gain * 255.0)
        if self.bgr:
            img = img.flip(-3)
        out = img.to(torch.float32).mul_(gain.view(3, 1, 1))
        return out.add_(bias.reshape(*batch, 3, 1, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        img = _as_0_255(img)
        return self.apply(img, self.draw(max(1, img.shape[:-3].numel())))


def _as_0_255(img: torch.Tensor) -> torch.Tensor:
    """A ``uint8`` image as it is; a floating-point one (torchvision's convention: 0–1) scaled to 0–255."""
    if img.is_floating_point():
        return img * 255.0
    if img.dtype != torch.uint8:
        raise DataError(f"expected a uint8 image, or a float one in 0–1, not {img.dtype}")
    return img


class AsRGB(nn.Module):
    """A PIL image, a NumPy H×W×C (or H×W) array or a C×H×W tensor (or a batch) → RGB 3×H×W, dtype kept:
    grayscale repeated into three channels, an alpha channel dropped. ImageNet holds grayscale and CMYK JPEGs;
    :func:`alexnet.data.images.read_image` converts them, and this does the same for images already in memory."""

    def forward(self, img: Any) -> torch.Tensor:
        from PIL import Image

        if isinstance(img, Image.Image):
            return F.pil_to_tensor(img.convert("RGB"))
        if not isinstance(img, torch.Tensor):  # NumPy (skimage, PIL's np.asarray): channels last
            array = torch.from_numpy(np.array(img))  # a copy: np.asarray of a PIL image is read-only
            img = array[None] if array.ndim == 2 else array.permute(2, 0, 1)
        if img.ndim < 3 or img.shape[-3] not in (1, 3, 4):
            raise DataError(
                f"expected an image with 1, 3 or 4 channels (C×H×W), got shape {tuple(img.shape)}"
            )
        if img.shape[-3] == 1:
            return img.expand(*img.shape[:-3], 3, *img.shape[-2:]).contiguous()
        return img[..., :3, :, :] if img.shape[-3] == 4 else img


class TenCrop(nn.Module):
    """3×H×W → 10×3×size×size: top-left, top-right, bottom-left, bottom-right and centre crops (torchvision's
    ``five_crop`` order), then the horizontal mirror of each of those five, in the same order."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        five = F.five_crop(img, [self.size, self.size])
        return torch.stack([*five, *(F.horizontal_flip(c) for c in five)])


CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")  # F.five_crop's order


def corner_offset(index: int, height: int, width: int, size: int) -> tuple[int, int]:
    """``(top, left)`` of crop ``index`` of :data:`CORNERS` (a ``size``² crop of a ``height``×``width`` image),
    where ``F.five_crop`` takes it: the centre rounds as ``F.center_crop`` does."""
    if index == 4:
        return round((height - size) / 2.0), round((width - size) / 2.0)
    return (height - size) * (index // 2), (width - size) * (index % 2)


class CornerCrop(v2.Transform):
    """One of the four corner crops or the centre crop, drawn uniformly (one ``torch.randint(0, 5)``).

    ZF §3 trains on the ten sub-crops of each 256×256 patch, "corners + center with(out) horizontal flips":
    this crop followed by ``RandomHorizontalFlip`` draws one of those ten, the crops :class:`TenCrop` tests on."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = (size, size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = F.get_size(flat_inputs[0])
        side = self.size[0]
        if height < side or width < side:
            raise DataError(f"a {side}px crop needs an image of at least {side}×{side}, not {height}×{width}")
        top, left = corner_offset(int(torch.randint(0, len(CORNERS), size=())), height, width, side)
        return dict(top=top, left=left)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        side = self.size[0]
        return self._call_kernel(
            F.crop, inpt, top=params["top"], left=params["left"], height=side, width=side
        )

    def extra_repr(self) -> str:
        return f"size={self.size[0]}"


def _mean_image(pre: Preprocessing, mean_image: torch.Tensor | None) -> torch.Tensor | None:
    if not pre.mean_image:
        return None
    if mean_image is None:
        raise DataError("this preprocessing subtracts a per-pixel mean image, but none was given")
    if tuple(mean_image.shape) != (3, pre.resize, pre.resize):
        raise DataError(
            f"mean image is {tuple(mean_image.shape)}, expected (3, {pre.resize}, {pre.resize}) for resize "
            f"{pre.resize}"
        )
    return mean_image.to(torch.float32)


def _pca(pca: PCA | Literal["imagenet"] | None, std: float) -> PCALighting | None:
    if pca is None:
        return None
    if isinstance(pca, str):
        if pca != "imagenet":
            raise DataError(f"pca must be 'imagenet', None or (eigval, eigvec), not {pca!r}")
        return PCALighting(std=std)
    eigval, eigvec = pca
    return PCALighting(eigval, eigvec, std=std)


def _resize(pre: Preprocessing) -> list[nn.Module]:
    """Shorter side → ``pre.resize``, central ``resize``×``resize`` patch (AlexNet §2)."""
    if pre.input_size > pre.resize:
        raise DataError(
            f"input size {pre.input_size} is larger than the {pre.resize}px patch it is cropped from"
        )
    return list(central_patch(pre.resize).transforms)


def central_patch(size: int) -> v2.Compose:
    """Shorter side → ``size``, central ``size``×``size`` patch (AlexNet §2's 256×256): ``uint8`` in, ``uint8``
    out; what :mod:`alexnet.data.packed` stores."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def _to_float() -> nn.Module:
    return v2.ToDtype(torch.float32, scale=True)


def train_transform(
    pre: Preprocessing,
    *,
    pca: PCA | Literal["imagenet"] | None = "imagenet",
    flip: bool = True,
    mean_image: torch.Tensor | None = None,
    pca_std: float = 0.1,
    crops: Literal["random", "ten"] = "random",
) -> v2.Compose:
    """The training augmentation of AlexNet §4.1: ``uint8`` 3×H×W → float 3×S×S.

    ``pca``: ``"imagenet"`` (ImageNet's eigen-decomposition, the default), ``(eigval, eigvec)`` of your own data
    (:func:`alexnet.data.stats.compute_stats`), or ``None`` for no colour augmentation.
    ``mean_image``: required when ``pre.mean_image`` (3×resize×resize in the model's convention).
    ``crops``: ``"random"``, any position (AlexNet §4.1), or ``"ten"``, a corner or the centre (ZF §3's
    sub-crops; with ``flip``, one of the ten).
    """
    if crops not in ("random", "ten"):
        raise DataError(f"crops must be 'random' or 'ten', not {crops!r}")
    lighting = _pca(pca, pca_std)
    mean = _mean_image(pre, mean_image)
    crop: list[nn.Module] = [
        v2.RandomCrop(pre.input_size) if crops == "random" else CornerCrop(pre.input_size)
    ]
    if flip:
        crop.append(v2.RandomHorizontalFlip())
    if mean is None:  # crop and flip in uint8, float last
        return v2.Compose([*_resize(pre), *crop, ToModelInput(pre, lighting)])
    colour: list[nn.Module] = [_to_float(), *([lighting] if lighting else []), Normalize(pre, mean)]
    return v2.Compose([*_resize(pre), *colour, *crop])  # mean image lines up with the 256×256 patch


class CentredMeanInput(nn.Module):
    """A ``uint8`` (or 0–1 float) crop taken at the centre of the ``resize``×``resize`` patch → float model input,
    minus the same centre region of the per-pixel mean image (AlexNet §2): ``CenterCrop`` of the mean image with
    the crop's size has the offsets ``CenterCrop`` took on the patch, so each pixel loses its own mean pixel."""

    def __init__(self, pre: Preprocessing, mean_image: torch.Tensor) -> None:
        super().__init__()
        self.pre = pre
        self.mean_image = mean_image

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        mean = F.center_crop(self.mean_image, list(crop.shape[-2:]))
        unit = crop.to(torch.float32) if crop.is_floating_point() else _as_0_255(crop).float().div_(255.0)
        return Normalize(self.pre, mean)(unit)


def eval_crop(pre: Preprocessing) -> v2.Compose:
    """The evaluation crop, ``uint8`` in and out: shorter side → ``pre.resize``, the central ``resize``×``resize``
    patch (AlexNet §2), then that patch's central ``input_size`` crop.

    The one crop that :func:`eval_transform` (``alexnet predict``/``eval``) and
    :func:`alexnet.inputs.prepare` take: cropping straight from the resized image would round an odd
    offset differently, one pixel apart on a non-square image."""
    return v2.Compose([*_resize(pre), v2.CenterCrop(pre.input_size)])


def eval_crop_offsets(pre: Preprocessing, height: int, width: int) -> tuple[int, int]:
    """Where :func:`eval_crop`'s ``input_size`` crop sits (top, left) in the *resized* ``height``×``width`` image
    (shorter side already ``pre.resize``): the central patch's offsets plus the crop's within it, each rounded as
    ``CenterCrop`` rounds. For tools that transform the whole resized image first (the rotations of ZF §4,
    Fig. 5) and must then cut out the pixels evaluation sees."""

    def centre(outer: int, inner: int) -> int:
        return round((outer - inner) / 2.0)  # as torchvision's center_crop

    inner = centre(pre.resize, pre.input_size)
    return centre(height, pre.resize) + inner, centre(width, pre.resize) + inner


def crop_to_input(pre: Preprocessing, *, mean_image: torch.Tensor | None = None) -> nn.Module:
    """A ``uint8`` crop of :func:`eval_crop` → float model input: :class:`ToModelInput` (per-channel mean), or
    minus the matching centre of the per-pixel ``mean_image`` (:class:`CentredMeanInput`; required when
    ``pre.mean_image``)."""
    mean = _mean_image(pre, mean_image)
    return ToModelInput(pre) if mean is None else CentredMeanInput(pre, mean)


def eval_transform(pre: Preprocessing, *, mean_image: torch.Tensor | None = None) -> v2.Compose:
    """Centre crop: ``uint8`` 3×H×W → float 3×S×S (shorter side ``resize``, central ``resize`` patch, its central
    ``input_size``): :func:`eval_crop` then :func:`crop_to_input`. With a per-pixel mean image, the crop loses
    the mean image's centre: the same numbers as subtracting it from the patch and cropping after, computed on
    the crop alone."""
    return v2.Compose([*eval_crop(pre).transforms, crop_to_input(pre, mean_image=mean_image)])


def ten_crop(pre: Preprocessing, *, mean_image: torch.Tensor | None = None) -> v2.Compose:
    """Ten crops: ``uint8`` 3×H×W → float 10×3×S×S (a loader batch is N×10×3×S×S; fold it to (N·10)×3×S×S for the
    model and average the softmax over the 10, AlexNet §4.1)."""
    mean = _mean_image(pre, mean_image)
    if mean is None:
        return v2.Compose([*_resize(pre), TenCrop(pre.input_size), ToModelInput(pre)])
    return v2.Compose([*_resize(pre), _to_float(), Normalize(pre, mean), TenCrop(pre.input_size)])
