"""The class-attribution methods by name: each one's map of a batch, for what compares them (Adebayo et al.'s
sanity checks, :mod:`.sanity`; Samek et al.'s region perturbation, :mod:`.perturbation`).

Every map is N×3×H×W in the input's units: the class score's gradient (Simonyan et al. 2014,
:func:`~alexnet.visualize.deconvnet.class_projection`), its SmoothGrad (:mod:`.smoothgrad`), guided
backpropagation, ZF's deconvnet rules through the classifier, Grad-CAM at the last conv stage's ReLU (upsampled,
in the first colour; :mod:`.gradcam`), Guided Grad-CAM, integrated gradients (:mod:`.integrated`) and layer-wise
relevance propagation (:mod:`.lrp`): ``lrp`` its composite, ``lrp-epsilon`` and ``lrp-alpha1beta0`` Bach et al.'s
rules at every layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily

METHODS: tuple[str, ...] = (
    "gradient",
    "smoothgrad",
    "guided",
    "deconvnet",
    "gradcam",
    "guided-gradcam",
    "integrated",
    "lrp",  # the composite
    "lrp-epsilon",
    "lrp-alpha1beta0",
)
# Decompositions of the output: a pixel's colours add up to its share, and the sign says for or against.
ADDITIVE: tuple[str, ...] = ("integrated", "lrp", "lrp-epsilon", "lrp-alpha1beta0")


def check_methods(methods: Sequence[str], known: Sequence[str] = METHODS) -> list[str]:
    """The methods, each once and in the order given; :class:`SelectionError` for an unknown one or none."""
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise SelectionError(f"unknown method {unknown[0]!r}; choose from {', '.join(known)}")
    if not methods:
        raise SelectionError(f"no method given; choose from {', '.join(known)}")
    return list(dict.fromkeys(methods))


def class_maps(
    model: AlexNetFamily,
    x: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str],
    samples: int = 50,
    steps: int = 50,
) -> torch.Tensor:
    """N × methods × 3 × H × W on the CPU: each method's map of ``x`` for ``targets`` (Grad-CAM's in the first
    colour, the others zero); ``samples`` SmoothGrad's noisy copies, ``steps`` integrated gradients' points."""
    from alexnet.visualize.deconvnet import class_projection
    from alexnet.visualize.gradcam import gradcam
    from alexnet.visualize.integrated import integrated_gradients
    from alexnet.visualize.lrp import lrp
    from alexnet.visualize.smoothgrad import smoothgrad

    t = targets.tolist()
    out: dict[str, torch.Tensor] = {}
    if "gradcam" in methods or "guided-gradcam" in methods:
        cam = gradcam(model, x, None, t, guided="guided-gradcam" in methods)
        heat = cam.upsampled(tuple(x.shape[-2:]))
        out["gradcam"] = torch.cat([heat[:, None], torch.zeros_like(heat)[:, None].expand(-1, 2, -1, -1)], 1)
        if cam.guided is not None:
            out["guided-gradcam"] = cam.guided_gradcam()
    runs: dict[str, Callable[[], torch.Tensor]] = {
        "gradient": lambda: class_projection(model, x, t, "gradient").images,
        "guided": lambda: class_projection(model, x, t, "guided").images,
        "deconvnet": lambda: class_projection(model, x, t, "deconvnet").images,
        "smoothgrad": lambda: smoothgrad(model, x, t, samples=samples).attributions,
        "integrated": lambda: integrated_gradients(model, x, t, steps=steps).attributions,
        "lrp": lambda: lrp(model, x, t).attributions,
        "lrp-epsilon": lambda: lrp(model, x, t, "epsilon").attributions,
        "lrp-alpha1beta0": lambda: lrp(model, x, t, "alpha1beta0").attributions,
    }
    for method in methods:
        if method not in out:
            out[method] = runs[method]()
    return torch.stack([out[m].float().cpu() for m in methods], 1)
