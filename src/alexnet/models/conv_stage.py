"""CaffeNet's and ZFNet's conv2 in CPU training: its weight gradient from the pooled maps' gradient.

In CaffeNet and ZFNet (Zeiler & Fergus Fig. 3) conv2, like conv1, is followed by ReLU → max-pool → LRN, and the
pool is AlexNet's overlapping one (§3.4: z = 3, s = 2). So conv2's output gradient is zero except under each
window's maximum, where that maximum is above zero: at most one pixel in four. Its weight and bias gradients
are taken straight from the pooled maps' gradient, the maxima and conv2's input (``pooled_weight_grad_f32`` in
``conv_stage_cpu.cpp``): the same sums in another order, a quarter of oneDNN's multiply-adds. The input's gradient,
which conv1's stage needs, stays oneDNN's, from the full-size map the fused stage's backward writes
(docs/performance.md, session 15). conv1 takes :mod:`alexnet.models.first_stage`, which needs no input gradient.

:func:`applies` says when :func:`alexnet.models.fused.run` takes it for ``conv, relu, pool, norm``: eager CPU
float32 training (a plain channels-last input outside any transform, tracer or autocast; a weight that needs a
gradient), an ``nn.Conv2d`` or ``GroupedConv2d`` without hooks, dilation or a padding mode, whose groups have a
multiple of 16 input channels and at most 128 (AlexNet's 48, ZFNet's 96), the C++ kernels built for AVX-512
or AVX2 with FMA (:func:`alexnet.models.native.weight_grad_kernel`), a relu → pool → norm stage after it
(:func:`alexnet.models.fused.stage_at`), and ``ALEXNET_CONV_STAGE`` not 0 (A/B measurements). Under
``backward(create_graph=True)`` it raises, as the fused relu → pool → norm stage does.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import eager, first_conv, native
from alexnet.models.layers import GroupedConv2d
from alexnet.models.native import StageArgs

MAX_GROUP_CHANNELS = 128  # the kernel keeps up to 8 vectors of 16 floats per patch pixel


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`run` may replace ``conv`` on ``x`` and a relu → pool → norm stage after it (module
    docstring; :func:`alexnet.models.fused.run` checks the stage)."""
    if type(conv) not in (nn.Conv2d, GroupedConv2d):
        return False
    assert isinstance(conv, nn.Conv2d)
    return (
        first_conv.trains_on_cpu(conv, x)  # first: it asks whether anything traces x
        and x.shape[1] % (16 * conv.groups) == 0
        and 0 < x.shape[1] // conv.groups <= MAX_GROUP_CHANNELS
        and offsets_fit(conv, x)
        and not eager.hooked(conv)
        and os.environ.get("ALEXNET_CONV_STAGE", "1") != "0"
    )


def offsets_fit(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether one zero-padded image fits the kernels' 32-bit offsets (an upper bound on its floats)."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    return (x.shape[2] + 2 * ph + kh) * (x.shape[3] + 2 * pw + kw) * x.shape[1] < 2**31 - 64  # type: ignore[operator]


def output_shape(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int]:
    """``conv(x)``'s shape (no dilation, numeric padding: :func:`applies` holds)."""
    n, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding  # type: ignore[misc]
    return n, conv.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


class ConvStage(torch.autograd.Function):
    """A conv and its relu → pool → norm stage; the conv's weight gradient from the pooled maps'
    (:meth:`native.Kernel.pooled_weight_grad`), its input's, when asked, oneDNN's from the full-size map."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        groups: int,
        stage: StageArgs,
    ) -> torch.Tensor:
        a = F.conv2d(x, weight, bias, stride, padding, 1, groups)
        a = a.contiguous(memory_format=torch.channels_last)
        # the fused stage's training operator (alexnet.models.fused), which says where each maximum was
        y, pooled, idx = torch.ops.alexnet.relu_lrn_pool_train(a, *stage)
        ctx.save_for_backward(x, weight, pooled, y, idx)
        ctx.geometry = (stride, padding, groups, bias is not None, stage, tuple(a.shape))  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "a second derivative through a fused conv → relu → pool → norm stage: its conv output was not "
                "kept; run with ALEXNET_FUSE=0 (the modules themselves) to differentiate the gradient"
            )
        x, weight, pooled, y, idx = map(native.channels_last, ctx.saved_tensors)
        stride, padding, groups, has_bias, stage, shape = ctx.geometry
        needs = ctx.needs_input_grad
        if eager.transformed(grad):  # a batch of gradients (is_grads_batched): PyTorch's batchable ops
            args = (grad, x, weight, pooled, y, idx, shape, stride, padding, groups, has_bias, stage, needs)
            return (*_dense_backward(*args), None, None, None, None)
        kernel = native.kernel()
        assert kernel is not None
        grad = torch.ops.alexnet.lrn_backward(
            grad.contiguous(memory_format=torch.channels_last), pooled, y, stage.size, stage.alpha,
            stage.beta, stage.k,
        )  # fmt: skip
        dx = None
        if needs[0]:  # oneDNN's, from the full-size map of the conv output's gradient
            dense = kernel.stage_backward(grad, shape, None, pooled, idx, stage)
            dx = torch.ops.aten.convolution_backward(
                dense, x, weight, None, stride, padding, (1, 1), False, (0, 0), groups, (True, False, False)
            )[0]
        dw = db = None
        if needs[1] or needs[2]:
            grads = kernel.pooled_weight_grad(
                x, grad, pooled, idx, weight, shape[2:], stride, padding, groups,
                (stage.kernel_size, stage.stride), has_bias,
            )  # fmt: skip
            if grads is None:  # applies() checked what the kernel takes
                raise RuntimeError("pooled_weight_grad refused a layer that applies() accepted")
            dw, db = grads
        return dx, dw if needs[1] else None, db if needs[2] else None, None, None, None, None


def _dense_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    pooled: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    shape: tuple[int, ...],
    stride: tuple[int, int],
    padding: tuple[int, int],
    groups: int,
    has_bias: bool,
    stage: StageArgs,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(dx, dw, db)`` the dense way: the fused stage's backward operator writes the conv output's full-size
    gradient (``shape``), ATen's convolution backward takes it from there. Operators that ``torch.func`` batches
    (the hand-written kernels read raw memory)."""
    dense = torch.ops.alexnet.relu_lrn_pool_backward(
        grad, x.new_empty(0), pooled, y, idx, list(shape), *stage
    )
    bias_sizes = [weight.shape[0]] if has_bias else None
    dx, dw, db = torch.ops.aten.convolution_backward(
        dense, x, weight, bias_sizes, stride, padding, (1, 1), False, (0, 0), groups, list(needs[:3])
    )
    return dx, dw, db


def apply(
    conv: nn.Conv2d, x: torch.Tensor, stage: StageArgs, function: type[ConvStage] = ConvStage
) -> torch.Tensor:
    """``norm(pool(relu(conv(x))))`` for a relu → pool → norm ``stage`` through ``function`` (this module's, or
    :mod:`.first_stage`'s, named for conv1 in profiles)."""
    assert stage.pool_first
    return function.apply(  # type: ignore[no-any-return]
        x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding), conv.groups, stage
    )


def run(conv: nn.Conv2d, x: torch.Tensor, stage: StageArgs) -> torch.Tensor:
    """``norm(pool(relu(conv(x))))`` for a relu → pool → norm ``stage``, with conv's weight and bias gradients from
    the pooled maps' (call only when :func:`applies`)."""
    return apply(conv, x, stage)
