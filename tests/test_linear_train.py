"""fc6–fc8 in CPU float32 training by oneDNN's products (models/linear_train.py): the same numbers as
``nn.Linear`` + ``nn.ReLU`` to float32 rounding, and taken only where nothing could tell the difference."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import alexnet
from alexnet.models import linear_train
from pooled_grads import batch, count_runs, model

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not built")


def classifier(sizes: list[int], bias: bool = True, relu_last: bool = False) -> nn.Sequential:
    """Linear → ReLU → Dropout → … → Linear, as the paper models' heads."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2 or relu_last:
            layers += [nn.ReLU(inplace=True), nn.Dropout(0.5)]
    return nn.Sequential(*layers)


def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    return count_runs(monkeypatch, linear_train, "head")


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 70),
    sizes=st.lists(st.integers(1, 90), min_size=2, max_size=4),
    bias=st.booleans(),
    relu_last=st.booleans(),
)
def test_forward_and_all_three_gradients_are_the_float64_sums(n, sizes, bias, relu_last):
    torch.manual_seed(n)
    head = classifier(sizes, bias, relu_last).eval()  # no dropout draws: the float64 copy must see the same
    x = torch.randn(n, sizes[0], requires_grad=True)
    assert linear_train.applies(head, x)
    y = linear_train.head(head, x)
    g = torch.randn_like(y)
    y.backward(g)
    reference = classifier(sizes, bias, relu_last).eval().double()
    reference.load_state_dict(head.state_dict())
    x64 = x.detach().double().requires_grad_()
    # A ReLU's derivative at a pre-activation within float32 rounding of 0 is decided by that rounding: one such
    # unit flips a whole row of the input's gradient (hypothesis found 1.9e-8). Not this module's to pin down.
    pre = x64.detach()
    for layer in reference:
        pre = layer(pre)
        if isinstance(layer, nn.Linear):
            assume(bool((pre.abs() > 1e-5 * (pre.abs().max() + 1e-3)).all()))
    y64 = reference(x64)
    y64.backward(g.double())

    def close(got: torch.Tensor, want: torch.Tensor) -> None:
        torch.testing.assert_close(
            got.double(), want, rtol=1e-4, atol=1e-5 * (want.abs().max().item() + 1e-3)
        )

    close(y.detach(), y64.detach())
    close(x.grad, x64.grad)
    for p, q in zip(head.parameters(), reference.parameters(), strict=True):
        close(p.grad, q.grad)


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_paper_models_train_with_it_and_get_the_modules_float64_gradients(name, monkeypatch):
    calls = counted(monkeypatch)
    net = model(name)
    x = batch(net)
    y = torch.tensor([1, 3, 5, 7])
    F.cross_entropy(net(x), y).backward()
    assert len(calls) == 1
    reference = model(name).double()
    F.cross_entropy(reference(x.double()), y).backward()
    for (key, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
        scale = q.grad.abs().max()
        torch.testing.assert_close(p.grad.double() / scale, q.grad / scale, rtol=0, atol=1e-4, msg=key)


def test_dropout_draws_the_modules_masks():
    torch.manual_seed(0)
    head = classifier([50, 40, 30, 10]).train()
    x = torch.randn(6, 50)
    torch.manual_seed(1)
    got = linear_train.head(head, x)
    torch.manual_seed(1)
    want = head(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.manual_seed(2)
    a = linear_train.head(head[:3], x)
    torch.manual_seed(2)
    b = head[:3](x)
    assert torch.equal(a == 0, b == 0)  # the same units dropped (and ReLU'd)


def test_torchvisions_layout_keeps_nn_linear(monkeypatch):
    """alexnet_owt keeps torchvision's exact numbers: no LRN, no fast path."""
    calls = counted(monkeypatch)
    net = alexnet.create_model("alexnet_owt", num_classes=10)
    net(torch.randn(2, 3, 224, 224)).sum().backward()
    assert calls == []


@pytest.mark.parametrize(
    "case",
    ["no_grad", "ALEXNET_LINEAR=0", "ALEXNET_FUSE=0", "hook", "autocast", "float64", "empty", "traced"],
)
def test_not_taken_where_something_could_tell(case, monkeypatch):
    head = classifier([20, 16, 5])
    x = torch.randn(0 if case == "empty" else 3, 20)
    if case == "float64":
        head, x = head.double(), x.double()
    if case.startswith("ALEXNET"):
        key, value = case.split("=")
        monkeypatch.setenv(key, value)
    if case == "hook":
        head[0].register_forward_hook(lambda *args: None)
    if case == "no_grad":
        with torch.no_grad():
            assert not linear_train.applies(head, x)
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not linear_train.applies(head, x)
    elif case == "traced":
        seen: list[bool] = []

        class Probe(nn.Module):
            def forward(self, t: torch.Tensor) -> torch.Tensor:
                seen.append(linear_train.applies(head, t))  # t: symbolic_trace's FX proxy
                return t

        torch.fx.symbolic_trace(Probe())
        assert seen == [False]
    else:
        assert not linear_train.applies(head, x)
    head(x)  # and the modules run


def test_a_second_derivative_goes_through_pytorch_ops():
    """backward(create_graph=True): a gradient penalty on the input differentiates the backward itself."""
    torch.manual_seed(0)
    head = classifier([12, 9, 4]).eval()
    x = torch.randn(5, 12, requires_grad=True)
    results = []
    for fast in (True, False):
        head.zero_grad()
        out = linear_train.head(head, x) if fast else head(x)
        (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        gx.square().sum().backward()
        results.append([p.grad.clone() for p in head.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_batch_of_gradients_goes_through_pytorch_ops():
    """``autograd.grad(is_grads_batched=True)`` (vmap over the backward) gives each row's own gradient."""
    torch.manual_seed(0)
    head = classifier([12, 9, 4]).eval()
    x = torch.randn(5, 12, requires_grad=True)
    out = linear_train.head(head, x)
    rows = torch.eye(out.numel()).view(-1, *out.shape)[:3]
    (batched,) = torch.autograd.grad(out, x, rows, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        (one,) = torch.autograd.grad(out, x, rows[i], retain_graph=True)
        torch.testing.assert_close(batched[i], one)


def test_a_frozen_head_still_gives_the_inputs_gradient():
    torch.manual_seed(0)
    head = classifier([12, 9, 4]).eval().requires_grad_(False)
    x = torch.randn(5, 12, requires_grad=True)
    linear_train.head(head, x).sum().backward()
    want = torch.autograd.functional.vjp(head, x.detach(), torch.ones(5, 4))[1]
    torch.testing.assert_close(x.grad, want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in head.parameters())
