"""ImageNet-1k class names, in torchvision's (sorted wnid) order, from torchvision's weights metadata."""

from __future__ import annotations

from functools import cache


@cache
def imagenet_classes() -> tuple[str, ...]:
    from torchvision.models import AlexNet_Weights

    return tuple(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])


def class_names(num_classes: int, classes: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Names for ``num_classes`` outputs: the given ones, ImageNet's for 1000 classes, else ``class_<i>``."""
    if classes is not None and len(classes) == num_classes:
        return list(classes)
    if num_classes == 1000:
        return list(imagenet_classes())
    return [f"class_{i}" for i in range(num_classes)]
