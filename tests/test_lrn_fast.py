"""The LRN operator ``alexnet::lrn`` (AlexNet §3.3) against the literal formula: values, gradients, layouts.

Every test runs twice: on the fused CPU kernel (``lrn_cpu.cpp``) and on the PyTorch composition that other
devices, other dtypes and machines without a compiler use.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import alexnet
from alexnet.models import LocalResponseNorm, lrn_reference, native
from alexnet.models.layers import (
    BAND_MAX_CHANNELS,
    _banded_sum,
    _window_sum,
    channel_window_sum,
    local_response_norm,
)

# Channel counts on both sides of the banded-GEMM / shifted-slices switch.
NARROW, WIDE = 7, BAND_MAX_CHANNELS + 3


@pytest.fixture(autouse=True, params=["fused", "composed"])
def lrn_path(request, monkeypatch):
    """Run the test on the fused CPU kernel, then on the PyTorch composition (the kernel switched off)."""
    if request.param == "fused":
        if native.kernel() is None:
            pytest.skip("no C++ compiler: test_lrn_native.py checks that it builds where one exists")
    else:
        monkeypatch.setattr(native, "kernel", lambda: None)
    return request.param


def reference_module(size: int, alpha: float, beta: float, k: float, over_size: bool):
    """The literal formula with the module's convention (alpha divided by n for Caffe's)."""
    sum_alpha = alpha / size if over_size else alpha
    return lambda x: lrn_reference(x, size, sum_alpha, beta, k)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    channels=st.one_of(st.integers(1, 12), st.integers(BAND_MAX_CHANNELS - 2, BAND_MAX_CHANNELS + 6)),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    size=st.integers(1, 9),
    alpha=st.floats(1e-5, 1e-2),
    beta=st.floats(0.5, 1.0),
    k=st.floats(0.5, 3.0),
    over_size=st.booleans(),
    channels_last=st.booleans(),
    scale=st.floats(0.1, 100.0),
    seed=st.integers(0, 2**16),
)
def test_fast_lrn_matches_the_formula_for_any_shape_size_and_convention(
    batch, channels, height, width, size, alpha, beta, k, over_size, channels_last, scale, seed
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height, width, generator=g) * scale
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lrn = LocalResponseNorm(size, alpha, beta, k, alpha_over_size=over_size)
    expected = reference_module(size, alpha, beta, k, over_size)(x.double())
    torch.testing.assert_close(lrn(x.double()), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lrn(x), expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [NARROW, WIDE])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("over_size", [False, True], ids=["paper", "caffe"])
def test_gradcheck_float64(channels, size, over_size):
    torch.manual_seed(size)
    # large activations so that the α·Σa² term (and its gradient) matters
    x = (torch.randn(1, channels, 2, 1, dtype=torch.float64) * 30).requires_grad_()
    lrn = LocalResponseNorm(size, 1e-3, 0.75, 2.0 if not over_size else 1.0, alpha_over_size=over_size)
    assert torch.autograd.gradcheck(lrn, (x,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("channels", [NARROW, WIDE])
@pytest.mark.parametrize("size", [4, 5])
def test_gradient_equals_autograd_through_the_reference(channels, size):
    torch.manual_seed(0)
    x = (torch.randn(2, channels, 5, 6, dtype=torch.float64) * 20).requires_grad_()
    weight = torch.randn(2, channels, 5, 6, dtype=torch.float64)
    (fast,) = torch.autograd.grad((local_response_norm(x, size, 1e-3, 0.75, 2.0) * weight).sum(), x)
    (slow,) = torch.autograd.grad((lrn_reference(x, size, 1e-3, 0.75, 2.0) * weight).sum(), x)
    torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("channels", [NARROW, WIDE])
def test_channels_last_gives_equal_values_gradients_and_keeps_the_layout(channels):
    torch.manual_seed(1)
    x = torch.randn(2, channels, 7, 5) * 10
    g = torch.randn_like(x)
    xc = x.contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for inp in (x, xc):
        inp = inp.clone().requires_grad_()
        out = local_response_norm(inp, 5, 1e-4, 0.75, 2.0)
        out.backward(g)
        outs.append(out)
        grads.append(inp.grad)
    assert outs[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_window_sum_counts_each_neighbour_once():
    """Odd n: centred window; even n: ``i - n//2 .. i + (n-1)//2`` (as ``torch.nn.LocalResponseNorm``)."""
    ones = torch.ones(1, 9, 1, 1)
    assert channel_window_sum(ones, 5).flatten().tolist() == [3, 4, 5, 5, 5, 5, 5, 4, 3]
    assert channel_window_sum(ones, 4).flatten().tolist() == [2, 3, 4, 4, 4, 4, 4, 4, 3]


@pytest.mark.parametrize("channels", [NARROW, WIDE])
@pytest.mark.parametrize("channels_last", [False, True])
def test_banded_sum_equals_the_shifted_slices(channels, channels_last):
    x = torch.rand(2, channels, 3, 4, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for before, after in [(2, 2), (2, 1), (1, 2), (0, 0)]:
        expected = 3.0 + 0.5 * _window_sum(x, before, after)
        torch.testing.assert_close(_banded_sum(x, before, after, 0.5, 3.0), expected)


def test_operator_registration_passes_torch_library_opcheck():
    x = torch.randn(2, 8, 4, 3, requires_grad=True)
    torch.library.opcheck(torch.ops.alexnet.lrn.default, (x, 5, 1e-4, 0.75, 2.0))
    xc = torch.randn(2, 8, 4, 3).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.alexnet.lrn.default, (xc, 5, 1e-4, 0.75, 2.0))
    for inp in (
        torch.randn(2, 8, 4, 3),
        torch.randn(2, 8, 4, 3).contiguous(memory_format=torch.channels_last),
    ):
        torch.library.opcheck(torch.ops.alexnet.lrn_.default, (inp, 5, 1e-4, 0.75, 2.0))


def test_torch_compile_traces_the_operator_as_one_node_without_graph_breaks():
    lrn = LocalResponseNorm(5, 1e-4, 0.75, 2.0)
    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, inputs: list) -> object:
        graphs.append(gm)
        return torch._dynamo.backends.debugging.aot_eager(gm, inputs)  # forward and backward through AOT

    compiled = torch.compile(lrn, backend=record, fullgraph=True)
    x = (torch.randn(2, 16, 3, 3) * 10).requires_grad_()
    out = compiled(x)
    out.sum().backward()
    calls = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert calls == ["alexnet.lrn.default"]  # one graph, one node: the operator, not its composition
    torch.testing.assert_close(out, lrn_reference(x.detach(), 5, 1e-4, 0.75, 2.0))
    ref = x.detach().clone().requires_grad_()
    lrn_reference(ref, 5, 1e-4, 0.75, 2.0).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)


class ReferenceLRN(torch.nn.Module):
    def __init__(self, fast: LocalResponseNorm) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = fast.size, fast.sum_alpha, fast.beta, fast.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lrn_reference(x, self.size, self.alpha, self.beta, self.k)


def reference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights with every fast path undone: the literal LRN and out-of-place ReLUs."""
    import copy

    ref = copy.deepcopy(model)
    for parent in ref.modules():
        for name, child in parent.named_children():
            if isinstance(child, LocalResponseNorm):
                setattr(parent, name, ReferenceLRN(child))
            elif isinstance(child, torch.nn.ReLU):
                setattr(parent, name, torch.nn.ReLU(inplace=False))
    return ref


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_model_logits_and_gradients_equal_the_reference_path(name):
    torch.manual_seed(0)
    # float64 so that only the formulation differs, not fp32 rounding amplified through eight layers;
    # eval: no dropout, the same function twice
    model = alexnet.create_model(name, num_classes=10).double().eval()
    ref = reference_copy(model)
    x = torch.randn(1, 3, model.default_input_size, model.default_input_size, dtype=torch.float64) * 50
    out, out_ref = model(x), ref(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-9, atol=1e-12)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    for (pname, p), p_ref in zip(model.named_parameters(), ref.parameters(), strict=True):
        scale = p_ref.grad.abs().max().clamp(min=1e-12)
        torch.testing.assert_close(p.grad / scale, p_ref.grad / scale, rtol=0, atol=1e-9, msg=pname)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dense", [True, False])
def test_inplace_lrn_overwrites_its_input_only_when_no_gradient_is_needed(channels_last, dense):
    torch.manual_seed(2)
    base = torch.randn(2, 12, 5, 8) * 10
    if channels_last:
        base = base.contiguous(memory_format=torch.channels_last)
    x = base if dense else base[..., ::2]  # a strided view: written back through the view
    expected = lrn_reference(x, 5, 1e-3, 0.75, 2.0)
    lrn = LocalResponseNorm(5, 1e-3, 0.75, 2.0, inplace=True)
    with torch.inference_mode():
        inference_x = x.clone()
        out = lrn(inference_x)
    assert out is inference_x
    torch.testing.assert_close(out, expected)
    with torch.no_grad():
        out = lrn(x)
    assert out is x and out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(base[..., ::2] if not dense else base, expected)
    # with autograd the input is kept for the backward: computed out of place
    y = (expected.clone()).requires_grad_()
    out = lrn(y)
    assert out is not y
    torch.testing.assert_close(y.detach(), expected)
    out.sum().backward()
    assert y.grad is not None
