"""torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` → ``alexnet_owt`` (same state-dict keys, loaded unchanged)."""

from __future__ import annotations

import torch

from alexnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from alexnet.weights.io import WeightsMeta


def torchvision_meta() -> WeightsMeta:
    from torchvision.models import AlexNet_Weights

    w = AlexNet_Weights.IMAGENET1K_V1
    return WeightsMeta(
        model="alexnet_owt",
        num_classes=1000,
        classes=list(w.meta["categories"]),
        preprocessing=Preprocessing(input_size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        source=f"torchvision AlexNet_Weights.IMAGENET1K_V1 ({w.url})",
        license="BSD-3-Clause (torchvision); trained on ImageNet-1k, whose terms restrict use to non-commercial research",
        extra={
            "acc@1": w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            "acc@5": w.meta["_metrics"]["ImageNet-1K"]["acc@5"],
        },
    )


def fetch_torchvision_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """Download (or read from torch.hub's cache) torchvision's IMAGENET1K_V1 weights through its weights API."""
    from torchvision.models import AlexNet_Weights

    from alexnet.errors import WeightsError

    try:
        return AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=progress, check_hash=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError
        raise WeightsError(
            f"cannot fetch torchvision's AlexNet weights ({e}); offline, place alexnet-owt-7be5be79.pth in "
            f"{torch.hub.get_dir()}/checkpoints/"
        ) from None
