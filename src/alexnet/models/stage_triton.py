"""A conv stage's ReLU + LRN + max-pool on CUDA as Triton kernels (the GPU side of :mod:`alexnet.models.fused`).

AlexNet §3.3–3.4: conv1 and conv2 are followed by ReLU, response normalisation and overlapping max-pooling
(z = 3, s = 2), relu → norm → pool in AlexNet, relu → pool → norm in CaffeNet and ZFNet. As modules on a GPU that
is five or six passes over the full-size maps forward and as many backward; here:

* **relu → norm → pool** (``NORM``): the forward reads the conv output once per window that holds a position and
  writes the pooled maps (and, for training, where each maximum was: one byte per pooled value); the LRN is
  recomputed at each window position from the neighbours in channel (shifted loads that hit the cache). The
  backward takes two passes over the input positions, as :mod:`alexnet.models.lrn_triton`'s does: each gathers
  its pixel's gradient from the windows that hold it (at most ⌈z/s⌉² of them) and the first writes
  ``t_j = g_j b_j / d_j`` in fp32; the second sums ``t`` over the transposed channel window and writes
  ``(g_i d_i^{-β} − 2αβ a_i Σ t) · [x_i > 0]``.
* **relu → pool → norm**: one kernel for ReLU + max-pool (and its gather backward with the ReLU mask); the LRN
  runs on the pooled maps, a quarter of the size, through the LRN operator's own Triton kernels.

Three variants, each off until a GPU has timed it (docs/performance.md, Session 19): the forward walking down
the rows and carrying each window's last row into the next (:func:`walks_rows`), the training forward keeping
the LRN denominator at each maximum for the backward (:func:`keeps_denominators`), and ``lg2.approx`` for the
power (:func:`alexnet.models.lrn_triton.fast_log2`).

A program owns one image and a block of positions with all their channels, as in the LRN kernels. Window offsets
and ties follow ``max_pool2d``: the first maximum in the window in row-major order, NaN wins. bf16 and fp16 are
computed in fp32 and the LRN output is rounded to the input's dtype before pooling, as the modules round it. The
kernels take strides as arguments (the incoming gradient may have any), but :mod:`alexnet.models.fused` only sends
them channels-last conv outputs, the layout they were tested and measured in (docs/performance.md, Session 6).
With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors, which is how tests/test_stage_triton.py checks them on
machines without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from alexnet.models import lrn_triton
from alexnet.models.native import StageArgs

# Elements per program (channels rounded up to a power of two × positions), forward and backward: 2048 and 1024
# had the least time summed over the paper models' stages of 512–8192 on an H100 (tools/gpu_stage.py;
# docs/performance.md). Bigger tiles need more registers per thread (the forward recomputes the LRN at each window
# position, 45 loads per pooled value in AlexNet; ``ptxas -v`` shows spills), fewer programs fit on a
# multiprocessor, and the backward ran up to 2× slower. ALEXNET_STAGE_TILES=forward,backward overrides them.
TILES = tuple(int(t) for t in os.environ.get("ALEXNET_STAGE_TILES", "2048,1024").split(","))


@triton.jit
def _relu(v):
    return tl.where(v < 0.0, 0.0, v)  # NaN stays NaN, as torch.relu keeps it


@triton.jit
def _tile(P, W, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's C×P tile of one image's positions in a ``·×W`` grid: channel indices, the image, which
    positions exist, and their rows and columns."""
    c = tl.arange(0, BLOCK_C)[:, None]
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]
    return c, tl.program_id(1), p < P, p // W, p % W


@triton.jit
def _evaluate(x_ptr, pos, c, C, valid, sxc, alpha, beta, k, NORM: tl.constexpr, BEFORE: tl.constexpr,
              AFTER: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, FAST: tl.constexpr, OUT):  # fmt: skip
    """``(lrn(relu(x)) rounded to OUT's dtype, d)`` (``NORM``) or ``(relu(x), 1)`` at positions ``pos``."""
    v = _relu(tl.load(x_ptr + pos + c * sxc, mask=valid & (c < C), other=0.0).to(tl.float32))
    if NORM:
        d = lrn_triton._window_denominator(x_ptr, pos, c, C, valid, sxc, alpha, k, BEFORE, AFTER, BLOCK_C, BLOCK_P,
                                           True)  # fmt: skip
        v = (v * lrn_triton._inverse_power(d, beta, FAST)).to(OUT.dtype.element_ty).to(tl.float32)
    else:
        d = tl.full((BLOCK_C, BLOCK_P), 1.0, dtype=tl.float32)
    return v, d


@triton.jit
def _forward(x_ptr, y_ptr, idx_ptr, d_ptr, C, H, W, HO, WO, sxn, sxc, sxh, sxw, syn, syc, syh, syw, alpha, beta,
             k, NORM: tl.constexpr, TRAIN: tl.constexpr, KEEP: tl.constexpr, K: tl.constexpr, S: tl.constexpr,
             BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
             FAST: tl.constexpr):  # fmt: skip
    """Pooled ``max(lrn(relu(x)))`` (``NORM``) or ``max(relu(x))`` for a C×P tile of output positions; with
    ``TRAIN`` also the window offset of each maximum (the strides of ``y``), and with ``KEEP`` (``NORM``) the
    LRN denominator ``d`` at each maximum (fp32, the strides of ``y``)."""
    c, n, in_q, oh, ow = _tile(HO * WO, WO, BLOCK_C, BLOCK_P)
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    arg = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32)
    kept = tl.full((BLOCK_C, BLOCK_P), 1.0, dtype=tl.float32)
    for dh in range(K):  # a loop, not unrolled: unrolled, the compiler keeps 45 loads live and spills
        for dw in range(K):
            h = oh * S + dh
            w = ow * S + dw
            valid = in_q & (h < H) & (w < W)  # a ceil-mode window may stick out of the maps
            pos = n * sxn + h * sxh + w * sxw
            v, d = _evaluate(x_ptr, pos, c, C, valid, sxc, alpha, beta, k, NORM, BEFORE, AFTER, BLOCK_C, BLOCK_P,
                             FAST, y_ptr)  # fmt: skip
            take = valid & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            arg = tl.where(take, dh * K + dw, arg)
            if KEEP:
                kept = tl.where(take, d, kept)
    _store(y_ptr, idx_ptr, d_ptr, best, arg, kept, n * syn + oh * syh + ow * syw + c * syc, in_q & (c < C), TRAIN,
           KEEP)  # fmt: skip


@triton.jit
def _store(y_ptr, idx_ptr, d_ptr, best, arg, kept, out, mask, TRAIN: tl.constexpr, KEEP: tl.constexpr):
    tl.store(y_ptr + out, best.to(y_ptr.dtype.element_ty), mask=mask)
    if TRAIN:
        tl.store(idx_ptr + out, arg.to(tl.uint8), mask=mask)
    if KEEP:
        tl.store(d_ptr + out, kept, mask=mask)


@triton.jit
def _row_max(x_ptr, n, h, ow, c, C, W, row_ok, sxn, sxc, sxh, sxw, alpha, beta, k, NORM: tl.constexpr,
             K: tl.constexpr, S: tl.constexpr, BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK_C: tl.constexpr,
             BLOCK_P: tl.constexpr, FAST: tl.constexpr, OUT):  # fmt: skip
    """The maximum over one row ``h`` of each window (its K columns), the column it was in and its denominator;
    −∞ where the row is outside the maps (``row_ok`` false)."""
    best = tl.full((BLOCK_C, BLOCK_P), float("-inf"), dtype=tl.float32)
    col = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.int32)
    kept = tl.full((BLOCK_C, BLOCK_P), 1.0, dtype=tl.float32)
    for dw in range(K):
        w = ow * S + dw
        valid = row_ok & (w < W)
        v, d = _evaluate(x_ptr, n * sxn + h * sxh + w * sxw, c, C, valid, sxc, alpha, beta, k, NORM, BEFORE, AFTER,
                         BLOCK_C, BLOCK_P, FAST, OUT)  # fmt: skip
        take = valid & ((v > best) | (v != v))
        best = tl.where(take, v, best)
        col = tl.where(take, dw, col)
        kept = tl.where(take, d, kept)
    return best, col, kept


@triton.jit
def _forward_rows(x_ptr, y_ptr, idx_ptr, d_ptr, C, H, W, HO, WO, sxn, sxc, sxh, sxw, syn, syc, syh, syw, alpha,
                  beta, k, NORM: tl.constexpr, TRAIN: tl.constexpr, KEEP: tl.constexpr, K: tl.constexpr,
                  S: tl.constexpr, BEFORE: tl.constexpr, AFTER: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """:func:`_forward` for windows one row taller than their stride (``K = S + 1``: AlexNet §3.4's overlapping
    3×3/2 pooling). Each column of the tile walks ``ROWS`` output rows down the maps, and each window's last row,
    which is the next window's first, is carried over instead of evaluated again: ``K (K − 1) + K / ROWS``
    evaluations of the LRN per pooled value instead of ``K²`` (6.4 instead of 9 for 3×3/2, 7 rows). The maximum
    is the same, ties and NaN included: the first in row-major order, the last NaN, each row's scanned as
    :func:`_forward` scans them and the rows taken in order."""
    c = tl.arange(0, BLOCK_C)[:, None]
    n = tl.program_id(1)
    q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)[None, :]  # (chunk of ROWS rows, column) pairs
    in_q = q < tl.cdiv(HO, ROWS) * WO
    ow = q % WO
    first = (q // WO) * ROWS
    carry, carry_col, carry_d = _row_max(x_ptr, n, first * S, ow, c, C, W, in_q & (first < HO), sxn, sxc, sxh, sxw,
                                         alpha, beta, k, NORM, K, S, BEFORE, AFTER, BLOCK_C, BLOCK_P, FAST,
                                         y_ptr)  # fmt: skip
    for i in range(ROWS):
        oh = first + i
        active = in_q & (oh < HO)
        best, arg, kept = carry, carry_col, carry_d  # the window's first row (dh = 0)
        for dh in range(1, K):
            h = oh * S + dh
            carry, carry_col, carry_d = _row_max(x_ptr, n, h, ow, c, C, W, active & (h < H), sxn, sxc, sxh, sxw,
                                                 alpha, beta, k, NORM, K, S, BEFORE, AFTER, BLOCK_C, BLOCK_P,
                                                 FAST, y_ptr)  # fmt: skip
            take = (carry > best) | (carry != carry)  # a row outside the maps is −∞: never taken
            best = tl.where(take, carry, best)
            arg = tl.where(take, dh * K + carry_col, arg)
            kept = tl.where(take, carry_d, kept)
        _store(y_ptr, idx_ptr, d_ptr, best, arg, kept, n * syn + oh * syh + ow * syw + c * syc,
               active & (c < C), TRAIN, KEEP)  # fmt: skip


@triton.jit
def _gather(g_ptr, idx_ptr, p_ptr, d_ptr, n, h, w, c, C, HO, WO, sgn, sgc, sgh, sgw, sin, sic, sih, siw, in_p,
            POOLED_MASK: tl.constexpr, KEPT: tl.constexpr, K: tl.constexpr, S: tl.constexpr,
            BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """The pooled gradient that reaches input positions ``(h, w)``: the sum over the windows holding each one
    whose maximum it was. With ``POOLED_MASK`` only windows whose pooled ReLU output ``p`` (the strides of
    ``idx``) is positive count: the maximum of ``relu(x)`` is positive exactly where ReLU passes its gradient.
    With ``KEPT`` also the LRN denominator the forward kept for such a window (``d``, the strides of ``idx``;
    every window whose maximum a position is kept the same one), else 1."""
    gb = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
    d = tl.full((BLOCK_C, BLOCK_P), 1.0, dtype=tl.float32)
    for i in tl.static_range((K + S - 1) // S):
        oh = h // S - i
        row = in_p & (c < C) & (oh >= 0) & (oh < HO) & (h - oh * S < K)
        for j in tl.static_range((K + S - 1) // S):
            ow = w // S - j
            ok = row & (ow >= 0) & (ow < WO) & (w - ow * S < K)
            at = n * sin + oh * sih + ow * siw + c * sic
            mine = ok & (
                tl.load(idx_ptr + at, mask=ok, other=255).to(tl.int32) == (h - oh * S) * K + (w - ow * S)
            )
            if POOLED_MASK:
                mine = mine & (tl.load(p_ptr + at, mask=mine, other=0.0).to(tl.float32) > 0.0)
            g_at = g_ptr + n * sgn + oh * sgh + ow * sgw + c * sgc
            if KEPT:
                # Loads masked by the window (one predicate for a thread's channels: vector loads; no fill value,
                # the select discards masked lanes), then a select; masked by ``mine``, which differs per channel,
                # each is a scalar load (SASS for sm_90). Fewer instructions here, a few more in the recomputing
                # backward: only this one takes it.
                gb += tl.where(mine, tl.load(g_at, mask=ok).to(tl.float32), 0.0)
                d = tl.where(mine, tl.load(d_ptr + at, mask=ok), d)
            else:
                gb += tl.load(g_at, mask=mine, other=0.0).to(tl.float32)
    return gb, d


@triton.jit
def _backward(g_ptr, idx_ptr, x_ptr, d_ptr, t_ptr, dx_ptr, C, H, W, HO, WO, sxn, sxc, sxh, sxw, sgn, sgc, sgh,
              sgw, sin, sic, sih, siw, alpha, beta, k, NORM: tl.constexpr, KEPT: tl.constexpr, PASS: tl.constexpr,
              K: tl.constexpr, S: tl.constexpr, BEFORE: tl.constexpr, AFTER: tl.constexpr, BLOCK_C: tl.constexpr,
              BLOCK_P: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """The input gradient for a C×P tile of input positions (``dx``'s strides ``sx*``). With ``NORM`` (relu →
    norm → pool; ``x`` is the conv output), ``PASS`` 0 writes ``t = g b / d`` (fp32, ``x``'s strides) and
    ``PASS`` 1 the gradient; with ``KEPT`` the denominators come from the forward (``d``, pooled), else each
    pass recomputes them from ``x``'s channel window. Without ``NORM`` (relu → pool → norm), ``x_ptr`` is the
    pooled ReLU output, which masks the gathered gradient."""
    c, n, in_p, h, w = _tile(H * W, W, BLOCK_C, BLOCK_P)
    mask = in_p & (c < C)
    pos = n * sxn + h * sxh + w * sxw
    gb, d = _gather(g_ptr, idx_ptr, x_ptr, d_ptr, n, h, w, c, C, HO, WO, sgn, sgc, sgh, sgw, sin, sic, sih, siw,
                    in_p, not NORM, KEPT, K, S, BLOCK_C, BLOCK_P)  # fmt: skip
    if NORM:
        x = tl.load(x_ptr + pos + c * sxc, mask=mask, other=0.0).to(tl.float32)
        if not KEPT:
            d = lrn_triton._window_denominator(x_ptr, pos, c, C, in_p, sxc, alpha, k, BEFORE, AFTER, BLOCK_C,
                                               BLOCK_P, True)  # fmt: skip
        # Kept, d is the forward's wherever gb ≠ 0 and 1 elsewhere; both terms that read it vanish there.
        scale = lrn_triton._inverse_power(d, beta, FAST)
        if PASS == 0:
            b = (_relu(x) * scale).to(dx_ptr.dtype.element_ty).to(tl.float32)  # the output the modules keep
            tl.store(t_ptr + pos + c * sxc, gb * b / d, mask=mask)
        else:
            back = tl.zeros((BLOCK_C, BLOCK_P), dtype=tl.float32)
            for i in tl.static_range(BEFORE + AFTER + 1):
                j = c + (i - AFTER)
                back += tl.load(t_ptr + pos + j * sxc, mask=in_p & (j >= 0) & (j < C), other=0.0)
            dx = gb * scale - 2.0 * alpha * beta * _relu(x) * back
            tl.store(
                dx_ptr + pos + c * sxc, tl.where(x > 0.0, dx, 0.0).to(dx_ptr.dtype.element_ty), mask=mask
            )
    else:
        tl.store(dx_ptr + pos + c * sxc, gb.to(dx_ptr.dtype.element_ty), mask=mask)


def supports(x: torch.Tensor) -> bool:
    """A 4-D float32/bf16/fp16 tensor the kernels take (the LRN kernels' limits: channels, images, 32-bit
    offsets)."""
    return x.dim() == 4 and lrn_triton.supports(x)


def _layout_like(x: torch.Tensor) -> torch.memory_format:
    return torch.contiguous_format if x.is_contiguous() else torch.channels_last


def _tiles(c: int, positions: int, tile: int) -> tuple[int, int, int]:
    block_c = triton.next_power_of_2(c)
    block_p = max(1, min(triton.next_power_of_2(positions), tile // block_c))
    return block_c, block_p, 8 if block_c * block_p >= 1024 else 4


def _window(stage: StageArgs) -> dict[str, int]:
    return {
        "K": stage.kernel_size,
        "S": stage.stride,
        "BEFORE": stage.size // 2,
        "AFTER": (stage.size - 1) // 2,
    }


def keeps_denominators(stage: StageArgs) -> bool:
    """Whether a training forward of ``stage`` (relu → norm → pool) keeps the LRN denominator at each maximum
    (fp32, one per pooled value), so that the backward's two passes gather it with the gradient instead of
    recomputing every position's from five neighbours in channel: about 14 % fewer instructions per element in
    the backward (tools/triton_sass.py, docs/performance.md, Session 19), for 4 bytes per pooled value (about half
    a bf16 conv output's size). Not yet timed on a GPU, so off by default: ``ALEXNET_KEEP_DENOMINATOR=1`` (read
    at each call)."""
    return os.environ.get("ALEXNET_KEEP_DENOMINATOR", "0") == "1" and not stage.pool_first


def walks_rows(stage: StageArgs) -> bool:
    """Whether the forward of ``stage`` walks down the maps carrying each window's last row
    (:func:`_forward_rows`: windows one row taller than their stride, as all the paper models'): 21–27 % fewer
    instructions per pooled value than :func:`_forward` (tools/triton_sass.py; docs/performance.md, Session 19).
    Not yet timed on a GPU, so off by default: ``ALEXNET_STAGE_ROWS=1`` (read at each call)."""
    return os.environ.get("ALEXNET_STAGE_ROWS", "0") == "1" and stage.kernel_size == stage.stride + 1


# Enough programs to fill an H100 (132 multiprocessors, 8 programs of 8 warps each) where the batch allows
PROGRAMS = 1024


def row_chunks(out: tuple[int, int], block_p: int, images: int, k: int) -> tuple[int, int]:
    """``(ROWS, programs per image)`` for :func:`_forward_rows`: the fewest LRN evaluations over the launched
    tiles (the padding of the last chunk and tile counted), among the chunkings that launch :data:`PROGRAMS`
    programs, or as many as the batch allows."""

    def cost(rows: int) -> tuple[int, int, int]:
        blocks = triton.cdiv(triton.cdiv(out[0], rows) * out[1], block_p)
        # per column of a tile: the chunk's first row, then K − 1 rows of K positions for each window
        evaluations = blocks * block_p * (k + rows * (k - 1) * k)
        return -min(blocks * images, PROGRAMS), evaluations, blocks

    rows = min(range(1, out[0] + 1), key=cost)
    return rows, cost(rows)[2]


def relu_pool(
    x: torch.Tensor, out: tuple[int, int], stage: StageArgs, norm: bool, training: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``max_pool2d(lrn(relu(x)))`` (``norm``) or ``max_pool2d(relu(x))`` and, with ``training``, the uint8
    window offsets of the maxima and (:func:`keeps_denominators`) their fp32 LRN denominators; ``out`` is the
    pooled height and width."""
    n, c, height, width = x.shape
    fmt = _layout_like(x)
    y = torch.empty((n, c, *out), dtype=x.dtype, device=x.device, memory_format=fmt)
    idx = torch.empty(y.shape, dtype=torch.uint8, device=x.device, memory_format=fmt) if training else None
    keep = training and norm and keeps_denominators(stage)
    kept = torch.empty_like(y, dtype=torch.float32) if keep else None
    block_c, block_p, warps = _tiles(c, out[0] * out[1], TILES[0])
    args = (
        x, y, y if idx is None else idx, y if kept is None else kept, c, height, width, *out, *x.stride(),
        *y.stride(), stage.alpha, stage.beta, stage.k,
    )  # fmt: skip
    flags = {"NORM": norm, "TRAIN": training, "KEEP": keep, **_window(stage), "BLOCK_C": block_c}
    if walks_rows(stage):
        rows, programs = row_chunks(out, block_p, n, stage.kernel_size)
        _forward_rows[(programs, n)](
            *args, **flags, ROWS=rows, BLOCK_P=block_p, FAST=lrn_triton.fast_log2(), num_warps=warps
        )
    else:
        grid = (triton.cdiv(out[0] * out[1], block_p), n)
        _forward[grid](*args, **flags, BLOCK_P=block_p, FAST=lrn_triton.fast_log2(), num_warps=warps)
    return y, idx, kept


def stage(
    x: torch.Tensor, out: tuple[int, int], stage: StageArgs, training: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(output, what the backward needs besides x, window offsets when training)``, as the CPU kernel's
    :meth:`~alexnet.models.native.Kernel.stage` returns them (:class:`alexnet.models.fused.StageKernels`): the
    middle one is the LRN's input when pooling comes first, and the maxima's LRN denominators when the stage
    :func:`keeps_denominators` (training), else ``None``."""
    if not stage.pool_first:
        y, idx, kept = relu_pool(x, out, stage, norm=True, training=training)
        return y, kept, idx
    pooled, idx, _ = relu_pool(x, out, stage, norm=False, training=training)
    return lrn_triton.forward(pooled, stage.size, stage.alpha, stage.beta, stage.k), pooled, idx


def stage_backward(
    grad: torch.Tensor,
    shape: list[int],
    x: torch.Tensor | None,
    pooled: torch.Tensor | None,
    idx: torch.Tensor,
    stage: StageArgs,
) -> torch.Tensor:
    """The gradient of the conv output (of ``shape``; ``x``'s layout, else channels-last) from the pooled gradient ``grad``
    (the LRN's input gradient when pooling comes first), as the CPU kernel's
    :meth:`~alexnet.models.native.Kernel.stage_backward` takes them: ``x``, the conv output, for relu → norm →
    pool, with ``pooled`` the denominators its forward kept or ``None``; ``pooled``, the pooled ReLU output, for
    relu → pool → norm."""
    norm = not stage.pool_first
    source = x if norm else pooled
    assert source is not None
    kept = pooled if norm else None
    n, c, height, width = shape
    dx = (
        torch.empty_like(x)  # x's strides: the kernel reads x and writes dx with one set
        if x is not None and norm
        else torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)
    )
    block_c, block_p, warps = _tiles(c, height * width, TILES[1])
    grid = (triton.cdiv(height * width, block_p), n)
    scaled = torch.empty_like(dx, dtype=torch.float32) if norm else dx
    for pass_ in (0, 1) if norm else (1,):
        _backward[grid](
            grad, idx, source, idx if kept is None else kept, scaled, dx, c, height, width, *idx.shape[2:],
            *dx.stride(), *grad.stride(), *idx.stride(), stage.alpha, stage.beta, stage.k, NORM=norm,
            KEPT=kept is not None, PASS=pass_, **_window(stage), BLOCK_C=block_c, BLOCK_P=block_p,
            FAST=lrn_triton.fast_log2(), num_warps=warps,
        )  # fmt: skip
    return dx
