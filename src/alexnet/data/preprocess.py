"""How an image becomes a model input: the preprocessing that travels with a weights file.

AlexNet §2: rescale the shorter side to 256, take the central 256×256 patch, subtract the mean; the network then
sees a 227×227 (or 224×224) crop. Caffe-trained weights expect BGR pixels in 0–255 minus the mean; torchvision's
expect RGB in 0–1 normalised by mean/std. :class:`Preprocessing` records which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torchvision.transforms import v2

from alexnet.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, 0–1
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """``mean``/``std`` are per channel in the model's channel order and pixel scale.

    ``mean_image``: subtract a per-pixel mean image (AlexNet §2: "subtracting the mean activity over the training
    set from each pixel"; Caffe's ``imagenet_mean.binaryproto``) instead of ``mean``. The image itself is a
    ``3×resize×resize`` tensor in the model's channel order and pixel scale, carried next to this record (a weights
    file stores it as ``WeightsMeta.tensors["mean_image"]``) and passed to :mod:`alexnet.data.transforms`.
    """

    input_size: int = 227
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"  # or "BGR" (Caffe)
    pixel_scale: float = 1.0  # 1.0: pixels in 0–1; 255.0: pixels in 0–255 (Caffe)
    mean_image: bool = False  # per-pixel mean image (AlexNet §2) instead of the per-channel mean

    def __post_init__(self) -> None:
        # a typo here would feed every image in the wrong colour order, silently
        if self.channel_order not in ("RGB", "BGR"):
            raise DataError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise DataError(f"mean and std need 3 values each, std non-zero (got {self.mean}, {self.std})")

    def describe(self) -> str:
        """One line for people: ``224px BGR ×255 − mean (104.0, 117.0, 123.0)``, the resize when not 256."""
        return (
            f"{self.input_size}px{'' if self.resize == 256 else f' of {self.resize}'} {self.channel_order} "
            f"×{self.pixel_scale:g} − "
            + ("the mean image" if self.mean_image else f"mean {tuple(self.mean)}")
            + (f" ÷ std {tuple(self.std)}" if any(s != 1 for s in self.std) else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(v) for v in known[key])
        return cls(**known)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float RGB in 0–1 (…×3×H×W) → the model's input convention."""
        x = x * self.pixel_scale
        if self.channel_order == "BGR":
            x = x.flip(-3)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def eval_transform(self, mean_image: torch.Tensor | None = None) -> v2.Compose:
        """uint8 RGB image → normalised centre crop: :func:`alexnet.data.transforms.eval_transform`, the pipeline
        ``alexnet predict`` and ``alexnet eval`` use (for a model, :func:`alexnet.predict.input_transform`).

        ``mean_image`` (3×resize×resize, model convention) is required when ``self.mean_image`` (AlexNet §2's
        per-pixel mean): raises :class:`~alexnet.errors.DataError` without it, or with one this preprocessing
        does not subtract."""
        from alexnet.data import transforms

        if mean_image is not None and not self.mean_image:
            raise DataError(
                "this preprocessing subtracts the per-channel mean, not a mean image: pass no mean_image, or "
                "use a Preprocessing with mean_image=True"
            )
        return transforms.eval_transform(self, mean_image=mean_image)
