"""Tensors → PNG bytes for the page, with the visualisation library's own display conventions."""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from alexnet.data.preprocess import Preprocessing

GRID_TILE = 48  # every channel is drawn at least this many pixels wide in a layer's grid
GRID_PAD = 2


def png(array: np.ndarray) -> bytes:
    """H×W or H×W×3 array (uint8, or float in 0–1) → PNG bytes."""
    from PIL import Image

    a = array if array.dtype == np.uint8 else (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1)  # speed over size: this is localhost
    return buf.getvalue()


def image_png(image: torch.Tensor) -> bytes:
    """uint8 RGB 3×H×W → PNG."""
    return png(image.permute(1, 2, 0).contiguous().numpy())


def _upscale(maps: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (…×)H×W maps: each unit stays a visible square."""
    return maps.repeat(factor, axis=-2).repeat(factor, axis=-1) if factor > 1 else maps


def grid_layout(channels: int, side: int) -> dict[str, int]:
    """Columns, rows, tile side and padding of a layer's grid, so the page can map a click to a channel."""
    cols = max(1, math.ceil(math.sqrt(channels)))
    factor = max(1, math.ceil(GRID_TILE / side))
    return {
        "channels": channels,
        "cols": cols,
        "rows": math.ceil(channels / cols),
        "tile": side * factor,
        "pad": GRID_PAD,
    }


def grid_png(acts: torch.Tensor) -> tuple[bytes, dict[str, int]]:
    """Every channel of a C×H×W activation, each scaled to its own 0–1 range, tiled; plus the layout.

    The grid is :func:`alexnet.visualize.activations.activation_grid` of the maps enlarged by nearest
    neighbour (per-channel min–max scaling is unchanged by that), so small conv5 maps stay clickable.
    """
    from alexnet.visualize.activations import activation_grid

    c, h, _ = acts.shape
    layout = grid_layout(c, h)
    factor = layout["tile"] // h
    big = acts.float().repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    return png(activation_grid(big, ncols=layout["cols"], pad=GRID_PAD)), layout


def map_png(fmap: torch.Tensor, size: int = 227, vmax: float | None = None) -> bytes:
    """One feature map enlarged to about ``size`` pixels (nearest neighbour), 0 → black, ``vmax`` → white."""
    m = fmap.float().numpy()
    peak = vmax if vmax is not None else float(m.max())
    scaled = np.clip(m / peak, 0, 1) if peak > 0 else np.zeros_like(m)
    return png(_upscale(scaled, max(1, round(size / m.shape[0]))))


def projection_png(proj: torch.Tensor, prep: Preprocessing) -> bytes:
    """A deconvnet projection (3×H×W) as ZF show it: zero is mid-grey, scaled by its largest magnitude."""
    from alexnet.visualize.plot import projection_to_image

    return png(projection_to_image(proj, prep))


def heatmap_png(values: np.ndarray, cmap: str = "jet") -> bytes:
    """A 2-D array through a matplotlib colour map, min–max scaled."""
    from matplotlib import colormaps

    from alexnet.visualize.plot import normalize01

    rgba = colormaps[cmap](normalize01(values.astype(np.float32)))
    return png(rgba[..., :3].astype(np.float32))


LABEL_COLORS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354",
)  # fmt: skip


def label_map_png(label_map: np.ndarray) -> tuple[bytes, list[tuple[int, str]]]:
    """ZF Fig. 7(e): the most probable class per position, one colour per class; plus the legend."""
    classes = sorted(int(c) for c in np.unique(label_map))
    legend = [(c, LABEL_COLORS[i % len(LABEL_COLORS)]) for i, c in enumerate(classes)]
    rgb = np.zeros((*label_map.shape, 3), dtype=np.uint8)
    for c, colour in legend:
        rgb[label_map == c] = [int(colour[k : k + 2], 16) for k in (1, 3, 5)]
    return png(rgb), legend
