"""A run that starts from trained weights: fine-tuning, and Zeiler & Fergus §5.2's feature generalisation.

ZF §5.2 ("Feature Generalization") keeps layers 1–7 of the ImageNet-trained network fixed and trains a new softmax
classifier on top, for the appropriate number of classes, on Caltech-101, Caltech-256 and PASCAL 2012:
``alexnet train --weights W --freeze fc7``. Without ``--freeze`` every layer goes on learning from the loaded
values (fine-tuning). The classifier layer is replaced by a freshly initialised one unless the weights predict the
data's very classes. The images are prepared as the weights were trained on them (their recorded preprocessing and
mean image: channel order, pixel scale, mean; ``TrainConfig.normalize == "weights"``), unless the run asks for
another normalisation; the crop and resize are the weights' either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexnet.errors import TrainingError


@dataclass
class Start:
    """The loaded network (with its own classifier) and the input convention its weights record."""

    model: Any  # AlexNetFamily
    source: str  # the weights as given (a file, a run folder, "torchvision", a source name)
    preprocessing: Any  # alexnet.data.preprocess.Preprocessing, or None for a bare state dict
    mean_image: torch.Tensor | None


def weights_source(spec: str) -> str:
    """A run folder stands for its final weights (its newest checkpoint when it has not finished); anything else
    (a file, "torchvision", a published source name) is passed on as it is."""
    from alexnet.train.run_folder import run_weights

    return str(run_weights(spec, checkpoint_ok=True)) if Path(spec).is_dir() else spec


def load_start(spec: str, model: str | None) -> Start:
    """Read the starting weights ``spec`` for ``model`` (``None``: whichever model the weights are for); a file
    made for another model is refused naming both (:func:`alexnet.weights.load_pretrained`)."""
    from alexnet.weights import load_pretrained

    source = weights_source(spec)
    if not _fetched(source) and not Path(source).exists():
        raise TrainingError(f"--weights {spec}: no such weights file or run folder")
    net = load_pretrained(model, source)
    meta = net.weights_meta
    pre = meta.preprocessing if meta is not None else None
    mean_image = meta.tensors.get("mean_image") if meta is not None else None
    # a run folder: which of its files (the final weights, or an unfinished run's newest checkpoint)
    shown = spec if source == spec else f"{spec} ({Path(source).relative_to(spec)})"
    return Start(net, shown, pre, mean_image)


def _fetched(source: str) -> bool:
    """Whether ``source`` names weights that are downloaded (or found in the cache) rather than a file."""
    from alexnet.weights import TORCHVISION_NAMES
    from alexnet.weights.sources import SOURCES

    return source in SOURCES or source in TORCHVISION_NAMES


def start_input(start: Start, input_size: int | None) -> tuple[Any, torch.Tensor | None]:
    """The preprocessing and mean image the starting weights were trained with (``normalize="weights"``)."""
    pre = start.preprocessing
    if pre is None:
        raise TrainingError(
            f"--weights {start.source}: the file does not record how its images were prepared (a bare state "
            "dict); give --normalize mean, image or meanstd"
        )
    check_input_size(start, input_size)
    if pre.mean_image and start.mean_image is None:
        raise TrainingError(
            f"--weights {start.source}: the weights subtract a mean image that the file does not hold; give "
            "--normalize mean, image or meanstd"
        )
    return pre, start.mean_image


def check_input_size(start: Start, input_size: int | None) -> None:
    """:class:`TrainingError` for an ``--input-size`` that is not the weights' own (their fc6 is sized for it)."""
    theirs = start.model.config.input_size
    if input_size is not None and input_size != theirs:
        raise TrainingError(
            f"--input-size {input_size}: the weights {start.source} take {theirs}px crops (their fc6 is sized "
            "for them)"
        )


def describe_difference(start: Start, pre: Any) -> str | None:
    """A warning when the run feeds the network other inputs than its weights were trained on, else ``None``."""
    theirs = start.preprocessing
    if theirs is None:
        return None
    same = (theirs.channel_order, theirs.pixel_scale, theirs.mean_image, tuple(theirs.std)) == (
        pre.channel_order,
        pre.pixel_scale,
        pre.mean_image,
        tuple(pre.std),
    )
    if same and all(
        abs(a - b) <= 0.02 * max(1.0, abs(b)) for a, b in zip(pre.mean, theirs.mean, strict=True)
    ):
        return None
    return (
        f"the weights {start.source} were trained on inputs {theirs.describe()}; this run feeds "
        f"{pre.describe()} (leave out --normalize and --stats to keep the weights' own)"
    )


def same_classes(theirs: list[str] | None, ours: list[str]) -> bool:
    """Whether weights that name the classes ``theirs`` (``None``: not recorded) predict the data's ``ours`` in
    the same order. ImageNet's human-readable names (torchvision's, the published imports') stand for its 1000
    wnid folders, which sort into the same order."""
    from alexnet.data.classes import imagenet_classes

    if theirs is None or list(theirs) == list(ours):
        return True
    return len(ours) == 1000 and list(theirs) == list(imagenet_classes())


def adapt(start: Start, classes: list[str], dropout: float) -> tuple[Any, str]:
    """The run's network: the loaded one, with ``dropout`` and a fresh classifier layer (initialised as the
    model's configuration says: ZF §5.2's "new softmax classifier") unless the weights predict the data's very
    classes; and a line for the log saying which. Draws from torch's RNG only for a fresh classifier."""
    from alexnet.models import build_model

    net, fc = start.model, last_layer(start.model)
    theirs = net.weights_meta.classes if net.weights_meta is not None else None
    if net.num_classes != len(classes):
        note = f"a new {fc} for {len(classes)} classes (the weights' has {net.num_classes})"
        net.reset_classifier(len(classes))
    elif not same_classes(theirs, classes):
        assert theirs is not None
        shown = ", ".join(theirs[:3]) + (", …" if len(theirs) > 3 else "")
        note = f"a new {fc} for the data's {len(classes)} classes (the weights' {len(theirs)} are others: {shown})"
        net.reset_classifier(len(classes))
    else:
        note = f"{fc} kept (the data has its {len(classes)} classes)"
    note = f"--weights {start.source}: {note}"
    if net.config.dropout == dropout:
        return net, note
    # dropout has no tensors: the same weights in a network built with the run's probability
    model = build_model(net.config.with_overrides(dropout=dropout), num_classes=net.num_classes)
    model.load_state_dict(net.state_dict())
    model.weights_meta = net.weights_meta
    return model, note


def last_layer(model: Any) -> str:
    """The classifier layer's paper name (``fc8``)."""
    return [name for name in model.layer_names() if name.startswith("fc")][-1]


def check_freeze(model: Any, layer: str, input_size: int | None = None) -> None:
    """:class:`TrainingError` unless ``layer`` names a layer before the classifier layer of ``model``: a built
    network, or a registered name (then built on the meta device: the check runs before the data is read, and
    changes nothing)."""
    if isinstance(model, str):
        from alexnet.models import build_model, get_config

        config = get_config(model)
        if input_size is not None:
            config = config.with_overrides(input_size=input_size)
        with torch.device("meta"):
            model = build_model(config, num_classes=2)
    _frozen_layers(model, layer)


def _frozen_layers(model: Any, layer: str) -> list[str]:
    names = model.layer_names()
    if layer not in names:
        raise TrainingError(
            f"--freeze {layer}: {model.config.name} has no such layer; its layers: {', '.join(names)}"
        )
    last = last_layer(model)
    if names.index(layer) >= names.index(last):
        below = [n for n in names[: names.index(last)] if n.startswith(("conv", "fc"))][-1]
        raise TrainingError(
            f"--freeze {layer}: that fixes every layer, so nothing would learn; --freeze {below} trains only {last}"
        )
    return names[: names.index(layer) + 1]


def freeze_(model: Any, layer: str) -> list[str]:
    """Keep every layer up to and including ``layer`` fixed (ZF §5.2: ``fc7`` trains only the classifier on top):
    their parameters stop requiring gradients, so the optimizer leaves them out and no gradient is computed for
    them. Returns the fixed layers' names that hold weights."""
    fixed = []
    for name in _frozen_layers(model, layer):
        params = list(model.layer(name).parameters())
        for p in params:
            p.requires_grad_(False)
        if params:
            fixed.append(name)
    return fixed


__all__ = [
    "Start",
    "adapt",
    "check_freeze",
    "check_input_size",
    "describe_difference",
    "freeze_",
    "last_layer",
    "load_start",
    "same_classes",
    "start_input",
    "weights_source",
]
