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
multiple of 16 input channels and at most 128 (AlexNet's 48, ZFNet's 96), the C++ kernels built, a relu → pool →
norm stage after it (:func:`alexnet.models.fused.stage_at`), and ``ALEXNET_CONV_STAGE`` not 0 (A/B
measurements). Under ``backward(create_graph=True)`` it raises, as the fused relu → pool → norm stage does.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import eager, native
from alexnet.models.layers import GroupedConv2d
from alexnet.models.native import StageArgs

MAX_GROUP_CHANNELS = 128  # the kernel keeps up to 8 vectors of 16 floats per patch pixel


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`run` may replace ``conv`` on ``x`` and a relu → pool → norm stage after it (module
    docstring; :func:`alexnet.models.fused.run` checks the stage)."""
    if type(conv) not in (nn.Conv2d, GroupedConv2d) or not eager.plain(x):  # first: nothing traces x
        return False
    assert isinstance(conv, nn.Conv2d)
    group_channels = x.shape[1] // conv.groups if x.dim() == 4 else 0
    return (
        torch.is_grad_enabled()
        and conv.weight.requires_grad
        and x.device.type == "cpu"
        and x.dtype == conv.weight.dtype == torch.float32
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.is_autocast_enabled("cpu")
        and group_channels % 16 == 0
        and 0 < group_channels <= MAX_GROUP_CHANNELS
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and _padded_floats(conv, x) < 2**31 - 1
        and not eager.hooked(conv)
        and os.environ.get("ALEXNET_CONV_STAGE", "1") != "0"
        and native.kernel() is not None
    )


def _padded_floats(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """An upper bound on the floats of one zero-padded image (the kernel's offsets are 32-bit)."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    return (x.shape[2] + 2 * ph + kh) * (x.shape[3] + 2 * pw + kw) * x.shape[1]  # type: ignore[operator]


class _ConvStage(torch.autograd.Function):
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
        a = F.conv2d(x, weight, bias, stride, padding, 1, groups).contiguous(
            memory_format=torch.channels_last
        )
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
        if eager.transformed(
            grad
        ):  # batched gradients (is_grads_batched, vectorized jacobians): PyTorch's ops
            return (*dense_backward(grad, x, weight, pooled, y, idx, shape, stride, padding, groups, has_bias, stage,
                                    needs), None, None, None, None)  # fmt: skip
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


def dense_backward(
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
    (the hand-written kernels read raw memory); also :mod:`alexnet.models.first_stage`'s."""
    dense = torch.ops.alexnet.relu_lrn_pool_backward(
        grad, x.new_empty(0), pooled, y, idx, list(shape), *stage
    )
    bias_sizes = [weight.shape[0]] if has_bias else None
    dx, dw, db = torch.ops.aten.convolution_backward(
        dense, x, weight, bias_sizes, stride, padding, (1, 1), False, (0, 0), groups, list(needs[:3])
    )
    return dx, dw, db


def run(conv: nn.Conv2d, x: torch.Tensor, stage: StageArgs) -> torch.Tensor:
    """``norm(pool(relu(conv(x))))`` for a relu → pool → norm ``stage``, with conv's weight and bias gradients from
    the pooled maps' (call only when :func:`applies`)."""
    assert stage.pool_first
    return _ConvStage.apply(  # type: ignore[no-any-return]
        x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding), conv.groups, stage
    )
