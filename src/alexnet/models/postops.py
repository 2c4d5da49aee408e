"""CPU inference: a convolution or fully connected layer as a oneDNN primitive, and the ReLU after it in place.

The primitives are ``torch.ops.mkldnn._convolution_pointwise`` and ``_linear_pointwise``, the operators
``torch.compile`` uses on CPU. Their ReLU "post-op" would cost no pass over memory, but it is max(x, 0), which
turns a NaN into 0 where ``nn.ReLU`` keeps it; so the ReLU runs after them, in place (:func:`relu_`,
docs/performance.md, Session 21). The paper models take this path where their forward has a conv or fc layer
followed by a ReLU outside a fused conv stage (:mod:`alexnet.models.fused`): conv3 + relu3, conv4 + relu4,
conv5 + relu5, fc6 + relu6, fc7 + relu7, and fc8 alone. For the fully connected layers at a batch of tens of
images oneDNN's kernel also runs faster than the ``addmm`` that ``nn.Linear`` calls (docs/performance.md,
session 9).

The numbers: a convolution with its ReLU gives the convolution's values, ReLU'd; the fc layers sum in another
order than MKL's ``addmm``, so their outputs differ in the last bits (tests/test_postops.py bounds it). Hence
only the models with an LRN take it: ``alexnet_owt`` keeps torchvision's exact logits, as it does for the
fused stages (:func:`alexnet.models.fused.kernel_layout`).

Under CPU bf16 autocast the primitives take what autocast would hand the modules: the input, weight and bias
cast to bfloat16, with a bfloat16 output, which the ReLU then takes as the module would.

Taken only when nothing could tell the difference, as the fused stages are: inference (no autograd), CPU
float32 (or bf16 autocast where oneDNN has bf16 kernels, :func:`bf16_supported`), a plain tensor nothing traces, no hook on the modules or global, and neither
``ALEXNET_FUSE`` nor ``ALEXNET_POSTOPS`` 0 (A/B measurements).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import torch
from torch import nn

from alexnet.models import eager

_AUTOCAST_IN = (torch.float32, torch.bfloat16)  # what reaches a layer under CPU bf16 autocast


def _autocast() -> torch.dtype | None:
    """The dtype CPU autocast computes convolutions and linear layers in, or ``None`` outside autocast."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


# what a CPU without oneDNN's bfloat16 kernels is told (`alexnet bench --amp` refuses, `alexnet train --amp` warns)
NO_BF16_KERNELS = (
    "this CPU has no bfloat16 kernels in oneDNN (they need AVX-512 with BW, VL and DQ, or AVX-NE-CONVERT)"
)


@functools.cache
def bf16_supported() -> bool:
    """Whether this CPU's oneDNN has bfloat16 kernels (AVX-512 with BW/VL/DQ, AMX, or AVX-NE-CONVERT). Without them
    its bf16 primitives refuse to run ("bf16 path needs the cpu support …"), and bf16 stays with ATen's own
    convolutions, which PyTorch picks for such a CPU."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def allowed(x: torch.Tensor) -> bool:
    """Whether ``x`` may take the post-op path (module hooks are the caller's to check)."""
    cast = _autocast()
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and (
            x.dtype == torch.float32
            if cast is None
            else cast == torch.bfloat16 and x.dtype in _AUTOCAST_IN and bf16_supported()
        )
        and eager.plain(x)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled  # a user's torch.backends.mkldnn.flags(enabled=False) holds here too
        and os.environ.get("ALEXNET_FUSE", "1") != "0"
        and os.environ.get("ALEXNET_POSTOPS", "1") != "0"
        and not eager.global_hooks()
    )


def _args(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The tensors as autocast hands them to a convolution or linear layer: cast to its dtype, if on."""
    cast = _autocast()
    return [t if t is None or cast is None else t.to(cast) for t in tensors]


def _hooked(*modules: nn.Module) -> bool:
    return any(eager.hooked(m) for m in modules)


def conv_relu_at(modules: Sequence[nn.Module], i: int) -> nn.Conv2d | None:
    """``modules[i]`` when it is a plain zero-padded 2-D convolution followed by a ReLU, neither hooked."""
    run = modules[i : i + 2]
    if len(run) < 2 or not isinstance(run[0], nn.Conv2d) or type(run[1]) is not nn.ReLU or _hooked(*run):
        return None
    conv = run[0]
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or conv.weight.dtype != torch.float32:
        return None
    return conv


def relu_(y: torch.Tensor) -> torch.Tensor:
    """``torch.relu_``, after a oneDNN product instead of its ReLU post-op: the post-op is max(x, 0), which turns a
    NaN into 0 where ``nn.ReLU`` keeps it, and a NaN anywhere in the network must reach its output and the loss
    (as on the modules' path), not vanish at the next ReLU."""
    return torch.relu_(y)


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))``: one oneDNN convolution (in ``x``'s memory format), then the ReLU in place."""
    x, weight, bias = _args(x, conv.weight, conv.bias)
    y = torch.ops.mkldnn._convolution_pointwise(
        x,
        weight,
        bias,
        list(conv.padding),
        list(conv.stride),
        list(conv.dilation),
        conv.groups,
        "none",
        [],
        "",
    )
    return relu_(y)


def head_applies(classifier: nn.Sequential, x: torch.Tensor) -> bool:
    """Whether :func:`head` may replace ``classifier(x)``: :func:`allowed`, the classifier in eval mode and made of
    ``nn.Linear``, ``nn.ReLU`` and ``nn.Dropout`` only, none of them hooked."""
    kinds = (nn.Linear, nn.ReLU, nn.Dropout)
    return (
        allowed(x)
        and x.dim() == 2
        and not classifier.training
        and all(type(m) in kinds for m in classifier)
        and not _hooked(classifier, *classifier)
        and all(m.weight.dtype == torch.float32 for m in classifier if isinstance(m, nn.Linear))
    )


def run_head(
    classifier: nn.Sequential, x: torch.Tensor, fc: Callable[[nn.Linear, torch.Tensor, bool], torch.Tensor]
) -> torch.Tensor:
    """``classifier(x)`` with each Linear, and the ReLU right after it, as one ``fc(linear, x, relu)`` call; any
    other ReLU as ``torch.relu``, any other module as itself (:func:`head`, and
    :func:`alexnet.models.linear_train.head` in training)."""
    modules = list(classifier)
    i = 0
    while i < len(modules):
        m = modules[i]
        if isinstance(m, nn.Linear):
            relu = i + 1 < len(modules) and type(modules[i + 1]) is nn.ReLU
            x = fc(m, x, relu)
            i += 2 if relu else 1
        else:
            x = torch.relu(x) if type(m) is nn.ReLU else m(x)  # nn.Dropout: the identity in eval
            i += 1
    return x


def _fc_relu(fc: nn.Linear, x: torch.Tensor, relu: bool) -> torch.Tensor:
    x, weight, bias = _args(x, fc.weight, fc.bias)
    y = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return relu_(y) if relu else y


def head(classifier: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``classifier(x)`` with each Linear (+ ReLU) as one oneDNN primitive; dropout is the identity in eval."""
    return run_head(classifier, x, _fc_relu)
