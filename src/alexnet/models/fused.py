"""Conv stages as one kernel: each stage's ReLU, LRN and max-pool in a single pass, forward and backward.

AlexNet §3.3–3.4 follows conv1 and conv2 with ReLU, response normalisation and overlapping max-pooling
(z = 3, s = 2): relu → norm → pool in AlexNet, relu → pool → norm in CaffeNet and ZFNet (Fig. 3). As three
modules they read and write the full-size maps about three times each way and keep three activation-sized tensors
for the backward. Here (``stage_forward`` / ``stage_backward`` in ``lrn_cpu.cpp``) the forward reads the conv
output once and writes the pooled maps; for training it also writes where each maximum was (one byte per pooled
value), and the backward gathers each input pixel's gradient from the windows that hold it, with the LRN's
gradient and the ReLU's mask, in one pass. The numbers are the modules' (tests/test_fused.py compares outputs and
gradients, ties in the pooling windows included); the gain is measured in docs/performance.md. On CUDA the
same operators run as Triton kernels (:mod:`alexnet.models.stage_triton`; tests/test_stage_triton.py, and
tests/test_cuda.py compiled).

* ``alexnet::relu_lrn_pool``: the inference operator (no autograd);
* ``alexnet::relu_lrn_pool_train`` / ``alexnet::relu_lrn_pool_backward``: the training pair, joined by
  ``register_autograd``; :func:`stage` picks one or the other, and in an eager training step calls the same
  kernels through :class:`_TrainStage`, a plain ``autograd.Function`` with less host time per call.

:func:`applies` / :func:`run` are how :meth:`AlexNetFamily.forward_features` uses them. The modules stay what they
are — names, state dict, hooks — and the fused kernels are only taken when nothing could tell the difference:

* a plain tensor in channels-last (the layout ``alexnet train`` and ``alexnet eval`` use) of a dtype the kernel
  takes: on CPU float32, float64 and bfloat16 with the C++ kernel built; on CUDA float32, bfloat16 and float16
  with Triton (``ALEXNET_TRITON=0`` turns the Triton kernels off);
* no forward or backward hook on the three modules, on ``features`` or global: activation maps, the deconvnet and
  the layer summary hook them and see every module's own output;
* nothing traces the call (``torch.compile``, ``torch.export``, ONNX export, TorchScript), so exported and compiled
  graphs keep one node per module (an ONNX ``LRN`` among them).

In CPU inference :func:`run` also hands each other conv + ReLU to :mod:`alexnet.models.postops`, and in CPU
training a conv with a relu → pool → norm stage after it to :mod:`alexnet.models.first_stage` (conv1) or
:mod:`alexnet.models.conv_stage` (conv2): its weight gradient from the pooled maps'. ``ALEXNET_FUSE=0`` turns all
of them off (A/B measurements).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import conv_stage, eager, first_stage, layers, native, postops
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


StageArgs = native.StageArgs


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
    window sum as in :func:`~alexnet.models.layers.local_response_norm`. No gradient: :func:`stage` is the
    differentiable form. Without stage kernels for ``x``, the composed PyTorch ops."""
    stage = StageArgs(pool_first, size, alpha, beta, k, kernel_size, stride, ceil_mode)
    kernels = _kernels_for(x)
    if kernels is None:
        return _composed(x, *stage)
    return kernels.stage(x, _out(x, stage), stage)[0]


class StageKernels(Protocol):
    """What each device's stage kernels offer: :class:`~alexnet.models.native.Kernel` on CPU (C++),
    :mod:`alexnet.models.stage_triton` on CUDA (Triton)."""

    def supports(self, x: torch.Tensor) -> bool: ...

    def stage(
        self, x: torch.Tensor, out: tuple[int, int], stage: StageArgs, training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]: ...

    def stage_backward(
        self,
        grad: torch.Tensor,
        shape: Sequence[int],
        x: torch.Tensor | None,
        pooled: torch.Tensor | None,
        idx: torch.Tensor,
        stage: StageArgs,
    ) -> torch.Tensor: ...


def _kernels(device: torch.device) -> StageKernels | None:
    """The stage kernels of ``device``: the C++ kernel when it is built (CPU), the Triton kernels when Triton is
    there and ``ALEXNET_TRITON`` is not 0 (CUDA)."""
    if device.type == "cpu":
        return native.kernel()
    if device.type == "cuda" and layers.triton_kernels() is not None:
        from alexnet.models import stage_triton

        return cast(StageKernels, stage_triton)
    return None


def _kernels_for(x: torch.Tensor) -> StageKernels | None:
    """The stage kernels of ``x``'s device, when they take ``x``: 4-D, channels-last, a dtype they compute in."""
    kernels = _kernels(x.device)
    if kernels is None or x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return None
    return kernels if kernels.supports(x) else None


def _keeps_denominators(stage: StageArgs) -> bool:
    """Whether the CUDA kernels' training forward returns the maxima's LRN denominators for ``stage``."""
    if layers.triton_kernels() is None:
        return False
    from alexnet.models import stage_triton

    return stage_triton.keeps_denominators(stage)


def _out(x: torch.Tensor, stage: StageArgs) -> tuple[int, int]:
    h, w = (pooled_size(s, stage.kernel_size, stage.stride, stage.ceil_mode) for s in x.shape[2:])
    return h, w


# The fakes below take the operators' arguments after the tensors as ``*args``, in StageArgs' order.
def _empty_like_out(x: torch.Tensor, stage: StageArgs, dtype: torch.dtype | None = None) -> torch.Tensor:
    size = (*x.shape[:2], *_out(x, stage))
    return torch.empty(size, dtype=dtype or x.dtype, device=x.device, memory_format=layers.layout(x))


@relu_lrn_pool.register_fake
def _(x: torch.Tensor, *args: Any) -> torch.Tensor:
    return _empty_like_out(x, StageArgs(*args))


# Training: the forward also returns what its backward needs (where each maximum was; the LRN's input when
# pooling comes first), the backward is one gather over the conv output. CPU and CUDA kernels (channels-last).
@torch.library.custom_op("alexnet::relu_lrn_pool_train", mutates_args=())
def _train_op(
    x: torch.Tensor,
    pool_first: bool,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: int,
    stride: int,
    ceil_mode: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(stage output, what the backward needs besides the input or an empty tensor, uint8 window offsets of the
    maxima)``: the middle one is the LRN's input when pooling comes first, the maxima's LRN denominators where
    the CUDA kernels keep them (:func:`alexnet.models.stage_triton.keeps_denominators`)."""
    stage = StageArgs(pool_first, size, alpha, beta, k, kernel_size, stride, ceil_mode)
    kernels = _kernels_for(x)
    if kernels is None:
        raise NotImplementedError(
            "alexnet::relu_lrn_pool_train needs stage kernels (C++ on CPU, Triton on CUDA) and a channels-last input"
        )
    y, pooled, idx = kernels.stage(x, _out(x, stage), stage, training=True)
    assert idx is not None
    return y, pooled if pooled is not None else x.new_empty(0), idx


@_train_op.register_fake
def _(x: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    stage = StageArgs(*args)
    if stage.pool_first:
        pooled = _empty_like_out(x, stage)
    elif x.device.type == "cuda" and _keeps_denominators(stage):
        pooled = _empty_like_out(x, stage, torch.float32)
    else:
        pooled = x.new_empty(0)
    return _empty_like_out(x, stage), pooled, _empty_like_out(x, stage, torch.uint8)


@torch.library.custom_op("alexnet::relu_lrn_pool_backward", mutates_args=())
def _backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    pooled: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    shape: list[int],
    pool_first: bool,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    kernel_size: int,
    stride: int,
    ceil_mode: bool,
) -> torch.Tensor:
    """The gradient of the stage's input (of ``shape``) from its output's; ``x`` is the input (relu → norm →
    pool, with ``pooled`` the maxima's LRN denominators where the forward kept them), ``pooled`` and ``y`` the
    LRN's input and output (relu → pool → norm); the others may be empty."""
    stage = StageArgs(pool_first, size, alpha, beta, k, kernel_size, stride, ceil_mode)
    return _backward(grad, x, pooled, y, idx, shape, stage)


def _backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    pooled: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    shape: list[int],
    stage: StageArgs,
) -> torch.Tensor:
    """:func:`_backward_op`'s kernels, called directly."""
    kernels = _kernels(grad.device)
    if kernels is None:
        raise NotImplementedError(
            "alexnet::relu_lrn_pool_backward needs stage kernels (C++ on CPU, Triton on CUDA)"
        )
    if stage.pool_first:
        grad = layers.lrn_backward(grad, pooled, y, stage.size, stage.alpha, stage.beta, stage.k)
        return kernels.stage_backward(grad, shape, None, pooled, idx, stage)
    return kernels.stage_backward(grad, shape, x, pooled if pooled.numel() else None, idx, stage)


@_backward_op.register_fake
def _(
    grad: torch.Tensor,
    x: torch.Tensor,
    pooled: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    shape: list[int],
    *stage: Any,
) -> torch.Tensor:
    return torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)


def _save(
    ctx: Any, x: torch.Tensor, stage: StageArgs, y: torch.Tensor, pooled: torch.Tensor, idx: torch.Tensor
) -> None:
    ctx.stage = stage
    ctx.shape = list(x.shape)
    # relu → norm → pool keeps the conv output (no module keeps it otherwise); relu → pool → norm keeps only
    # pooled-size tensors, its output among them (the next conv keeps that anyway)
    saved = (x.new_empty(0), pooled, y, idx) if stage.pool_first else (x, pooled, x.new_empty(0), idx)
    ctx.save_for_backward(*saved)
    # no zero-filled gradients for what the backward ignores (activation-sized fills every step)
    ctx.set_materialize_grads(False)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: tuple) -> None:
    x, *args = inputs
    y, pooled, idx = output
    _save(ctx, x, StageArgs(*args), y, pooled, idx)
    ctx.mark_non_differentiable(pooled, idx)


def _stage_backward(ctx: Any, grad: torch.Tensor | None, *_: Any, operator: bool = True) -> tuple:
    x, pooled, y, idx = map(native.channels_last, ctx.saved_tensors)
    if grad is None:  # the output was not used in the loss
        return (None, *(None,) * len(ctx.stage))
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return (_differentiable_backward(ctx.stage, grad, x), *(None,) * len(ctx.stage))
    if operator:
        dx = _backward_op(grad, x, pooled, y, idx, ctx.shape, *ctx.stage)
    else:
        dx = _backward(grad, x, pooled, y, idx, ctx.shape, ctx.stage)
    return (dx, *(None,) * len(ctx.stage))


def _differentiable_backward(stage: StageArgs, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The stage's gradient through the modules' own ops, recomputed from the conv output ``x`` with a graph.

    relu → pool → norm stages keep only pooled-size tensors (:func:`_setup_context`), so their input is gone;
    the model's forward takes the modules instead whenever its input needs a gradient (:func:`applies`), which
    covers gradient penalties on the image. A second derivative through such a stage otherwise asks for the
    modules themselves: ``ALEXNET_FUSE=0``.
    """
    if stage.pool_first:
        raise RuntimeError(
            "a second derivative through a fused relu → pool → norm stage: its input was not kept; "
            "run with ALEXNET_FUSE=0 (the modules themselves) to differentiate the gradient"
        )
    with torch.enable_grad():
        out = _composed(x, *stage)
        (dx,) = torch.autograd.grad(out, x, grad, create_graph=True)
    return dx


_train_op.register_autograd(_stage_backward, setup_context=_setup_context)


class _TrainStage(torch.autograd.Function):
    """The training operators' kernels and backward (:func:`_train_op`, :func:`_stage_backward`) as a plain
    ``autograd.Function``: the same numbers without the registered operator's Python layers
    (``register_autograd``, two operator calls), which cost about 100 µs of host time per stage and step
    (docs/performance.md, Session 20). A paper model's step on a GPU waits for its host (Session 18)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, *args: Any) -> torch.Tensor:  # type: ignore[override]
        stage = StageArgs(*args)
        kernels = _kernels_for(x)
        if kernels is None:  # stage() is only called when they take x (usable)
            raise NotImplementedError(
                "the fused training stage needs stage kernels and a channels-last input"
            )
        y, pooled, idx = kernels.stage(x, _out(x, stage), stage, training=True)
        assert idx is not None
        _save(ctx, x, stage, y, pooled if pooled is not None else x.new_empty(0), idx)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple:  # type: ignore[override]
        return _stage_backward(ctx, grad, operator=False)


def stage(x: torch.Tensor, args: StageArgs) -> torch.Tensor:
    """A conv stage's ReLU + LRN + max-pool on a channels-last ``x`` a kernel takes (:func:`usable`);
    differentiable when ``x`` needs a gradient (then through the training kernels), else
    :func:`relu_lrn_pool`. Under a ``TorchDispatchMode`` (an operator log, ``DebugMode``) training goes through
    the registered operators, so that the mode sees them, rather than kernels writing memory behind its back."""
    if torch.is_grad_enabled() and x.requires_grad:
        if torch._C._len_torch_dispatch_stack():
            return _train_op(x, *args)[0]
        return cast(torch.Tensor, _TrainStage.apply(x, *args))
    return relu_lrn_pool(x, *args)


# --- the fast path in a model's forward ------------------------------------------------------------------
def _allowed(x: torch.Tensor) -> bool:
    """Nothing global forbids the fused kernels for ``x``: no tracing, no global hook, ``ALEXNET_FUSE`` not 0."""
    return eager.plain(x) and os.environ.get("ALEXNET_FUSE", "1") != "0" and not eager.global_hooks()


def usable(x: torch.Tensor) -> bool:
    """Whether the fused kernels may take ``x`` and nothing global (hooks, tracing, ``ALEXNET_FUSE=0``) forbids
    them; hooks on the modules themselves are checked by :func:`stage_at` (module docstring)."""
    return _allowed(x) and _kernels_for(x) is not None


def kernel_layout(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``x`` in the layout the fused path takes: on CPU, a 4-D batch in any other layout is copied to
    channels-last when ``features`` has an LRN to fuse and the C++ kernels would then take it (and
    :func:`applies` would hold); else ``x`` itself (so ``alexnet_owt`` still gives torchvision's exact numbers).

    So ``model(x)`` on a plain NCHW batch runs as fast as on a channels-last one: oneDNN's convolutions are
    faster in channels-last too, and the copy of the image batch costs a few ms (the NCHW rows of
    docs/performance.md). CPU only: on CUDA the layout is the caller's choice, as it was measured.
    """
    if (
        not _allowed(x)  # first: an FX proxy or a vmapped tensor must not be asked its device or layout
        or x.device.type != "cpu"
        or x.dim() != 4
        or x.is_contiguous(memory_format=torch.channels_last)
        or eager.hooked(features)
        or not has_norm(features)
    ):
        return x
    kernels = _kernels(x.device)
    if kernels is None or not kernels.supports(x):
        return x
    return x.contiguous(memory_format=torch.channels_last)


def applies(features: nn.Sequential, x: torch.Tensor) -> bool:
    """Whether :func:`run` may replace ``features(x)``. Not for an image that needs a gradient itself (saliency,
    gradient penalties): a relu → pool → norm stage could not give that gradient a second derivative
    (:func:`_differentiable_backward`), and training never asks for it."""
    return usable(x) and not eager.hooked(features) and not (x.requires_grad and torch.is_grad_enabled())


class _FlattenChannelsLast(torch.autograd.Function):
    """``torch.flatten(x, 1)`` whose backward hands the gradient back channels-last, as ``x`` is."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shape = x.shape
        return torch.flatten(x, 1)  # a copy in NCHW order, which fc6's weight expects

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


def flatten(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``torch.flatten(x, 1)`` of the pool5 maps. In CPU training on channels-last maps the gradient goes back
    channels-last: ``torch.flatten``'s comes back NCHW, and the max-pool's CPU backward then converts the conv5
    maps and runs 3× slower (pool5, batch 64: 6.2–8.7 → 2.0 ms in float32, 4.5 → 1.5 ms in bf16;
    docs/performance.md, session 10). The same numbers either way; only where :func:`kernel_layout` applies
    (a model with an LRN, nothing tracing, no hook on ``features``, ``ALEXNET_FUSE`` not 0)."""
    if (
        _allowed(x)  # first: an FX proxy or a vmapped tensor must not be asked its device or layout
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.requires_grad
        and torch.is_grad_enabled()
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and has_norm(features)
        and not eager.hooked(features)
    ):
        return cast(torch.Tensor, _FlattenChannelsLast.apply(x))
    return torch.flatten(x, 1)


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


def stage_at(modules: Sequence[nn.Module], i: int, shape: Sequence[int]) -> StageArgs | None:
    """The arguments of :func:`stage` when ``modules[i:i+3]`` is ReLU + (LRN, pool in either order),
    none of them hooked, and the pooled maps of an input of ``shape`` are not empty; else ``None``."""
    run = modules[i : i + 3]
    if len(run) < 3 or type(run[0]) is not nn.ReLU or any(eager.hooked(m) for m in run):
        return None
    if type(run[1]) is LocalResponseNorm:
        norm, pool, pool_first = run[1], run[2], False
    elif type(run[2]) is LocalResponseNorm:
        norm, pool, pool_first = run[2], run[1], True
    else:
        return None
    args = _pool_args(pool)
    if args is None or min(pooled_size(s, args[0], args[1], args[2]) for s in shape[2:]) < 1:
        return None
    if args[0] * args[0] > 256:  # window offsets are stored in a byte
        return None
    return StageArgs(
        pool_first, int(norm.size), float(norm.sum_alpha), float(norm.beta), float(norm.k), *args
    )


def has_norm(modules: Iterable[nn.Module]) -> bool:
    """Whether a paper model's LRN is among ``modules``: the models that take the fast paths at all, so that
    ``alexnet_owt`` keeps torchvision's exact numbers."""
    return any(type(m) is LocalResponseNorm for m in modules)


def _norm_after(modules: Sequence[nn.Module], i: int) -> bool:
    return has_norm(modules[i + 1 : i + 3])


def _conv_and_stage_at(modules: Sequence[nn.Module], i: int, x: torch.Tensor) -> tuple[Any, StageArgs] | None:
    """``(module that runs them, stage)`` when ``modules[i]`` is a conv whose weight gradient CPU training takes
    from the pooled maps' (:mod:`.first_stage` for conv1, :mod:`.conv_stage` for conv2) and a relu → pool → norm
    stage follows it; else ``None``."""
    for fast in (first_stage, conv_stage):
        if fast.applies(modules[i], x):
            shape = conv_stage.output_shape(cast(nn.Conv2d, modules[i]), x)
            args = stage_at(modules, i + 1, shape)
            if args is not None and args.pool_first:
                return fast, args
    return None


def run(features: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``features(x)`` with every fusable ReLU + LRN + max-pool run as one :func:`stage` (call only when
    :func:`applies`), in CPU training conv1 or conv2 with a relu → pool → norm stage as one
    (:mod:`alexnet.models.first_stage`, :mod:`alexnet.models.conv_stage`), and, in CPU inference, every other
    conv + ReLU as one oneDNN primitive (:mod:`alexnet.models.postops`); every other module, and any run that does
    not fit, is called as itself."""
    modules = list(features)
    post = has_norm(modules) and postops.allowed(x)
    # asked once: the CPU training kernels' conditions cost the host about 13 µs per module otherwise
    cpu_training = x.device.type == "cpu" and torch.is_grad_enabled()
    i = 0
    while i < len(modules):
        args = stage_at(modules, i, x.shape)
        if args is not None and _kernels_for(x) is not None:
            x = stage(x, args)
            i += 3
            continue
        found = _conv_and_stage_at(modules, i, x) if cpu_training else None
        if found is not None:
            x = found[0].run(cast(nn.Conv2d, modules[i]), x, found[1])
            i += 4
            continue
        conv = postops.conv_relu_at(modules, i) if post and not _norm_after(modules, i + 1) else None
        if conv is not None:
            x = postops.conv_relu(conv, x)
            i += 2
        else:
            x = modules[i](x)
            i += 1
    return x
