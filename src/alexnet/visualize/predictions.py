"""Images and the labels the model considers most probable — AlexNet §6.1 and Fig. 4 (left).

"Eight ILSVRC-2010 test images and the five labels considered most probable by our model. The correct label is
written under each image, and the probability assigned to the correct label is also shown with a red bar (if it
happens to be in the top 5)." The correct class is the one given, or else the image's folder when it is named
after one of the model's classes (an ImageNet-layout split: ``val/<class>/<image>``); without either, the image
has no correct label and no red bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.predict import Prediction, labels_of, predict

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Ranked:
    """One image's top-k and its correct class (``None``: not known)."""

    name: str
    top: list[Prediction]
    target: int | None
    target_label: str | None
    target_probability: float | None  # over all classes, not only the top-k
    target_rank: int | None  # 1 = the most probable

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.name,
            "top": [{"index": p.index, "label": p.label, "probability": p.probability} for p in self.top],
            "target": self.target,
            "target_label": self.target_label,
            "target_probability": self.target_probability,
            "target_rank": self.target_rank,
        }


def folder_target(model: AlexNetFamily, path: str | Path) -> int | None:
    """The class an image's folder names, when it is one of the model's class names."""
    labels = labels_of(model)
    name = Path(path).parent.name
    return labels.index(name) if name in labels else None


@torch.inference_mode()
def ranked(
    model: AlexNetFamily,
    inputs: torch.Tensor,
    names: Sequence[str],
    targets: Sequence[int | None],
    topk: int = 5,
) -> list[Ranked]:
    """Top-``topk`` of each normalised input (N×3×S×S), with the correct class's probability and rank."""
    if topk < 1:
        raise SelectionError(f"topk must be at least 1 (got {topk})")
    labels = labels_of(model)
    for t in targets:
        if t is not None and not 0 <= t < len(labels):
            raise SelectionError(f"class {t} is out of range for {model.config.name} (0–{len(labels) - 1})")
    out = []
    # every class ranked, in one pass: the top-k, and the correct class's probability and rank wherever it is
    for name, everything, t in zip(names, predict(model, inputs, len(labels)), targets, strict=True):
        rank = next(i for i, p in enumerate(everything) if p.index == t) + 1 if t is not None else None
        out.append(
            Ranked(
                name,
                everything[:topk],
                t,
                labels[t] if t is not None else None,
                everything[rank - 1].probability if rank is not None else None,
                rank,
            )
        )
    return out


def predictions_figure(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    targets: Sequence[int | None] | None = None,
    topk: int = 5,
) -> tuple[list[Ranked], Figure]:
    """The image files ranked (:func:`ranked`; the correct classes ``targets``, else :func:`folder_target`) and
    drawn as AlexNet Fig. 4 (left), each as the network sees it."""
    from alexnet.inputs import prepare
    from alexnet.visualize.plot import uint8_to_float

    prepared = [prepare(model, p) for p in images]
    wanted = list(targets) if targets is not None else [folder_target(model, p) for p in images]
    results = ranked(model, torch.stack([p.tensor for p in prepared]), [str(p) for p in images], wanted, topk)
    return results, plot_predictions(results, [uint8_to_float(p.crop) for p in prepared])


def plot_predictions(results: list[Ranked], crops: list[np.ndarray], columns: int = 4) -> Figure:
    """AlexNet Fig. 4 (left): each image, its correct label under it, and its top-k as bars; the correct
    label's bar red."""
    from alexnet.visualize.plot import new_figure

    rows = -(-len(results) // columns)
    cols = min(columns, len(results))
    fig = new_figure(2.6 * cols, 3.6 * rows)
    grid = fig.add_gridspec(2 * rows, cols, height_ratios=[2.2, 1.4] * rows)
    for i, (r, crop) in enumerate(zip(results, crops, strict=True)):
        row, col = divmod(i, columns)
        ax = fig.add_subplot(grid[2 * row, col])
        ax.imshow(crop)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(r.target_label if r.target_label is not None else Path(r.name).name, fontsize=8)
        bars = fig.add_subplot(grid[2 * row + 1, col])
        k = len(r.top)
        colours = ["tab:red" if p.index == r.target else "tab:blue" for p in r.top]
        bars.barh(range(k), [p.probability for p in r.top], color=colours)
        bars.set_yticks(range(k), [p.label[:22] for p in r.top], fontsize=7)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=6)
    return fig
