"""The image's gradient through a frozen first convolution (``alexnet.models.first_conv.image_grad_conv2d``):
ATen's numbers by a stride-1 convolution into the output's phases, taken only where the image alone needs a
gradient (activation maximisation, saliency)."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import alexnet
from alexnet.models import first_conv
from alexnet.models.layers import SpaceToDepthConv2d

GEOMETRIES = [  # (name, out channels, kernel, stride, padding, image side)
    ("alexnet §3.5", 96, 11, 4, 0, 227),  # 96 kernels of 11×11×3, stride 4
    ("zfnet Fig. 3", 96, 7, 2, 1, 224),  # 96 kernels of 7×7×3, stride 2
    ("torchvision's", 64, 11, 4, 2, 224),
    ("an odd one", 16, 5, 3, 2, 31),
]


def _frozen_conv(oc: int, kernel: int, stride: int, padding: int) -> SpaceToDepthConv2d:
    conv = SpaceToDepthConv2d(3, oc, kernel, stride, padding)
    conv.requires_grad_(False)
    return conv


def _image_grad(conv, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (dx,) = torch.autograd.grad(conv(x), x, grad)
    return dx


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize(("name", "oc", "kernel", "stride", "padding", "size"), GEOMETRIES)
def test_the_image_gradient_is_atens_to_float32_rounding(
    name, oc, kernel, stride, padding, size, layout
) -> None:
    torch.manual_seed(0)
    conv = _frozen_conv(oc, kernel, stride, padding)
    x = torch.randn(2, 3, size, size).contiguous(memory_format=layout)
    out = F.conv2d(x, conv.weight, conv.bias, stride, padding)
    grad = torch.randn_like(out)
    assert first_conv.image_grad_applies(conv, x.clone().requires_grad_(True))
    got = _image_grad(conv, x, grad)
    want = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), conv.weight.double(), None, (stride, stride), (padding, padding), (1, 1),
        False, (0, 0), 1, (True, False, False),
    )[0]  # fmt: skip
    assert got.shape == x.shape
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-5


def test_float64_is_exact_to_its_own_rounding() -> None:
    conv = _frozen_conv(96, 11, 4, 0).double()
    x = torch.randn(1, 3, 67, 67, dtype=torch.float64)
    grad = torch.randn(1, 96, 15, 15, dtype=torch.float64)
    want = torch.ops.aten.convolution_backward(
        grad, x, conv.weight, None, (4, 4), (0, 0), (1, 1), False, (0, 0), 1, (True, False, False)
    )[0]
    torch.testing.assert_close(_image_grad(conv, x, grad), want, rtol=1e-12, atol=1e-12)


def test_it_applies_only_when_the_image_alone_needs_a_gradient(monkeypatch) -> None:
    conv = _frozen_conv(96, 11, 4, 0)
    x = torch.randn(1, 3, 67, 67)
    assert not first_conv.image_grad_applies(conv, x)  # no gradient wanted at all
    assert first_conv.image_grad_applies(conv, x.requires_grad_(True))
    with torch.no_grad():
        assert not first_conv.image_grad_applies(conv, x)
    training = SpaceToDepthConv2d(3, 96, 11, 4)  # the weights learn: the training kernels' business
    assert not first_conv.image_grad_applies(training, x)
    assert not first_conv.image_grad_applies(_frozen_conv(96, 3, 1, 1), x)  # stride 1: oneDNN's own is fine
    monkeypatch.setenv("ALEXNET_FIRST_CONV", "0")  # the A/B switch of the first convolution's own paths
    assert not first_conv.image_grad_applies(conv, x)


def test_double_backward_goes_through_atens_formula() -> None:
    """A gradient penalty differentiates the image's gradient again: ATen's differentiable formula does it."""
    torch.manual_seed(0)
    conv = _frozen_conv(16, 5, 3, 2).double()
    x = torch.randn(1, 3, 31, 31, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: conv(t).pow(2).sum(), (x,))


def test_a_frozen_paper_models_saliency_is_the_same_either_way(monkeypatch) -> None:
    """The whole model's image gradient (AlexNet's conv1 through ``SpaceToDepthConv2d``) with and without the
    phase form."""
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet", num_classes=10, init="pytorch").eval().requires_grad_(False)
    x = torch.randn(2, 3, 227, 227)

    def saliency() -> torch.Tensor:
        img = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(img)[:, 3].sum(), img)
        return g

    fast = saliency()
    monkeypatch.setenv("ALEXNET_FIRST_CONV", "0")
    plain = saliency()
    assert ((fast - plain).abs().max() / plain.abs().max()).item() < 1e-4
