"""``create_model``: the public entry point (a registered name, optionally with weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.models import AlexNetFamily, build_model


def create_model(
    name: str, num_classes: int | None = None, *, weights: str | Path | None = None, **overrides: Any
) -> AlexNetFamily:
    """Build a registered model (``list_models()``), freshly initialised as its paper says, or with ``weights``.

    ``weights`` is a ``.safetensors`` file written by this package, a ``.pth`` state dict (read with
    ``weights_only=True``), or ``"torchvision"`` (``alexnet_owt`` only). ``overrides`` replace fields of the
    model's :class:`~alexnet.models.ArchConfig` (e.g. ``dropout=0.0``).
    """
    if weights is None:
        return build_model(name, num_classes=num_classes or 1000, **overrides)
    from alexnet.weights import load_pretrained

    return load_pretrained(name, weights, num_classes, **overrides)
