"""Activation maps: every channel of a layer tiled in a grid, each channel scaled to its own range.

This is the picture of the "Activation maps in AlexNet / ZFNet" slides: for one image, the 96 maps of conv1, the
256 of conv2 … each drawn as a small grey image, bright where the channel responds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alexnet.errors import LayerNotFound, SelectionError
from alexnet.inputs import prepare
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture, check_layers
from alexnet.visualize.plot import new_figure, normalize01, tile, uint8_to_float

if TYPE_CHECKING:
    from matplotlib.figure import Figure


STAGES = ("conv", "relu", "norm", "pool")


def top_channels(acts: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` channels of ``acts`` (C×H×W) with the largest mean activation, strongest first."""
    if k < 1:
        raise SelectionError(f"top must be at least 1, got {k}")
    if acts.dim() != 3:  # a batch would rank its images, not its channels
        raise SelectionError(f"top_channels takes one image's maps (C×H×W), got shape {tuple(acts.shape)}")
    strength = acts.detach().float().flatten(1).mean(dim=1)
    return strength.topk(min(k, acts.shape[0])).indices


def activation_grid(
    acts: torch.Tensor, top: int | None = None, ncols: int | None = None, pad: int = 1
) -> np.ndarray:
    """Tile the channels of ``acts`` (C×H×W) into one grey image (H'×W', 0–1), each channel min–max scaled.

    With ``top`` only the ``top`` most active channels (by mean activation), strongest first; otherwise all
    channels in index order. A constant channel (e.g. a dead ReLU) is drawn black.
    """
    if acts.ndim != 3:
        raise SelectionError(f"expected one image's activations C×H×W, got shape {tuple(acts.shape)}")
    order = top_channels(acts, top) if top is not None else torch.arange(acts.shape[0])
    maps = acts.detach().float().cpu()[order].numpy()
    return tile(normalize01(maps, axis=(1, 2)), ncols=ncols, pad=pad)


def conv_stage_layers(model: AlexNetFamily, stage: str = "relu") -> list[str]:
    """``conv1`` … ``convN`` (``stage="conv"``) or their ReLU / norm / pool outputs, one per conv stage
    (a stage without that layer, e.g. ``pool3``, contributes its ReLU output).

    :class:`LayerNotFound` when the model has no layer of that kind at all (``norm`` for ``alexnet_owt``, which
    has no LRN): a figure of ReLU maps under that name would be a silent substitute."""
    if stage not in STAGES:
        raise SelectionError(f"unknown stage {stage!r}; choose conv, relu, norm or pool")
    names = set(model.layer_names())
    numbers = model.config.conv_numbers()
    present = [s for s in STAGES if any(f"{s}{i}" in names for i in numbers)]
    if stage not in present:
        raise LayerNotFound(f"{model.config.name} has no {stage} layers; choose one of: {', '.join(present)}")
    out = []
    for i in numbers:
        want = f"{stage}{i}"
        out.append(want if want in names else f"relu{i}")
    return out


def plot_activations(
    model: AlexNetFamily, image: torch.Tensor | str | Path, layer: str, top: int | None = None
) -> Figure:
    """The input crop beside the grid of ``layer``'s channels (or its ``top`` most active) for one image."""
    check_layers(model, [layer])
    prepared = prepare(model, image)
    acts = capture(model, prepared.tensor.unsqueeze(0), [layer])[layer][0]
    if acts.ndim != 3:
        raise SelectionError(
            f"{layer} has no spatial maps (shape {tuple(acts.shape)}); choose a conv-trunk layer"
        )
    grid = activation_grid(acts, top)
    fig = new_figure(12, 6)
    left, right = fig.subplots(1, 2, width_ratios=[1, 2])
    left.imshow(uint8_to_float(prepared.crop))
    left.set_title(Path(prepared.name).name or "input")
    right.imshow(grid, cmap="gray", vmin=0, vmax=1)
    what = f"top {min(top, acts.shape[0])} of {acts.shape[0]}" if top else f"all {acts.shape[0]}"
    right.set_title(f"{model.config.name} {layer}: {what} channels, {acts.shape[1]}×{acts.shape[2]} each")
    for ax in (left, right):
        ax.axis("off")
    return fig


def plot_all_conv_layers(
    model: AlexNetFamily, image: torch.Tensor | str | Path, top: int | None = None, stage: str = "relu"
) -> Figure:
    """One figure: the input and the activation grids of all five conv stages (``stage``: conv/relu/norm/pool)."""
    layers = conv_stage_layers(model, stage)
    prepared = prepare(model, image)
    acts = capture(model, prepared.tensor.unsqueeze(0), layers)
    fig = new_figure(18, 10)
    axes = fig.subplots(2, math.ceil((len(layers) + 1) / 2)).ravel()
    axes[0].imshow(uint8_to_float(prepared.crop))
    axes[0].set_title(Path(prepared.name).name or "input")
    for ax, layer in zip(axes[1:], layers, strict=False):
        a = acts[layer][0]
        ax.imshow(activation_grid(a, top), cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"{layer}: {min(top or a.shape[0], a.shape[0])}/{a.shape[0]} maps {a.shape[1]}×{a.shape[2]}"
        )
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{model.config.name} activation maps")
    return fig
