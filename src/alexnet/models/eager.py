"""Whether a call runs eagerly on a plain tensor: the condition for taking a hand-written kernel at all.

Traced calls (``torch.compile``, ``torch.export``, ONNX export, TorchScript) must see the modules' own operators,
so that compiled and exported graphs keep one node per module; tensor subclasses and ``torch.func`` transforms
(vmap, jacrev …) must see them too, since the kernels work on raw memory.
"""

from __future__ import annotations

import torch


def tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return bool(
        torch.compiler.is_compiling()
        or exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def plain(x: torch.Tensor) -> bool:
    """Nothing traces the call, and ``x`` is a plain tensor outside any ``torch.func`` transform."""
    return (
        not tracing()  # first: under torch.compile this folds to False before anything dynamo cannot trace
        and type(x) is torch.Tensor
        and not torch._C._functorch.is_functorch_wrapped_tensor(x)
    )
