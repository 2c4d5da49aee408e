"""Whether a call runs eagerly on a plain tensor that nobody watches: the condition for taking a hand-written
kernel at all.

Traced calls (``torch.compile``, ``torch.export``, ONNX export, TorchScript) must see the modules' own operators,
so that compiled and exported graphs keep one node per module; tensor subclasses, FX proxies (torchvision's
``create_feature_extractor``), ``torch.func`` transforms (vmap, grad, jvp, jacrev …) and forward-mode AD must
see them too, since the kernels work on raw memory and have no forward-mode or batching rules. A module with a
hook (activation maps, the deconvnet, the layer summary) must run as itself, so that its hook sees its own
output.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import nn


def tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(
        torch.compiler.is_compiling()
        or exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def transformed(x: torch.Tensor) -> bool:
    """``x`` is seen through a ``torch.func`` transform (vmap, grad, jvp …) or is a batch of gradients
    (``torch.autograd.grad(..., is_grads_batched=True)``), or a transform is active at all (the
    parameters may be what it wraps: ``grad`` over ``functional_call``'s parameters with a plain image), or ``x``
    may carry a forward-mode tangent (inside ``torch.autograd.forward_ad.dual_level``): only differentiable
    PyTorch ops give the right numbers."""
    return (
        torch._C._functorch.is_functorch_wrapped_tensor(x)
        or torch._C._functorch.is_legacy_batchedtensor(x)  # autograd.grad(is_grads_batched=True)'s vmap
        or torch._C._functorch.maybe_current_level() is not None
        or _forward_ad._current_level >= 0
    )


def plain(x: torch.Tensor) -> bool:
    """Nothing traces the call, and ``x`` is a plain tensor outside any ``torch.func`` transform or forward-mode
    AD level."""
    return (
        not tracing()  # first: under torch.compile this folds to False before anything dynamo cannot trace
        and type(x) is torch.Tensor  # not an FX proxy, not a subclass
        and not transformed(x)
    )


def hooked(module: nn.Module) -> bool:
    """A forward or backward hook (or pre-hook) on ``module`` itself."""
    return bool(
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def global_hooks() -> bool:
    """A module hook registered for every module (``torch.nn.modules.module.register_module_forward_hook`` …)."""
    from torch.nn.modules import module as hooks

    return bool(
        hooks._global_forward_hooks
        or hooks._global_forward_pre_hooks
        or hooks._global_backward_hooks
        or hooks._global_backward_pre_hooks
    )
