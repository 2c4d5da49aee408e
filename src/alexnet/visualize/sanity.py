"""Sanity checks for saliency maps: do the maps change when the network's weights are randomised?

Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency Maps" (NeurIPS 2018): their *model
parameter randomisation test*: a map that explains what the network learned must change when the learned weights
are replaced by random ones. *Cascading* randomisation re-initialises the layers one after another from the top
(fc8, then fc7 as well, …, down to conv1) and compares each map with the trained network's; *independent*
randomisation re-initialises one layer at a time, the others as trained. Their *data randomisation test*
compares the maps with those of the same network trained on random labels (``alexnet train --random-labels 1``,
Zhang et al. 2017). The paper measures the similarity by
Spearman rank correlation of the maps' absolute values and without them, and by SSIM (Fig. 2 shows the cascading maps), and finds
guided backpropagation and Guided Grad-CAM nearly unchanged while the top layers are random, the gradient,
integrated gradients and Grad-CAM changed at once.

The maps compared are each method's here, for the trained network's class (its top class, or ``target``): the
class score's gradient (:func:`~alexnet.visualize.deconvnet.class_projection`), its SmoothGrad, guided
backpropagation, ZF's deconvnet rules through the classifier, Grad-CAM at the last conv stage's ReLU (upsampled),
Guided Grad-CAM and integrated gradients, and on request layer-wise relevance propagation (:mod:`.lrp`: ``lrp``,
``lrp-epsilon``, ``lrp-alpha1beta0``; 3×H×W maps summed over the colours, signed and of absolute values; Grad-CAM's map as it is; all from
:mod:`.attributions`). A layer is re-initialised as the model initialises it (:meth:`AlexNetFamily.reset_layer`,
the paper's N(0, σ) for the papers' models), on a CPU copy from ``seed``, so the random weights are the same on
every device.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import evaluating
from alexnet.visualize import attributions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Adebayo et al.'s methods, the test's default; LRP (Bach et al. 2015) on request
METHODS: tuple[str, ...] = tuple(m for m in attributions.METHODS if not m.startswith("lrp"))


@dataclass
class Sanity:
    """The randomisation test of one batch, on the CPU. ``steps``: ``"original"`` then each randomised layer in
    order (cascading: that layer and all above it random; independent: that layer alone), or the other network's
    name (the data randomisation test); ``maps`` N × methods ×
    steps × H × W (absolute values summed over the colours); ``spearman_abs``, ``spearman`` (signed maps) and
    ``ssim`` N × methods × steps, each step's map against the original's (NaN where a map is constant)."""

    methods: list[str]
    steps: list[str]
    maps: torch.Tensor
    spearman_abs: torch.Tensor
    spearman: torch.Tensor
    ssim: torch.Tensor
    targets: torch.Tensor
    test: str  # "cascading", "independent" or "data" (the data randomisation test: another network's maps)
    seed: int


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, each once and in the order given (any of :data:`alexnet.visualize.attributions.METHODS`,
    LRP included); :class:`SelectionError` for an unknown one or none."""
    return attributions.check_methods(methods)


def check_layers(model: AlexNetFamily, layers: Sequence[str] | None) -> list[str]:
    """The layers to randomise, in order (``None``: every conv and fc layer from the top down);
    :class:`SelectionError` for a layer without weights, or none."""
    learnable = model.learnable_layers()
    order = list(layers) if layers is not None else learnable[::-1]
    bad = [name for name in order if name not in learnable]
    if bad:
        raise SelectionError(f"{bad[0]!r} has no weights to randomise; choose from {', '.join(learnable)}")
    if not order:
        raise SelectionError("no layer to randomise")
    return order


def _rank(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1…n along the last dimension, ties given their mean rank (as Spearman's coefficient takes them)."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(values.double().numpy(), axis=-1))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation of ``a`` and ``b`` (… × n each) along the last dimension; NaN where either is
    constant."""
    ra, rb = _rank(a), _rank(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    norm = ra.norm(dim=-1) * rb.norm(dim=-1)
    return torch.where(norm > 0, (ra * rb).sum(-1) / norm.clamp_min(1e-300), torch.nan)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps (H×W), each first scaled to 0–1 by its own largest value; NaN where either is 0."""
    from skimage.metrics import structural_similarity

    if not a.max() > 0 or not b.max() > 0:
        return float("nan")
    return float(structural_similarity(a / a.max(), b / b.max(), data_range=1.0))


def randomization_test(
    model: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    methods: Sequence[str] = METHODS,
    *,
    cascading: bool = True,
    layers: Sequence[str] | None = None,
    seed: int = 0,
    samples: int = 50,
    steps: int = 50,
    progress: bool = False,
) -> Sanity:
    """Adebayo et al.'s model parameter randomisation test (module docstring) of a normalised batch N×3×H×W (or
    one 3×H×W image) for class ``target`` (default each image's top class before any randomisation). ``layers``:
    the layers to randomise, in order (default every conv and fully connected layer from the top down);
    ``samples`` SmoothGrad's noisy copies, ``steps`` integrated gradients' points. The model itself is left as it
    is: the randomised layers belong to a copy."""
    from tqdm import tqdm

    from alexnet.visualize.deconvnet import class_targets

    methods = check_methods(methods)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    order = check_layers(model, layers)
    device = next(model.parameters()).device
    x = images.to(device)
    with evaluating(model), torch.no_grad():
        targets = class_targets(target, model(x))
    signed = [attributions.class_maps(model, x, targets, methods, samples, steps)]
    randomised = copy.deepcopy(model)
    for i, name in enumerate(tqdm(order, desc="randomised layers", disable=not progress)):
        if not cascading:
            randomised = copy.deepcopy(model)
        layer = randomised.layer(name)
        fresh = copy.deepcopy(layer).cpu()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            randomised.reset_layer(name, fresh)
        layer.load_state_dict(fresh.state_dict())
        signed.append(attributions.class_maps(randomised, x, targets, methods, samples, steps))
    test = "cascading" if cascading else "independent"
    return _compared(signed, methods, ["original", *order], targets, test, seed)


def _compared(
    signed: list[torch.Tensor],
    methods: list[str],
    steps: list[str],
    targets: torch.Tensor,
    test: str,
    seed: int,
) -> Sanity:
    """Each step's maps (N × methods × 3 × H × W, the original's first) against the original's."""
    stacked = torch.stack(signed, 2)  # N × methods × steps × 3 × H × W
    maps = stacked.abs().sum(3)
    flat_abs, flat = maps.flatten(3), stacked.sum(3).flatten(3)
    rho_abs = spearman(flat_abs[:, :, :1].expand_as(flat_abs), flat_abs)
    rho = spearman(flat[:, :, :1].expand_as(flat), flat)
    first = maps[:, :, 0].numpy()
    similarity = torch.tensor(
        [
            [
                [ssim(first[n, m], maps[n, m, s].numpy()) for s in range(maps.shape[2])]
                for m in range(len(methods))
            ]
            for n in range(len(maps))
        ],
        dtype=torch.float64,
    )
    return Sanity(methods, steps, maps, rho_abs, rho, similarity, targets.cpu(), test, seed)


def check_same_network(model: AlexNetFamily, other: AlexNetFamily, name: str = "other") -> None:
    """:class:`SelectionError` unless ``other`` has ``model``'s architecture, classes and input size."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in other.state_dict().items()}
    if shapes != theirs or other.default_input_size != model.default_input_size:
        raise SelectionError(
            f"{name} is not the same network as the model ({other.config.name}, {other.num_classes} classes, "
            f"against {model.config.name}, {model.num_classes} classes): the test compares two trainings of one "
            "architecture"
        )


def data_randomization_test(
    model: AlexNetFamily,
    other: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    methods: Sequence[str] = METHODS,
    *,
    name: str = "other",
    samples: int = 50,
    steps: int = 50,
) -> Sanity:
    """Adebayo et al.'s data randomisation test: each method's maps of ``model`` against those of
    ``other``, the same architecture trained on the same images with random labels (``alexnet train
    --random-labels 1``, Zhang et al. 2017), for ``model``'s class (its top class, or ``target``). A map that
    depends on what the labels taught differs. ``name`` labels the second step; ``other`` runs on ``model``'s
    device (a copy where it is elsewhere)."""
    from alexnet.visualize.deconvnet import class_targets

    methods = check_methods(methods)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    check_same_network(model, other, name)
    device = next(model.parameters()).device
    if next(other.parameters()).device != device:
        other = copy.deepcopy(other).to(device)
    x = images.to(device)
    with evaluating(model), torch.no_grad():
        targets = class_targets(target, model(x))
    signed = [attributions.class_maps(m, x, targets, methods, samples, steps) for m in (model, other)]
    return _compared(signed, methods, ["original", name], targets, "data", 0)


def plot_sanity(result: Sanity, index: int, image: np.ndarray, title: str) -> Figure:
    """Fig. 2's grid for image ``index``: its crop, then one row per method, one column per step (the original
    first), each map drawn by :func:`~alexnet.visualize.smoothgrad.magnitude` (grey, capped at the 99th
    percentile) and titled with its Spearman rank correlation (absolute values) to the original."""
    from alexnet.visualize.plot import new_figure
    from alexnet.visualize.smoothgrad import magnitude

    rows, cols = len(result.methods), len(result.steps)
    fig = new_figure(1.6 * (cols + 1), 1.75 * rows + 0.6)
    axes = np.asarray(fig.subplots(rows, cols + 1, squeeze=False))
    for r, method in enumerate(result.methods):
        ax = axes[r, 0]
        ax.imshow(image)
        ax.set_ylabel(method, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        for c, step in enumerate(result.steps):
            ax = axes[r, c + 1]
            ax.imshow(magnitude(result.maps[index, r, c].numpy()[None]), cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
            rho = float(result.spearman_abs[index, r, c])
            prefix = {"cascading": "→ ", "independent": "only "}.get(result.test, "")
            label = step if c == 0 else prefix + step
            ax.set_title(f"{label}\nρ {rho:.2f}" if c else label, fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig
