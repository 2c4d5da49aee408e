"""Activations by paper layer name: run the network layer by layer and keep the requested outputs.

What everything that looks inside reads the network through (visualisations, retrieval, the linear probe, the
browser): the paper's layer names are the model's vocabulary, so the walk lives with the model.

The network is walked in forward order (``model.named_layers()``: ``conv1``, ``relu1``, ``norm1``, ``pool1`` …
``fc8``) rather than hooked, so that the pass stops right after the deepest requested layer: asking for ``conv1``
of a batch costs one convolution, not a whole forward pass. Each module is still *called*, so any forward hooks
that other code registered keep firing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from alexnet.errors import LayerNotFound
from alexnet.models import fused
from alexnet.models.layers import LocalResponseNorm
from alexnet.models.net import AlexNetFamily

TRUNK_TYPES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, LocalResponseNorm, nn.LocalResponseNorm)


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (dropout off) under ``torch.inference_mode`` for the block; the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the block (only an image's are wanted: optimised images,
    integrated gradients; a frozen first conv then takes its faster image gradient); both restored after."""
    was_training = model.training
    wanted = [p.requires_grad for p in model.parameters()]
    model.eval()
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, w in zip(model.parameters(), wanted, strict=True):
            p.requires_grad_(w)
        model.train(was_training)


def trunk_layers(model: AlexNetFamily) -> list[str]:
    """Paper names of the conv-trunk layers (``conv1`` … ``pool5``), in forward order."""
    names: list[str] = []
    for name, module in model.named_layers():
        if not isinstance(module, TRUNK_TYPES):
            break
        names.append(name)
    return names


def check_layers(model: AlexNetFamily, layers: Iterable[str]) -> list[str]:
    """Validate ``layers``; :class:`LayerNotFound` (listing the valid names) for an unknown one."""
    out = list(layers)
    for name in out:
        model.layer(name)  # raises LayerNotFound with the valid names
    return out


def check_trunk_layer(model: AlexNetFamily, layer: str) -> None:
    """:class:`LayerNotFound` unless ``layer`` is a conv-trunk layer (``convN``, ``reluN``, ``normN``, ``poolN``)."""
    model.layer(layer)
    trunk = trunk_layers(model)
    if layer not in trunk:
        raise LayerNotFound(
            f"layer {layer!r} is not in the convolutional trunk of {model.config.name}; "
            f"choose one of: {', '.join(trunk)}"
        )


def walk(
    model: AlexNetFamily, images: torch.Tensor, until: str, keep: Sequence[str] = ()
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``images`` forward up to and including layer ``until``; return its output and clones of ``keep``.

    Mirrors :meth:`AlexNetFamily.forward`: the trunk, then the adaptive average pool (torchvision's layout) and
    the flatten before the first fully connected layer. Runs in whatever grad mode the caller chose.
    """
    wanted = set(keep)
    kept: dict[str, torch.Tensor] = {}
    x = images
    names, modules = zip(*model.named_layers(), strict=True)
    fast = fused.usable(x)
    i = 0
    while i < len(modules):
        # a ReLU + LRN + max-pool whose two first outputs nobody asked for: one kernel (models.fused)
        args = fused.stage_at(modules, i, x.shape) if fast else None
        if args is not None and not (wanted | {until}) & set(names[i : i + 2]):
            x, i = fused.stage(x, args), i + 3
            name = names[i - 1]
        else:
            name, module = names[i], modules[i]
            if isinstance(module, nn.Linear) and x.ndim > 2:
                x = torch.flatten(x, 1)
            x, i = module(x), i + 1
        if name in wanted:
            # Clone: a later in-place ReLU would otherwise overwrite the stored tensor. In the plain layout
            # whatever the walk ran in (channels-last on CPU): what every reader of the maps expects.
            kept[name] = x.clone(memory_format=torch.contiguous_format)
        if name == until:
            return x, kept
    raise LayerNotFound(f"no layer {until!r} in {model.config.name}")  # unreachable after check_layers


def deepest(model: AlexNetFamily, layers: Iterable[str]) -> str:
    order = {name: i for i, name in enumerate(model.layer_names())}
    return max(check_layers(model, layers), key=order.__getitem__)


def capture(
    model: AlexNetFamily, images: torch.Tensor, layers: list[str] | str, batch_size: int | None = None
) -> dict[str, torch.Tensor]:
    """Activations of ``layers`` (paper names) for a normalised batch ``images`` (N×3×H×W), on the CPU.

    Runs in eval mode under ``torch.inference_mode`` and stops after the deepest requested layer. With
    ``batch_size`` the batch is processed in chunks (bounded memory) and the results concatenated.
    """
    if isinstance(layers, str):  # one name, not its letters
        layers = [layers]
    if not layers:
        return {}
    last = deepest(model, layers)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    check = getattr(model, "check_input", None)
    if check is not None:
        check(images)
    device = next(model.parameters()).device
    step = batch_size or len(images) or 1
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    with evaluating(model):
        for start in range(0, len(images), step):
            # channels-last on CPU, as model(x) runs: oneDNN's convolutions and the fused stages, ~20 % faster
            chunk = fused.kernel_layout(model.features, images[start : start + step].to(device))
            _, kept = walk(model, chunk, last, layers)
            for name in layers:
                parts[name].append(kept[name].cpu())
    if not len(images):  # an empty batch: empty maps of each layer's shape
        with evaluating(model), torch.inference_mode():
            _, kept = walk(model, images.to(device), last, layers)
        return {name: kept[name].cpu() for name in layers}
    return {name: torch.cat(chunks) for name, chunks in parts.items()}
