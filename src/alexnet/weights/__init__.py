"""Weights: safetensors files with metadata, and loading them (or torchvision's) into a registered model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alexnet.errors import WeightsError, WeightsMismatch
from alexnet.models import AlexNetFamily, ArchConfig, build_model, get_config, list_models
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
    "resolve_weights",
    "save_weights",
]


# torchvision's names for its AlexNet weights (``torchvision.models.get_weight`` spellings), taken as "torchvision"
TORCHVISION_NAMES = (
    "torchvision",
    "DEFAULT",
    "IMAGENET1K_V1",
    "AlexNet_Weights.DEFAULT",
    "AlexNet_Weights.IMAGENET1K_V1",
)


def _accepted() -> str:
    from alexnet.weights.sources import SOURCES

    return (
        "a weights file path, 'torchvision' (also torchvision's AlexNet_Weights.IMAGENET1K_V1, 'DEFAULT', "
        f"'IMAGENET1K_V1'), a published source name ({', '.join(SOURCES)}) or None"
    )


def resolve_weights(weights: object, name: str | None = None) -> str | Path:
    """``weights`` as :func:`load_pretrained` reads it: a path, ``"torchvision"`` or a published source name.

    torchvision's ``AlexNet_Weights`` members and its names for them (:data:`TORCHVISION_NAMES`, unless a file of
    that name exists) become ``"torchvision"``, which fits ``alexnet_owt`` only: for another ``name`` they raise
    :class:`WeightsMismatch` naming the weights that model has. Any other type raises ``TypeError`` naming the
    accepted forms.
    """
    import enum
    import os

    if isinstance(weights, enum.Enum):
        from torchvision.models import AlexNet_Weights

        if not isinstance(weights, AlexNet_Weights):
            raise WeightsMismatch(
                f"{type(weights).__name__}.{weights.name} are torchvision's weights for another network; "
                f"AlexNet's are AlexNet_Weights.IMAGENET1K_V1 (alexnet_owt)"
            )
        weights = "torchvision"
    elif isinstance(weights, str) and weights in TORCHVISION_NAMES and not Path(weights).exists():
        weights = "torchvision"
    elif not isinstance(weights, str | os.PathLike) or not isinstance(os.fspath(weights), str):
        raise TypeError(f"weights must be {_accepted()}; got {type(weights).__name__} {weights!r}")
    if str(weights) == "torchvision" and name not in (None, "alexnet_owt"):
        raise WeightsMismatch(
            f"torchvision's AlexNet weights fit alexnet_owt, not {name}; {_published_for(name)}"
        )
    return weights


def _published_for(name: str) -> str:
    from alexnet.weights.sources import SOURCES

    names = [s.name for s in SOURCES.values() if s.model == name]
    if not names:
        return f"no published weights are {name}'s (pass a weights file)"
    return f"published weights for {name}: {', '.join(names)}"


def load_pretrained(
    name: str | None, weights: str | Path, num_classes: int | None = None, **overrides: Any
) -> AlexNetFamily:
    """Build ``name`` and load ``weights`` ("torchvision" or a file path) into it; attach the metadata.

    ``weights`` may also be an ``.onnx`` / ``.caffemodel`` file or a published source name
    (:data:`alexnet.weights.sources.SOURCES`): imported by structure, ``name`` ``"auto"`` or ``None`` inferring it;
    or torchvision's spellings of its AlexNet weights (``AlexNet_Weights.IMAGENET1K_V1``, ``"DEFAULT"``,
    ``"IMAGENET1K_V1"``: :func:`resolve_weights`).

    ``name=None`` builds whatever architecture the file's metadata records. A file made for another model is
    refused with a message naming both. A ``num_classes`` other than the file's loads everything but the
    classifier layer, which is replaced, freshly initialised (:meth:`AlexNetFamily.reset_classifier`, timm's
    fine-tuning start); 0 removes it, so the model returns fc7's features.
    """
    from alexnet.weights.sources import is_foreign, load_foreign

    weights = resolve_weights(weights, name)
    if is_foreign(weights):  # ONNX / Caffe file or published source name: imported by structure
        foreign = load_foreign(weights, name or "auto")
        if overrides:
            raise WeightsMismatch(f"{weights}: imported weights cannot take model overrides")
        return _with_classes(foreign, num_classes)
    if str(weights) == "torchvision":
        from alexnet.weights.torchvision import fetch_torchvision_state_dict, torchvision_meta

        state, meta = fetch_torchvision_state_dict(), torchvision_meta()
    else:
        state, meta = read_weights(weights)
    if name is None and meta.model is None:  # a bare state dict: the registered model its tensors fit
        fits = _models_that_fit(state)
        if len(fits) != 1:
            which = f"its tensors fit {', '.join(fits)}" if fits else "its tensors fit no registered model"
            raise WeightsError(
                f"{weights}: the file does not say which model it is for and {which}; name the model "
                f"(--model on the command line)"
            )
        name = fits[0]
    if name is not None and meta.model is not None and meta.model != name:
        raise WeightsMismatch(f"{weights}: holds weights for model {meta.model!r}, not {name!r}")
    name = name or meta.model
    assert name is not None
    # The file's own architecture record wins over the registry: it holds whatever the run changed
    # (`alexnet train --input-size/--dropout ...`) and lets files of unregistered variants load anywhere.
    if meta.config is not None and meta.config.get("name") == name:
        config = ArchConfig.from_dict(meta.config)
    else:
        config = get_config(name)
    # 0 is a class count too (a feature extractor saved without its classifier)
    classes = (
        meta.num_classes
        if meta.num_classes is not None
        else _classes_in(state, config) or num_classes or 1000
    )
    model = build_model(config, num_classes=classes, **overrides)
    load_state_dict_checked(model, state, str(weights))
    # what the record leaves out (a .pth file), from the model it was loaded into, as save_weights would
    meta.model = meta.model or name
    meta.num_classes = model.num_classes if meta.num_classes is None else meta.num_classes
    meta.config = meta.config or model.config.to_dict()
    model.weights_meta = meta
    return _with_classes(model, num_classes)


def _classes_in(state: dict[str, torch.Tensor], config: ArchConfig) -> int | None:
    """The class count of a bare state dict (a ``.pth`` file): the rows of its classifier layer's weight."""
    with torch.device("meta"):  # only the layer's path is wanted: no memory, no init
        probe = build_model(config, num_classes=1)
    weight = state.get(f"{probe.layer_path(f'fc{config.fc_numbers()[-1]}')}.weight")
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


def _models_that_fit(state: dict[str, torch.Tensor]) -> list[str]:
    """The registered models whose every tensor a bare state dict holds, shaped alike, and nothing more (any class
    count): torchvision's AlexNet state dict fits alexnet_owt alone; alexnet, caffenet and bvlc_alexnet share
    their shapes (they differ in layer order and LRN constants, which a state dict does not record)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    fits = []
    for name in list_models():
        config = get_config(name)
        with torch.device("meta"):
            own = build_model(config, num_classes=_classes_in(state, config) or 1000).state_dict()
        if shapes == {k: tuple(v.shape) for k, v in own.items()}:
            fits.append(name)
    return fits


def _with_classes(model: AlexNetFamily, num_classes: int | None) -> AlexNetFamily:
    """``model`` with a fresh classifier layer for ``num_classes`` classes when that is not the weights' own;
    the metadata then no longer names the classes."""
    if num_classes is None or num_classes == model.num_classes:
        return model
    model.reset_classifier(num_classes)  # which also updates model.weights_meta
    return model
