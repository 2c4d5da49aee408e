"""The Triton LRN kernels (CUDA's fast path), run here by Triton's interpreter on CPU tensors: AlexNet §3.3's
formula forward and its analytic gradient, for both window conventions, NCHW and channels-last, odd and even
sizes, fp32 and bf16. On a GPU machine tests/test_cuda.py runs them compiled, through the operator."""

from __future__ import annotations

import os

import pytest
import torch

from alexnet.models.layers import lrn_reference

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def kernels():
    """lrn_triton; on a machine without a GPU, conftest.py has set TRITON_INTERPRET=1 before Triton loaded."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton's interpreter is off")
    from alexnet.models import lrn_triton

    return lrn_triton


def on_device(t: torch.Tensor) -> torch.Tensor:
    return t.cuda() if torch.cuda.is_available() else t


CASES = [  # shape, channels-last, size, sum-α, β, k
    ((2, 96, 7, 5), False, 5, 1e-4, 0.75, 2.0),  # AlexNet: paper convention
    ((2, 96, 7, 5), True, 5, 1e-4, 0.75, 2.0),
    ((2, 256, 3, 4), True, 5, 1e-4 / 5, 0.75, 1.0),  # Caffe: α/n, k = 1
    ((3, 17, 4), False, 4, 0.05, 0.5, 1.0),  # even size, 3-D input
    ((2, 10, 6, 6), False, 6, 0.02, 0.9, 1.5),
    ((1, 5, 1, 1), False, 7, 0.1, 0.75, 2.0),  # window wider than the channels
]


@pytest.mark.parametrize(("shape", "channels_last", "size", "alpha", "beta", "k"), CASES)
def test_triton_forward_and_backward_match_the_formula(kernels, shape, channels_last, size, alpha, beta, k):
    torch.manual_seed(size)
    x = on_device(torch.randn(*shape) * 3)  # large enough that the normalisation matters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert kernels.supports(x)
    y = kernels.forward(x, size, alpha, beta, k)
    assert y.stride() == x.stride()  # no layout change
    xd = x.double().requires_grad_()
    ref = lrn_reference(xd, size, alpha, beta, k)
    torch.testing.assert_close(y.double(), ref.detach(), rtol=1e-5, atol=1e-6)  # fp32 rounding
    g = torch.randn_like(x)
    ref.backward(g.double())
    dx = kernels.backward(g.contiguous(), x, y, size, alpha, beta, k)  # an NCHW gradient is conformed
    torch.testing.assert_close(dx.double(), xd.grad, rtol=1e-5, atol=1e-6)


def test_triton_bf16_is_computed_in_fp32_and_rounded_once(kernels):
    torch.manual_seed(0)
    x = on_device(torch.randn(2, 24, 5, 5) * 3).to(torch.bfloat16)
    y = kernels.forward(x, 5, 1e-2, 0.75, 2.0)
    assert y.dtype == torch.bfloat16
    exact = lrn_reference(x.double(), 5, 1e-2, 0.75, 2.0)
    # one conversion of the fp32 result: within one bf16 step (2⁻⁷ relative) of the exact value. (Compiled, the
    # conversion rounds to nearest, within 2⁻⁸; Triton's CPU interpreter truncates.) Computing in bf16 would
    # drift by several steps through the window sum and the power.
    step = 2**-8 if torch.cuda.is_available() else 2**-7
    assert ((y.double() - exact).abs() <= exact.abs() * (step + 1e-6)).all()


def test_triton_propagates_nan(kernels):
    x = torch.randn(1, 8, 3, 3)
    x[0, 3, 1, 1] = float("nan")
    x = on_device(x)
    y = kernels.forward(x, 5, 1e-4, 0.75, 2.0)
    assert y[0, 1:6, 1, 1].isnan().all() and not y[0, 0, 1, 1].isnan()


def test_triton_declines_what_it_does_not_take(kernels):
    assert not kernels.supports(torch.randn(2, 3, 4, 5)[:, :, :, ::2])  # not dense
    assert not kernels.supports(torch.randn(2, 3, 4, 5).double())  # fp64: composed ops
    assert not kernels.supports(torch.randn(1, 2048, 2, 2))  # wider than one tile
    assert not kernels.supports(torch.empty(70_000, 2, 1, 1))  # more images than the grid's second dimension
    assert not kernels.supports(torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5).half())
