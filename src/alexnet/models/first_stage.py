"""The first conv stage of CaffeNet and ZFNet in CPU training: conv1's weight gradient from the pooled maps'.

CaffeNet and ZFNet (Zeiler & Fergus Fig. 3) run conv1 → ReLU → max-pool → LRN. The pool is AlexNet's overlapping
one (§3.4: z = 3, s = 2), so each pooled value's gradient reaches one conv output pixel, the window's maximum, and
the ReLU passes it only where that maximum is above zero. conv1's output gradient is therefore zero at three
pixels in four or more, and when the image needs no gradient (training) that map serves only conv1's weight and
bias gradients. Here they are taken straight from the pooled gradient, its maxima and the image
(``first_conv_pooled_weight_grad_f32`` in ``first_conv_cpu.cpp``): the same sums in another order, a quarter
of :mod:`alexnet.models.first_conv`'s multiply-adds, and the 110×110 gradient map of ZFNet (300 MB at batch 64)
is never written (docs/performance.md, session 15). The forward is unchanged: oneDNN's convolution, then the
fused stage kernel of :mod:`alexnet.models.fused`, which writes where each maximum was.

:func:`applies` says when :func:`alexnet.models.fused.run` takes it for ``conv, relu, pool, norm``:

* everything :func:`alexnet.models.first_conv.applies` asks (eager CPU float32, channels-last, no autocast, a
  weight that needs a gradient, at most 4 image channels, output channels a multiple of 16) and an image that
  needs no gradient;
* a relu → pool → norm stage after it (:func:`alexnet.models.fused.stage_at`), no hook on the conv;
* a kernel row of at most 48 floats (``kernel width × channels``: AlexNet's 11 × 3, ZFNet's 7 × 3) and an image
  whose padded floats a 32-bit offset reaches;
* ``ALEXNET_FIRST_STAGE`` not 0 (A/B measurements).

Under ``backward(create_graph=True)`` it raises, as the fused relu → pool → norm stage does: the conv output
is not kept (``ALEXNET_FUSE=0`` runs the modules).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import conv_stage, eager, first_conv, native
from alexnet.models.layers import SpaceToDepthConv2d
from alexnet.models.native import StageArgs

MAX_ROW_FLOATS = 48  # the kernel keeps at most 3 vectors of 16 floats per kernel row


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`run` may replace ``conv`` on ``x`` and a relu → pool → norm stage after it (module
    docstring; :func:`alexnet.models.fused.run` checks the stage)."""
    return (
        type(conv) in (nn.Conv2d, SpaceToDepthConv2d)
        and first_conv.applies(conv, x)  # first: it asks whether anything traces x
        and not x.requires_grad
        and not eager.hooked(conv)
        and conv.kernel_size[1] * x.shape[1] <= MAX_ROW_FLOATS
        and _padded_floats(conv, x) < 2**31 - 64  # the kernel's offsets into an image are 32-bit
        and os.environ.get("ALEXNET_FIRST_STAGE", "1") != "0"
    )


def _padded_floats(conv: nn.Conv2d, x: torch.Tensor) -> int:
    """An upper bound on the floats of one zero-padded image in the kernel's buffer."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    return (x.shape[2] + 2 * ph + kh) * (x.shape[3] + 2 * pw + kw) * x.shape[1]  # type: ignore[operator]


def output_shape(conv: nn.Conv2d, x: torch.Tensor) -> tuple[int, int, int, int]:
    """``conv(x)``'s shape (no dilation, numeric padding: :func:`applies` holds)."""
    n, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding  # type: ignore[misc]
    return n, conv.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


class _FirstStage(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        stage: StageArgs,
    ) -> torch.Tensor:
        a = F.conv2d(x, weight, bias, stride, padding).contiguous(memory_format=torch.channels_last)
        # the fused stage's training operator (alexnet.models.fused), which says where each maximum was
        y, pooled, idx = torch.ops.alexnet.relu_lrn_pool_train(a, *stage)
        ctx.save_for_backward(x, weight, pooled, y, idx)
        ctx.geometry = (stride, padding, bias is not None, stage, tuple(a.shape[2:]))  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        if torch.is_grad_enabled():
            raise RuntimeError(
                "a second derivative through the fused conv1 → relu → pool → norm stage: its conv output was "
                "not kept; run with ALEXNET_FUSE=0 (the modules themselves) to differentiate the gradient"
            )
        x, weight, pooled, y, idx = map(native.channels_last, ctx.saved_tensors)
        stride, padding, has_bias, stage, conv_out = ctx.geometry
        if eager.transformed(
            grad
        ):  # batched gradients (is_grads_batched, vectorized jacobians): PyTorch's ops
            shape = (x.shape[0], weight.shape[0], *conv_out)
            grads = conv_stage.dense_backward(
                grad,
                x,
                weight,
                pooled,
                y,
                idx,
                shape,
                stride,
                padding,
                1,
                has_bias,
                stage,
                ctx.needs_input_grad,
            )
            return (*grads, None, None, None)
        grad = torch.ops.alexnet.lrn_backward(
            grad.contiguous(memory_format=torch.channels_last), pooled, y, stage.size, stage.alpha,
            stage.beta, stage.k,
        )  # fmt: skip
        kernel = native.kernel()
        assert kernel is not None
        grads = kernel.first_conv_pooled_weight_grad(
            x,
            grad,
            pooled,
            idx,
            weight,
            conv_out,
            stride,
            padding,
            (stage.kernel_size, stage.stride),
            has_bias,
        )
        if grads is None:  # applies() checked what the kernel takes
            raise RuntimeError("first_conv_pooled_weight_grad refused a layer that applies() accepted")
        dw, db = grads
        needs = ctx.needs_input_grad
        return None, dw if needs[1] else None, db if needs[2] else None, None, None, None


def run(conv: nn.Conv2d, x: torch.Tensor, stage: StageArgs) -> torch.Tensor:
    """``norm(pool(relu(conv(x))))`` for a relu → pool → norm ``stage``, with conv's weight and bias gradients from
    the pooled maps' (call only when :func:`applies`)."""
    assert stage.pool_first
    return _FirstStage.apply(  # type: ignore[no-any-return]
        x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding), stage
    )
