"""The first convolution's weight gradient by its own CPU kernel (``alexnet.models.first_conv``): the same sums
as oneDNN's to float32 rounding, in the weight's own layout, taken only where it applies."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from alexnet.models import build_model, first_conv, native
from alexnet.models.layers import SpaceToDepthConv2d

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler on this machine"
)
CL = torch.channels_last


def reference(x, grad, weight, stride, padding):
    """ATen's weight and bias gradients of conv2d, in float64."""
    _, dw, db = torch.ops.aten.convolution_backward(
        grad.double(), x.double(), weight.double(), [weight.shape[0]], stride, padding, (1, 1), False, (0, 0), 1,
        (False, True, True),
    )  # fmt: skip
    return dw, db


def kernel_grads(x, grad, weight, stride, padding):
    kernel = native.kernel()
    assert kernel is not None
    return kernel.first_conv_weight_grad(x.contiguous(memory_format=CL), grad.contiguous(memory_format=CL),
                                         weight, stride, padding, True)  # fmt: skip


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize(
    "name, oc, kernel, stride, padding, size",
    [
        (
            "alexnet §3.5",
            96,
            11,
            4,
            2,
            67,
        ),  # 96 kernels of 11×11×3, stride 4 (a smaller image: 16×16 outputs)
        ("zfnet Fig. 3", 96, 7, 2, 1, 45),  # 96 kernels of 7×7×3, stride 2
        ("torchvision's", 64, 11, 4, 2, 63),
    ],
)
def test_the_papers_first_layers_get_the_float64_gradient_as_closely_as_onednn(
    name, oc, kernel, stride, padding, size
):
    torch.manual_seed(0)
    x = torch.randn(6, 3, size, size).contiguous(memory_format=CL)
    weight = torch.randn(oc, 3, kernel, kernel)
    out = F.conv2d(x, weight, None, stride, padding)
    grad = torch.randn_like(out).contiguous(memory_format=CL)
    want_w, want_b = reference(x, grad, weight, (stride, stride), (padding, padding))
    dw, db = kernel_grads(x, grad, weight, (stride, stride), (padding, padding))
    _, onednn_w, onednn_b = torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        [oc],
        (stride, stride),
        (padding, padding),
        (1, 1),
        False,
        (0, 0),
        1,
        (False, True, True),
    )
    # float32 sums of 1,536 products each (6 images × 16² outputs): float32 rounding, no more
    assert relative_error(dw, want_w) < 1e-5
    assert relative_error(db, want_b) < 1e-5
    assert relative_error(dw, want_w) <= 4 * relative_error(onednn_w, want_w) + 1e-7
    assert relative_error(db, want_b) <= 4 * relative_error(onednn_b, want_b) + 1e-7
    assert dw.dtype == torch.float32 and dw.shape == weight.shape


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    oc=st.sampled_from([16, 32, 48, 64, 80, 96, 112, 192]),  # every register block, and more than one
    kh=st.integers(1, 7),
    kw=st.integers(1, 7),
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    ph=st.integers(0, 3),
    pw=st.integers(0, 3),
    h=st.integers(7, 20),
    w=st.integers(7, 20),
    threads=st.integers(1, 3),
    weight_layout=st.sampled_from([torch.contiguous_format, CL]),
)
def test_any_geometry_gives_atens_gradients(n, c, oc, kh, kw, sh, sw, ph, pw, h, w, threads, weight_layout):
    torch.manual_seed(n * 1000 + c * 100 + oc)
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    weight = torch.randn(oc, c, kh, kw).contiguous(memory_format=weight_layout)
    out = F.conv2d(x, weight, None, (sh, sw), (ph, pw))
    grad = torch.randn_like(out)
    want_w, want_b = reference(x, grad, weight, (sh, sw), (ph, pw))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dw, db = kernel_grads(x, grad, weight, (sh, sw), (ph, pw))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(dw.double(), want_w, rtol=1e-5, atol=1e-5 * want_w.abs().max().item())
    torch.testing.assert_close(db.double(), want_b, rtol=1e-5, atol=1e-5 * want_b.abs().max().item())
    assert dw.stride() == weight.stride()  # the weight's own layout, so autograd keeps it as it is


def test_output_channels_not_a_multiple_of_16_are_refused_by_the_kernel_and_left_to_onednn():
    kernel = native.kernel()
    assert kernel is not None
    x = torch.randn(1, 3, 9, 9).contiguous(memory_format=CL)
    weight = torch.randn(20, 3, 3, 3)
    grad = torch.randn(1, 20, 7, 7).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="multiple of 16"):
        kernel.first_conv_weight_grad(x, grad, weight, (1, 1), (0, 0), True)
    assert not first_conv.applies(SpaceToDepthConv2d(3, 20, 3, 2), x)


def conv1(oc: int = 96, in_channels: int = 3, **kwargs) -> SpaceToDepthConv2d:
    torch.manual_seed(0)
    return SpaceToDepthConv2d(in_channels, oc, 7, 2, 1, **kwargs)


def image(c: int = 3, layout=CL, dtype=torch.float32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, c, 31, 31, dtype=dtype).contiguous(memory_format=layout)


def test_it_applies_to_a_channels_last_float32_image_in_training(weight_grad_kernels):
    assert first_conv.applies(conv1(), image())


@pytest.mark.parametrize(
    "why, make",
    [
        ("NCHW image", lambda: (conv1(), image(layout=torch.contiguous_format))),
        ("float64", lambda: (conv1().double(), image(dtype=torch.float64))),
        ("not the image layer", lambda: (conv1(in_channels=8), image(c=8))),
        ("output channels", lambda: (conv1(oc=40), image())),
        ("groups", lambda: (SpaceToDepthConv2d(4, 32, 3, 2, groups=2), image(c=4))),
        ("dilation", lambda: (SpaceToDepthConv2d(3, 32, 3, 2, dilation=2), image())),
        ("padding mode", lambda: (SpaceToDepthConv2d(3, 32, 3, 2, 1, padding_mode="reflect"), image())),
    ],
)
def test_it_does_not_apply_outside_its_kernel(why, make, weight_grad_kernels):
    conv, x = make()
    assert not first_conv.applies(conv, x), why


def test_it_does_not_apply_without_a_weight_gradient_under_autocast_or_switched_off(
    monkeypatch, weight_grad_kernels
):
    conv, x = conv1(), image()
    assert first_conv.applies(conv, x)  # where all of these hold, it does
    with torch.no_grad():
        assert not first_conv.applies(conv, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not first_conv.applies(conv, x)
    conv.weight.requires_grad_(False)
    assert not first_conv.applies(conv, x)
    conv.weight.requires_grad_(True)
    monkeypatch.setenv("ALEXNET_FIRST_CONV", "0")
    assert not first_conv.applies(conv, x)


def test_traced_and_compiled_graphs_keep_the_plain_convolution(weight_grad_kernels):
    conv, x = conv1(), image()
    assert first_conv.applies(conv, x)  # eagerly, the kernel would run here
    traced = torch.jit.trace(conv, x)
    assert "aten::_convolution" in str(traced.graph) and "prim::PythonOp" not in str(traced.graph)
    exported = torch.export.export(conv, (x,))
    targets = [n.target for n in exported.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.aten.conv2d.default]
    graphs = []
    torch.compile(conv, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)(x)
    calls = [n.target for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    assert calls == [torch.conv2d]  # dynamo's graph: the convolution alone, no custom autograd Function


def test_the_image_gradient_stays_onednns_and_the_parameter_gradients_agree(monkeypatch, weight_grad_kernels):
    conv, x = conv1(), image().requires_grad_()
    assert first_conv.applies(conv, x)
    grad = torch.randn(2, 96, 14, 14).contiguous(memory_format=CL)  # (31 + 2 - 7) // 2 + 1
    fast = torch.autograd.grad(conv(x), (x, conv.weight, conv.bias), grad)
    monkeypatch.setenv("ALEXNET_FIRST_CONV", "0")
    plain = torch.autograd.grad(conv(x), (x, conv.weight, conv.bias), grad)
    assert torch.equal(fast[0], plain[0])
    for a, b in zip(fast[1:], plain[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())


def test_double_backward_still_works_through_atens_formula(monkeypatch):
    """A gradient penalty (``create_graph=True``) differentiates the backward itself."""

    def penalty_grad() -> torch.Tensor:
        conv, x = conv1(), image().requires_grad_()
        (gx,) = torch.autograd.grad(conv(x).square().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.square().sum(), conv.weight)
        return gw

    fast = penalty_grad()
    monkeypatch.setenv("ALEXNET_FIRST_CONV", "0")
    plain = penalty_grad()
    # the same formula; oneDNN sums in another order when the first backward was a plain one
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_a_training_step_of_a_paper_model_takes_the_kernel_with_the_same_gradients(
    name, monkeypatch, weight_grad_kernels
):
    calls: list[tuple[int, ...]] = []
    real = native.Kernel.first_conv_weight_grad

    def spy(self, x, *args):
        calls.append(tuple(x.shape))
        return real(self, x, *args)

    monkeypatch.setattr(native.Kernel, "first_conv_weight_grad", spy)
    monkeypatch.setenv("ALEXNET_FIRST_STAGE", "0")  # zfnet's conv1 otherwise takes models/first_stage.py
    torch.manual_seed(0)
    model = build_model(name).eval()  # eval: no dropout, so both runs are the same function
    x = torch.randn(2, 3, 224, 224)  # NCHW: the model copies it to channels-last itself
    target = torch.tensor([1, 2])

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        F.cross_entropy(model(x), target).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    assert type(model.layer("conv1")) is SpaceToDepthConv2d
    fast = grads()
    assert calls == [(2, 3, 224, 224)]
    monkeypatch.setenv("ALEXNET_FIRST_CONV", "0")
    plain = grads()
    assert len(calls) == 1
    for key, want in plain.items():
        got = fast[key]
        if key.startswith("features.0."):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
        else:  # everything after conv1 is computed the same way
            assert torch.equal(got, want), key


def test_a_module_with_hooks_still_sees_its_output_and_gradients():
    conv, x = conv1(), image()
    seen: list[str] = []
    conv.register_forward_hook(lambda m, i, o: seen.append("forward"))
    conv.register_full_backward_hook(lambda m, gi, go: seen.append("backward"))
    conv(x).sum().backward()
    assert seen == ["forward", "backward"]
    assert conv.weight.grad is not None and conv.bias.grad is not None


@pytest.mark.parametrize("lanes", [16, 8])
def test_the_weight_gradient_kernels_are_taken_from_avx512_and_avx2_builds(monkeypatch, lanes):
    if native.kernel() is None:
        pytest.skip("no C++ library")
    monkeypatch.setattr(native.kernel(), "weight_grad_lanes", lanes)
    assert native.weight_grad_kernel() is native.kernel()


def test_a_library_built_for_neither_avx512_nor_avx2_leaves_every_weight_gradient_to_onednn(monkeypatch):
    """The kernels' register blocks are sized for AVX-512 and AVX2 (vec16.h) and measured there (docs/performance.md,
    sessions 17–18); a library built for anything else keeps only the LRN and stage kernels."""
    from alexnet.models import conv_stage, first_stage

    if native.kernel() is None:
        pytest.skip("no C++ library")
    monkeypatch.setattr(native.kernel(), "weight_grad_lanes", 0)
    assert native.weight_grad_kernel() is None
    assert not first_conv.applies(conv1(), image())
    calls: list[str] = []
    monkeypatch.setattr(native.Kernel, "first_conv_weight_grad", lambda *a: calls.append("first_conv"))
    monkeypatch.setattr(native.Kernel, "pooled_weight_grad", lambda *a: calls.append("pooled"))
    for name in (
        "alexnet",
        "caffenet",
    ):  # conv1 dense (LRN before pool); conv1 and conv2 from the pooled maps
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, input_size=67).to(memory_format=CL)
        x = torch.randn(2, 3, 67, 67).contiguous(memory_format=CL)
        assert not first_stage.applies(model.layer("conv1"), x)
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
        assert model.layer("conv1").weight.grad is not None and model.layer("conv2").weight.grad is not None
    assert calls == []
    assert not conv_stage.applies(model.layer("conv2"), torch.randn(2, 96, 7, 7).contiguous(memory_format=CL))
