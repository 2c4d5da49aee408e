"""What tests/test_first_stage.py and tests/test_conv_stage.py share (tests/test_linear_train.py too): the dense
reference the pooled-maps weight gradients must equal, the small models and batches they train, a count of a
path's calls, and the cases where a path must not be taken."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

import alexnet

CL = torch.channels_last


def dense_reference(x, weight, grad_pooled, pooled, idx, stride, padding, groups, pool_k, pool_s, conv_out):
    """The dense way, in float64: the conv output's gradient spread from each pooled value to its window's maximum
    (where the maximum is above zero: the ReLU), then ATen's weight and bias gradients of the convolution."""
    n, oc, ph, pw = pooled.shape
    g = (grad_pooled.double() * (pooled > 0)).permute(0, 2, 3, 1).reshape(-1)
    where = idx.long().permute(0, 2, 3, 1)
    rows = torch.arange(ph).view(1, ph, 1, 1) * pool_s + where // pool_k
    cols = torch.arange(pw).view(1, 1, pw, 1) * pool_s + where % pool_k
    images = torch.arange(n).view(n, 1, 1, 1).expand_as(where)
    channels = torch.arange(oc).view(1, 1, 1, oc).expand_as(where)
    dense = torch.zeros(n, oc, *conv_out, dtype=torch.float64)
    at = (images.reshape(-1), channels.reshape(-1), rows.reshape(-1), cols.reshape(-1))
    dense.index_put_(at, g, accumulate=True)
    _, dw, db = torch.ops.aten.convolution_backward(
        dense,
        x.double(),
        weight.double(),
        [oc],
        stride,
        padding,
        (1, 1),
        False,
        (0, 0),
        groups,
        (False, True, True),
    )
    return dw, db


def model(name: str) -> alexnet.models.AlexNetFamily:
    """A small channels-last model of ``name``, in eval mode (no dropout draws), 10 classes."""
    torch.manual_seed(0)
    size = {"alexnet": 67, "caffenet": 67, "zfnet": 63}[name]
    net = alexnet.create_model(name, num_classes=10, input_size=size).eval()
    return net.to(memory_format=CL)


def batch(net: torch.nn.Module, n: int = 4) -> torch.Tensor:
    s = net.default_input_size
    x = torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(1)) * 20  # large enough for the LRN
    return x.contiguous(memory_format=CL)


def count_runs(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str = "run") -> list[int]:
    """A list that grows by one each time the model's forward takes ``module.<name>``."""
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args: object) -> torch.Tensor:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def forward_where(why: str, net: torch.nn.Module, switch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One forward of ``net`` on :func:`batch` in a case where a path's conditions do not hold: "image needs a
    gradient", "switched off" (``switch`` set to 0), "autocast" (CPU bf16), "hook on <layer>", "no gradient" or
    "float64"."""
    x = batch(net)
    context = torch.enable_grad()
    if why == "image needs a gradient":  # saliency: the conv output's gradient is needed after all
        x.requires_grad_()
    elif why == "switched off":
        monkeypatch.setenv(switch, "0")
    elif why == "autocast":
        context = torch.autocast("cpu", dtype=torch.bfloat16)
    elif why.startswith("hook on "):
        net.layer(why.removeprefix("hook on ")).register_forward_hook(lambda m, i, o: None)
    elif why == "no gradient":
        context = torch.no_grad()
    else:  # float64: the kernels are float32's
        assert why == "float64", why
        net, x = net.double(), x.double()
    with context:
        net(x)
