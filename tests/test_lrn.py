"""Local response normalisation (AlexNet §3.3) against a direct loop over the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alexnet.models import LocalResponseNorm, lrn_reference


def loop_formula(x: torch.Tensor, n: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """b^i_{x,y} = a^i_{x,y} / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} (a^j_{x,y})^2)^beta, element by element."""
    N, C, H, W = x.shape
    out = torch.empty_like(x)
    for b in range(N):
        for i in range(C):
            for yy in range(H):
                for xx in range(W):
                    s = sum(
                        float(x[b, j, yy, xx]) ** 2
                        for j in range(max(0, i - n // 2), min(C - 1, i + n // 2) + 1)
                    )
                    out[b, i, yy, xx] = float(x[b, i, yy, xx]) / (k + alpha * s) ** beta
    return out


def test_paper_convention_matches_the_formula_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3, 4) * 20
    lrn = LocalResponseNorm(5, 1e-4, 0.75, 2.0, alpha_over_size=False)
    torch.testing.assert_close(lrn(x), loop_formula(x, 5, 1e-4, 0.75, 2.0), rtol=1e-5, atol=1e-6)


def test_caffe_convention_divides_alpha_by_size():
    torch.manual_seed(1)
    x = torch.randn(1, 7, 2, 3) * 30
    lrn = LocalResponseNorm(5, 1e-4, 0.75, 1.0, alpha_over_size=True)
    torch.testing.assert_close(lrn(x), loop_formula(x, 5, 1e-4 / 5, 0.75, 1.0), rtol=1e-5, atol=1e-6)


def test_caffe_convention_equals_torch_local_response_norm():
    torch.manual_seed(2)
    x = torch.randn(2, 16, 5, 5) * 10
    ours = LocalResponseNorm(5, 1e-4, 0.75, 1.0, alpha_over_size=True)
    torch.testing.assert_close(ours(x), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(x))


def test_paper_network_needs_alpha_times_n_in_torch():
    """The note in the issue: torch.nn.LocalResponseNorm divides α by n, so the paper needs α = 5e-4 there."""
    x = torch.randn(1, 12, 4, 4) * 10
    paper = LocalResponseNorm(5, 1e-4, 0.75, 2.0)
    torch.testing.assert_close(paper(x), torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(x))


def test_single_channel_value_by_hand():
    x = torch.zeros(1, 5, 1, 1)
    x[0, 2] = 10.0
    out = LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x)
    assert float(out[0, 2]) == pytest.approx(10.0 / (2 + 1e-4 * 100) ** 0.75)


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 12),
    size=st.integers(1, 7),
    alpha=st.floats(1e-5, 1e-2),
    beta=st.floats(0.5, 1.0),
    k=st.floats(0.5, 3.0),
    scale=st.floats(0.1, 50.0),
)
def test_any_shape_and_size_matches_the_reference(channels, size, alpha, beta, k, scale):
    x = torch.randn(2, channels, 3, 3) * scale
    ref = lrn_reference(x.double(), size, alpha, beta, k)
    out = LocalResponseNorm(size, alpha, beta, k)(x.double())
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert math.isfinite(float(out.abs().max()))
