"""Correspondence analysis — Zeiler & Fergus §4.2 ("Correspondence Analysis"), Fig. 8 and Table 1.

Does the network tie the same object part together across images without being told to? ZF take five frontal dog
images and mask the same part in each (the right eye, the left eye, the nose). For image *i* and layer *l* let
ε_i^l = x_i^l − x̃_i^l, the layer's features of the image minus those of the masked image, and score the part by
how consistently masking it changes the features:

    Δ_l = Σ_{i,j=1, i≠j} H(sign(ε_i^l), sign(ε_j^l))

with H the Hamming distance. A lower Δ means a tighter correspondence. Table 1 compares the three parts with
random regions at layer 5 and layer 7, as a mean ± std "feature sign change": here H is taken per feature (the
fraction of features whose signs differ, so layers of any width compare) and each part's score is the mean and
the standard deviation over the image pairs; ``random`` masks an independent random square in each image, drawn
``draws`` times.

Layers: ZF's layer 5 is ``pool5`` and layer 7 ``relu7``, the rectified features, whose differences are zero where
a unit is off in both images (the signs of a pre-ReLU difference would be dense). The mask is the mean pixel, 0
after normalisation, as the occlusion experiments of §4.2 use.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture, check_layers

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RANDOM = "random"


@dataclass
class CorrespondenceResult:
    layers: list[str]
    size: int
    boxes: dict[str, list[tuple[int, int]]]  # part → (top, left) of its square in each image's input crop
    pairs: dict[str, dict[str, np.ndarray]]  # layer → part → the sign change of every image pair (and draw)

    def scores(self) -> dict[str, dict[str, dict[str, float]]]:
        """Table 1: layer → part → mean and std of the sign change over the pairs."""
        return {
            layer: {part: {"mean": float(v.mean()), "std": float(v.std())} for part, v in by_part.items()}
            for layer, by_part in self.pairs.items()
        }

    def table(self) -> str:
        """Table 1's layout: a row per masked part, a column per layer."""
        parts = list(next(iter(self.pairs.values())))
        width = max(len(p) for p in parts)
        rows = [" " * width + "".join(f"  {layer:>15}" for layer in self.layers)]
        for part in parts:
            cells = "".join(
                f"  {self.pairs[layer][part].mean():.3f} ± {self.pairs[layer][part].std():.3f}"
                for layer in self.layers
            )
            rows.append(f"{part:<{width}}{cells}")
        return "\n".join(rows)


def sign_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """H(sign(a), sign(b)) per feature: the fraction of entries of two difference vectors whose signs differ."""
    return float((torch.sign(a) != torch.sign(b)).double().mean())


def pair_sign_changes(eps: torch.Tensor) -> np.ndarray:
    """The sign change of every pair ``i < j`` of the rows of ``eps`` (N × features). ZF's sum runs over ordered
    pairs ``i ≠ j``; H is symmetric, so each pair counts once here and the mean is the same."""
    return np.array([sign_change(eps[i], eps[j]) for i, j in itertools.combinations(range(len(eps)), 2)])


def masked(inputs: torch.Tensor, corners: list[tuple[int, int]], size: int) -> torch.Tensor:
    """Copies of the normalised inputs (N×3×S×S) with a ``size`` square at each (top, left) set to the mean
    pixel: 0 after normalisation."""
    out = inputs.clone()
    for x, (top, left) in zip(out, corners, strict=True):
        x[:, top : top + size, left : left + size] = 0.0
    return out


def correspondence(
    model: AlexNetFamily,
    inputs: torch.Tensor,
    parts: dict[str, list[tuple[int, int]]],
    *,
    size: int = 32,
    layers: tuple[str, ...] | list[str] | None = None,
    draws: int = 10,
    seed: int = 0,
) -> CorrespondenceResult:
    """ZF Table 1 for normalised ``inputs`` (N×3×S×S, N ≥ 2): ``parts`` maps a part's name to the (top, left)
    corner of its ``size`` square in each input; ``random`` is added with ``draws`` independent random squares
    per image (a seeded generator: the same numbers every run). ``layers``: ZF's layers 5 and 7 by default
    (``pool5``, ``relu7``; a network without fc7 has its top hidden layer in place of layer 7)."""
    layers = layers or (f"pool{model.config.conv_numbers()[-1]}", model.top_hidden())
    n, side = len(inputs), inputs.shape[-1]
    if n < 2:
        raise SelectionError(f"correspondence compares images in pairs: give at least two (got {n})")
    if not 1 <= size <= side:
        raise SelectionError(f"the square's side must be 1–{side} pixels (got {size})")
    if draws < 1:
        raise SelectionError(f"the random baseline needs at least one draw (got {draws})")
    if RANDOM in parts:
        raise SelectionError(f"{RANDOM!r} is the baseline's name: call the part something else")
    layers = check_layers(model, list(layers))
    for part, corners in parts.items():
        if len(corners) != n:
            raise SelectionError(f"part {part!r} has {len(corners)} positions for {n} images")
        for i, (top, left) in enumerate(corners):
            if not (0 <= top <= side - size and 0 <= left <= side - size):
                raise SelectionError(
                    f"part {part!r} in image {i + 1}: a {size}-pixel square at (top {top}, left {left}) does not "
                    f"fit in the {side}×{side} input"
                )
    g = torch.Generator().manual_seed(seed)
    draws_of = [
        [tuple(int(v) for v in torch.randint(0, side - size + 1, (2,), generator=g)) for _ in range(n)]
        for _ in range(draws)
    ]
    base = {name: t.flatten(1).double() for name, t in capture(model, inputs, layers).items()}
    pairs: dict[str, dict[str, np.ndarray]] = {layer: {} for layer in layers}
    for part, corner_sets in [*((p, [c]) for p, c in parts.items()), (RANDOM, draws_of)]:
        values: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
        for corners in corner_sets:
            feats = capture(model, masked(inputs, corners, size), layers)  # type: ignore[arg-type]
            for layer in layers:
                values[layer].append(pair_sign_changes(base[layer] - feats[layer].flatten(1).double()))
        for layer in layers:
            pairs[layer][part] = np.concatenate(values[layer])
    boxes = {**{p: list(c) for p, c in parts.items()}, RANDOM: list(draws_of[0])}
    return CorrespondenceResult(list(layers), size, boxes, pairs)  # type: ignore[arg-type]


def crop_position(
    prep_resize: int, input_size: int, height: int, width: int, x: float, y: float
) -> tuple[float, float]:
    """Where the point (x, y) of a ``height``×``width`` image lands in the input crop, as (row, column); both
    continuous, pixel column c's centre being c + ½. The image's shorter side is scaled to ``prep_resize``
    (torchvision's ``Resize``: the longer side ``int(resize · long / short)``), then evaluation's central crop
    is cut (:func:`alexnet.data.transforms.eval_crop_offsets`)."""
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import eval_crop_offsets

    short, long = min(height, width), max(height, width)
    long_r = int(prep_resize * long / short)
    h_r, w_r = (prep_resize, long_r) if height <= width else (long_r, prep_resize)
    top, left = eval_crop_offsets(Preprocessing(input_size=input_size, resize=prep_resize), h_r, w_r)
    return y * h_r / height - top, x * w_r / width - left


def plot_correspondence(
    result: CorrespondenceResult,
    crops: list[np.ndarray],
    names: list[str],
    colour: tuple[float, float, float],
) -> Figure:
    """ZF Fig. 8: each image (a row) as the network sees it, then with each part masked, then one random draw."""
    from matplotlib.patches import Rectangle

    from alexnet.visualize.plot import new_figure

    parts = list(result.boxes)
    fig = new_figure(2.2 * (1 + len(parts)), 2.2 * len(crops))
    axes = np.atleast_2d(fig.subplots(len(crops), 1 + len(parts), squeeze=False))
    for i, (crop, name) in enumerate(zip(crops, names, strict=True)):
        for j, title in enumerate(["original", *parts]):
            ax = axes[i, j]
            ax.imshow(crop)
            ax.axis("off")
            if i == 0:
                ax.set_title(title, fontsize=9)
            if j == 0:
                ax.text(0, -4, name, fontsize=7)
            else:
                top, left = result.boxes[title][i]
                ax.add_patch(Rectangle((left - 0.5, top - 0.5), result.size, result.size, color=colour))
    return fig
