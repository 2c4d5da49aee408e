"""Image retrieval by the last hidden layer — AlexNet §6.1 and Fig. 4.

"If two images produce feature activation vectors with a small Euclidean separation, we can say that the higher
levels of the neural network consider them to be similar." For each query image the gallery (training) images
nearest to it in Euclidean distance between those activations (fc7's 4096 outputs after their ReLU: ``relu7``)
are returned.

Gallery features are extracted in batches and cached as a safetensors file whose name is a hash of the weights,
the layer, the preprocessing and the gallery listing (paths, sizes, modification times): a second query against
the same gallery reads the cache; any change to the model or the files makes a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from alexnet.errors import DataError, ImageError
from alexnet.files import atomic_write
from alexnet.models import AlexNetFamily
from alexnet.predict import preprocessing_of
from alexnet.visualize.hooks import SelectionError, capture, check_layers
from alexnet.visualize.inputs import prepare

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def weights_digest(model: AlexNetFamily) -> str:
    """SHA-256 of the model's state dict (names, shapes, dtypes and bytes), in a fixed order."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _listing_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def cache_key(model: AlexNetFamily, paths: Sequence[Path], layer: str) -> str:
    prep = json.dumps(preprocessing_of(model).to_dict(), sort_keys=True)
    parts = [weights_digest(model), layer, prep, _listing_digest(paths)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


@dataclass
class Gallery:
    features: torch.Tensor  # N×D
    paths: list[str]
    skipped: list[str]


def gallery_features(
    model: AlexNetFamily,
    paths: Sequence[str | Path],
    layer: str = "relu7",
    *,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> Gallery:
    """``layer`` features of every readable image in ``paths`` (cached under ``cache_dir`` when given)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    check_layers(model, [layer])
    files = [Path(p) for p in paths]
    if not files:
        raise DataError("the gallery is empty")
    cache = Path(cache_dir) / f"{layer}-{cache_key(model, files, layer)}.safetensors" if cache_dir else None
    if cache is not None and cache.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(cache), framework="pt") as f:
                meta = f.metadata()
            tensors = load_file(str(cache))
            return Gallery(tensors["features"], json.loads(meta["paths"]), json.loads(meta["skipped"]))
        except (SafetensorError, OSError, KeyError, ValueError):
            pass  # unreadable cache: recompute and overwrite
    feats: list[torch.Tensor] = []
    kept: list[str] = []
    skipped: list[str] = []
    for start in tqdm(range(0, len(files), batch_size), desc=f"{layer} features", disable=not progress):
        batch, names = [], []
        for p in files[start : start + batch_size]:
            try:
                batch.append(prepare(model, p).tensor)
                names.append(str(p))
            except ImageError:
                skipped.append(str(p))
        if batch:
            feats.append(capture(model, torch.stack(batch), [layer])[layer].flatten(1))
            kept.extend(names)
    if not feats:
        raise DataError("no readable image in the gallery")
    gallery = Gallery(torch.cat(feats), kept, skipped)
    if cache is not None:
        meta = {"paths": json.dumps(kept), "skipped": json.dumps(skipped), "layer": layer}
        atomic_write(
            cache, lambda tmp: save_file({"features": gallery.features.contiguous()}, tmp, metadata=meta)
        )
    return gallery


@dataclass
class Retrieval:
    queries: list[str]
    neighbours: np.ndarray  # Q×k gallery indices, nearest first
    distances: np.ndarray  # Q×k Euclidean distances
    gallery: list[str]


def nearest(queries: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distances, indices) of the ``k`` gallery rows nearest to each query row (Euclidean), nearest first."""
    if k < 1:
        raise SelectionError(f"the number of neighbours must be at least 1, got {k}")
    d = torch.cdist(queries.double(), gallery.double())
    dist, idx = d.topk(min(k, gallery.shape[0]), dim=1, largest=False, sorted=True)
    return dist, idx


def retrieve(
    model: AlexNetFamily,
    queries: Sequence[str | Path],
    gallery: Gallery,
    k: int = 6,
    layer: str = "relu7",
) -> Retrieval:
    """The ``k`` gallery images nearest to each query in ``layer`` space (AlexNet Fig. 4). The default is §6.1's
    "feature activations induced by an image at the last, 4096-dimensional hidden layer": fc7's outputs after
    their ReLU (what Caffe's in-place ``fc7`` blob holds)."""
    x = torch.stack([prepare(model, q).tensor for q in queries])
    q = capture(model, x, [layer])[layer].flatten(1)
    dist, idx = nearest(q, gallery.features, k)
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
