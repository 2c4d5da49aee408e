"""Inference fast path: each conv stage's ReLU, LRN and max-pool as one kernel on CPU.

AlexNet §3.3–3.4 follows conv1 and conv2 with ReLU, response normalisation and overlapping max-pooling
(z = 3, s = 2): relu → norm → pool in AlexNet, relu → pool → norm in CaffeNet and ZFNet (Fig. 3). As three
modules they read and write the full-size maps three times; the custom operator ``alexnet::relu_lrn_pool`` reads
them once and writes only the pooled maps (``stage_forward`` in ``lrn_cpu.cpp``), the same numbers as the modules
(tests/test_fused.py). The gain is measured in docs/performance.md.

:func:`applies` / :func:`run` are how :meth:`AlexNetFamily.forward_features` uses it. The modules stay what they
are — names, state dict, hooks — and the fused kernel is only taken when nothing could tell the difference:

* no autograd (``torch.no_grad`` / ``torch.inference_mode``: evaluation, occlusion, the explorer);
* a plain CPU tensor in channels-last (``alexnet eval``'s layout) of a dtype the kernel takes, and the kernel built;
* no forward or backward hook on the three modules, on ``features`` or global: activation maps, the deconvnet and
  the layer summary hook them and see every module's own output;
* nothing traces the call (``torch.compile``, ``torch.export``, ONNX export, TorchScript), so exported graphs keep
  one node per module (an ONNX ``LRN`` among them).

``ALEXNET_FUSE=0`` turns it off (A/B measurements).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import native
from alexnet.models.layers import LocalResponseNorm, local_response_norm


def pooled_size(size: int, kernel_size: int, stride: int, ceil_mode: bool) -> int:
    """``nn.MaxPool2d``'s output length without padding: in ceil mode the last window must start in the input."""
    out = (size - kernel_size + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size:
        out -= 1
    return out


def _composed(
    x: torch.Tensor,
    pool_first: bool,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: int,
    stride: int,
    ceil_mode: bool,
) -> torch.Tensor:
    a = torch.relu(x)
    if pool_first:
        return local_response_norm(
            F.max_pool2d(a, kernel_size, stride, ceil_mode=ceil_mode), size, alpha, beta, k
        )
    return F.max_pool2d(
        local_response_norm(a, size, alpha, beta, k), kernel_size, stride, ceil_mode=ceil_mode
    )


@torch.library.custom_op("alexnet::relu_lrn_pool", mutates_args=())
def relu_lrn_pool(
    x: torch.Tensor,
    pool_first: bool,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: int,
    stride: int,
    ceil_mode: bool,
) -> torch.Tensor:
    """``max_pool2d(lrn(relu(x)))``, or ``lrn(max_pool2d(relu(x)))`` with ``pool_first``; ``alpha`` multiplies the
    window sum as in :func:`~alexnet.models.layers.local_response_norm`. No gradient: inference only."""
    return _composed(x, pool_first, size, alpha, beta, k, kernel_size, stride, ceil_mode)


def _kernel_for(x: torch.Tensor) -> native.Kernel | None:
    kernel = native.kernel()
    if kernel is None or not kernel.supports(x) or x.dim() != 4:
        return None
    return kernel if x.is_contiguous(memory_format=torch.channels_last) else None


@relu_lrn_pool.register_kernel("cpu")
def _(
    x: torch.Tensor,
    pool_first: bool,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: int,
    stride: int,
    ceil_mode: bool,
) -> torch.Tensor:
    kernel = _kernel_for(x)
    if kernel is None:
        return _composed(x, pool_first, size, alpha, beta, k, kernel_size, stride, ceil_mode)
    out = tuple(pooled_size(s, kernel_size, stride, ceil_mode) for s in x.shape[2:])
    return kernel.stage(x, out, kernel_size, stride, pool_first, size, alpha, beta, k)  # type: ignore[arg-type]


@relu_lrn_pool.register_fake
def _(
    x: torch.Tensor,
    pool_first: bool,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: int,
    stride: int,
    ceil_mode: bool,
) -> torch.Tensor:
    out = [pooled_size(s, kernel_size, stride, ceil_mode) for s in x.shape[2:]]
    fmt = (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )
    return torch.empty((*x.shape[:2], *out), dtype=x.dtype, device=x.device, memory_format=fmt)


# --- the fast path in a model's forward ------------------------------------------------------------------
def _hooked(module: nn.Module) -> bool:
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as hooks

    return bool(
        hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
        or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
    )


def _tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(
        torch.compiler.is_compiling()
        or exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def applies(features: nn.Sequential, x: torch.Tensor) -> bool:
    """Whether :func:`run` may replace ``features(x)`` (module docstring)."""
    return (
        os.environ.get("ALEXNET_FUSE", "1") != "0"
        and not torch.is_grad_enabled()
        and type(x) is torch.Tensor
        and x.device.type == "cpu"
        and not _tracing()
        and not _hooked(features)
        and not _global_hooks()
        and _kernel_for(x) is not None
    )


def _square(value: int | tuple[int, ...] | None) -> int | None:
    if isinstance(value, int):
        return value
    return value[0] if value and len(set(value)) == 1 else None


def _pool_args(pool: nn.Module) -> tuple[int, int, bool] | None:
    """``(kernel, stride, ceil_mode)`` of a plain square ``nn.MaxPool2d`` without padding, else ``None``."""
    if type(pool) is not nn.MaxPool2d or pool.return_indices:
        return None
    kernel, stride = _square(pool.kernel_size), _square(pool.stride or pool.kernel_size)
    if kernel is None or stride is None or _square(pool.padding) != 0 or _square(pool.dilation) != 1:
        return None
    return kernel, stride, bool(pool.ceil_mode)


def _stage(modules: list[nn.Module], i: int, x: torch.Tensor) -> dict | None:
    """The arguments of :func:`relu_lrn_pool` when ``modules[i:i+3]`` is ReLU + (LRN, pool in either order),
    none of them hooked, and the pooled maps are not empty; else ``None``."""
    run = modules[i : i + 3]
    if len(run) < 3 or type(run[0]) is not nn.ReLU or any(_hooked(m) for m in run):
        return None
    if type(run[1]) is LocalResponseNorm:
        norm, pool, pool_first = run[1], run[2], False
    elif type(run[2]) is LocalResponseNorm:
        norm, pool, pool_first = run[2], run[1], True
    else:
        return None
    args = _pool_args(pool)
    if args is None or min(pooled_size(s, args[0], args[1], args[2]) for s in x.shape[2:]) < 1:
        return None
    kernel_size, stride, ceil_mode = args
    return dict(
        pool_first=pool_first,
        size=int(norm.size),
        alpha=float(norm.sum_alpha),
        beta=float(norm.beta),
        k=float(norm.k),
        kernel_size=kernel_size,
        stride=stride,
        ceil_mode=ceil_mode,
    )


def run(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``features(x)`` with every fusable ReLU + LRN + max-pool run as :func:`relu_lrn_pool` (call only when
    :func:`applies`); every other module, and any run that does not fit, is called as itself."""
    modules = list(features)
    i = 0
    while i < len(modules):
        stage = _stage(modules, i, x)
        if stage is not None and _kernel_for(x) is not None:
            x = relu_lrn_pool(x, **stage)
            i += 3
        else:
            x = modules[i](x)
            i += 1
    return x
