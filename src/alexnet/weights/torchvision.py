"""torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` → ``alexnet_owt`` (same state-dict keys, loaded unchanged).

The file is fetched into torch.hub's cache (``torch.hub.get_dir()/checkpoints``, where torchvision keeps it, so a
copy torchvision downloaded is reused) by our own download: torch.hub's has no timeout and hangs for ever on a
stalled network. Ours gives up after :data:`TIMEOUT` seconds without data, checks the hash prefix in the file
name as torch.hub does, and leaves no partial file behind.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import torch

from alexnet.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from alexnet.errors import WeightsError
from alexnet.weights.io import WeightsMeta

URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"  # AlexNet_Weights.IMAGENET1K_V1.url
TIMEOUT = 30.0  # seconds without an answer before a download gives up (as weights.sources.fetch)


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
            "recipe": w.meta["recipe"],
        },
    )


def cached_path(url: str | None = None) -> Path:
    """Where torch.hub (and so torchvision) keeps the file: ``torch.hub.get_dir()/checkpoints/<file name>``."""
    name = os.path.basename(urllib.parse.urlparse(url or URL).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def fetch_torchvision_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """torchvision's IMAGENET1K_V1 state dict: from torch.hub's cache, else downloaded there first (gives up after
    :data:`TIMEOUT` seconds without data, with a :class:`WeightsError` that says where to put the file)."""
    target = cached_path()
    if not target.is_file():
        _download(URL, target, progress)
    try:
        state = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as e:
        from alexnet.weights.io import load_failure

        raise WeightsError(
            f"{target}: not torchvision's AlexNet weights ({load_failure(e)}); delete it and download again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{target}: does not hold a state dict of tensors; delete it and download again")
    return state


def _download(url: str, target: Path, progress: bool) -> None:
    """``url`` → ``target`` (:func:`alexnet.weights.download.download`), checking the hash prefix in the file's
    name as torch.hub's ``check_hash`` does."""
    from alexnet.weights.download import download
    from alexnet.weights.sources import file_digest

    def check(path: Path) -> None:
        match = torch.hub.HASH_REGEX.search(target.name)
        got = file_digest(path)
        if match is not None and not got.startswith(match.group(1)):
            raise WeightsError(
                f"{url}: the download's sha256 {got} does not start with {match.group(1)} as its name says: a "
                f"corrupt or different file; try again, or put torchvision's file at {target}"
            )

    download(
        url, target, timeout=TIMEOUT, check=check, progress=progress, what="torchvision's AlexNet weights"
    )
