"""The conv stage's Triton kernels (CUDA's fused ReLU + LRN + max-pool), run here by Triton's interpreter on CPU
tensors: outputs and gradients equal the three modules' (as they run on a GPU) for both orders (AlexNet's relu → norm → pool, CaffeNet's
and ZFNet's relu → pool → norm), windows, strides and ceil mode, ties, NaN and bf16. On a GPU machine
tests/test_cuda.py runs them compiled, through the operators and whole models."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from alexnet.models.layers import LocalResponseNorm
from alexnet.models.native import StageArgs
from test_dispatch_support import OpLog

pytest.importorskip("triton")
CL = torch.channels_last


# The kernels' variants (stage_triton.keeps_denominators, stage_triton.walks_rows): each must give the same numbers
VARIANTS = {
    "as-shipped": {},
    "kept-denominators": {"ALEXNET_KEEP_DENOMINATOR": "1"},
    "rows-and-kept": {"ALEXNET_KEEP_DENOMINATOR": "1", "ALEXNET_STAGE_ROWS": "1"},
}
SETTINGS = ("ALEXNET_KEEP_DENOMINATOR", "ALEXNET_STAGE_ROWS")


@pytest.fixture(scope="module", params=list(VARIANTS))
def kernels(request):
    """stage_triton in one of its :data:`VARIANTS`; on a machine without a GPU, conftest.py has set
    TRITON_INTERPRET=1 before Triton loaded."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton's interpreter is off")
    from alexnet.models import stage_triton

    settings = VARIANTS[request.param]
    before = {name: os.environ.get(name) for name in SETTINGS}
    os.environ.update({name: settings.get(name, "0") for name in before})
    yield stage_triton
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def on_device(t: torch.Tensor) -> torch.Tensor:
    return t.cuda() if torch.cuda.is_available() else t


def modules(args: StageArgs) -> nn.Sequential:
    norm = LocalResponseNorm(args.size, args.alpha, args.beta, args.k)
    pool = nn.MaxPool2d(args.kernel_size, args.stride, ceil_mode=args.ceil_mode)
    return nn.Sequential(nn.ReLU(), *((pool, norm) if args.pool_first else (norm, pool)))


def run_kernels(kernels, x: torch.Tensor, args: StageArgs, grad: torch.Tensor | None):
    """The stage's output (training forward), the inference forward's, and the input gradient for ``grad``, as
    alexnet.models.fused calls the kernels."""
    from alexnet.models.fused import pooled_size

    out = tuple(pooled_size(s, args.kernel_size, args.stride, args.ceil_mode) for s in x.shape[2:])
    y, pooled, idx = kernels.stage(x, out, args, training=True)
    inference = kernels.stage(x, out, args)[0]
    if grad is None:
        return y, inference, None
    if args.pool_first:
        g = torch.ops.alexnet.lrn_backward(grad, pooled, y, args.size, args.alpha, args.beta, args.k)
        dx = kernels.stage_backward(g, list(x.shape), None, pooled, idx, args)
    else:
        dx = kernels.stage_backward(grad, list(x.shape), x, pooled, idx, args)  # pooled: kept denominators
    return y, inference, dx


def run_modules(x: torch.Tensor, args: StageArgs, grad: torch.Tensor):
    """The three modules' output and input gradient, as they run on a GPU: ReLU, max_pool2d, and the LRN through
    its own Triton kernels (tests/test_lrn_triton.py checks those against AlexNet §3.3's formula). The same LRN
    arithmetic means the same maxima, ties between rounded values included."""
    from alexnet.models import lrn_triton

    norm = (args.size, args.alpha, args.beta, args.k)
    a = torch.relu(x)

    def pool(t: torch.Tensor, g: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        leaf = t.detach().requires_grad_()
        out = F.max_pool2d(leaf, args.kernel_size, args.stride, ceil_mode=args.ceil_mode)
        if g is None:
            return out.detach(), None
        out.backward(g)
        return out.detach(), leaf.grad

    if args.pool_first:
        pooled, _ = pool(a, None)
        y = lrn_triton.forward(pooled, *norm)
        _, da = pool(a, lrn_triton.backward(grad, pooled, y, *norm))
    else:
        b = lrn_triton.forward(a, *norm)
        y, db = pool(b, grad)
        da = lrn_triton.backward(db, a, b, *norm)
    return y, torch.where(x > 0, da, 0)


# compiling takes the time on a GPU: each channel count is new kernels, for each of the three variants; on the
# CPU, Triton's interpreter takes about 0.9 s an example (2 cores): 12 draws per variant, new ones every run
@settings(max_examples=4 if torch.cuda.is_available() else 12, deadline=None)
@given(
    c=st.integers(1, 20),
    h=st.integers(3, 12),
    w=st.integers(3, 12),
    size=st.integers(1, 6),
    window=st.sampled_from([(3, 2), (2, 2), (3, 1), (3, 3), (2, 3), (2, 1)]),
    ceil=st.booleans(),
    pool_first=st.booleans(),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_triton_stage_gives_the_modules_outputs_and_gradients(
    kernels, c, h, w, size, window, ceil, pool_first, ties, seed
):
    torch.manual_seed(seed)
    x = torch.randn(2, c, h, w) * 30  # large enough that the normalisation matters
    if ties:  # equal values in a window: the gradient goes to the first maximum, as max_pool2d sends it
        x = x.round().clamp(-2, 2)
    x = on_device(x).contiguous(memory_format=CL)
    args = StageArgs(pool_first, size, 1e-3, 0.75, 2.0, *window, ceil)
    want_y, want_dx = run_modules(x, args, grad := on_device(torch.randn_like(modules(args)(x.clone()))))
    y, inference, dx = run_kernels(kernels, x, args, grad.contiguous(memory_format=CL))
    assert y.shape == want_y.shape and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(inference, y, rtol=0, atol=0)
    torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-6)
    assert dx.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("pool_first", [False, True])
def test_the_triton_stage_takes_an_nchw_gradient(kernels, pool_first):
    torch.manual_seed(0)
    x = on_device(torch.randn(2, 16, 13, 13) * 30).contiguous(memory_format=CL)
    args = StageArgs(pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, True)
    grad = on_device(torch.randn(2, 16, 6, 6))  # NCHW, as a reshape may hand it back
    want_dx = run_modules(x, args, grad)[1]
    _, _, dx = run_kernels(kernels, x, args, grad)
    torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool_first", [False, True])
def test_the_triton_stage_rounds_bf16_where_the_modules_do(kernels, pool_first):
    torch.manual_seed(0)
    x = on_device(torch.randn(2, 32, 15, 15) * 30).to(torch.bfloat16).contiguous(memory_format=CL)
    args = StageArgs(pool_first, 5, 1e-3, 0.75, 2.0, 3, 2, True)
    grad = on_device(torch.randn(2, 32, 7, 7)).to(torch.bfloat16).contiguous(memory_format=CL)
    want_y, want_dx = run_modules(x, args, grad)
    y, _, dx = run_kernels(kernels, x, args, grad)
    assert y.dtype == dx.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want_y.float(), rtol=8e-3, atol=0)  # at most one rounding apart
    torch.testing.assert_close(dx.float(), want_dx.float(), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("pool_first", [False, True])
def test_a_nan_reaches_the_triton_stage_output_as_it_does_through_the_modules(kernels, pool_first):
    x = on_device(torch.rand(1, 8, 9, 9)).contiguous(memory_format=CL)
    x[0, 3, 4, 4] = float("nan")
    args = StageArgs(pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, False)
    want = modules(args)(x.clone())
    got = run_kernels(kernels, x, args, None)[0]
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num())


def test_the_window_offsets_are_one_byte_per_pooled_value(kernels):
    x = on_device(torch.randn(2, 8, 9, 9)).contiguous(memory_format=CL)
    args = StageArgs(False, 5, 1e-4, 0.75, 2.0, 3, 2, False)
    _, kept, idx = kernels.stage(x, (4, 4), args, training=True)
    assert idx.dtype == torch.uint8 and idx.shape == (2, 8, 4, 4)
    assert int(idx.max()) < 9
    assert (kept is not None) == kernels.keeps_denominators(args)
    assert kernels.stage(x, (4, 4), args)[1] is None  # inference keeps nothing


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kept_denominators_are_the_lrn_denominators_at_the_maxima(kernels, dtype):
    """AlexNet §3.3's d = k + α Σ_{j∈win(i)} a_j², at the position each pooled maximum came from; the pooled
    value is a d^{-β} there (rounded to the dtype, as the forward rounds the LRN output before pooling)."""
    args = StageArgs(False, 5, 1e-3, 0.75, 2.0, 3, 2, True)
    if not kernels.keeps_denominators(args):
        pytest.skip("the forward keeps them only with ALEXNET_KEEP_DENOMINATOR=1")
    torch.manual_seed(0)
    x = on_device(torch.randn(2, 12, 11, 11) * 30).to(dtype).contiguous(memory_format=CL)
    y, kept, idx = kernels.stage(x, (5, 5), args, training=True)
    assert kept.dtype == torch.float32 and kept.shape == y.shape and kept.is_contiguous(memory_format=CL)
    a = torch.relu(x.float())
    window_sum = 5 * F.avg_pool3d(a.square().unsqueeze(1), (5, 1, 1), stride=1, padding=(2, 0, 0)).squeeze(1)
    d = 2.0 + 1e-3 * window_sum
    # the argmax's input position from its window offset: row 2·oh + idx // 3, column 2·ow + idx % 3
    rows = 2 * torch.arange(5, device=x.device).view(1, 1, 5, 1) + idx.long() // 3
    cols = 2 * torch.arange(5, device=x.device).view(1, 1, 1, 5) + idx.long() % 3
    at = lambda t: t.flatten(2).gather(2, (rows * 11 + cols).flatten(2)).view_as(y)  # noqa: E731
    torch.testing.assert_close(kept, at(d), rtol=1e-5, atol=0)
    torch.testing.assert_close(y.float(), (at(a) * kept.pow(-0.75)).to(dtype).float(), rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("window", [(3, 2, True), (3, 2, False), (2, 1, False)])
@pytest.mark.parametrize("pool_first", [False, True])
def test_walking_down_the_rows_gives_the_window_by_window_kernels_bits(
    pool_first, window, dtype, monkeypatch
):
    """_forward_rows carries each window's last row into the next window: the same maxima, window offsets and
    denominators as _forward, which evaluates all K² positions, ties (rounded values) and NaN included."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton's interpreter is off")
    from alexnet.models import stage_triton
    from alexnet.models.fused import pooled_size

    torch.manual_seed(1)
    x = (torch.randn(3, 24, 17, 15) * 30).round().clamp(-3, 3)  # many ties
    x[0, 5, 4, 6] = x[2, 17, 16, 14] = float("nan")
    x = on_device(x).to(dtype).contiguous(memory_format=CL)
    args = StageArgs(pool_first, 5, 1e-3, 0.75, 2.0, *window)
    out = tuple(pooled_size(s, args.kernel_size, args.stride, args.ceil_mode) for s in x.shape[2:])
    monkeypatch.setenv("ALEXNET_KEEP_DENOMINATOR", "1")
    monkeypatch.setenv("ALEXNET_STAGE_ROWS", "0")
    want = stage_triton.stage(x, out, args, training=True)
    monkeypatch.setenv("ALEXNET_STAGE_ROWS", "1")
    assert stage_triton.walks_rows(args)
    got = stage_triton.stage(x, out, args, training=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("path", ["function", "operators"])
@pytest.mark.parametrize("variant", ["as-shipped", "rows-and-kept"])
def test_the_autograd_operator_hands_the_kept_denominators_to_the_backward(variant, path, monkeypatch):
    """Through fused.stage's autograd.Function, and through alexnet::relu_lrn_pool_train and its backward (under a
    dispatch mode), as a CUDA model runs them; here the Triton kernels run in the interpreter on CPU tensors.
    With the forward keeping the denominators, the backward takes them, and the input gradient is the modules'."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and Triton's interpreter is off")
    from alexnet.models import fused, stage_triton

    if not torch.cuda.is_available():
        monkeypatch.setattr(fused, "_kernels", lambda device: stage_triton)
    for name in SETTINGS:  # the kernels fixture may have set them
        monkeypatch.setenv(name, VARIANTS[variant].get(name, "0"))
    torch.manual_seed(0)
    x = on_device(torch.randn(2, 16, 13, 13) * 30).contiguous(memory_format=CL).requires_grad_()
    args = StageArgs(False, 5, 1e-3, 0.75, 2.0, 3, 2, True)
    taken = []
    real = stage_triton.stage_backward
    monkeypatch.setattr(stage_triton, "stage_backward", lambda *a: taken.append(a[3] is not None) or real(*a))
    with OpLog() if path == "operators" else contextlib.nullcontext() as log:
        y = fused.stage(x * 1, args)
        grad = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, grad)
    assert taken == [variant == "rows-and-kept"]
    assert log is None or log.count("alexnet.relu_lrn_pool_backward") == 1
    leaf = x.detach().requires_grad_()
    want = fused._composed(leaf, *args)
    (want_dx,) = torch.autograd.grad(want, leaf, grad)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-6)
