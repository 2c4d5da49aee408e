"""The fused CPU LRN kernel (``lrn_cpu.cpp``): it builds, it computes the composition's numbers, it falls back."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alexnet.models import native
from alexnet.models.layers import LocalResponseNorm, lrn_backward_composed, lrn_composed, lrn_reference

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler on this machine")


@pytest.fixture
def quick_build(monkeypatch):
    """The tests of the build itself (cache, atomic rename, rebuild) compile without optimisation: the same steps in
    a seventh of the time (the kernels' numbers are tested with the optimised build everywhere else)."""
    monkeypatch.setenv("ALEXNET_NATIVE_CFLAGS", "-O0")


@pytest.fixture
def fused() -> native.Kernel:
    kernel = native.kernel()
    assert kernel is not None, "a C++ compiler is on the PATH, yet the fused LRN kernel did not build"
    return kernel


@needs_kernel
def test_the_kernel_builds_once_and_is_reused_from_the_cache(tmp_path, quick_build):
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    second = native.build(tmp_path)
    assert second == first and second.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


@needs_kernel
def test_other_compiler_flags_are_another_build(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_NATIVE_CFLAGS", "-O0")
    plain = native.build(tmp_path)
    monkeypatch.setenv("ALEXNET_NATIVE_CFLAGS", "-O0 -g")
    debug = native.build(tmp_path)
    assert debug != plain
    x = torch.randn(2, 9, 3, 3) * 10
    torch.testing.assert_close(
        native.Kernel(debug).forward(x, 5, 1e-4, 0.75, 2.0), lrn_reference(x, 5, 1e-4, 0.75, 2.0)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([plain.name, debug.name])


def test_a_missing_compiler_is_a_clear_error_and_the_layer_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler found .*no-such-compiler-xyz"):
        native.build()
    native.kernel.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="alexnet.models.native"):
            assert native.kernel() is None
        assert "using the PyTorch composition" in caplog.text
        x = torch.randn(2, 9, 3, 3) * 10
        torch.testing.assert_close(LocalResponseNorm()(x), lrn_reference(x, 5, 1e-4, 0.75, 2.0))
    finally:
        native.kernel.cache_clear()


def test_alexnet_native_0_switches_the_kernel_off(monkeypatch):
    monkeypatch.setenv("ALEXNET_NATIVE", "0")
    native.kernel.cache_clear()
    try:
        assert native.kernel() is None
    finally:
        native.kernel.cache_clear()


LAYOUTS = st.sampled_from(["contiguous", "channels_last", "strided"])


def _make(shape: tuple[int, ...], layout: str, dtype: torch.dtype, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if layout == "strided":  # a non-dense view: every other column of a wider tensor
        wide = torch.randn(*shape[:-1], shape[-1] * 2, generator=g, dtype=dtype) * scale
        return wide[..., ::2]
    x = torch.randn(*shape, generator=g, dtype=dtype) * scale
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(
    shape=st.one_of(
        st.tuples(st.integers(1, 3), st.integers(1, 40)),
        st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 9)),
        st.tuples(st.integers(1, 2), st.integers(1, 300), st.integers(1, 13), st.integers(1, 13)),
        st.tuples(
            st.integers(1, 2), st.integers(1, 12), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)
        ),
    ),
    layout=LAYOUTS,
    size=st.integers(1, 9),
    beta=st.sampled_from([0.75, 0.5, 0.9]),
    alpha=st.floats(1e-5, 1e-2),
    k=st.floats(0.5, 3.0),
    scale=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**16),
    threads=st.integers(1, 3),  # the kernels split the work over the threads they are given
)
def test_fused_forward_and_backward_equal_the_composition_for_any_shape_and_layout(
    shape, layout, size, beta, alpha, k, scale, seed, threads
):
    fused = native.kernel()
    assert fused is not None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            _check_fused(fused, shape, layout, dtype, tol, size, alpha, beta, k, scale, seed)
    finally:
        torch.set_num_threads(before)


def _check_fused(fused, shape, layout, dtype, tol, size, alpha, beta, k, scale, seed) -> None:
    x = _make(shape, layout, dtype, seed, scale)
    g = _make(shape, layout, dtype, seed + 1, 1.0)
    y = fused.forward(x, size, alpha, beta, k)
    torch.testing.assert_close(y, lrn_composed(x.contiguous(), size, alpha, beta, k), rtol=tol, atol=tol)
    dx = fused.backward(g, x, y, size, alpha, beta, k)
    expected = lrn_backward_composed(g.contiguous(), x.contiguous(), y.contiguous(), size, alpha, beta, k)
    torch.testing.assert_close(dx, expected, rtol=tol, atol=tol)


@needs_kernel
@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 2), st.integers(1, 300), st.integers(1, 9), st.integers(1, 9)),
    layout=st.sampled_from(["contiguous", "channels_last"]),
    size=st.integers(1, 9),
    scale=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**16),
)
def test_bfloat16_is_computed_in_float32_and_rounded_once(shape, layout, size, scale, seed):
    """Autocast hands the LRN bf16 activations: the forward is the float32 result rounded to bf16 once (equal to
    it, or one bf16 step away where the two float32 computations straddle a rounding boundary); the gradient is
    within bf16 rounding of the float32 one."""
    fused = native.kernel()
    assert fused is not None
    x = _make(shape, layout, torch.float32, seed, scale).to(torch.bfloat16)
    g = _make(shape, layout, torch.float32, seed + 1, 1.0).to(torch.bfloat16)
    y = fused.forward(x, size, 1e-3, 0.75, 2.0)
    assert y.dtype == torch.bfloat16
    expected = lrn_composed(x.float().contiguous(), size, 1e-3, 0.75, 2.0).to(torch.bfloat16)
    y = y.contiguous()
    torch.testing.assert_close(y.float(), expected.float(), rtol=2**-7, atol=0)  # one bf16 step at most
    assert int((y != expected).sum()) <= max(1, y.numel() // 100)
    dx = fused.backward(g, x, y, size, 1e-3, 0.75, 2.0)
    exact = lrn_backward_composed(g.float(), x.float(), y.float(), size, 1e-3, 0.75, 2.0)
    torch.testing.assert_close(dx.float(), exact, rtol=1e-2, atol=1e-2 * float(exact.abs().max()) + 1e-6)


@needs_kernel
def test_channels_last_input_gives_channels_last_output_and_gradient(fused):
    x = torch.randn(2, 96, 5, 7).contiguous(memory_format=torch.channels_last)
    y = fused.forward(x, 5, 1e-4, 0.75, 2.0)
    dx = fused.backward(torch.randn(2, 96, 5, 7), x, y, 5, 1e-4, 0.75, 2.0)  # NCHW gradient: converted
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert dx.is_contiguous(memory_format=torch.channels_last)


@needs_kernel
def test_non_finite_input_propagates_instead_of_being_hidden(fused):
    """The health monitor finds the first non-finite layer (docs/diagnostics.md): the kernel must not mask NaN."""
    for layout in ("contiguous", "channels_last"):
        x = _make((1, 8, 3, 3), layout, torch.float32, 0, 1.0)
        x[0, 3, 1, 1] = float("nan")
        y = fused.forward(x, 5, 1e-4, 0.75, 2.0)
        # channels 1..5 have channel 3 in their window: their value at that pixel is NaN, the others are finite
        assert torch.isnan(y[0, 1:6, 1, 1]).all() and torch.isfinite(y[0, [0, 6, 7], 1, 1]).all()
        assert torch.isfinite(y[0, :, 0, 0]).all()
        x[0, 3, 1, 1] = float("inf")
        assert not torch.isfinite(fused.forward(x, 5, 1e-4, 0.75, 2.0)[0, 3, 1, 1])


@needs_kernel
def test_the_layer_uses_the_fused_kernel_on_cpu(fused, monkeypatch):
    calls = []
    monkeypatch.setattr(native.Kernel, "forward", lambda self, *a: calls.append("fwd") or lrn_composed(*a))
    monkeypatch.setattr(
        native.Kernel, "backward", lambda self, *a: calls.append("bwd") or lrn_backward_composed(*a)
    )
    x = torch.randn(2, 16, 4, 4, requires_grad=True)
    LocalResponseNorm()(x).sum().backward()
    assert calls == ["fwd", "bwd"]
    calls.clear()
    LocalResponseNorm()(x.detach().half())  # a dtype the kernel does not take: the composition
    assert calls == []
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 activations, as a conv under autocast makes them
        y = torch.nn.Conv2d(16, 16, 1)(x)
        assert y.dtype == torch.bfloat16
        LocalResponseNorm()(y).float().sum().backward()
    assert calls == ["fwd", "bwd"]


@needs_kernel
def test_concurrent_first_builds_leave_one_complete_library(tmp_path, quick_build):
    """DDP ranks start together on a machine without a cached build: each compiles, one atomic rename wins."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from alexnet.models import native; "
        "print(native.Kernel(native.build(Path(sys.argv[1]))) is not None)"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0] and outs == ["True"] * 3
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".so"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".lrn-")]  # no temporary file left


@needs_kernel
def test_a_corrupt_cached_library_is_rebuilt(tmp_path, quick_build):
    path = native.build(tmp_path)
    path.write_bytes(b"not a shared library")  # e.g. a copy cut short by a full disk
    fused = native.load(tmp_path)
    x = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(fused.forward(x, 5, 1e-4, 0.75, 2.0), lrn_reference(x, 5, 1e-4, 0.75, 2.0))
    assert path.stat().st_size > 1000
