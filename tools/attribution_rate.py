"""Times the class attributions against Captum's on the same model and batch: guided backpropagation
(`alexnet.visualize.deconvnet.class_projection(rule="guided")` against `captum.attr.GuidedBackprop`), Guided
Grad-CAM (`gradcam(..., guided=True).guided_gradcam()` against `captum.attr.GuidedGradCam` with bilinear
upsampling), Grad-CAM alone (against `LayerGradCam`) and integrated gradients (`integrated_gradients` against
`IntegratedGradients`, 16 points of §5's sum from the black image, 32 path images a pass) and SmoothGrad of the
gradient (`smoothgrad`, 16 noisy copies of the batch's first image, against `NoiseTunnel(Saliency)` drawing the same
noise) and layer-wise relevance propagation (`lrp(rule="epsilon")` against `captum.attr.LRP` with `EpsilonRule`
on every conv and linear layer and the LRN passed on as the identity), alternating ours and theirs in each repeat
and reporting the medians in ms per batch (per image for SmoothGrad). Both compute the same numbers (in float64: tests/test_visualize_class_projection.py,
tests/test_visualize_gradcam.py); the last column is their largest difference here, in fp32, relative to Captum's
largest value (a random zfnet's max-pool near-ties part any two fp32 paths by up to a few per cent). Random
weights, random inputs, on the CPU.

    python tools/attribution_rate.py [--models alexnet zfnet] [--batch-size 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

import alexnet
from alexnet.models import LocalResponseNorm
from alexnet.visualize.deconvnet import class_projection
from alexnet.visualize.gradcam import gradcam
from alexnet.visualize.integrated import black_image, integrated_gradients
from alexnet.visualize.lrp import lrp
from alexnet.visualize.smoothgrad import noise_sigmas, smoothgrad

EPSILON = 0.25  # LRP-ε's, both sides


def _captum_lrp_rules(model: Any) -> Any:
    """``model`` with Captum's LRP rules set on every layer (its LRP takes them off again after each call): ``EpsilonRule(EPSILON)`` for the conv and
    linear layers (the grouped convolution's class has no default), its default ε rule for the max-pools (each
    window's relevance to its maximum), and for the LRN an ``IdentityRule`` that also hands its relevance to the
    ReLU below (Captum's own does not: tests/test_visualize_lrp.py)."""
    from captum.attr._utils.lrp_rules import EpsilonRule, IdentityRule
    from torch import nn

    class Identity(IdentityRule):  # type: ignore[misc]
        def _create_backward_hook_input(self, inputs: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            def hook(grad: torch.Tensor) -> torch.Tensor:
                grad.replace_out = self.relevance_output[grad.device]  # type: ignore[attr-defined]
                return grad.replace_out  # type: ignore[attr-defined]

            return hook

    for _, m in model.named_layers():
        if isinstance(m, LocalResponseNorm | nn.LocalResponseNorm):
            m.rule = Identity()
        elif isinstance(m, nn.Conv2d | nn.Linear):
            m.rule = EpsilonRule(epsilon=EPSILON)
        elif isinstance(m, nn.MaxPool2d | nn.AdaptiveAvgPool2d):
            m.rule = EpsilonRule()
    return model


def _ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _pairs(model: Any, x: torch.Tensor, targets: list[int]) -> dict[str, tuple[Callable[[], Any], ...]]:
    """(ours, Captum's) per attribution, for the last conv stage (relu5) and one class per image."""
    from captum.attr import (
        LRP,
        GuidedBackprop,
        GuidedGradCam,
        IntegratedGradients,
        LayerGradCam,
        NoiseTunnel,
        Saliency,
    )

    layer = model.layer("relu5")
    black = black_image(model)[None].expand_as(x)
    one = x[:1]
    sigma = float(noise_sigmas(one, 0.15)[0])  # σ to the last bit, as smoothgrad's default draws it

    def captum_smoothgrad() -> torch.Tensor:
        torch.manual_seed(0)  # the noise smoothgrad draws from its seed 0
        return NoiseTunnel(Saliency(model)).attribute(
            one, nt_samples=16, stdevs=sigma, target=targets[0], abs=False
        )

    return {
        "guided backprop": (
            lambda: class_projection(model, x, targets, "guided").images,
            lambda: GuidedBackprop(model).attribute(x, target=targets),
        ),
        "Guided Grad-CAM": (
            lambda: gradcam(model, x, "relu5", targets, guided=True).guided_gradcam(),
            lambda: GuidedGradCam(model, layer).attribute(x, target=targets, interpolate_mode="bilinear"),
        ),
        "Grad-CAM": (
            lambda: gradcam(model, x, "relu5", targets).maps,
            lambda: LayerGradCam(model, layer).attribute(x, target=targets, relu_attributions=True)[:, 0],
        ),
        "IG, 16 steps": (  # integrated gradients of the score from the black image, 32 path images a pass
            lambda: integrated_gradients(model, x, targets, steps=16, output="score").attributions,
            lambda: IntegratedGradients(model).attribute(
                x, baselines=black, target=targets, n_steps=16, method="riemann_right", internal_batch_size=32
            ),
        ),
        "SmoothGrad, 16": (
            lambda: smoothgrad(model, one, targets[0], samples=16).attributions,
            captum_smoothgrad,
        ),
        "LRP-ε": (
            lambda: lrp(model, x, targets, "epsilon", epsilon=EPSILON).attributions,
            lambda: LRP(_captum_lrp_rules(model)).attribute(x, target=targets),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["alexnet", "zfnet"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")  # its notes on the hooks it sets
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, ms per batch"
    )
    for name in args.models:
        torch.manual_seed(0)
        model = alexnet.create_model(name, init="pytorch").eval()
        side = model.default_input_size
        x = torch.randn(args.batch_size, 3, side, side)
        pairs = _pairs(model, x, list(range(args.batch_size)))
        for what, (ours, theirs) in pairs.items():
            a_out, b_out = ours(), theirs()  # also the warm-up
            b_out = b_out.detach()
            apart = float((a_out - b_out).abs().max()) / max(float(b_out.abs().max()), 1e-30)
            times: dict[str, list[float]] = {"ours": [], "captum": []}
            for _ in range(args.repeats):
                times["ours"].append(_ms(ours))
                times["captum"].append(_ms(theirs))
            a, b = statistics.median(times["ours"]), statistics.median(times["captum"])
            print(f"{name:8s} {what:16s} ours {a:8.1f}  captum {b:8.1f}  ({b / a:.2f}x)  apart {apart:.1e}")


if __name__ == "__main__":
    main()
