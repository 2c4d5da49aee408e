"""Layers the papers define that PyTorch does not ship in their exact form.

* :class:`LocalResponseNorm` — AlexNet §3.3 "local response normalization", in both conventions:
  the paper's (``α`` multiplies the window *sum*, ``k = 2``) and Caffe's / ONNX's / ``torch.nn``'s
  (``α`` is divided by the window size ``n``, ``k = 1`` in Caffe).
* :func:`local_response_norm` — the functional form, backed by the custom operator ``alexnet::lrn``
  (``torch.ops.alexnet.lrn``) with its own analytic backward, so that ``torch.compile`` treats it as one opaque
  node and the ONNX exporter can map it to a single ONNX ``LRN`` node (see docs/performance.md).
* :func:`renormalize_filters_` — Zeiler & Fergus §3: "each filter in the convolutional layers whose RMS value
  exceeds a fixed radius of 1e-1 is renormalized to this fixed radius".

Fast path (AlexNet §3.3 formula, nothing approximated): with ``S_i = Σ_{j∈win(i)} a_j²`` and
``d_i = k + α S_i``, the forward is ``b_i = a_i d_i^{-β}`` and the gradient is

    ∂L/∂a_i = g_i d_i^{-β} − 2αβ a_i Σ_{j: i∈win(j)} g_j b_j / d_j .

The backward keeps only ``a`` and ``b`` — the tensors the neighbouring ReLU and max-pool keep anyway — and
recomputes ``d``; autograd through the naive formula keeps the squares, the window sum, the power and the
padded copies, five or more activation-sized tensors per LRN layer.

Three implementations of the operator compute the same numbers (tests/test_lrn_fast.py runs every check on the
CPU two, tests/test_lrn_triton.py checks the Triton one): on CPU the fused kernel of ``lrn_cpu.cpp`` (one pass
over memory each way, built by :mod:`alexnet.models.native`); on CUDA the Triton kernels of
:mod:`alexnet.models.lrn_triton` (one pass forward, two backward; ``ALEXNET_TRITON=0`` turns them off);
elsewhere, or without a C++ compiler or Triton, :func:`lrn_composed` and :func:`lrn_backward_composed`, PyTorch
ops whose window sum is a banded GEMM or shifted slice adds.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import nn
from torch.nn import functional as F

from alexnet.models import eager, first_conv, native


def lrn_reference(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """AlexNet §3.3 written out literally: ``b_i = a_i / (k + alpha * sum_j a_j^2)^beta``.

    ``j`` runs over ``max(0, i - size//2) .. min(N-1, i + size//2)`` (the paper's window; for an even size the
    window is ``i - size//2 .. i + (size-1)//2`` as in ``torch.nn.LocalResponseNorm``). ``alpha`` here multiplies
    the sum, so pass ``alpha / size`` for Caffe's convention. Slow; the reference the fast path is tested against.
    """
    n_ch = x.shape[1]
    out = torch.empty_like(x)
    sq = x * x
    for i in range(n_ch):
        lo, hi = max(0, i - size // 2), min(n_ch - 1, i + (size - 1) // 2)
        out[:, i] = x[:, i] / (k + alpha * sq[:, lo : hi + 1].sum(dim=1)) ** beta
    return out


def _window_sum(t: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """``out_i = Σ_{j=i-before}^{i+after} t_j`` over dim 1, zero beyond the ends; keeps ``t``'s memory format.

    In-place adds of shifted channel slices (``before + after`` passes over memory). Used for checking; the
    operator itself uses :func:`_banded_sum`, one GEMM instead of ``n − 1`` passes.
    """
    out = t.clone()
    for shift in range(1, before + 1):
        out[:, shift:].add_(t[:, :-shift])
    for shift in range(1, after + 1):
        out[:, :-shift].add_(t[:, shift:])
    return out


def channel_window_sum(sq: torch.Tensor, size: int) -> torch.Tensor:
    """Sum of ``sq`` over a window of ``size`` neighbouring channels (dim 1), zero-padded at the ends.

    Channel ``i`` sums ``i - size//2 .. i + (size-1)//2`` (centred for odd ``size``, as in the paper).
    """
    return _window_sum(sq, size // 2, (size - 1) // 2)


BAND_MAX_CHANNELS = 128  # widest input for which the banded GEMM beat shifted adds (docs/performance.md)


def _band(channels: int, before: int, after: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    """``B[i, j] = scale`` where ``i - before ≤ j ≤ i + after``, else 0 (C×C), so ``(B @ t)_i`` is the window sum."""
    i = torch.arange(channels, device=like.device)
    offset = i[None, :] - i[:, None]  # j - i
    band = (offset >= -before) & (offset <= after)
    return band.to(like.dtype) * scale


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _banded_sum(t: torch.Tensor, before: int, after: int, scale: float, bias: float = 0.0) -> torch.Tensor:
    """``bias + scale · Σ_{j=i-before}^{i+after} t_j`` over dim 1, keeping ``t``'s memory format.

    Up to :data:`BAND_MAX_CHANNELS` channels: one matrix product with a banded C×C matrix (NCHW:
    ``B @ t.view(N, C, H·W)``; channels-last: ``t.view(N·H·W, C) @ Bᵀ``). A GEMM reads ``t`` once and writes the
    result once, where ``n − 1`` shifted adds make ``n − 1`` passes over memory; but it spends ``2C``
    multiply-adds per element instead of ``n``, which stops paying beyond about a hundred channels (measured on
    CPU: 96 channels ×1.5 faster than slices, 256 channels ×1.4 slower), so wider inputs use the slices.
    """
    channels = t.shape[1]
    if channels > BAND_MAX_CHANNELS:
        # bias + scale·t in one pass, then the n − 1 scaled shifted adds (no separate scale and bias passes)
        out = torch.add(t.new_full((1,), bias), t, alpha=scale)
        for shift in range(1, before + 1):
            out[:, shift:].add_(t[:, :-shift], alpha=scale)
        for shift in range(1, after + 1):
            out[:, :-shift].add_(t[:, shift:], alpha=scale)
        return out
    band = _band(channels, before, after, scale, t)
    if _is_channels_last(t):
        n, c, h, w = t.shape
        rows = t.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view: channels are the contiguous dim
        out = torch.addmm(rows.new_full((1,), bias), rows, band.t()) if bias else rows @ band.t()
        return out.view(n, h, w, c).permute(0, 3, 1, 2)
    cols = t.reshape(t.shape[0], channels, -1)
    batch = band.expand(t.shape[0], channels, channels)
    out = torch.baddbmm(cols.new_full((1, 1, 1), bias), batch, cols) if bias else torch.bmm(batch, cols)
    return out.view(t.shape)


def _denominator_base(x: torch.Tensor, size: int, alpha: float, k: float) -> torch.Tensor:
    """``d = k + alpha · S`` where ``S`` is the window sum of squares (a fresh tensor, safe to modify)."""
    return _banded_sum(x * x, size // 2, (size - 1) // 2, alpha, k)


def lrn_composed(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The forward as PyTorch ops (any device and dtype); the CPU uses the fused kernel when it is built."""
    return _denominator_base(x, size, alpha, k).pow_(-beta).mul_(x)  # in place: one allocation less


def lrn_backward_composed(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """The analytic gradient (module docstring) as PyTorch ops, from the input ``x`` and output ``y``."""
    d = _denominator_base(x, size, alpha, k)
    scaled = (grad * y).div_(d)  # g_j b_j / d_j
    # Transposed window: i ∈ win(j) ⇔ j ∈ i - after .. i + before (the same window when size is odd).
    back = _banded_sum(scaled, (size - 1) // 2, size // 2, -2.0 * alpha * beta)
    return d.pow_(-beta).mul_(grad).addcmul_(x, back)  # g_i d_i^-β − 2αβ a_i Σ …, in d's memory


def lrn_differentiable(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The forward as out-of-place PyTorch ops that every autograd mode takes: ``torch.func`` transforms (vmap,
    grad, jvp, jacrev), forward-mode AD and FX. ``torch.nn.functional.local_response_norm`` divides ``alpha`` by
    the window size, so it gets ``alpha · size``; its window is this module's (``i − size//2 … i + (size−1)//2``)."""
    if x.dim() == 2:  # N×C: torch's form wants a spatial dimension
        return F.local_response_norm(x.unsqueeze(-1), size, alpha=alpha * size, beta=beta, k=k).squeeze(-1)
    return F.local_response_norm(x, size, alpha=alpha * size, beta=beta, k=k)


def lrn_backward_differentiable(
    grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """The analytic gradient (module docstring) as out-of-place PyTorch ops, differentiable in ``grad`` and ``x``:
    the backward taken under ``create_graph=True`` (double backward, gradient penalties)."""
    d = k + alpha * channel_window_sum(x * x, size)
    scaled = grad * x * d.pow(-beta - 1.0)  # g_j b_j / d_j, with b_j = a_j d_j^-β
    back = _window_sum(scaled, (size - 1) // 2, size // 2)  # the transposed window (module docstring)
    return grad * d.pow(-beta) - (2.0 * alpha * beta) * x * back


def _fused_for(*tensors: torch.Tensor) -> native.Kernel | None:
    """The fused CPU kernel when it is built and takes these tensors (same dtype, one it supports)."""
    fused = native.kernel()
    if fused is None or not fused.supports(tensors[0]):
        return None
    return fused if all(t.dtype == tensors[0].dtype for t in tensors) else None


@functools.cache
def triton_kernels() -> ModuleType | None:
    """:mod:`alexnet.models.lrn_triton`, imported on the first CUDA call; ``None`` without Triton or when
    ``ALEXNET_TRITON=0``."""
    if os.environ.get("ALEXNET_TRITON", "1") == "0":
        return None
    try:
        from alexnet.models import lrn_triton
    except ImportError:
        return None
    return lrn_triton


def triton_for(*tensors: torch.Tensor) -> ModuleType | None:
    """The Triton kernels when they are available and take these CUDA tensors."""
    kernels = triton_kernels()
    return kernels if kernels is not None and kernels.supports(*tensors) else None


@torch.library.custom_op("alexnet::lrn", mutates_args=())
def _lrn_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """``alexnet::lrn``: ``x * (k + alpha * window_sum(x²))^-beta``; ``alpha`` multiplies the sum."""
    return lrn_composed(x, size, alpha, beta, k)


@_lrn_op.register_kernel("cpu")
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    fused = _fused_for(x)
    return fused.forward(x, size, alpha, beta, k) if fused else lrn_composed(x, size, alpha, beta, k)


@_lrn_op.register_kernel("cuda")
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    kernels = triton_for(x)
    return kernels.forward(x, size, alpha, beta, k) if kernels else lrn_composed(x, size, alpha, beta, k)


@_lrn_op.register_fake
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("alexnet::lrn_", mutates_args=("x",))
def _lrn_inplace_op(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> None:
    """``alexnet::lrn_``: the forward written into ``x`` (inference only: no gradient)."""
    x.copy_(lrn_composed(x, size, alpha, beta, k))


@_lrn_inplace_op.register_kernel("cpu")
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> None:
    fused = _fused_for(x)
    if fused:
        fused.forward(x, size, alpha, beta, k, inplace=True)
    else:
        x.copy_(lrn_composed(x, size, alpha, beta, k))


@_lrn_inplace_op.register_kernel("cuda")
def _(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> None:
    # out of place, then copied: a program's neighbours-in-channel loads must not see its own stores
    kernels = triton_for(x)
    x.copy_(kernels.forward(x, size, alpha, beta, k) if kernels else lrn_composed(x, size, alpha, beta, k))


@torch.library.custom_op("alexnet::lrn_backward", mutates_args=())
def _lrn_backward_op(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """The analytic gradient of ``alexnet::lrn`` (module docstring), from the input ``x`` and output ``y``."""
    return lrn_backward(grad, x, y, size, alpha, beta, k)


def lrn_backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """What ``alexnet::lrn_backward`` computes, without the operator's dispatch: the device's kernel (C++ on CPU,
    Triton on CUDA) where it takes the tensors, else PyTorch ops. The fused stages' backward calls it directly."""
    if x.device.type == "cpu":
        fused = _fused_for(x, grad, y)
        if fused:
            return fused.backward(grad, x, y, size, alpha, beta, k)
    elif x.device.type == "cuda":
        kernels = triton_for(x, y)
        if kernels and grad.shape == x.shape and grad.dtype == x.dtype:
            return kernels.backward(grad, x, y, size, alpha, beta, k)
    return lrn_backward_composed(grad, x, y, size, alpha, beta, k)


@_lrn_backward_op.register_fake
def _(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    return torch.empty_like(x)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    x, size, alpha, beta, k = inputs
    ctx.save_for_backward(x, output)
    ctx.lrn_args = (size, alpha, beta, k)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:
    x, y = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
        return lrn_backward_differentiable(grad, x, *ctx.lrn_args), None, None, None, None
    dx = _lrn_backward_op(grad, x, y, *ctx.lrn_args)
    return dx, None, None, None, None


_lrn_op.register_autograd(_backward, setup_context=_setup_context)


def _may_write_in_place(x: torch.Tensor) -> bool:
    """No gradient will be asked of ``x``, nothing traces the call and no transform sees it (:func:`eager.plain`)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    return eager.plain(x)


def local_response_norm(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, inplace: bool = False
) -> torch.Tensor:
    """Functional LRN across dim 1 (AlexNet §3.3); ``alpha`` multiplies the window sum (the paper's convention).

    Calls the custom operator ``torch.ops.alexnet.lrn`` (fast forward, analytic backward; under
    ``create_graph=True`` the backward is built from differentiable ops, so double backward works). Under a
    ``torch.func`` transform or forward-mode AD it computes :func:`lrn_differentiable` instead, which those
    modes can see through. For Caffe's convention pass ``alpha / size``. With ``inplace`` (as
    ``nn.ReLU(inplace=True)``) the result overwrites ``x`` when no gradient is needed — inference skips one
    activation-sized allocation — and is computed out of place otherwise. FX symbolic tracing records the call
    as one node (``torch.fx.wrap`` below).
    """
    if x.dim() < 2:
        raise ValueError(f"local_response_norm needs a channel dimension (N×C×…), got shape {tuple(x.shape)}")
    if torch.onnx.is_in_onnx_export():
        _onnx_symbolic()
    if not eager.tracing() and eager.transformed(x):
        return lrn_differentiable(x, int(size), float(alpha), float(beta), float(k))
    if inplace and _may_write_in_place(x):
        _lrn_inplace_op(x, int(size), float(alpha), float(beta), float(k))
        return x
    return _lrn_op(x, int(size), float(alpha), float(beta), float(k))


@functools.cache
def _onnx_symbolic() -> None:
    """``torch.onnx.export`` (TorchScript-based) writes ``alexnet::lrn`` as one ONNX ``LRN`` node, whose ``alpha``
    is divided by the window size (Caffe's convention): hence ``alpha · size``. Registered on the first export."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "i", "f", "f", "f")
    def lrn(g: torch.Graph, x: torch.Value, size: int, alpha: float, beta: float, k: float) -> torch.Value:
        if (
            size % 2 == 0
        ):  # ONNX puts an even window's extra channel after the centre, this operator before it
            raise ValueError(f"an LRN of even size {size} has no exact ONNX LRN node")
        return g.op("LRN", x, size_i=size, alpha_f=alpha * size, beta_f=beta, bias_f=k)

    torch.onnx.register_custom_op_symbolic("alexnet::lrn", lrn, 1)


torch.fx.wrap(
    "local_response_norm"
)  # FX (create_feature_extractor): one call_function node, not its branches


class LocalResponseNorm(nn.Module):
    """Local response normalisation across channels (AlexNet §3.3).

    ``b_i = a_i / (k + α' Σ_{j in window(i)} a_j²)^β`` with ``α' = alpha`` when ``alpha_over_size`` is False (the
    paper: k=2, n=5, α=1e-4, β=0.75) and ``α' = alpha / size`` when True (Caffe, ONNX ``LRN`` and
    ``torch.nn.LocalResponseNorm``; Caffe's default k=1). ``inplace=True`` overwrites the input when no gradient
    is needed (inference), as ``nn.ReLU(inplace=True)`` does. The paper models build theirs out of place, so
    that a hook on the layer before sees its own output; their fused stages skip the copy where nobody watches.
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        alpha_over_size: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.alpha_over_size = alpha_over_size
        self.inplace = inplace

    @property
    def sum_alpha(self) -> float:
        """The coefficient that multiplies the window sum of squares."""
        return self.alpha / self.size if self.alpha_over_size else self.alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.sum_alpha, self.beta, self.k, self.inplace)

    def extra_repr(self) -> str:
        conv = "caffe (alpha/size)" if self.alpha_over_size else "paper (alpha*sum)"
        extra = ", inplace=True" if self.inplace else ""
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={conv}{extra}"


def block_diagonal(
    weight: torch.Tensor,
    groups: int,
    dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """A grouped conv's weight (O×I/g×k×k) as the dense weight (O×I×k×k) with zeros between the groups, in
    ``dtype`` (default: the weight's) and ``memory_format``.

    Built in the dtype autocast would cast it to and the layout cuDNN would copy it to for a channels-last input,
    so neither copies it again: five kernels a training step on a GPU (zeros, the weight's cast, one indexed copy;
    a gather and a cast back for the gradient), where building it in float32 NCHW took seven
    (docs/performance.md, Session 20)."""
    out, per_group, *kernel = weight.shape
    dtype = dtype or weight.dtype
    dense = torch.empty(
        (out, groups * per_group, *kernel), dtype=dtype, device=weight.device, memory_format=memory_format
    )
    # (tower, out, tower, in, k, k) over the same memory; detached, so that the indexed copy below is its own
    # autograd node (a gather backward) rather than an in-place write into a view (which copies the whole
    # gradient twice)
    blocks = dense.view(groups, out // groups, groups, per_group, *kernel).detach().zero_()
    towers = _tower_index(groups, weight.device)
    blocks[towers, :, towers] = weight.to(dtype).view(groups, out // groups, per_group, *kernel)
    return blocks.view(out, groups * per_group, *kernel)


@functools.cache
def _tower_index(groups: int, device: torch.device) -> torch.Tensor:
    """``arange(groups)`` on ``device``, made once rather than every step."""
    return torch.arange(groups, device=device)


class GroupedConv2d(nn.Conv2d):
    """AlexNet §3.2's two-tower convolution: "the kernels of layers 2, 4, and 5 are connected only to those
    kernel maps in the previous layer which reside on the same GPU" — an ``nn.Conv2d`` with ``groups``, with the
    same parameters and state dict.

    On CUDA in bf16/fp16 (autocast) it runs as one dense convolution whose weight is block-diagonal (zeros
    between the towers): cuDNN's grouped kernels slice the channels first and ran slower than the dense kernel
    that does twice the multiply-adds (H200, docs/performance.md). The result is the same convolution.
    Elsewhere (oneDNN on CPU runs grouped convolutions at its dense rate) it is the plain grouped conv.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # an FX proxy: record the plain convolution
            return super().forward(x)
        if self.groups > 1 and x.is_cuda and _half_precision(x):
            weight = block_diagonal(self.weight, self.groups, _autocast_dtype(), layout(x))
            return nn.functional.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation)
        return super().forward(x)


def space_to_depth_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: tuple[int, int],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride, padding)`` as a stride-1 convolution: the padded input rearranged into
    ``stride²`` times the channels (each ``stride×stride`` block of pixels becomes one pixel), the kernel padded
    with zeros to a multiple of the stride and rearranged the same way. The same products, summed in another
    order; the gradients reach ``weight`` and ``x`` through the rearrangements. ``dtype`` casts the image and the
    kernel on the way (autocast's half precision: the rearrangement then moves half the bytes)."""
    s = stride
    out_ch, in_ch, kh, kw = weight.shape
    n, _, h, w = x.shape
    ho, wo = (h + 2 * padding[0] - kh) // s + 1, (w + 2 * padding[1] - kw) // s + 1
    kh2, kw2 = -(-kh // s) * s, -(-kw // s) * s
    hn, wn = (ho - 1) * s + kh2, (wo - 1) * s + kw2  # the rows and columns the output reads
    # Two copies of the image in all: into the zero-padded NCHW frame (cropped where the output reads less),
    # then into the rearranged channels-last layout the convolution reads (F.pad, reshape and .contiguous made
    # four; docs/performance.md, session 10).
    top, left = padding
    rows, cols = min(h, hn - top), min(w, wn - left)
    framed = x.new_zeros((n, in_ch, hn, wn), dtype=dtype or x.dtype)
    framed[:, :, top : top + rows, left : left + cols] = x[:, :, :rows, :cols]
    blocks = framed.view(n, in_ch, hn // s, s, wn // s, s).permute(0, 2, 4, 1, 3, 5)
    x = blocks.reshape(n, hn // s, wn // s, in_ch * s * s).permute(0, 3, 1, 2)  # channels-last NCHW view
    # The kernel the same way, in one copy that also casts it and writes it channels-last, as cuDNN reads it for
    # this channels-last input: autocast's cast and cuDNN's own layout copy made two more
    padded = F.pad(weight, (0, kw2 - kw, 0, kh2 - kh))
    folded = torch.empty(
        (out_ch, kh2 // s, kw2 // s, in_ch, s, s), dtype=dtype or weight.dtype, device=weight.device
    )
    folded.copy_(padded.view(out_ch, in_ch, kh2 // s, s, kw2 // s, s).permute(0, 2, 4, 1, 3, 5))
    weight = folded.view(out_ch, kh2 // s, kw2 // s, in_ch * s * s).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)


class SpaceToDepthConv2d(nn.Conv2d):
    """The first, strided convolution on the image: AlexNet's 11×11, stride 4 (§3.5) and ZFNet's 7×7, stride 2
    (Fig. 3) — an ``nn.Conv2d`` with the same parameters and state dict.

    On CUDA in bf16/fp16 (autocast) it runs as :func:`space_to_depth_conv2d`: cuDNN's kernels for three input
    channels ran far below its rate, and the 48 (AlexNet) or 12 (ZFNet) rearranged channels run near it, although
    the zero-padded kernel adds multiply-adds (12²/11², 8²/7²); measured on an H100 in docs/performance.md.
    Elsewhere, and with ``ALEXNET_S2D=0``, it is the plain convolution (on CPU, oneDNN was slower rearranged); in
    CPU training its weight gradient comes from a kernel of its own (:mod:`alexnet.models.first_conv`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # an FX proxy: record the plain convolution
            return super().forward(x)
        if first_conv.applies(self, x):
            return first_conv.conv2d(self, x)
        if first_conv.image_grad_applies(self, x):
            return first_conv.image_grad_conv2d(self, x)
        if self._rearranged(x):
            stride, padding = self.stride[0], self.padding
            return space_to_depth_conv2d(x, self.weight, self.bias, stride, padding, _autocast_dtype())  # type: ignore[arg-type]
        return super().forward(x)

    def _rearranged(self, x: torch.Tensor) -> bool:
        stride, padding = self.stride, self.padding
        return (
            x.is_cuda
            and _half_precision(x)
            and x.dim() == 4
            and stride[0] == stride[1] > 1
            and self.groups == 1
            and self.dilation == (1, 1)
            and self.padding_mode == "zeros"
            and not isinstance(padding, str)
            and os.environ.get("ALEXNET_S2D", "1") != "0"
        )


def _half_precision(x: torch.Tensor) -> bool:
    return x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cuda")


def _autocast_dtype() -> torch.dtype | None:
    """The dtype CUDA autocast casts a convolution's operands to, or ``None`` outside autocast."""
    return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None


def layout(x: torch.Tensor) -> torch.memory_format:
    """``x``'s layout: channels-last if it is, else contiguous. cuDNN runs a convolution of ``x`` in it (and
    copies the weight to it)."""
    return (
        torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    )


@torch.no_grad()
def renormalize_filters_(model: nn.Module, max_rms: float = 0.1) -> torch.Tensor:
    """Zeiler & Fergus §3: rescale every conv filter whose RMS exceeds ``max_rms`` to RMS ``max_rms``.

    A "filter" is one output channel's weights (``weight[o]``); biases are left alone. Returns how many filters
    were rescaled, as a 0-d tensor on the weights' device: the training loop calls this every step and does not
    read it, so that the host need not wait for the device. Works in place on every ``nn.Conv2d`` of ``model``
    whose weight is trained (a layer kept fixed, ``alexnet train --freeze``, stays as it is).
    """
    changed: torch.Tensor | int = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            w = m.weight
            rms = w.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            scale = (max_rms / rms).clamp(max=1.0)
            changed = changed + (scale < 1.0).sum()
            w.mul_(scale)
    return torch.as_tensor(changed)
