"""Weights: safetensors files with metadata, and loading them (or torchvision's) into a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexnet.errors import WeightsError, WeightsMismatch
from alexnet.models import AlexNetFamily, ArchConfig, build_model, get_config
from alexnet.weights.io import (
    WeightsMeta,
    atomic_write,
    load_state_dict_checked,
    read_weights,
    save_weights,
)

__all__ = [
    "WeightsMeta",
    "atomic_write",
    "load_pretrained",
    "load_state_dict_checked",
    "read_weights",
    "save_weights",
]


def load_pretrained(
    name: str | None, weights: str | Path, num_classes: int | None = None, **overrides: Any
) -> AlexNetFamily:
    """Build ``name`` and load ``weights`` ("torchvision" or a file path) into it; attach the metadata.

    ``weights`` may also be an ``.onnx`` / ``.caffemodel`` file or a published source name
    (:data:`alexnet.weights.sources.SOURCES`): imported by structure, ``name`` ``"auto"`` or ``None`` inferring it.

    ``name=None`` builds whatever architecture the file's metadata records. A file made for another model is
    refused with a message naming both.
    """
    from alexnet.weights.sources import is_foreign, load_foreign

    if is_foreign(weights):  # ONNX / Caffe file or published source name: imported by structure
        foreign = load_foreign(weights, name or "auto")
        if overrides or (num_classes is not None and num_classes != foreign.num_classes):
            raise WeightsMismatch(
                f"{weights}: imported weights cannot take model overrides or another num_classes"
            )
        return foreign
    if str(weights) == "torchvision":
        from alexnet.weights.torchvision import fetch_torchvision_state_dict, torchvision_meta

        if name not in (None, "alexnet_owt"):
            raise WeightsMismatch(f"torchvision's AlexNet weights fit alexnet_owt, not {name}")
        state, meta = fetch_torchvision_state_dict(), torchvision_meta()
    else:
        state, meta = read_weights(weights)
    if name is None and meta.model is None:
        raise WeightsError(f"{weights}: the file does not say which model it is for; pass --model")
    if name is not None and meta.model is not None and meta.model != name:
        raise WeightsMismatch(f"{weights}: holds weights for model {meta.model!r}, not {name!r}")
    name = name or meta.model
    assert name is not None
    num_classes = num_classes or meta.num_classes or 1000
    # The file's own architecture record wins over the registry: it holds whatever the run changed
    # (`alexnet train --input-size/--dropout ...`) and lets files of unregistered variants load anywhere.
    if meta.config is not None and meta.config.get("name") == name:
        config = ArchConfig.from_dict(meta.config)
    else:
        config = get_config(name)
    model = build_model(config, num_classes=num_classes, **overrides)
    load_state_dict_checked(model, state, str(weights))
    model.weights_meta = meta
    return model
