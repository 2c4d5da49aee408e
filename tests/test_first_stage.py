"""conv1's weight gradient from the pooled maps' gradient (``alexnet.models.first_stage``, CPU training of CaffeNet
and ZFNet): the dense gradient's sums in another order, taken only where the conv output's gradient serves
nothing else."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

import alexnet
from alexnet.models import first_stage, native
from alexnet.models.layers import SpaceToDepthConv2d
from alexnet.models.native import StageArgs
from pooled_grads import batch, count_runs, dense_reference, forward_where, model

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler on this machine"
)
CL = torch.channels_last
PAPER_LRN = (5, 1e-4 * 5, 0.75, 2.0)  # size, alpha × size (the window sum's multiplier), beta, k


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 4),
    oc=st.sampled_from([16, 32, 96]),
    kh=st.integers(1, 11),
    kw=st.integers(1, 11),
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    ph=st.integers(0, 3),
    pw=st.integers(0, 3),
    pool=st.sampled_from([(2, 2), (3, 2), (3, 1), (4, 3)]),
    ceil_mode=st.booleans(),
    h=st.integers(12, 40),
    w=st.integers(12, 40),
    threads=st.integers(1, 3),
    weight_layout=st.sampled_from([torch.contiguous_format, CL]),
)
def test_any_geometry_gives_the_dense_gradients_float64_sums(
    n, c, oc, kh, kw, sh, sw, ph, pw, pool, ceil_mode, h, w, threads, weight_layout
):
    kw = min(kw, 48 // c)  # the kernel's widest row: 48 floats (AlexNet's 11 × 3 = 33)
    torch.manual_seed(n * 1000 + c * 100 + kh * 10 + kw)
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    weight = torch.randn(oc, c, kh, kw).contiguous(memory_format=weight_layout)
    bias = torch.randn(oc)
    conv = F.conv2d(x, weight, bias, (sh, sw), (ph, pw)).contiguous(memory_format=CL)
    pool_k, pool_s = pool
    out = tuple(alexnet.models.fused.pooled_size(s, pool_k, pool_s, ceil_mode) for s in conv.shape[2:])
    assume(min(out) >= 1)  # no pooled map: the stage is not fused at all (fused.stage_at); draw another
    stage = StageArgs(True, *PAPER_LRN[:1], *PAPER_LRN[1:], pool_k, pool_s, ceil_mode)
    kernel = native.kernel()
    assert kernel is not None
    _, pooled, idx = kernel.stage(conv, out, stage, training=True)
    grad = torch.randn_like(pooled)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = kernel.pooled_weight_grad(
            x, grad, pooled, idx, weight, tuple(conv.shape[2:]), (sh, sw), (ph, pw), 1, pool, True
        )
    finally:
        torch.set_num_threads(before)
    assert got is not None
    dw, db = got
    want_w, want_b = dense_reference(
        x, weight, grad, pooled, idx, (sh, sw), (ph, pw), 1, pool_k, pool_s, conv.shape[2:]
    )
    torch.testing.assert_close(dw.double(), want_w, rtol=1e-5, atol=1e-5 * want_w.abs().max().item())
    torch.testing.assert_close(db.double(), want_b, rtol=1e-5, atol=1e-5 * want_b.abs().max().item())
    assert dw.stride() == weight.stride()  # the weight's own layout, so autograd keeps it as it is


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch, weight_grad_kernels: None) -> list[int]:
    """How many times the model's forward took ``first_stage.run`` (where the library is built for AVX-512 or AVX2)."""
    return count_runs(monkeypatch, first_stage)


@pytest.mark.parametrize("name", ["caffenet", "zfnet"])
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
        scale = q.grad.abs().max()
        torch.testing.assert_close(p.grad.double() / scale, q.grad / scale, rtol=0, atol=1e-4, msg=key)


def test_a_channel_whose_maxima_are_all_zero_gets_no_gradient(runs) -> None:
    """ReLU passes nothing where a window's maximum is 0: conv1's channels that never fire learn nothing."""
    net = model("zfnet")
    conv1 = net.layer("conv1")
    with torch.no_grad():
        conv1.bias[:48] = -1e4  # every output of these channels below zero
    F.cross_entropy(net(batch(net)), torch.arange(4)).backward()
    assert len(runs) == 1
    assert torch.count_nonzero(conv1.weight.grad[:48]) == 0 and torch.count_nonzero(conv1.bias.grad[:48]) == 0
    assert torch.count_nonzero(conv1.weight.grad[48:]) > 0


def test_alexnets_norm_before_pool_keeps_the_dense_path(runs) -> None:
    net = model("alexnet")  # relu → norm → pool: the LRN spreads each maximum's gradient over 5 channels
    F.cross_entropy(net(batch(net)), torch.arange(4)).backward()
    assert runs == [] and net.layer("conv1").weight.grad is not None


@pytest.mark.parametrize(
    "why",
    [
        "image needs a gradient",
        "switched off",
        "autocast",
        "hook on conv1",
        "no gradient",
        "float64",
    ],
)
def test_it_is_not_taken_where_its_conditions_do_not_hold(why, runs, monkeypatch) -> None:
    forward_where(why, model("caffenet"), "ALEXNET_FIRST_STAGE", monkeypatch)
    assert runs == [], why


def test_an_image_that_needs_a_gradient_is_refused_by_applies_itself(weight_grad_kernels) -> None:
    """The conv output's gradient is then needed for the image's: ``fused.applies`` refuses too, so check here."""
    conv = SpaceToDepthConv2d(3, 32, 7, 2, 1)
    x = torch.randn(1, 3, 40, 40).contiguous(memory_format=CL)
    assert first_stage.applies(conv, x)
    assert not first_stage.applies(conv, x.requires_grad_())


def test_the_same_batch_gives_the_same_gradient_bit_for_bit(runs) -> None:
    """Each thread sums the same images in the same order every call (no dynamic scheduling)."""
    net = model("zfnet")
    x = batch(net, n=5)
    got = []
    for _ in range(3):
        net.zero_grad()
        net(x)[:, 1].sum().backward()
        got.append(net.layer("conv1").weight.grad.clone())
    assert len(runs) == 3  # each forward took the kernel
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])


def test_a_kernel_row_wider_than_48_floats_is_left_to_the_dense_path(weight_grad_kernels) -> None:
    conv = SpaceToDepthConv2d(4, 32, 13, 4)  # 13 × 4 = 52 floats a row
    x = torch.randn(1, 4, 40, 40).contiguous(memory_format=CL)
    assert not first_stage.applies(conv, x)
    assert first_stage.applies(SpaceToDepthConv2d(4, 32, 12, 4), x)  # 48


def test_a_second_derivative_through_it_says_how_to_get_one(runs) -> None:
    net = model("zfnet")
    stage1 = net.features[
        :4
    ]  # conv1, relu1, pool1, norm1 (conv2's stage would raise first in the whole model)
    loss = alexnet.models.fused.run(stage1, batch(net)).square().sum()
    assert len(runs) == 1
    # a gradient penalty on the weights
    with pytest.raises(RuntimeError, match="conv output was not kept; run with ALEXNET_FUSE=0"):
        torch.autograd.grad(loss, net.layer("conv1").weight, create_graph=True)
