"""Occlusion sensitivity, Zeiler & Fergus §4.2 and Fig. 7.

A grey square is slid over the image (Fig. 7's column (a)); for each position the occluded image goes through the
network and three maps are recorded, lettered as Fig. 7's columns: (b) the total activation of one layer-5
feature map — the strongest one on the *unoccluded* image, (d) the probability of the correct class (here the
``target``, by default the top prediction, since an image's true class is not always known), (e) the most
probable class. Fig. 7's column (c), that feature map projected down to the pixels, is the deconvnet's
(:func:`followed_map_projection`; the figures of ``alexnet visualize occlusion``, the report and the explorer
show it). The grey is the data set's mean pixel, i.e. **0 after normalisation** (the inputs are mean-subtracted,
so a zero patch carries no signal).

Positions: the square's top-left corner runs over ``0, stride, 2·stride … ≤ S − size`` in both directions, so the
map has ``(S − size) // stride + 1`` rows and columns, and map cell ``(i, j)`` covers pixels
``[i·stride, i·stride + size)``. Occluded copies are built and run in batches; each batch makes one pass through
the network, keeping the layer-5 map on the way to the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import check_trunk_layer, evaluating, walk
from alexnet.predict import labels_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class OcclusionResult:
    """The three maps of ZF Fig. 7 (rows × cols of square positions) and what they refer to."""

    activation: np.ndarray  # (b) total activation of feature map `channel` of `layer`
    probability: np.ndarray  # (d) probability of class `target`
    label_map: np.ndarray  # (e) most probable class index per position
    labels: dict[int, str]  # legend: every class that appears in label_map (and the target)
    target: int
    channel: int
    layer: str
    size: int
    stride: int
    base_activation: float  # unoccluded image
    base_probability: float
    image_size: int
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0))  # top-left pixel of each row / col

    def arrays(self) -> dict[str, np.ndarray]:
        """The numbers behind the figure, for ``np.savez``."""
        return {
            "activation": self.activation,
            "probability": self.probability,
            "label_map": self.label_map,
            "positions": self.positions,
            "target": np.array(self.target),
            "channel": np.array(self.channel),
            "size": np.array(self.size),
            "stride": np.array(self.stride),
            "base_activation": np.array(self.base_activation),
            "base_probability": np.array(self.base_probability),
        }


def default_layer(model: AlexNetFamily) -> str:
    """The last conv stage's rectified output (``relu5``): "layer 5" in ZF's figures."""
    return f"relu{model.config.conv_numbers()[-1]}"


def occlusion(
    model: AlexNetFamily,
    image: torch.Tensor,
    *,
    target: int | None = None,
    size: int = 32,
    stride: int = 8,
    batch_size: int = 64,
    layer: str | None = None,
    channel: int | None = None,
    progress: bool = False,
) -> OcclusionResult:
    """ZF Fig. 7 maps for one normalised image (3×S×S). ``target``: the correct class (default: the top
    predicted class of the unoccluded image). ``channel``: the feature map of ``layer`` to follow (default: the
    strongest on the unoccluded image)."""
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise SelectionError(f"occlusion takes one image 3×H×W, got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise SelectionError(
            f"occluder size {size} must be between 1 and the image side {min(height, width)}"
        )
    if stride < 1 or batch_size < 1:
        raise SelectionError("stride and batch size must be at least 1")
    if model.num_classes == 0:  # ZF Fig. 7's (d) and (e) need class probabilities
        raise SelectionError(
            f"{model.config.name} has no classifier layer (num_classes=0): occlusion maps class probabilities"
        )
    model.check_input(image, classify=True)  # channels, dtype, a size the classifier reads: before the sweep
    layer = layer or default_layer(model)
    check_trunk_layer(model, layer)
    last = model.layer_names()[-1]
    n_classes = model.num_classes
    if target is not None and not 0 <= target < n_classes:
        raise SelectionError(f"target class {target} is out of range (0–{n_classes - 1})")

    device = next(model.parameters()).device
    image = image.to(device)
    ys = np.arange(0, height - size + 1, stride)
    xs = np.arange(0, width - size + 1, stride)
    coords = [(int(y), int(x)) for y in ys for x in xs]
    with evaluating(model):
        logits, kept = walk(model, image.unsqueeze(0), last, [layer])
        probs = logits.softmax(1)[0]
        fmap = kept[layer][0]
        if channel is None:
            channel = int(fmap.flatten(1).sum(1).argmax())
        elif not 0 <= channel < fmap.shape[0]:
            raise SelectionError(f"channel {channel} is out of range for {layer} (0–{fmap.shape[0] - 1})")
        if target is None:
            target = int(probs.argmax())
        base_act = float(fmap[channel].sum())
        base_prob = float(probs[target])
        act, prob, lab = [], [], []
        for start in tqdm(range(0, len(coords), batch_size), desc="occlusion", disable=not progress):
            chunk = coords[start : start + batch_size]
            batch = image.unsqueeze(0).repeat(len(chunk), 1, 1, 1)
            for i, (y, x) in enumerate(chunk):
                batch[i, :, y : y + size, x : x + size] = 0.0  # the mean pixel after normalisation
            # channels-last input: oneDNN's NHWC kernels (measured 1.3–1.6× faster here, docs/performance.md)
            batch = batch.contiguous(memory_format=torch.channels_last)
            logits, kept = walk(model, batch, last, [layer])
            p = logits.softmax(1)
            act.append(kept[layer][:, channel].flatten(1).sum(1).cpu())
            prob.append(p[:, target].cpu())
            lab.append(p.argmax(1).cpu())
    shape = (len(ys), len(xs))
    label_map = torch.cat(lab).view(shape).numpy()
    names = labels_of(model)
    present = sorted({*np.unique(label_map).tolist(), target})
    return OcclusionResult(
        activation=torch.cat(act).view(shape).numpy(),
        probability=torch.cat(prob).view(shape).numpy(),
        label_map=label_map,
        labels={int(c): names[int(c)] for c in present},
        target=target,
        channel=channel,
        layer=layer,
        size=size,
        stride=stride,
        base_activation=base_act,
        base_probability=base_prob,
        image_size=int(height),
        positions=ys,
    )


def followed_map_projection(
    model: AlexNetFamily, image: torch.Tensor, result: OcclusionResult
) -> torch.Tensor:
    """ZF Fig. 7 (c): the feature map that column (b) follows, projected to the pixels of the unoccluded
    ``image`` by the deconvnet (§2.1); 3×H×W in the input's units (for display:
    :func:`alexnet.visualize.plot.projection_to_image`)."""
    from alexnet.visualize.deconvnet import deconvnet

    return deconvnet(model, image, result.layer, result.channel)[0]


def plot_occlusion(
    result: OcclusionResult, display: np.ndarray, title: str = "", projection: np.ndarray | None = None
) -> Figure:
    """The panels of ZF Fig. 7, lettered as its columns: (a) the image with the square's size, (b) activation,
    (c) with ``projection``: the followed feature map projected to the pixels by the deconvnet, (d) probability,
    (e) labels.

    ``display``: the un-normalised crop, H×W×3 in 0–1; ``projection`` likewise (e.g.
    :func:`alexnet.visualize.plot.projection_to_image` of :func:`alexnet.visualize.deconvnet.deconvnet`). Map
    cells are drawn at the square's centre.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    from alexnet.visualize.plot import new_figure

    r = result
    half = r.size / 2
    last = float(r.positions[-1]) if len(r.positions) else 0.0
    lo, hi = half - r.stride / 2, last + half + r.stride / 2  # cell (i, j) centred on its square
    ext = (lo, hi, hi, lo)
    panels = 4 if projection is None else 5
    fig = new_figure(5 * panels, 5.5)
    axes = list(fig.subplots(1, panels))
    if projection is not None:
        axc = axes.pop(2)
        axc.imshow(projection)
        axc.set_title(f"(c) {r.layer} map {r.channel} projected\nto the pixels (deconvnet, §2.1)")
        axc.set_xticks([])
        axc.set_yticks([])
    ax0, ax1, ax2, ax3 = axes
    ax0.imshow(display)
    ax0.add_patch(Rectangle((0, 0), r.size, r.size, color=(0.5, 0.5, 0.5)))
    ax0.set_title(f"(a) {title or 'input'} (grey square to scale)")
    im = ax1.imshow(r.activation, extent=ext, cmap="jet")
    ax1.set_title(f"(b) total activation, {r.layer} map {r.channel}\n(unoccluded {r.base_activation:.3g})")
    fig.colorbar(im, ax=ax1, shrink=0.8)
    im = ax2.imshow(r.probability, extent=ext, cmap="jet", vmin=0, vmax=max(1e-6, float(r.probability.max())))
    name = r.labels.get(r.target, str(r.target))
    ax2.set_title(f"(d) p({name})\n(unoccluded {r.base_probability:.3f})")
    fig.colorbar(im, ax=ax2, shrink=0.8)
    classes = sorted(r.labels)
    index = {c: i for i, c in enumerate(classes)}
    dense = np.vectorize(index.__getitem__)(r.label_map) if r.label_map.size else r.label_map
    base = [
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
        "#393b79",
        "#637939",
        "#8c6d31",
        "#843c39",
        "#7b4173",
        "#3182bd",
        "#e6550d",
        "#31a354",
    ]
    colors = [base[i % len(base)] for i in range(len(classes))]
    ax3.imshow(
        dense,
        extent=ext,
        cmap=ListedColormap(colors),
        vmin=-0.5,
        vmax=len(classes) - 0.5,
        interpolation="nearest",
    )
    ax3.set_title("(e) most probable class")
    shown = classes[:12]
    ax3.legend(
        handles=[Patch(color=colors[index[c]], label=f"{r.labels[c][:28]}") for c in shown],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
    )
    for ax in (ax0, ax1, ax2, ax3):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
