"""Shared drawing helpers: tiling, display scaling, atomic PNG / NPZ / JSON writing.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot``): no global state, no GUI backend,
safe in servers and threads; ``Figure.savefig`` renders with Agg.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alexnet.data.preprocess import Preprocessing
from alexnet.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def normalize01(x: np.ndarray, axis: tuple[int, ...] | None = None) -> np.ndarray:
    """Min–max scale to 0–1 (per slice when ``axis`` names the axes to reduce); a constant slice becomes 0."""
    lo = x.min(axis=axis, keepdims=True)
    hi = x.max(axis=axis, keepdims=True)
    span = np.where(hi > lo, hi - lo, 1.0)
    return ((x - lo) / span).astype(np.float32)


def tile(images: np.ndarray, ncols: int | None = None, pad: int = 1, fill: float = 1.0) -> np.ndarray:
    """Tile N×H×W (grey) or N×H×W×3 (RGB) images into one grid, ``pad`` pixels of ``fill`` between them."""
    n, h, w = images.shape[:3]
    ncols = ncols or max(1, math.ceil(math.sqrt(n)))
    nrows = max(1, math.ceil(n / ncols))
    shape = (nrows * (h + pad) - pad, ncols * (w + pad) - pad, *images.shape[3:])
    grid = np.full(shape, fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i]
    return grid


def unnormalize(x: torch.Tensor, prep: Preprocessing) -> np.ndarray:
    """A normalised model input (3×H×W) back to an RGB H×W×3 array in 0–1 (undoes mean/std, scale, BGR)."""
    mean = torch.tensor(prep.mean, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=x.dtype).view(3, 1, 1)
    y = (x.detach().cpu() * std + mean) / prep.pixel_scale
    if prep.channel_order == "BGR":
        y = y.flip(0)
    return y.clamp(0, 1).permute(1, 2, 0).numpy()


def projection_to_image(p: torch.Tensor, prep: Preprocessing | None = None) -> np.ndarray:
    """A deconvnet projection (3×H×W, model channel order) as RGB H×W×3 in 0–1: zero is mid-grey.

    Scaled by its largest absolute value so that signs stay visible, as in ZF's figures.
    """
    q = p.detach().cpu().float()
    if prep is not None and prep.channel_order == "BGR":
        q = q.flip(0)
    peak = float(q.abs().max())
    q = q / (2 * peak) + 0.5 if peak > 0 else torch.full_like(q, 0.5)
    return q.clamp(0, 1).permute(1, 2, 0).numpy()


def _window(lo: int, hi: int, extent: int, side: int) -> tuple[int, int]:
    """``[lo, hi)`` itself when it fits in ``side``; else the ``side``-long part of it centred on its overlap with
    ``[0, extent)``."""
    if hi - lo <= side:
        return lo, hi
    start = (max(lo, 0) + min(hi, extent) - side) // 2
    start = min(max(start, lo), hi - side)
    return start, start + side


def field_crop(image: np.ndarray, box: tuple[int, int, int, int], side: int, fill: float) -> np.ndarray:
    """Crop ``image`` (H×W×3) to an *unclipped* receptive-field ``box`` (top, left, bottom, right), as a
    ``side``×``side`` tile: the parts of the field outside the image (padding) are ``fill``, so every tile of a
    layer has the same size and the image content sits where it is in the field."""
    h, w = image.shape[:2]
    top, left, bottom, right = box
    # A field wider than the tile (an input smaller than the field): the tile shows the side×side window of the
    # field over the middle of what the image holds of it.
    top, bottom = _window(top, bottom, h, side)
    left, right = _window(left, right, w, side)
    out = np.full((side, side, *image.shape[2:]), fill, dtype=np.float32)
    t, l_, b, r = max(0, top), max(0, left), min(h, bottom), min(w, right)
    if b > t and r > l_:
        part = image[t:b, l_:r][: side - (t - top), : side - (l_ - left)]
        out[t - top : t - top + part.shape[0], l_ - left : l_ - left + part.shape[1]] = part
    return out


def uint8_to_float(image: torch.Tensor) -> np.ndarray:
    """uint8 RGB 3×H×W → float H×W×3 in 0–1."""
    return image.detach().cpu().permute(1, 2, 0).float().div(255).numpy()


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Write an H×W or H×W×3 float (0–1) or uint8 array as a PNG, atomically."""
    from PIL import Image

    a = array if array.dtype == np.uint8 else (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    data = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_npz(path: str | Path, **arrays: Any) -> Path:
    """``np.savez_compressed`` to a temporary file, then rename."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    data = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
