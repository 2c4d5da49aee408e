"""conv2's weight gradient from the pooled maps' gradient (``alexnet.models.conv_stage``, CPU training of CaffeNet
and ZFNet): the dense gradient's sums in another order, groups included; the input's gradient stays oneDNN's."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import alexnet
from alexnet.models import conv_stage, native
from alexnet.models.fused import pooled_size
from alexnet.models.layers import GroupedConv2d
from alexnet.models.native import StageArgs
from pooled_grads import batch, count_runs, dense_reference, forward_where, model

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler on this machine"
)
CL = torch.channels_last


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    group_channels=st.sampled_from([16, 32, 48, 96, 128]),  # 1 to 8 vectors a pixel
    og=st.sampled_from([8, 16, 24]),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    ph=st.integers(0, 2),
    pw=st.integers(0, 2),
    pool=st.sampled_from([(2, 2), (3, 2), (3, 1)]),
    ceil_mode=st.booleans(),
    h=st.integers(6, 16),
    w=st.integers(6, 16),
    threads=st.integers(1, 3),
    weight_layout=st.sampled_from([torch.contiguous_format, CL]),
)
def test_any_geometry_gives_the_dense_gradients_float64_sums(
    n, groups, group_channels, og, kh, kw, sh, sw, ph, pw, pool, ceil_mode, h, w, threads, weight_layout
):
    torch.manual_seed(n * 1000 + group_channels * 10 + kh)
    c, oc = groups * group_channels, groups * og
    x = torch.relu(torch.randn(n, c, h, w)).contiguous(memory_format=CL)  # a ReLU's output, as conv2 sees
    weight = torch.randn(oc, group_channels, kh, kw).contiguous(memory_format=weight_layout)
    conv = F.conv2d(x, weight, torch.randn(oc), (sh, sw), (ph, pw), 1, groups).contiguous(memory_format=CL)
    pool_k, pool_s = pool
    out = tuple(pooled_size(s, pool_k, pool_s, ceil_mode) for s in conv.shape[2:])
    assume(min(out) >= 1)  # no pooled map: the stage is not fused at all (fused.stage_at); draw another
    kernel = native.kernel()
    assert kernel is not None
    _, pooled, idx = kernel.stage(
        conv, out, StageArgs(True, 5, 5e-4, 0.75, 2.0, pool_k, pool_s, ceil_mode), True
    )
    grad = torch.randn_like(pooled)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernel.pooled_weight_grad(
            x, grad, pooled, idx, weight, tuple(conv.shape[2:]), (sh, sw), (ph, pw), groups, pool, True
        )
    finally:
        torch.set_num_threads(before)
    assert got is not None
    dw, db = got
    want_w, want_b = dense_reference(
        x, weight, grad, pooled, idx, (sh, sw), (ph, pw), groups, pool_k, pool_s, conv.shape[2:]
    )
    torch.testing.assert_close(dw.double(), want_w, rtol=1e-5, atol=1e-5 * want_w.abs().max().item())
    torch.testing.assert_close(db.double(), want_b, rtol=1e-5, atol=1e-5 * want_b.abs().max().item())
    assert dw.stride() == weight.stride()  # the weight's own layout, so autograd keeps it as it is


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, weight_grad_kernels: None) -> list[int]:
    """How many times the model's forward took ``conv_stage.run`` (where the library is built for AVX-512 or AVX2)."""
    return count_runs(monkeypatch, conv_stage)


@pytest.mark.parametrize("name", ["caffenet", "zfnet"])  # conv2 with two groups (CaffeNet), dense (ZFNet)
def test_caffenet_and_zfnet_training_gets_the_modules_float64_gradients(name, runs, monkeypatch) -> None:
    net = model(name)
    x, y = batch(net), torch.arange(4)
    F.cross_entropy(net(x), y).backward()
    assert len(runs) == 1
    reference = model(name).double()
    monkeypatch.setenv("ALEXNET_FUSE", "0")  # ReLU, MaxPool2d and LocalResponseNorm as modules
    F.cross_entropy(reference(x.double()), y).backward()
    assert len(runs) == 1
    for (key, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
        scale = q.grad.abs().max()  # conv1's too: it takes the input gradient conv2's backward gives
        torch.testing.assert_close(p.grad.double() / scale, q.grad / scale, rtol=0, atol=1e-4, msg=key)


def test_the_input_gradient_is_onednns_from_the_full_size_map(runs, monkeypatch) -> None:
    """Saliency through conv2: the image's gradient equals the one without the path, bit for bit."""
    conv = nn.Conv2d(96, 64, 5, 2)
    stage = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, 2), alexnet.models.layers.LocalResponseNorm())
    x = torch.relu(torch.randn(2, 96, 23, 23)).contiguous(memory_format=CL).requires_grad_()
    (fast,) = torch.autograd.grad(alexnet.models.fused.run(stage, x).square().sum(), x)
    assert len(runs) == 1
    monkeypatch.setenv("ALEXNET_CONV_STAGE", "0")
    (plain,) = torch.autograd.grad(alexnet.models.fused.run(stage, x).square().sum(), x)
    assert len(runs) == 1 and torch.equal(fast, plain)


@pytest.mark.parametrize("why", ["switched off", "autocast", "hook on conv2", "no gradient", "float64"])
def test_it_is_not_taken_where_its_conditions_do_not_hold(why, runs, monkeypatch) -> None:
    forward_where(why, model("zfnet"), "ALEXNET_CONV_STAGE", monkeypatch)
    assert runs == [], why


def test_alexnets_norm_before_pool_keeps_the_dense_path(runs) -> None:
    net = model("alexnet")  # relu → norm → pool: the LRN spreads each maximum's gradient over 5 channels
    F.cross_entropy(net(batch(net)), torch.arange(4)).backward()
    assert runs == [] and net.layer("conv2").weight.grad is not None


def test_group_channels_the_kernel_does_not_take_are_refused(weight_grad_kernels) -> None:
    x = torch.randn(1, 40, 20, 20).contiguous(memory_format=CL)
    assert not conv_stage.applies(nn.Conv2d(40, 32, 3), x)  # 40: not a multiple of 16
    assert not conv_stage.applies(GroupedConv2d(40, 32, 3, groups=2), x)  # 20 a group
    wide = torch.randn(1, 144, 12, 12).contiguous(memory_format=CL)
    assert not conv_stage.applies(nn.Conv2d(144, 32, 3), wide)  # 144 > 128
    assert conv_stage.applies(GroupedConv2d(144, 48, 3, groups=3), wide)  # 48 a group
    assert not conv_stage.applies(nn.Conv2d(48, 32, 3, dilation=2), wide[:, :48])


def test_a_second_derivative_through_it_says_how_to_get_one(runs) -> None:
    conv = nn.Conv2d(96, 64, 5, 2)
    stage = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, 2), alexnet.models.layers.LocalResponseNorm())
    x = torch.relu(torch.randn(2, 96, 23, 23)).contiguous(memory_format=CL)
    loss = alexnet.models.fused.run(stage, x).square().sum()
    assert len(runs) == 1
    with pytest.raises(RuntimeError, match="conv output was not kept; run with ALEXNET_FUSE=0"):
        torch.autograd.grad(loss, conv.weight, create_graph=True)


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_batched_gradients_equal_one_backward_per_vector(layer, runs) -> None:
    """``autograd.grad(..., is_grads_batched=True)`` (vectorised Jacobians) runs the backward under vmap: the
    paths take PyTorch's batchable operators there, with the numbers of one backward per vector."""
    net = model("caffenet")
    out = net(batch(net, n=2))
    assert len(runs) == 1  # the forward took the kernel's path
    vectors = torch.randn(3, *out.shape, generator=torch.Generator().manual_seed(2))
    weight = net.layer(layer).weight
    (batched,) = torch.autograd.grad(out, weight, vectors, is_grads_batched=True, retain_graph=True)
    for v, got in zip(vectors, batched, strict=True):
        (want,) = torch.autograd.grad(out, weight, v, retain_graph=True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_saved_tensors_in_another_layout_give_the_same_gradients(runs) -> None:
    """A saved-tensor hook may hand the backward NCHW tensors (``save_on_cpu`` does): the kernels read them in
    the layout they need."""
    net = model("caffenet")
    x, y = batch(net), torch.arange(4)

    def grads() -> dict[str, torch.Tensor]:
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    want = grads()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t.contiguous()):
        got = grads()
    assert len(runs) == 2  # both forwards took the kernel's path
    for k in (
        want
    ):  # oneDNN may pick other algorithms for NCHW tensors: float32 rounding apart (wrong layouts: 0.7)
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5 * want[k].abs().max().item(), msg=k)


def test_no_bias_and_an_input_without_gradient_take_it_with_the_dense_numbers(runs) -> None:
    conv = nn.Conv2d(96, 64, 5, 2, bias=False)
    stage = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(3, 2), alexnet.models.layers.LocalResponseNorm())
    x = torch.relu(torch.randn(2, 96, 23, 23)).contiguous(memory_format=CL)  # needs no gradient
    (fast,) = torch.autograd.grad(alexnet.models.fused.run(stage, x).square().sum(), conv.weight)
    assert len(runs) == 1
    reference = stage.double()
    (want,) = torch.autograd.grad(reference(x.double()).square().sum(), conv.weight)
    torch.testing.assert_close(fast.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
