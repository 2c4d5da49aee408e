"""The AVX-512 conv stages (``stage_forward16_*``, ``stage_backward16_*`` in lrn_cpu.cpp) and channels-last LRN
(``lrn_forward16_*``, ``lrn_backward16_*``), in float32 and in bfloat16 (autocast's), give the generic kernel's
numbers bit for bit — outputs, window offsets, the LRN's input and gradients, NaN and infinities included — and
take only the stages and maps they are written for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alexnet.models import build_model, fused, native

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler on this machine"
)
CL = torch.channels_last
DTYPES = st.sampled_from([torch.float32, torch.bfloat16])


def _has_avx512() -> bool:
    """Whether the library was built with the AVX-512 stages: the CPU has AVX-512 and ``-march=native`` (or the
    compiler ``CXX`` names) compiled for it, which the CPU's flags alone do not say."""
    try:
        if " avx512f" not in Path("/proc/cpuinfo").read_text():
            return False
    except OSError:
        return False
    kernel = native.kernel()
    return kernel is not None and kernel.avx512


AVX512 = _has_avx512()


def both_ways(
    x: torch.Tensor, stage: fused.StageArgs, monkeypatch
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the AVX-512 code's output, or None where it does not take the stage; the generic kernel's output)."""
    kernel = native.kernel()
    assert kernel is not None
    out = fused._out(x, stage)
    y = torch.full((*x.shape[:2], *out), 7.0, dtype=x.dtype).contiguous(memory_format=CL)
    took = kernel.vector_stage(x, y, stage)
    monkeypatch.setenv("ALEXNET_AVX512", "0")
    generic = kernel.stage(x, out, stage)[0]
    monkeypatch.delenv("ALEXNET_AVX512")
    return (y if took else None), generic


@pytest.mark.skipif(not AVX512, reason="the library was built without AVX-512")
@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([16, 32, 48, 96, 256]),
    h=st.integers(3, 30),
    w=st.integers(3, 30),
    kernel=st.integers(2, 3),
    stride=st.integers(1, 3),
    ceil=st.booleans(),
    pool_first=st.booleans(),
    caffe=st.booleans(),
    scale=st.sampled_from([0.1, 30.0, 1e4]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_the_avx512_stage_gives_the_generic_kernels_numbers_bit_for_bit(
    n, c, h, w, kernel, stride, ceil, pool_first, caffe, scale, dtype, seed
):
    torch.manual_seed(seed)
    x = (torch.randn(n, c, h, w) * scale).to(dtype).contiguous(memory_format=CL)
    # AlexNet §3.3 (k = 2, alpha = 1e-4 on the sum) and Caffe's (k = 1, alpha / n)
    stage = fused.StageArgs(
        pool_first, 5, 1e-4 / 5 if caffe else 1e-4, 0.75, 1.0 if caffe else 2.0, kernel, stride, ceil
    )
    with pytest.MonkeyPatch.context() as patch:
        got, want = both_ways(x, stage, patch)
    assert got is not None
    assert torch.equal(got, want)


@pytest.mark.skipif(not AVX512, reason="the library was built without AVX-512")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pool_first", [False, True])
def test_nan_and_infinities_reach_the_pooled_maps_as_in_the_generic_kernel(pool_first, dtype, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 11, 11, dtype=dtype)
    x[0, 3, 4, 4] = float("nan")
    x[1, 17, 0, 0] = float("inf")
    x[1, 30, 6, 5] = float("-inf")
    x[0, 20, 9, 9] = float("nan")
    x = x.contiguous(memory_format=CL)
    got, want = both_ways(x, fused.StageArgs(pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, True), monkeypatch)
    assert got is not None and got.isnan().any()
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.skipif(not AVX512, reason="the library was built without AVX-512: it takes no stage at all")
@pytest.mark.parametrize(
    "c, size, beta, taken",
    # channels not 16k; another window; another beta; and the paper's stage, which it takes
    [(40, 5, 0.75, False), (32, 3, 0.75, False), (32, 5, 0.5, False), (32, 5, 0.75, True)],
)
def test_other_stages_are_left_to_the_generic_kernel(c, size, beta, taken, monkeypatch):
    x = torch.randn(1, c, 9, 9).contiguous(memory_format=CL)
    got, want = both_ways(x, fused.StageArgs(False, size, 1e-4, beta, 2.0, 3, 2, True), monkeypatch)
    assert (got is not None) == taken
    if taken:
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_model_asks_for_the_avx512_stages_unless_alexnet_avx512_is_0(monkeypatch):
    taken = []
    real = native.Kernel.vector_stage
    monkeypatch.setattr(native.Kernel, "vector_stage", lambda *a: taken.append(1) or real(*a))
    model = build_model("zfnet").to(memory_format=CL)
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=CL)
    model.train()(x).sum().backward()
    with torch.inference_mode():
        model.eval()(x)
    assert len(taken) == 4  # both stages, training and inference (taken where the CPU has AVX-512)
    monkeypatch.setenv("ALEXNET_AVX512", "0")
    with torch.inference_mode():
        model(x)
    model.train()(x).sum().backward()
    assert len(taken) == 4


@pytest.mark.skipif(not AVX512, reason="the library was built without AVX-512")
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.sampled_from([16, 48, 96]),
    h=st.integers(3, 24),
    w=st.integers(3, 24),
    kernel=st.integers(2, 3),
    stride=st.integers(1, 3),
    ceil=st.booleans(),
    pool_first=st.booleans(),
    ties=st.booleans(),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_the_avx512_training_kernels_give_the_generic_outputs_offsets_and_gradients(
    n, c, h, w, kernel, stride, ceil, pool_first, ties, dtype, seed
):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w) * 30
    if ties:  # equal values in a window: max_pool2d's first maximum must win in both
        x = x.round().clamp(-2, 2)
    x = x.to(dtype).contiguous(memory_format=CL)
    stage = fused.StageArgs(pool_first, 5, 1e-4, 0.75, 2.0, kernel, stride, ceil)
    kernel_ = native.kernel()
    assert kernel_ is not None
    out = fused._out(x, stage)
    with pytest.MonkeyPatch.context() as patch:
        fast = kernel_.stage(x, out, stage, training=True)
        patch.setenv("ALEXNET_AVX512", "0")
        slow = kernel_.stage(x, out, stage, training=True)
    for got, want in zip(fast, slow, strict=True):
        assert (got is None and want is None) or torch.equal(got, want)
    y, pooled, idx = slow
    assert idx is not None
    grad = torch.randn_like(y)
    with pytest.MonkeyPatch.context() as patch:
        fast_dx = kernel_.stage_backward(grad, x.shape, x, pooled, idx, stage)
        patch.setenv("ALEXNET_AVX512", "0")
        slow_dx = kernel_.stage_backward(grad, x.shape, x, pooled, idx, stage)
    assert torch.equal(fast_dx, slow_dx)


@pytest.mark.skipif(not AVX512, reason="the library was built without AVX-512")
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.sampled_from([16, 48, 96, 256]),
    h=st.integers(1, 15),
    w=st.integers(1, 15),
    caffe=st.booleans(),
    scale=st.sampled_from([0.1, 30.0, 1e4]),
    dtype=DTYPES,
    seed=st.integers(0, 2**16),
)
def test_the_avx512_lrn_gives_the_generic_kernels_numbers_bit_for_bit(n, c, h, w, caffe, scale, dtype, seed):
    torch.manual_seed(seed)
    kernel = native.kernel()
    assert kernel is not None
    x = (torch.randn(n, c, h, w) * scale).to(dtype).contiguous(memory_format=CL)
    grad = torch.randn_like(x)
    args = (5, 1e-4 / 5 if caffe else 1e-4, 0.75, 1.0 if caffe else 2.0)  # Caffe's and AlexNet §3.3's
    outs = []
    for switch in ("1", "0"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ALEXNET_AVX512", switch)
            y = kernel.forward(x, *args)
            in_place = kernel.forward(x.clone(), *args, inplace=True)
            outs.append((y, in_place, kernel.backward(grad, x, y, *args)))
    (y, in_place, dx), (y0, in_place0, dx0) = outs
    assert torch.equal(y, y0) and torch.equal(in_place, y0) and torch.equal(in_place0, y0)
    assert torch.equal(dx, dx0)
