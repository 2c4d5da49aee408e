"""The first convolution's gradients on CPU: its weight gradient by a kernel of its own (``first_conv_cpu.cpp``),
and the image's by a stride-1 convolution into the output's phases (:func:`strided_transpose`).

The first layer sees the image: three input channels, large outputs (AlexNet §3.5: 96 kernels of 11×11×3,
stride 4; ZFNet Fig. 3: 96 of 7×7×3, stride 2, on 110×110 outputs). oneDNN computes this layer's weight gradient
at about half the rate of its other layers on the CPU we measured (ZFNet: 150 GFLOP/s against 300): 5 % of
ZFNet's training FLOPs took 8–9 % of its step. The kernel does it as one small matrix product per output row, in
registers, at about the others' rate (docs/performance.md, sessions 8 and 17). The forward and the input's
gradient stay oneDNN's; the weight and bias gradients are the same sums in another order, so they agree to
float32 rounding (tests/test_first_conv.py checks both against float64).

:func:`applies` says when :class:`~alexnet.models.layers.SpaceToDepthConv2d` (conv1 of every model) takes it:

* eager autograd on a plain CPU float32 tensor (:func:`alexnet.models.eager.plain`), no CPU autocast, and a
  weight that needs a gradient;
* the image channels-last (as ``alexnet train`` runs; the paper models copy an NCHW batch to it themselves,
  :func:`alexnet.models.fused.kernel_layout`), at most 4 input channels, output channels a multiple of 16, one
  group, no dilation, zero padding;
* the C++ library built for AVX-512 or AVX2 with FMA (:func:`alexnet.models.native.weight_grad_kernel`;
  elsewhere oneDNN's gradient), and ``ALEXNET_FIRST_CONV`` not 0 (A/B measurements).

Under ``backward(create_graph=True)`` (double backward, gradient penalties) the backward is ATen's own,
differentiable formula.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import eager, native

MAX_IN_CHANNELS = 4  # beyond a few channels oneDNN's own kernels are the fast ones


def _plain_geometry(conv: nn.Conv2d) -> bool:
    """No dilation and zero numeric padding: the geometry every kernel of this module and its users takes."""
    return conv.dilation == (1, 1) and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def _switched_on() -> bool:
    """``ALEXNET_FIRST_CONV`` is not 0 (the A/B switch of this module's paths)."""
    return os.environ.get("ALEXNET_FIRST_CONV", "1") != "0"


def trains_on_cpu(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """What every CPU training kernel for a conv's gradients asks (this module, :mod:`.first_stage`,
    :mod:`.conv_stage`): eager autograd on a plain channels-last float32 ``x``, no CPU autocast, a weight that needs
    a gradient, no dilation, zero numeric padding, and the C++ library built for AVX-512
    or AVX2 with FMA (:func:`alexnet.models.native.weight_grad_kernel`)."""
    weight = conv.weight
    return (
        eager.plain(x)  # first: a tracer sees nothing else
        and torch.is_grad_enabled()
        and weight.requires_grad
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and x.dim() == 4
        and _plain_geometry(conv)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")
        and native.weight_grad_kernel() is not None
    )


def applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`conv2d` may replace ``conv(x)`` (module docstring)."""
    return (
        trains_on_cpu(conv, x)
        and x.shape[1] <= MAX_IN_CHANNELS
        and conv.weight.shape[0] % 16 == 0
        and conv.groups == 1
        and _switched_on()
    )


class _FirstConv(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, bias is not None)  # type: ignore[attr-defined]
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        # a saved-tensor hook may have changed its layout; the kernel reads raw memory
        x = native.channels_last(x)
        stride, padding, has_bias = ctx.geometry  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        # backward(create_graph=True), or a batch of gradients: ATen's differentiable, batchable formula
        if torch.is_grad_enabled() or eager.transformed(grad):
            bias_sizes = [weight.shape[0]] if has_bias else None
            grads = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, stride, padding, (1, 1), False, (0, 0), 1, needs[:3]
            )
            return (*grads, None, None)
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = dw = db = None
        if needs[0]:  # the image's own gradient (saliency, say): oneDNN's
            dx = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, (1, 1), False, (0, 0), 1, (True, False, False)
            )[0]
        if needs[1] or needs[2]:
            kernel = native.weight_grad_kernel()
            assert kernel is not None  # applies() checked
            dw, db = kernel.first_conv_weight_grad(x, grad, weight, stride, padding, has_bias)
        return dx, dw if needs[1] else None, db if needs[2] else None, None, None


def conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, with the weight and bias gradients from the kernel (call only when :func:`applies`)."""
    return _FirstConv.apply(x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding))


def strided_transpose(
    y: torch.Tensor,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    size: tuple[int, int],
) -> torch.Tensor:
    """``F.conv_transpose2d(y, weight, stride=stride, padding=padding)`` cut to ``size`` (groups 1), computed as
    one stride-1 convolution into the ``sy·sx`` output phases and a pixel shuffle ("sub-pixel" form).

    Output row ``o`` gets ``Σ_t y[q − t] · w[r + s·t]`` with ``o + p = q·s + r``: for each phase ``r`` a plain
    correlation over ``⌈k/s⌉`` taps of ``y``. oneDNN's strided transposed convolution ran AlexNet's conv1
    (11×11, stride 4, to 3 channels) at 17 GFLOP/s on the 2-core test machine; this form 2.2 times faster, ZF's
    conv1 (7×7, stride 2) 1.5 times. It computes the zero taps past the kernel too (ZF's conv2, 5×5 stride 2:
    36 for 25, slower than oneDNN's there), so the deconvnet (``alexnet.visualize.deconvnet._transpose_conv``)
    and :func:`image_grad_conv2d` take it only back to the pixels (docs/performance.md, Session 25). The same
    sums in another order: equal within fp32 rounding (tested)."""
    cin, cout, kh, kw = weight.shape
    (sy, sx), (py, px) = stride, padding
    ty, tx = -(-kh // sy), -(-kw // sx)  # taps per phase
    w = F.pad(weight, (0, tx * sx - kw, 0, ty * sy - kh)).view(cin, cout, ty, sy, tx, sx)
    # tap t of phase r is kernel row r + s·t, met at y[q − t]: flipped for conv2d's y[q + j − (T − 1)]
    kernel = w.flip(2, 4).permute(1, 3, 5, 0, 2, 4).reshape(cout * sy * sx, cin, ty, tx)
    rows, cols = (py + size[0] - 1) // sy + 1, (px + size[1] - 1) // sx + 1  # phase grid that covers ``size``
    padded = F.pad(y, (tx - 1, max(0, cols - y.shape[3]), ty - 1, max(0, rows - y.shape[2])))
    phases = F.conv2d(padded, kernel)[:, :, :rows, :cols]
    n = phases.shape[0]
    out = (
        phases.reshape(n, cout, sy, sx, rows, cols)
        .permute(0, 1, 4, 2, 5, 3)
        .reshape(n, cout, rows * sy, cols * sx)
    )
    return out[:, :, py : py + size[0], px : px + size[1]]


def image_grad_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`image_grad_conv2d` may replace ``conv(x)``: the *image* needs a gradient and the weights do
    not (activation maximisation, saliency), eager autograd on a plain CPU tensor, a strided convolution of at
    most 4 input channels, one group, no dilation, zero padding, and ``ALEXNET_FIRST_CONV`` not 0."""
    return (
        eager.plain(x)
        and torch.is_grad_enabled()
        and x.requires_grad
        and not conv.weight.requires_grad
        and (conv.bias is None or not conv.bias.requires_grad)
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.shape[1] <= MAX_IN_CHANNELS
        and conv.groups == 1
        and _plain_geometry(conv)
        and conv.stride != (1, 1)
        and not torch.is_autocast_enabled("cpu")
        and _switched_on()
    )


class _ImageGradConv(_FirstConv):
    """:class:`_FirstConv`'s forward; the image's gradient only, by :func:`strided_transpose`."""

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        x, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        stride, padding, _ = ctx.geometry  # type: ignore[attr-defined]
        if torch.is_grad_enabled() or eager.transformed(grad):
            # double backward (a gradient penalty): ATen's differentiable formula
            dx = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, (1, 1), False, (0, 0), 1, (True, False, False)
            )[0]
        else:
            dx = strided_transpose(grad, weight, stride, padding, (int(x.shape[2]), int(x.shape[3])))
        return dx, None, None, None, None


def image_grad_conv2d(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` whose backward gives the image's gradient by :func:`strided_transpose` (call only when
    :func:`image_grad_applies`): oneDNN's backward-data of AlexNet's conv1 (11×11, stride 4, to 3 channels) ran at
    a third of its forward's rate on the 2-core test machine, and was a fifth of an activation-maximisation step
    (docs/performance.md, session 33)."""
    return _ImageGradConv.apply(x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding))
