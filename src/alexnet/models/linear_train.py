"""The fully connected layers in CPU float32 training by oneDNN's matrix product.

fc6–fc8 (AlexNet §3.5: 9216 → 4096 → 4096 → 1000) are matrix products whose batch side is small (tens to
hundreds of images), a shape at which ``nn.Linear``'s ``addmm`` (MKL) and its backward ``mm`` run at 60–70 % of
the square-matrix rate on the CPU we measured. oneDNN's inner-product primitive, which :mod:`.postops` already
takes in inference, runs them near that rate in all three products of a step: the forward, the input's gradient
(``grad @ W``, the weight read transposed in place) and the weight's gradient (``gradᵀ @ x``, both read
transposed in place): fc6's three at batch 64, about 113 → 80 ms a step (docs/performance.md, session 16). A ReLU after a
layer is applied by the primitive as a post-op; its backward masks the gradient where the output is zero, as
``nn.ReLU``'s does. Dropout stays ``nn.Dropout``'s (the same random stream).

The products sum in another order than MKL's, so the outputs and gradients differ from ``nn.Linear``'s in the
last bits (tests/test_linear_train.py bounds them against float64). Hence only the models with an LRN take it;
``alexnet_owt`` keeps torchvision's exact numbers, as for the other fast paths.

:func:`applies` says when: eager autograd on a plain, non-empty CPU float32 tensor
(:func:`alexnet.models.eager.plain`), no CPU autocast, the classifier made of unhooked ``nn.Linear``, ``nn.ReLU``
and ``nn.Dropout`` only, oneDNN available and enabled, and neither ``ALEXNET_FUSE`` nor ``ALEXNET_LINEAR`` 0
(A/B measurements). Under
``backward(create_graph=True)``, or for a batch of gradients, the backward is written in differentiable PyTorch
ops.
"""

from __future__ import annotations

import os
from typing import cast

import torch
from torch import nn

from alexnet.models import eager, postops

_KINDS = (nn.Linear, nn.ReLU, nn.Dropout)


def applies(classifier: nn.Sequential, x: torch.Tensor) -> bool:
    """Whether :func:`head` may replace ``classifier(x)`` (module docstring)."""
    return (
        eager.plain(x)  # first: a tracer sees nothing else
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 2
        and x.shape[0] > 0  # oneDNN refuses an empty product
        and x.shape[1] > 0
        and not torch.is_autocast_enabled("cpu")
        and all(type(m) in _KINDS for m in classifier)
        and all(m.weight.dtype == torch.float32 for m in classifier if isinstance(m, nn.Linear))
        and not any(eager.hooked(m) for m in (classifier, *classifier))
        and not eager.global_hooks()
        and switched_on()
    )


def switched_on() -> bool:
    """oneDNN available and enabled, and neither ``ALEXNET_FUSE`` nor ``ALEXNET_LINEAR`` 0 (what ``alexnet bench``
    reports)."""
    return (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and os.environ.get("ALEXNET_FUSE", "1") != "0"
        and os.environ.get("ALEXNET_LINEAR", "1") != "0"
    )


def _product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool = False
) -> torch.Tensor:
    """``x @ weightᵀ (+ bias)`` by oneDNN (either operand may be a transposed view), ReLU'd when asked (in place,
    keeping NaN: :func:`alexnet.models.postops.relu_`)."""
    y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return postops.relu_(y) if relu else y


class _Linear(torch.autograd.Function):
    """An fc layer, and the ReLU after it when ``relu``, with all three products by oneDNN."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        relu: bool,
    ) -> torch.Tensor:
        x = x.contiguous()  # kept for the weight's gradient, read there as a transposed view
        y = _product(x, weight, bias, relu)
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        x, weight, y = ctx.saved_tensors  # type: ignore[attr-defined]
        needs = ctx.needs_input_grad  # type: ignore[attr-defined]
        if y is not None:
            grad = torch.ops.aten.threshold_backward(grad, y, 0)  # nn.ReLU's backward: zero where y is
        dx = dw = db = None
        if torch.is_grad_enabled() or eager.transformed(grad):
            # backward(create_graph=True), or a batch of gradients: differentiable, batchable PyTorch ops
            dx = grad @ weight if needs[0] else None
            dw = grad.transpose(-2, -1) @ x if needs[1] else None
        else:
            grad = grad.contiguous()
            if needs[0]:
                dx = _product(grad, weight.t(), None)
            if needs[1]:
                dw = _product(grad.t(), x.t(), None)
        if needs[2] and ctx.has_bias:  # type: ignore[attr-defined]
            db = grad.sum(-2)
        return dx, dw, db, None


def _fc(fc: nn.Linear, x: torch.Tensor, relu: bool) -> torch.Tensor:
    return cast(torch.Tensor, _Linear.apply(x, fc.weight, fc.bias, relu))


def head(classifier: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``classifier(x)`` with each Linear (+ the ReLU after it) as one :class:`_Linear` (call only when
    :func:`applies`); dropout is ``nn.Dropout``'s."""
    return postops.run_head(classifier, x, _fc)
