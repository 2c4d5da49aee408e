"""First- and second-layer filters, and the statistics behind ZF's Fig. 6 argument.

* :func:`conv1_blocks` / :func:`plot_conv1_filters` — AlexNet Fig. 3: the 96 conv1 kernels as RGB patches. In the
  two-GPU models conv1 itself is dense, but the paper's towers are its two halves (kernels 0–47 on GPU 1, 48–95 on
  GPU 2, which conv2's grouping keeps apart), so they are drawn as two blocks.
* :func:`colour_fraction` — per conv1 kernel, the share of its energy in colour rather than grey: AlexNet §6.1
  reads Fig. 3 as "the kernels on GPU 1 are largely color-agnostic, while the kernels on GPU 2 are largely
  color-specific", a specialisation that "occurs during every run"; the towers' means put a number on it.
* :func:`conv2_grid` — conv2 kernels one input channel at a time (grey), a row per output filter.
* :func:`filter_statistics` — per filter: L2 norm, "dead" (norm far below the layer's median, or never active on
  a data sample) and the fraction of spectral energy above a cutoff frequency. ZF §4.1 and Fig. 6: AlexNet's
  11×11 stride-4 conv1 filters "are a mix of extremely high and low frequency information, with little coverage
  of the mid frequencies", some dead, and its 2nd-layer maps show aliasing from conv1's large stride (a stride-4
  output grid can only represent frequencies up to 1/8 cycle per input pixel); the 7×7 stride-2 conv1 fixes both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture
from alexnet.predict import preprocessing_of
from alexnet.visualize.plot import new_figure, normalize01, tile

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _conv(model: AlexNetFamily, layer: str) -> nn.Conv2d:
    module = model.layer(layer)
    if not isinstance(module, nn.Conv2d):
        raise SelectionError(
            f"{layer} is not a convolution; choose conv1 … conv{model.config.conv_numbers()[-1]}"
        )
    return module


def two_towers(model: AlexNetFamily) -> bool:
    """True for the paper's two-GPU models: conv2 is grouped, so conv1's two halves feed separate towers."""
    return len(model.config.convs) > 1 and model.config.convs[1].groups > 1


def _conv1_weight(model: AlexNetFamily) -> torch.Tensor:
    """conv1's weights (on the CPU), :class:`SelectionError` unless it reads three colour channels."""
    w = _conv(model, "conv1").weight.detach().cpu()
    if w.shape[1] != 3:
        raise SelectionError(f"conv1 has {w.shape[1]} input channels, not RGB")
    return w


def rgb_filters(model: AlexNetFamily) -> np.ndarray:
    """conv1 kernels as RGB images (N×k×k×3, 0–1), each scaled to its own range; BGR weights are flipped."""
    w = _conv1_weight(model).float()
    if preprocessing_of(model).channel_order == "BGR":
        w = w.flip(1)
    return normalize01(w.permute(0, 2, 3, 1).numpy(), axis=(1, 2, 3))


def conv1_blocks(model: AlexNetFamily, ncols: int | None = None) -> list[np.ndarray]:
    """One RGB grid per tower (two blocks for the two-GPU models, else one)."""
    filters = rgb_filters(model)
    parts = np.array_split(filters, 2) if two_towers(model) else [filters]
    cols = ncols or (8 if two_towers(model) else 12)
    return [tile(p, ncols=cols, pad=1) for p in parts]


def colour_fraction(model: AlexNetFamily) -> np.ndarray:
    """Per conv1 kernel, the fraction of its energy that is colour: ‖w − w̄‖² / ‖w‖², where w̄ repeats the
    kernel's mean over its three input channels at each position (its grey part, which sees only brightness).
    The two parts are orthogonal, so the fraction runs from 0 (the same pattern in R, G and B: colour-agnostic)
    to 1 (channels that cancel, e.g. red minus green); independent random weights give 2/3 on average, so a
    tower well below that sees brightness. Measured on the kernel as it acts on pixels: each input
    channel's weights divided by that channel's normalisation std, so that torchvision's per-channel std does
    not count as colour (the channel order does not matter)."""
    std = torch.tensor(preprocessing_of(model).std, dtype=torch.float64).view(1, 3, 1, 1)
    w = _conv1_weight(model).double() / std
    grey = w.mean(dim=1, keepdim=True)
    total = w.pow(2).flatten(1).sum(1)
    colour = (w - grey).pow(2).flatten(1).sum(1)
    return torch.where(total > 0, colour / total.clamp_min(1e-300), torch.zeros_like(total)).float().numpy()


def tower_colour(model: AlexNetFamily, fractions: np.ndarray | None = None) -> list[float]:
    """The mean :func:`colour_fraction` (or of the given ``fractions``) of each tower's conv1 kernels; one value
    for a one-tower model."""
    fractions = colour_fraction(model) if fractions is None else fractions
    parts = np.array_split(fractions, 2) if two_towers(model) else [fractions]
    return [float(part.mean()) for part in parts]


def plot_conv1_filters(model: AlexNetFamily) -> Figure:
    """AlexNet Fig. 3 for this model: the conv1 kernels, the two towers drawn apart, each titled with its
    kernels' mean colour fraction (§6.1)."""
    blocks = conv1_blocks(model)
    conv = _conv(model, "conv1")
    k = conv.kernel_size[0]
    fig = new_figure(6 * len(blocks), 4.5)
    axes = np.atleast_1d(fig.subplots(1, len(blocks)))
    per = conv.out_channels // len(blocks)
    colour = tower_colour(model)
    for i, (ax, block) in enumerate(zip(axes, blocks, strict=True)):
        ax.imshow(block, interpolation="nearest")
        which = f"tower {i + 1}: " if len(blocks) > 1 else ""
        ax.set_title(f"{which}filters {i * per}–{(i + 1) * per - 1}, colour fraction {colour[i]:.2f}")
        ax.axis("off")
    fig.suptitle(f"{model.config.name} conv1: {conv.out_channels} kernels {k}×{k}×3, stride {conv.stride[0]}")
    return fig


def conv2_grid(model: AlexNetFamily, filters: int | list[int] = 16, inputs: int | None = None) -> np.ndarray:
    """conv2 kernels per input channel: a row per output filter, a column per input channel (grey, 0–1).

    Each row is scaled to its own filter's range so that the relative pattern across input channels shows.
    """
    w = _conv(model, "conv2").weight.detach().float().cpu()
    idx = list(range(min(filters, w.shape[0]))) if isinstance(filters, int) else list(filters)
    if any(not 0 <= i < w.shape[0] for i in idx):
        raise SelectionError(f"conv2 filter index out of range (0–{w.shape[0] - 1})")
    sel = w[idx][:, : inputs or w.shape[1]].numpy()
    sel = normalize01(sel, axis=(1, 2, 3))
    n, c, k, _ = sel.shape
    return tile(sel.reshape(n * c, k, k), ncols=c, pad=1)


def plot_conv2_filters(model: AlexNetFamily, filters: int = 16, inputs: int = 48) -> Figure:
    grid = conv2_grid(model, filters, inputs)
    conv = _conv(model, "conv2")
    fig = new_figure(14, max(3.0, 14 * grid.shape[0] / grid.shape[1] + 1))
    ax = fig.subplots()
    ax.imshow(grid, cmap="gray", interpolation="nearest")
    ax.set_title(
        f"{model.config.name} conv2: filters 0–{filters - 1} (rows) × input channels 0–"
        f"{min(inputs, conv.in_channels // conv.groups) - 1} (columns)"
    )
    ax.axis("off")
    return fig


def high_frequency_fraction(weight: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Per filter, the fraction of its spectral energy at frequencies above ``cutoff`` (cycles per pixel).

    The energy is ``Σ_channels |DFT₂(w)|²`` on the kernel's own k×k frequency grid (so Parseval holds exactly);
    a frequency counts as high when ``max(|f_y|, |f_x|) > cutoff`` — the per-axis criterion of sampling: a layer
    of stride ``s`` represents frequencies up to ``1/(2s)`` on each axis, anything above aliases.
    """
    w = weight.detach().double().cpu()
    kh, kw = w.shape[-2:]
    energy = torch.fft.fft2(w).abs().pow(2).sum(dim=1)  # O×kh×kw
    fy = torch.fft.fftfreq(kh, dtype=torch.float64).abs().view(-1, 1)
    fx = torch.fft.fftfreq(kw, dtype=torch.float64).abs().view(1, -1)
    high = torch.maximum(fy, fx) > cutoff + 1e-12
    total = energy.flatten(1).sum(1)
    above = (energy * high).flatten(1).sum(1)
    return torch.where(total > 0, above / total.clamp_min(1e-300), torch.zeros_like(total)).float()


@dataclass
class FilterStats:
    """Per-filter statistics of one conv layer (ZF Fig. 6)."""

    layer: str
    kernel: int
    stride: int
    cutoff: float  # cycles per input pixel of this layer
    norms: np.ndarray
    high_frequency: np.ndarray  # fraction of spectral energy above `cutoff`
    dead_by_norm: np.ndarray  # bool: norm < dead_ratio × median norm
    never_active: np.ndarray | None = None  # bool: max rectified activation on the sample is 0
    sample_images: int = 0
    colour: np.ndarray | None = None  # conv1: each kernel's colour fraction (AlexNet §6.1)
    tower_colour: list[float] | None = None  # conv1: its mean per tower
    extra: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "layer": self.layer,
            "filters": len(self.norms),
            "kernel": self.kernel,
            "stride": self.stride,
            "cutoff_cycles_per_pixel": self.cutoff,
            "dead_by_norm": int(self.dead_by_norm.sum()),
            "mean_high_frequency_fraction": float(self.high_frequency.mean()),
            "median_norm": float(np.median(self.norms)),
        }
        if self.never_active is not None:
            out["never_active"] = int(self.never_active.sum())
            out["sample_images"] = self.sample_images
        if self.colour is not None and self.tower_colour is not None:
            out["mean_colour_fraction"] = float(self.colour.mean())
            for i, value in enumerate(self.tower_colour):
                out[f"tower{i + 1}_colour_fraction"] = value
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"norms": self.norms, "high_frequency": self.high_frequency, "dead_by_norm": self.dead_by_norm}
        if self.never_active is not None:
            out["never_active"] = self.never_active
        if self.colour is not None:
            out["colour_fraction"] = self.colour
        return out


def filter_statistics(
    model: AlexNetFamily,
    layer: str = "conv1",
    images: torch.Tensor | None = None,
    cutoff: float | None = None,
    dead_ratio: float = 0.05,
) -> FilterStats:
    """Norms, dead filters and high-frequency energy of ``layer``'s filters; for conv1 also each kernel's
    colour fraction and its mean per tower (:func:`colour_fraction`).

    ``cutoff`` defaults to the Nyquist frequency of the layer's output grid, ``1/(2·stride)`` (energy above it
    aliases), or to ``0.25`` for a stride-1 layer (upper half of the representable band). With ``images`` (a
    normalised batch), filters whose rectified response is 0 on every image and position are "never active".
    """
    conv = _conv(model, layer)
    stride = int(conv.stride[0])
    cut = cutoff if cutoff is not None else (0.5 / stride if stride > 1 else 0.25)
    w = conv.weight.detach().float().cpu()
    norms = w.flatten(1).norm(dim=1).numpy()
    stats = FilterStats(
        layer=layer,
        kernel=int(conv.kernel_size[0]),
        stride=stride,
        cutoff=cut,
        norms=norms,
        high_frequency=high_frequency_fraction(w, cut).numpy(),
        dead_by_norm=norms < dead_ratio * float(np.median(norms)),
    )
    if layer == "conv1" and conv.in_channels == 3:
        stats.colour = colour_fraction(model)
        stats.tower_colour = tower_colour(model, stats.colour)
    if images is not None:
        relu = layer.replace("conv", "relu")
        acts = capture(model, images, [relu], batch_size=32)[relu]
        stats.never_active = (acts.amax(dim=(0, 2, 3)) <= 0).numpy()
        stats.sample_images = len(images)
    return stats


def plot_filter_statistics(stats: list[FilterStats], title: str = "") -> Figure:
    """Histograms of the high-frequency fraction and of the filter norms, one colour per layer."""
    fig = new_figure(11, 4)
    ax0, ax1 = fig.subplots(1, 2)
    for s in stats:
        label = f"{s.layer} ({s.kernel}×{s.kernel}/{s.stride})"
        ax0.hist(s.high_frequency, bins=20, range=(0, 1), alpha=0.6, label=f"{label} > {s.cutoff:.3g} c/px")
        ax1.hist(s.norms / max(1e-12, float(np.median(s.norms))), bins=30, alpha=0.6, label=f"{label}")
    ax0.set_xlabel("fraction of spectral energy above cutoff")
    ax0.set_ylabel("filters")
    ax1.set_xlabel("filter norm / median norm (dead: < 0.05)")
    for ax in (ax0, ax1):
        ax.legend(fontsize=8)
    fig.suptitle(title or "filter statistics (ZF Fig. 6)")
    return fig
