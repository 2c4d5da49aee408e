"""Invariance to translation, scaling and rotation — Zeiler & Fergus §4 ("Feature Invariance"), Fig. 5.

For each image and each transformation strength, the curves are: the Euclidean distance between the layer-1 and
layer-7 feature vectors of the transformed image and of the untransformed one, and the probability of the true
class. Following ZF, layer 1 changes a lot under small transformations, layer 7 much less, and the classifier's
output is stable except for rotation (the features are not rotation invariant, apart from symmetric objects).

Transformations act on the image after resizing (shorter side as in the weights' preprocessing) and before the
centre crop, so the network sees the same framing as in evaluation; pixels that come from outside the image are
the mean pixel (0 after per-channel normalisation; for weights trained with AlexNet §2's per-pixel mean image,
the mean image's average pixel, and the crop then has the mean image's centre subtracted, as in evaluation). They are torchvision ``v2.functional.affine`` on the normalised float
image, bilinear, so the identity transformation reproduces the input up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from alexnet.data.transforms import Normalize, eval_crop_offsets
from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture, check_layers
from alexnet.predict import mean_image_of, preprocessing_of

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_VALUES: dict[str, np.ndarray] = {
    "translation": np.arange(-60, 61, 10, dtype=np.float64),  # vertical shift, pixels
    "scale": np.round(np.arange(0.6, 1.81, 0.1), 2),  # zoom factor
    "rotation": np.arange(0, 361, 15, dtype=np.float64),  # degrees
}
IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}


def default_feature_layers(model: AlexNetFamily) -> tuple[str, str]:
    """Layer 1 (``pool1``) and layer 7 (``fc7``) in ZF's numbering; for a network without fc7 (an ablation), its
    top hidden layer in place of layer 7."""
    return "pool1", model.top_hidden(rectified=False)


def transformed_inputs(
    model: AlexNetFamily, image: torch.Tensor, kind: str, values: np.ndarray
) -> torch.Tensor:
    """One normalised, centre-cropped input per value of transformation ``kind`` (uint8 3×H×W ``image``)."""
    if kind not in IDENTITY:
        raise SelectionError(f"unknown transformation {kind!r}; choose one of: {', '.join(IDENTITY)}")
    prep, mean_image = preprocessing_of(model), mean_image_of(model)
    resized = v2.Resize(prep.resize, antialias=True)(image)
    top, left = eval_crop_offsets(prep, *resized.shape[-2:])  # where evaluation's crop sits
    side = prep.input_size

    def crop(t: torch.Tensor) -> torch.Tensor:
        return TF.crop(t, top, left, side, side)

    if mean_image is None:
        x, fill, finish = prep.normalize(resized.float() / 255.0), [0.0, 0.0, 0.0], crop
    else:
        # AlexNet §2's per-pixel mean image: transform the 0–1 image, filling with the mean image's average
        # pixel (in 0–1 RGB), then subtract the mean image's centre from the crop, as evaluation does
        pixel = mean_image.mean(dim=(1, 2)) / prep.pixel_scale
        fill = (pixel.flip(0) if prep.channel_order == "BGR" else pixel).tolist()
        normalize = Normalize(prep, TF.center_crop(mean_image, [prep.input_size, prep.input_size]))
        x = resized.float() / 255.0

        def finish(t: torch.Tensor) -> torch.Tensor:
            return normalize(crop(t))

    out = []
    for v in values:
        angle, dy, scale = 0.0, 0.0, 1.0
        if kind == "translation":
            dy = float(v)
        elif kind == "scale":
            scale = float(v)
        else:
            angle = float(v)
        y = TF.affine(
            x,
            angle=angle,
            translate=[0.0, dy],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=fill,
        )
        out.append(finish(y))
    return torch.stack(out)


@dataclass
class InvarianceCurves:
    """Per transformation kind: values, distances per layer (images × values) and the true-class probability."""

    kind: str
    values: np.ndarray
    distances: dict[str, np.ndarray]
    probability: np.ndarray
    targets: list[int]
    layers: tuple[str, str]

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"{self.kind}_values": self.values, f"{self.kind}_probability": self.probability}
        out.update({f"{self.kind}_{layer}_distance": d for layer, d in self.distances.items()})
        return out


def invariance(
    model: AlexNetFamily,
    images: list[torch.Tensor],
    kind: str,
    values: np.ndarray | None = None,
    targets: list[int] | None = None,
    layers: tuple[str, str] | None = None,
) -> InvarianceCurves:
    """ZF Fig. 5 curves for uint8 RGB ``images`` under transformation ``kind`` (translation/scale/rotation).

    ``targets``: the true class of each image (default: the top prediction on the untransformed image).
    """
    vals = np.asarray(values if values is not None else DEFAULT_VALUES.get(kind, []), dtype=np.float64)
    layers = layers or default_feature_layers(model)
    check_layers(model, layers)
    last = model.layer_names()[-1]
    if targets is not None and len(targets) != len(images):
        raise SelectionError("give one target class per image")
    dists: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    probs, chosen = [], []
    for i, image in enumerate(images):
        batch = transformed_inputs(model, image, kind, np.concatenate(([IDENTITY.get(kind, 0.0)], vals)))
        feats = capture(model, batch, [*layers, last], batch_size=32)
        p = feats[last].softmax(1)
        target = targets[i] if targets is not None else int(p[0].argmax())
        if not 0 <= target < p.shape[1]:
            raise SelectionError(f"target class {target} is out of range (0–{p.shape[1] - 1})")
        chosen.append(target)
        for layer in layers:
            f = feats[layer].flatten(1).double()
            dists[layer].append((f[1:] - f[:1]).norm(dim=1).numpy())
        probs.append(p[1:, target].numpy())
    return InvarianceCurves(
        kind=kind,
        values=vals,
        distances={k: np.stack(v) for k, v in dists.items()},
        probability=np.stack(probs),
        targets=chosen,
        layers=(layers[0], layers[1]),
    )


def plot_invariance(curves: list[InvarianceCurves], names: list[str]) -> Figure:
    """ZF Fig. 5 layout: a column per transformation; rows = layer-1 distance, layer-7 distance, p(true class)."""
    from alexnet.visualize.plot import new_figure

    fig = new_figure(5 * len(curves), 10)
    axes = np.atleast_2d(fig.subplots(3, len(curves), squeeze=False))
    units = {
        "translation": "vertical shift (pixels)",
        "scale": "scale factor",
        "rotation": "rotation (degrees)",
    }
    for j, c in enumerate(curves):
        rows = [
            (c.distances[c.layers[0]], f"{c.layers[0]} distance"),
            (c.distances[c.layers[1]], f"{c.layers[1]} distance"),
            (c.probability, "p(true class)"),
        ]
        for i, (data, label) in enumerate(rows):
            ax = axes[i, j]
            for k, name in enumerate(names):
                ax.plot(c.values, data[k], marker="o", markersize=3, label=name)
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(c.kind)
            if i == 2:
                ax.set_xlabel(units.get(c.kind, c.kind))
                ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=8)
    return fig
