"""Evolution of features during training — Zeiler & Fergus §4 ("Feature Evolution during Training"), Fig. 4.

For chosen feature maps of a layer and for each saved snapshot of the model (a run's checkpoints, oldest first,
or a list of weights files), the strongest activation over a fixed set of images is projected to pixel space
with the deconvnet (§2.1). ZF's figure shows lower layers converging within a few epochs and upper layers only
after many; here a row is a feature map and a column a snapshot.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alexnet.analysis.summary import receptive_fields
from alexnet.errors import SelectionError, WeightsError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import check_trunk_layer
from alexnet.visualize.deconvnet import check_rule, deconvnet_strongest, layer_shape
from alexnet.weights.io import load_state_dict_checked, read_weights

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_STEP = re.compile(r"step-(\d+)")


@dataclass
class Snapshot:
    label: str
    state: dict[str, torch.Tensor]


def _clean(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Drop DDP's ``module.`` and ``torch.compile``'s ``_orig_mod.`` prefixes."""
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}


def read_snapshot(path: str | Path) -> Snapshot:
    """A training checkpoint (``.pt``: a dict with ``model``, ``epoch``, ``step``; ``torch.load(weights_only=True)``)
    or a weights file (``.safetensors`` / state-dict ``.pth``)."""
    p = Path(path)
    if p.suffix == ".pt":
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
            raise WeightsError(
                f"{p}: not a readable checkpoint ({str(e).splitlines()[0] if str(e) else e})"
            ) from None
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            parts = [
                f"epoch {obj['epoch']}" if "epoch" in obj else "",
                f"step {obj['step']}" if "step" in obj else "",
            ]
            label = ", ".join(x for x in parts if x) or p.stem
            return Snapshot(label, _clean(obj["model"]))
    state, _ = read_weights(p)
    m = _STEP.search(p.stem)
    return Snapshot(f"step {int(m.group(1))}" if m else p.stem, _clean(state))


def run_snapshots(run_dir: str | Path) -> list[Path]:
    """``RUN/checkpoints/*.pt`` oldest first (by step number in the name, else by name)."""
    folder = Path(run_dir) / "checkpoints"
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    if not files:
        raise WeightsError(f"{run_dir}: no checkpoints in {folder}")

    def order(p: Path) -> tuple[int, str]:
        m = _STEP.search(p.stem)
        return (int(m.group(1)) if m else -1, p.name)

    return sorted(files, key=order)


@dataclass
class Evolution:
    """``projections[r, c]``: feature map ``channels[r]`` at snapshot ``c`` (3×H×W), from image ``image[r, c]``."""

    layer: str
    channels: list[int]
    labels: list[str]
    projections: np.ndarray  # R×C×3×H×W
    values: np.ndarray  # R×C strongest activation
    image: np.ndarray  # R×C index of the image that gave it
    units: np.ndarray  # R×C×2
    rule: str = "deconvnet"  # how the projections crossed each ReLU and LRN (alexnet.visualize.deconvnet)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "projections": self.projections,
            "values": self.values,
            "image": self.image,
            "units": self.units,
            "channels": np.array(self.channels),
            "rule": np.array(self.rule),
        }


def evolution(
    model: AlexNetFamily,
    images: torch.Tensor,
    snapshots: Sequence[Snapshot],
    layer: str,
    channels: Sequence[int],
    rule: str = "deconvnet",
) -> Evolution:
    """For each snapshot (loaded into a copy of ``model``) and channel: the deconv projection (by ``rule``,
    :mod:`alexnet.visualize.deconvnet`) of the strongest activation of that feature map over the normalised batch
    ``images``."""
    check_rule(rule)
    check_trunk_layer(model, layer)
    if not snapshots:
        raise WeightsError("no snapshots to compare")
    n_ch = layer_shape(model, layer, images.shape[-1])[0]
    bad = [c for c in channels if not 0 <= c < n_ch]
    if bad:
        raise SelectionError(f"channel {bad[0]} is out of range for {layer} (0–{n_ch - 1})")
    work = copy.deepcopy(model).eval()
    rows, cols = len(channels), len(snapshots)
    proj = np.zeros((rows, cols, *images.shape[1:]), np.float32)
    values = np.zeros((rows, cols), np.float32)
    which = np.zeros((rows, cols), np.int64)
    units = np.zeros((rows, cols, 2), np.int64)
    for j, snap in enumerate(snapshots):
        load_state_dict_checked(work, snap.state, snap.label)
        for i, ch in enumerate(channels):
            res = deconvnet_strongest(work, images, layer, ch, rule)
            best = int(res.values.argmax())
            proj[i, j] = res.images[best].numpy()
            values[i, j] = float(res.values[best])
            which[i, j] = best
            units[i, j] = res.units[best].numpy()
    return Evolution(layer, list(channels), [s.label for s in snapshots], proj, values, which, units, rule)


def plot_evolution(model: AlexNetFamily, ev: Evolution) -> Figure:
    """Rows: feature maps; columns: snapshots. Each cell: the projection cropped to the unit's receptive field."""
    from alexnet.predict import preprocessing_of
    from alexnet.visualize.plot import field_crop, new_figure, projection_to_image

    prep = preprocessing_of(model)
    field = receptive_fields(model)[ev.layer]
    size = ev.projections.shape[-1]
    rows, cols = ev.values.shape
    fig = new_figure(1.8 * cols + 1, 1.8 * rows + 0.6)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i in range(rows):
        for j in range(cols):
            box = field.box(int(ev.units[i, j, 0]), int(ev.units[i, j, 1]))
            full = projection_to_image(torch.from_numpy(ev.projections[i, j]), prep)
            ax = axes[i, j]
            ax.imshow(field_crop(full, box, min(field.size, size), 0.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(ev.labels[j], fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{ev.layer} #{ev.channels[i]}", fontsize=8)
    how = "" if ev.rule == "deconvnet" else f", {ev.rule} projections"
    fig.suptitle(f"{model.config.name}: feature evolution during training (ZF Fig. 4{how})")
    return fig
