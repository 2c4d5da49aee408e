"""The LRN operator on CUDA as Triton kernels: one pass over memory forward, two backward.

AlexNet §3.3: ``b_i = a_i d_i^{-β}`` with ``d_i = k + α Σ_{j∈win(i)} a_j²``; the gradient (derivation in
:mod:`alexnet.models.layers`) is ``∂L/∂a_i = g_i d_i^{-β} − 2αβ a_i Σ_{j: i∈win(j)} g_j b_j / d_j``.

A program takes one image and a block of spatial positions with *all* its channels (a ``C×P`` tile, ``C``
rounded up to a power of two), so the window sums need no data from other programs: the neighbours' values are
loads shifted along the channel axis, which hit the cache after the first. The forward reads ``a`` and writes
``b``. The backward takes two passes: the first writes ``t_j = g_j b_j / d_j`` (fp32), the second sums ``t``
over the transposed window and writes the gradient, recomputing ``d_i`` from ``a``. (One pass that recomputed
every neighbour's ``d_j`` made 37 loads per element and ran ten times slower than the forward on an H200;
docs/performance.md.) Composed PyTorch ops make a dozen passes over memory for the same backward.
NCHW and channels-last tensors run without a copy (the tile's strides come from the tensor); bf16 and fp16 are
computed in fp32 and rounded once. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors: that is how the
tests check them on machines without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

MAX_CHANNELS = 1024  # one C×P tile per program; wider inputs use the composed ops
MAX_IMAGES = 65535  # the grid's second dimension (CUDA's limit for it)
MAX_ELEMENTS = 2**31 - 1  # offsets are 32-bit in the kernels


# ``d^{-β}`` as exp2(−β·log2 d). Triton's ``tl.log2`` is libdevice's exact ``log2f``, a polynomial of about 20
# instructions per value in the SASS for sm_90, and these kernels are bound by their instruction count
# (docs/performance.md, Session 19); PTX's ``lg2.approx.f32`` is one MUFU.LG2 (absolute error about 2⁻²², so
# 1.2·10⁻⁷ relative in d^{-0.75}). ALEXNET_FAST_LOG2=1 takes it: not yet timed on a GPU, so off by default.
def fast_log2() -> bool:
    """Whether the kernels take ``lg2.approx`` (``ALEXNET_FAST_LOG2=1``, read at each launch). Triton's
    interpreter cannot run inline PTX, and AMD GPUs do not take it."""
    return (
        os.environ.get("ALEXNET_FAST_LOG2", "0") == "1"
        and os.environ.get("TRITON_INTERPRET") != "1"
        and torch.version.hip is None
    )


# Every kernel takes the same trailing arguments (see _launch): C, P, the three strides, α, β, k, the window,
# the tile sizes and FAST; β is unused by the first backward pass.


@triton.jit
def _tile(P, stride_n, stride_p, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's C×P tile: channel indices, which positions exist, and the offset of each column."""
    c = tl.arange(0, BLOCK_C)[:, None]
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    return c, p < P, tl.program_id(1) * stride_n + p * stride_p


@triton.jit
def _window_denominator(x_ptr, base, c, C, in_p, stride_c, alpha, k, BEFORE: tl.constexpr, AFTER: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, RELU: tl.constexpr):  # fmt: skip
    """``d = k + α Σ_{j∈win(c)} a_j²`` for a C×P tile (neighbours as shifted loads); with ``RELU``,
    ``a = relu(x)`` (the conv stages' kernels, :mod:`alexnet.models.stage_triton`)."""
    s = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for i in tl.static_range(BEFORE + AFTER + 1):
        cc = c + (i - BEFORE)
        v = tl.load(x_ptr + base + cc * stride_c, mask=(cc >= 0) & (cc < C) & in_p, other=0.0).to(tl.float32)
        if RELU:
            v = tl.where(v < 0.0, 0.0, v)  # NaN stays NaN, as torch.relu keeps it
        s += v * v
    return k + alpha * s


@triton.jit
def _inverse_power(d, beta, FAST: tl.constexpr):
    """``d^{-β}`` (d > 0; NaN and ∞ as ``exp2(−β log2 d)`` gives them); ``FAST``: :func:`fast_log2`."""
    if FAST:
        log = tl.inline_asm_elementwise(
            "lg2.approx.f32 $0, $1;", "=r,r", [d], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        log = tl.log2(d)
    return tl.exp2(-beta * log)


@triton.jit
def _lrn_forward(x_ptr, y_ptr, C, P, stride_n, stride_c, stride_p, alpha, beta, k, BEFORE: tl.constexpr,
                 AFTER: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """``b = a d^{-β}``."""
    c, in_p, base = _tile(P, stride_n, stride_p, BLOCK_C, BLOCK_P)
    d = _window_denominator(
        x_ptr, base, c, C, in_p, stride_c, alpha, k, BEFORE, AFTER, BLOCK_C, BLOCK_P, False
    )
    mask = (c < C) & in_p
    x = tl.load(x_ptr + base + c * stride_c, mask=mask, other=0.0).to(tl.float32)
    y = x * _inverse_power(d, beta, FAST)
    tl.store(y_ptr + base + c * stride_c, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_scaled(g_ptr, x_ptr, y_ptr, t_ptr, C, P, stride_n, stride_c, stride_p, alpha, beta, k,
                         BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_P: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """First pass of the backward: ``t_j = g_j b_j / d_j`` (fp32, the layout of ``x``)."""
    c, in_p, base = _tile(P, stride_n, stride_p, BLOCK_C, BLOCK_P)
    d = _window_denominator(
        x_ptr, base, c, C, in_p, stride_c, alpha, k, BEFORE, AFTER, BLOCK_C, BLOCK_P, False
    )
    mask = (c < C) & in_p
    g = tl.load(g_ptr + base + c * stride_c, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + base + c * stride_c, mask=mask, other=0.0).to(tl.float32)
    tl.store(t_ptr + base + c * stride_c, g * y / d, mask=mask)


@triton.jit
def _lrn_backward(g_ptr, x_ptr, t_ptr, dx_ptr, C, P, stride_n, stride_c, stride_p, alpha, beta, k,
                  BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK_C: tl.constexpr,
                  BLOCK_P: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """Second pass: ``g_i d_i^{-β} − 2αβ a_i Σ_{j: i∈win(j)} t_j``, j over i − AFTER .. i + BEFORE."""
    c, in_p, base = _tile(P, stride_n, stride_p, BLOCK_C, BLOCK_P)
    d = _window_denominator(
        x_ptr, base, c, C, in_p, stride_c, alpha, k, BEFORE, AFTER, BLOCK_C, BLOCK_P, False
    )
    back = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    for i in tl.static_range(BEFORE + AFTER + 1):
        j = c + (i - AFTER)
        back += tl.load(t_ptr + base + j * stride_c, mask=(j >= 0) & (j < C) & in_p, other=0.0)
    mask = (c < C) & in_p
    g = tl.load(g_ptr + base + c * stride_c, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + base + c * stride_c, mask=mask, other=0.0).to(tl.float32)
    dx = g * _inverse_power(d, beta, FAST) - 2.0 * alpha * beta * x * back
    tl.store(dx_ptr + base + c * stride_c, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def supports(*tensors: torch.Tensor) -> bool:
    """Floating tensors of one dtype and shape N×C×…, C ≤ :data:`MAX_CHANNELS`, N ≤ :data:`MAX_IMAGES`, under
    2³¹ elements, dense in NCHW or channels-last (the others go to the composed ops)."""
    x = tensors[0]
    if x.dim() < 2 or not 0 < x.numel() <= MAX_ELEMENTS or not x.is_floating_point():
        return False
    if x.shape[1] > MAX_CHANNELS or x.shape[0] > MAX_IMAGES:
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or _strides(x) is None:
        return False
    return all(t.dtype == x.dtype and t.shape == x.shape and _strides(t) == _strides(x) for t in tensors)


def _strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(image, channel, position) strides when the spatial dims flatten to one index ``p``, else ``None``."""
    n, c = t.shape[0], t.shape[1]
    positions = t.numel() // max(1, n * c)
    if t.is_contiguous():
        return c * positions, positions, 1
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return c * positions, 1, c
    return None


def _launch(
    kernel: triton.JITFunction, tensors: list[torch.Tensor], size: int, alpha: float, beta: float, k: float
) -> None:
    x = tensors[1] if len(tensors) == 4 else tensors[0]  # (g, x, …) in the backward passes
    n, c = x.shape[0], x.shape[1]
    positions = x.numel() // (n * c)
    stride_n, stride_c, stride_p = _strides(x)  # type: ignore[misc]
    block_c = triton.next_power_of_2(c)
    block_p = max(1, min(triton.next_power_of_2(positions), 4096 // block_c))
    grid = (triton.cdiv(positions, block_p), n)
    kernel[grid](
        *tensors,
        c,
        positions,
        stride_n,
        stride_c,
        stride_p,
        float(alpha),
        float(beta),
        float(k),
        BEFORE=size // 2,
        AFTER=(size - 1) // 2,
        BLOCK_C=block_c,
        BLOCK_P=block_p,
        FAST=fast_log2(),
        num_warps=8 if block_c * block_p >= 2048 else 4,
    )


def forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """``alexnet::lrn`` (``alpha`` multiplies the window sum); ``x`` must pass :func:`supports`."""
    y = torch.empty_like(x)  # same strides as x (dense tensors keep their layout)
    _launch(_lrn_forward, [x, y], size, alpha, beta, k)
    return y


def conform(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s memory layout (an incoming gradient may be NCHW for a channels-last activation)."""
    if _strides(t) == _strides(like):
        return t
    return t.contiguous(
        memory_format=torch.contiguous_format if like.is_contiguous() else torch.channels_last
    )


def backward(
    grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, size: int, alpha: float, beta: float, k: float
) -> torch.Tensor:
    """``alexnet::lrn_backward``; ``x`` and ``y`` must pass :func:`supports` together (``grad`` is conformed)."""
    grad = conform(grad, x)
    scaled = torch.empty_like(x, dtype=torch.float32)  # t = g·b/d, kept in fp32 for the window sum
    _launch(_lrn_backward_scaled, [grad, x, y, scaled], size, alpha, beta, k)
    dx = torch.empty_like(x)
    _launch(_lrn_backward, [grad, x, scaled, dx], size, alpha, beta, k)
    return dx
