"""Image retrieval by the last hidden layer — AlexNet §6.1 and Fig. 4.

"If two images produce feature activation vectors with a small Euclidean separation, we can say that the higher
levels of the neural network consider them to be similar." For each query image the gallery (training) images
nearest to it in Euclidean distance between those activations (fc7's 4096 outputs after their ReLU: ``relu7``)
are returned.

The figure's gallery is ImageNet's training set: 1.28 million images, 21 GB of fp32 features, hours of
extraction on a CPU. Its features come from :func:`alexnet.analysis.features.extract_features`, in cached
shards that an interrupted extraction goes on from; the search streams the shards, keeping each query's running
nearest ``k``: its memory is one shard's whatever the gallery's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alexnet.analysis.features import Features
from alexnet.errors import SelectionError
from alexnet.inputs import prepare
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class Retrieval:
    queries: list[str]
    neighbours: np.ndarray  # Q×k gallery indices, nearest first
    distances: np.ndarray  # Q×k Euclidean distances
    gallery: list[str]


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) of the ``k`` gallery rows nearest to each query row (Euclidean), nearest first."""
    return nearest_in_blocks(queries, [gallery], k)


def nearest_in_blocks(
    queries: torch.Tensor, blocks: Iterable[torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nearest` over a gallery given block by block (its rows in order), keeping each query's running
    ``k`` nearest: one block in memory at a time. Distances in float64, ties to the earlier row."""
    if k < 1:
        raise SelectionError(f"the number of neighbours must be at least 1, got {k}")
    q = queries.double()
    best_d = torch.empty(q.shape[0], 0, dtype=torch.float64)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.int64)
    offset = 0
    for block in blocks:
        d = torch.cdist(q, block.double())
        rows = torch.arange(offset, offset + block.shape[0]).expand(q.shape[0], -1)
        # stable: among equal distances the earlier row (the running best, then this block in order) stays first
        best_d, order = torch.cat([best_d, d], 1).sort(dim=1, stable=True)
        best_i = torch.cat([best_i, rows], 1).gather(1, order)
        best_d, best_i = best_d[:, :k], best_i[:, :k]
        offset += block.shape[0]
    return best_d, best_i


def retrieve(
    model: AlexNetFamily,
    queries: Sequence[str | Path],
    gallery: Features,
    k: int = 6,
    layer: str | None = None,
) -> Retrieval:
    """The ``k`` gallery images nearest to each query in ``layer`` space (AlexNet Fig. 4). The default is §6.1's
    "feature activations induced by an image at the last, 4096-dimensional hidden layer": fc7's outputs after
    their ReLU (what Caffe's in-place ``fc7`` blob holds; :meth:`~alexnet.models.AlexNetFamily.top_hidden`)."""
    layer = layer or model.top_hidden()
    x = torch.stack([prepare(model, q).tensor for q in queries])
    q = capture(model, x, [layer])[layer].flatten(1)
    dist, idx = nearest_in_blocks(q, gallery.feature_blocks(), k)
    return Retrieval([str(p) for p in queries], idx.numpy(), dist.numpy(), gallery.paths)


def plot_retrieval(model: AlexNetFamily, result: Retrieval) -> Figure:
    """A row per query: the query, then its nearest gallery images with their distances."""
    from alexnet.visualize.plot import new_figure, uint8_to_float

    n_q, k = result.neighbours.shape
    fig = new_figure(2 * (k + 1), 2.2 * n_q)
    axes = np.atleast_2d(fig.subplots(n_q, k + 1, squeeze=False))
    for i, query in enumerate(result.queries):
        axes[i, 0].imshow(uint8_to_float(prepare(model, query).crop))
        axes[i, 0].set_title(f"query: {Path(query).name[:18]}", fontsize=8)
        for j in range(k):
            g = result.gallery[int(result.neighbours[i, j])]
            axes[i, j + 1].imshow(uint8_to_float(prepare(model, g).crop))
            axes[i, j + 1].set_title(f"{Path(g).name[:14]} d={result.distances[i, j]:.3g}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    return fig
