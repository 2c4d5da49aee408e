"""Grad-CAM: where in the image a class's score comes from, at one conv layer's resolution.

Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (ICCV 2017), §3: for the score ``y^c`` of class ``c`` *before the softmax* and the
feature maps ``A^k`` of a convolutional layer,

    α_k^c = (1/Z) Σ_i Σ_j ∂y^c / ∂A^k_ij          (Eq. 1: the gradient, global-average-pooled per map)
    L^c   = ReLU(Σ_k α_k^c A^k)                   (Eq. 2: only what speaks *for* the class)

and the map is upsampled to the image by bilinear interpolation (§3.1). The layer is by default the last conv
stage's rectified output (``relu5``: 13×13 in AlexNet), as the paper takes "the last convolutional layer".

For these networks it sits beside ZF's occlusion maps (Fig. 7, :mod:`.occlusion`): both answer "which part of the
image does the class depend on", occlusion by hundreds of forward passes, Grad-CAM by one forward and one
backward pass from the layer up. Captum's ``LayerGradCam`` computes the same numbers (tested).

**Guided Grad-CAM** (§3, "Guided Grad-CAM"; Fig. 1 (b)–(d)): the map is coarse (13×13 for AlexNet's conv5), so
the paper multiplies the upsampled map pointwise with the class's guided backpropagation (Springenberg et al.
2015; :func:`alexnet.visualize.deconvnet.class_projection`), which is sharp but hardly tells one class from
another: ``gradcam(..., guided=True)`` and :meth:`GradCam.guided_gradcam`, both from one recorded forward pass
(:func:`alexnet.visualize.deconvnet.guided_and_gradient`). Captum's ``GuidedGradCam`` with bilinear upsampling
computes the same numbers (tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.models import AlexNetFamily
from alexnet.models.capture import check_trunk_layer, walk
from alexnet.visualize.deconvnet import class_targets, guided_and_gradient

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from alexnet.inputs import Prepared


@dataclass
class GradCam:
    """Grad-CAM of a batch, on the CPU: ``maps`` N×h×w at the layer's resolution (Eq. 2), ``weights`` N×K (Eq. 1),
    ``targets`` N (the class explained), ``scores`` N (its score before the softmax), ``probabilities`` N (after)."""

    layer: str
    maps: torch.Tensor
    weights: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    probabilities: torch.Tensor
    guided: torch.Tensor | None = None  # with guided=True: the classes' guided backpropagation, N×3×H×W

    def upsampled(self, size: int | tuple[int, int]) -> torch.Tensor:
        """The maps at the image's size (N×H×W), by bilinear interpolation (§3.1)."""
        return F.interpolate(self.maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]

    def guided_gradcam(self) -> torch.Tensor:
        """Guided Grad-CAM (§3): the guided backpropagation times the map upsampled to the image, N×3×H×W."""
        if self.guided is None:
            raise ValueError("Guided Grad-CAM needs gradcam(..., guided=True)")
        return self.guided * self.upsampled(tuple(self.guided.shape[-2:]))[:, None]


def default_layer(model: AlexNetFamily) -> str:
    """The last conv stage's rectified output (``relu5`` in the papers' networks)."""
    return f"relu{model.config.conv_numbers()[-1]}"


def _head_from(model: AlexNetFamily, layer: str, acts: torch.Tensor) -> torch.Tensor:
    """The network from just after ``layer`` to the class scores, on ``acts``, in eval mode. Out of place: the
    ReLUs are in-place modules, and ``acts`` is the leaf the gradient is asked for."""
    names = model.layer_names()
    x = acts
    for name in names[names.index(layer) + 1 :]:
        module = model.layer(name)
        if isinstance(module, nn.Linear) and x.ndim > 2:
            x = torch.flatten(x, 1)
        x = F.relu(x) if isinstance(module, nn.ReLU) else module(x)
    return x


def gradcam(
    model: AlexNetFamily,
    images: torch.Tensor,
    layer: str | None = None,
    target: int | list[int] | torch.Tensor | None = None,
    guided: bool = False,
) -> GradCam:
    """Grad-CAM (module docstring) of a normalised batch N×3×H×W (or one 3×H×W image) at a conv-trunk ``layer``
    (default :func:`default_layer`), for class ``target`` (one for all images, or one per image; default each
    image's top class); with ``guided`` also the classes' guided backpropagation, for Guided Grad-CAM. Runs on
    the model's device in eval mode; the model is left as it was."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    layer = layer or default_layer(model)
    check_trunk_layer(model, layer)
    if guided:  # one recorded forward pass for both (deconvnet.guided_and_gradient)
        both = guided_and_gradient(model, images, layer, target)
        logits, acts, grads = both.logits, both.maps, both.gradient
        scores = logits.gather(1, both.targets[:, None])[:, 0]
        probabilities = torch.softmax(logits, 1).gather(1, both.targets[:, None])[:, 0]
        return _cam(layer, acts, grads, both.targets, scores, probabilities, both.guided)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.no_grad():
            acts, _ = walk(model, images.to(device), layer)
            acts = acts.clone(memory_format=torch.contiguous_format)
        with torch.inference_mode(False), torch.enable_grad():
            acts.requires_grad_(True)
            logits = _head_from(model, layer, acts)
            targets = class_targets(target, logits)
            scores = logits.gather(1, targets[:, None])[:, 0]
            (grads,) = torch.autograd.grad(scores.sum(), acts)
            probabilities = torch.softmax(logits.detach(), 1).gather(1, targets[:, None])[:, 0]
    finally:
        model.train(was_training)
    return _cam(layer, acts.detach(), grads, targets, scores.detach(), probabilities)


def _cam(
    layer: str,
    acts: torch.Tensor,
    grads: torch.Tensor,
    targets: torch.Tensor,
    scores: torch.Tensor,
    probabilities: torch.Tensor,
    guided: torch.Tensor | None = None,
) -> GradCam:
    """Eq. 1 and 2 from the layer's maps and the score's gradient with respect to them."""
    weights = grads.mean(dim=(2, 3))  # Eq. 1
    maps = F.relu((weights[:, :, None, None] * acts).sum(1))  # Eq. 2
    return GradCam(layer, maps.cpu(), weights.cpu(), targets.cpu(), scores.cpu(), probabilities.cpu(), guided)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The map (H×W, min–max scaled) in the jet colour map blended over the image (H×W×3, 0–1): what
    :func:`plot_gradcam` draws, as one array (the browser's picture)."""
    from matplotlib import colormaps

    from alexnet.visualize.plot import normalize01

    colours = colormaps["jet"](normalize01(heat.astype(np.float32)))[..., :3]
    return ((1 - alpha) * image + alpha * colours).astype(np.float32)


def plot_gradcam(
    image: np.ndarray,
    heat: np.ndarray,
    title: str,
    label: str,
    guided: np.ndarray | None = None,
    guided_cam: np.ndarray | None = None,
) -> Figure:
    """The network's input crop (H×W×3, 0–1) beside it with the upsampled map (H×W) laid over it in the jet
    colour map, as the paper's Fig. 1 (c) shows it; given the guided backpropagation and Guided Grad-CAM as
    pictures (H×W×3, 0–1; :func:`alexnet.visualize.plot.projection_to_image`), Fig. 1's (a)–(d): the image, guided
    backpropagation, Grad-CAM, Guided Grad-CAM."""
    from alexnet.visualize.plot import new_figure, normalize01

    panels = 2 if guided is None or guided_cam is None else 4
    fig = new_figure(5 * panels, 5.3)
    axes = fig.subplots(1, panels)
    axes[0].imshow(image)
    axes[0].set_title(title)
    cam = axes[1] if panels == 2 else axes[2]
    cam.imshow(image)
    cam.imshow(normalize01(heat), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    cam.set_title(label)
    if panels == 4:
        axes[1].imshow(guided)
        axes[1].set_title("guided backpropagation")
        axes[3].imshow(guided_cam)
        axes[3].set_title("Guided Grad-CAM")
    for ax in axes:
        ax.axis("off")
    return fig


def gradcam_figure(
    model: AlexNetFamily,
    prepared: Prepared,
    title: str,
    layer: str | None = None,
    target: int | None = None,
    guided: bool = False,
) -> tuple[GradCam, Figure]:
    """One prepared image's Grad-CAM (:func:`gradcam`) and its figure (:func:`plot_gradcam`): the crop and the
    map over it labelled with the class's name and probability; with ``guided`` Fig. 1's four panels."""
    from alexnet.predict import labels_of, preprocessing_of
    from alexnet.visualize.plot import projection_to_image, uint8_to_float

    x = prepared.tensor.unsqueeze(0)
    cam = gradcam(model, x, layer, target, guided=guided)
    heat = cam.upsampled(tuple(x.shape[-2:]))[0]
    c = int(cam.targets[0])
    label = f"Grad-CAM at {cam.layer}: {labels_of(model)[c]} ({c}), p = {float(cam.probabilities[0]):.3f}"
    pictures: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if cam.guided is not None:
        prep = preprocessing_of(model)
        pictures = (
            projection_to_image(cam.guided[0], prep),
            projection_to_image(cam.guided_gradcam()[0], prep),
        )
    return cam, plot_gradcam(uint8_to_float(prepared.crop), heat.numpy(), title, label, *pictures)
