"""Looking inside: activations, filters, ZF's deconvnet (and a class score's projection: saliency, guided
backpropagation), top-9 patches, occlusion, evolution, invariance, retrieval, Grad-CAM (:mod:`.gradcam`), optimised
images (:mod:`.maximize`).

Importing this package is cheap: matplotlib is imported only by the functions that draw.
"""

from alexnet.errors import SelectionError
from alexnet.inputs import Prepared, prepare
from alexnet.models.capture import capture
from alexnet.visualize.activations import (
    activation_grid,
    plot_activations,
    plot_all_conv_layers,
    top_channels,
)
from alexnet.visualize.deconvnet import (
    ClassProjection,
    StrongestProjection,
    class_projection,
    deconvnet,
    deconvnet_strongest,
    saliency_map,
)
from alexnet.visualize.occlusion import OcclusionResult, occlusion, plot_occlusion

__all__ = [
    "ClassProjection",
    "OcclusionResult",
    "Prepared",
    "SelectionError",
    "StrongestProjection",
    "activation_grid",
    "capture",
    "class_projection",
    "deconvnet",
    "deconvnet_strongest",
    "occlusion",
    "plot_activations",
    "plot_all_conv_layers",
    "plot_occlusion",
    "prepare",
    "saliency_map",
    "top_channels",
]
