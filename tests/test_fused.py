"""The inference fast path (``alexnet.models.fused``): ReLU + LRN + max-pool as one kernel computes what the three
modules compute, and is taken only where nothing can tell the difference."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from alexnet.errors import InputSizeError
from alexnet.models import build_model, fused, native
from alexnet.models.layers import LocalResponseNorm
from test_dispatch_support import OpLog, compiled_targets

pytestmark = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler on this machine"
)
CL = torch.channels_last


STAGE = "alexnet.relu_lrn_pool"
TRAIN = "alexnet.relu_lrn_pool_train"


def modules(pool_first: bool, size: int, alpha: float, beta: float, k: float, kernel: int, stride: int, ceil):
    norm = LocalResponseNorm(size, alpha, beta, k)
    pool = nn.MaxPool2d(kernel, stride, ceil_mode=ceil)
    return nn.Sequential(nn.ReLU(), *((pool, norm) if pool_first else (norm, pool)))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 3),
    c=st.integers(1, 40),
    h=st.integers(3, 19),
    w=st.integers(3, 19),
    size=st.integers(1, 7),
    kernel=st.integers(2, 3),
    stride=st.integers(1, 3),
    ceil=st.booleans(),
    pool_first=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_the_fused_stage_equals_relu_lrn_and_max_pool_as_modules(
    n, c, h, w, size, kernel, stride, ceil, pool_first, dtype, seed
):
    torch.manual_seed(seed)
    # scaled so that the LRN's denominator matters (AlexNet's conv1 outputs reach the hundreds)
    x = (torch.randn(n, c, h, w, dtype=dtype) * 30).contiguous(memory_format=CL)
    args = dict(size=size, alpha=1e-3, beta=0.75, k=2.0, kernel_size=kernel, stride=stride, ceil_mode=ceil)
    with torch.inference_mode():
        got = fused.relu_lrn_pool(x, pool_first, **args)
        want = modules(pool_first, size, 1e-3, 0.75, 2.0, kernel, stride, ceil)(x.clone())
    assert got.shape == want.shape and got.is_contiguous(memory_format=CL)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("pool_first", [False, True])
def test_the_fused_stage_takes_bfloat16_as_autocast_produces_it(pool_first):
    torch.manual_seed(0)
    x = (torch.randn(2, 48, 27, 27) * 30).to(torch.bfloat16).contiguous(memory_format=CL)
    with torch.inference_mode():
        got = fused.relu_lrn_pool(x, pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, True)
        want = modules(pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, True)(x.clone())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(
        got.float(), want.float(), rtol=8e-3, atol=0
    )  # at most one bf16 rounding apart


@pytest.mark.parametrize("pool_first", [False, True])
def test_a_nan_reaches_the_pooled_maps_as_it_does_through_the_modules(pool_first):
    x = torch.rand(1, 8, 9, 9).contiguous(memory_format=CL)
    x[0, 3, 4, 4] = float("nan")
    with torch.inference_mode():
        got = fused.relu_lrn_pool(x, pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, False)
        want = modules(pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, False)(x.clone())
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num())


def test_the_operator_passes_torch_library_opcheck():
    x = torch.randn(2, 16, 13, 13).contiguous(memory_format=CL)
    torch.library.opcheck(fused.relu_lrn_pool, (x, False, 5, 1e-4, 0.75, 2.0, 3, 2, True))
    torch.library.opcheck(fused.relu_lrn_pool, (x.contiguous(), True, 5, 1e-4, 0.75, 1.0, 3, 2, False))


@pytest.mark.parametrize(
    "h, kernel, stride, ceil", [(55, 3, 2, True), (13, 3, 2, False), (8, 2, 3, True), (3, 3, 2, True)]
)
def test_pooled_size_is_max_pool2d_s(h, kernel, stride, ceil):
    want = nn.MaxPool2d(kernel, stride, ceil_mode=ceil)(torch.zeros(1, 1, h, h)).shape[-1]
    assert fused.pooled_size(h, kernel, stride, ceil) == want


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_model_logits_are_the_same_with_and_without_the_fused_stages(name, monkeypatch):
    monkeypatch.setenv("ALEXNET_POSTOPS", "0")  # the fc layers' own summation order: tests/test_postops.py
    torch.manual_seed(0)
    model = build_model(name).eval().to(memory_format=CL)
    size = model.default_input_size
    x = (torch.randn(2, 3, size, size) * 2).contiguous(memory_format=CL)
    with torch.inference_mode(), OpLog() as log:
        got = model(x)
    assert log.count(STAGE) == 2  # the stages after conv1 and conv2
    monkeypatch.setenv("ALEXNET_FUSE", "0")
    with torch.inference_mode(), OpLog() as log:
        want = model(x)
    assert log.count(STAGE) == 0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def fused_calls(model: nn.Module, x: torch.Tensor, grad: bool = False) -> int:
    with torch.set_grad_enabled(grad), OpLog() as log:
        model(x)
    return log.count(STAGE)


def test_a_hooked_module_is_run_as_itself_and_its_hook_sees_its_own_output():
    model = build_model("alexnet").eval().to(memory_format=CL)
    x = torch.randn(1, 3, 227, 227).contiguous(memory_format=CL)
    seen = {}
    handle = model.layer("norm1").register_forward_hook(lambda m, i, o: seen.__setitem__("norm1", o.shape))
    assert fused_calls(model, x) == 1  # stage 2 is still fused
    assert seen["norm1"] == (1, 96, 55, 55)  # the LRN's own output, before pool1
    handle.remove()
    handle = model.features.register_forward_hook(lambda m, i, o: None)
    assert fused_calls(model, x) == 0
    handle.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert fused_calls(model, x) == 0
    finally:
        handle.remove()
    assert fused_calls(model, x) == 2


def test_training_runs_the_training_kernels_and_other_dtypes_run_the_modules(monkeypatch):
    monkeypatch.setenv("ALEXNET_FIRST_STAGE", "1")  # as the suite runs, whatever the caller's A/B switches
    monkeypatch.setenv("ALEXNET_CONV_STAGE", "1")
    model = build_model("caffenet").to(memory_format=CL)
    x = torch.randn(1, 3, 227, 227).contiguous(memory_format=CL)
    with OpLog() as log:
        model.train()(x).sum().backward()
    assert log.count(TRAIN) == 2 and log.count(STAGE) == 0
    # both stages' backward go with conv1's and conv2's weight gradients from the pooled maps'
    # (models/first_stage.py, models/conv_stage.py), which call the kernels themselves; a library built without
    # AVX-512 leaves those gradients to oneDNN, from the stages' backward operators
    grads = native.weight_grad_kernel() is not None
    assert log.count("alexnet.relu_lrn_pool_backward") == (0 if grads else 2)
    for switch, backward_ops in (("ALEXNET_FIRST_STAGE", 1), ("ALEXNET_CONV_STAGE", 2)):
        monkeypatch.setenv(switch, "0")  # cumulative: the first, then both off
        with OpLog() as log:
            model.train()(x).sum().backward()
        want = backward_ops if grads else 2
        assert log.count(TRAIN) == 2 and log.count("alexnet.relu_lrn_pool_backward") == want
    monkeypatch.setenv("ALEXNET_FIRST_STAGE", "1")
    monkeypatch.setenv("ALEXNET_CONV_STAGE", "1")
    for p in model.parameters():
        p.requires_grad_(False)  # nothing needs a gradient: the inference kernel
    assert fused_calls(model.eval(), x, grad=True) == 2
    with torch.no_grad():
        assert not fused.applies(model.features, x.to(torch.float16))  # a dtype the kernel does not take
    assert fused_calls(model.eval(), x) == 2


def test_an_nchw_batch_on_cpu_is_copied_to_channels_last_and_fused_with_the_same_numbers():
    model = build_model("alexnet").eval()  # parameters in the default layout too
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    model.double()
    assert fused_calls(model, x) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.classifier(torch.flatten(model.features(x), 1)))
    # an input gradient comes back in the input's shape, equal to the modules'
    x.requires_grad_(True)
    fast = torch.autograd.grad(model(x).square().sum(), x)[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALEXNET_FUSE", "0")
        assert fused_calls(model, x.detach()) == 0
        slow = torch.autograd.grad(model(x).square().sum(), x)[0]
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, slow)
    # a hook on the trunk sees the caller's tensor, not a copy
    seen = []
    handle = model.features.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen[0] is x
    # a dtype the kernel does not take stays as it is
    assert fused.kernel_layout(model.features, x.half()).is_contiguous()


def test_without_the_kernel_the_modules_run(monkeypatch):
    monkeypatch.setattr(native, "kernel", lambda: None)
    model = build_model("zfnet").eval().to(memory_format=CL)
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=CL)
    assert fused_calls(model, x) == 0


def test_an_input_too_small_to_pool_fails_as_the_modules_do():
    model = build_model("alexnet").eval().to(memory_format=CL)
    x = torch.randn(1, 3, 11, 11).contiguous(memory_format=CL)  # conv1 → 1×1 maps: pool1 has nothing to pool
    with torch.inference_mode(), pytest.raises(RuntimeError) as fast:
        fused.run(model.features, x)
    with torch.inference_mode(), pytest.raises(RuntimeError) as slow:
        model.features(x)
    assert str(fast.value) == str(slow.value)
    # the model itself says so before running anything, in its own words
    with torch.inference_mode(), pytest.raises(InputSizeError, match=r"11×11 image.*smallest side is 39 px"):
        model(x)


def test_export_and_compile_see_the_modules_not_the_fused_operator():
    model = build_model("alexnet").eval().to(memory_format=CL)
    x = torch.randn(1, 3, 227, 227).contiguous(memory_format=CL)
    with torch.no_grad():
        program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any("relu_lrn_pool" in t for t in targets)
    assert any("alexnet.lrn" in t for t in targets)
    compiled = compiled_targets(model, x)
    assert not any("relu_lrn_pool" in t for t in compiled) and "alexnet.lrn.default" in compiled


# --- training ------------------------------------------------------------------------------------------------
def stage_args(pool_first: bool, size: int = 5, kernel: int = 3, stride: int = 2, ceil: bool = True):
    return fused.StageArgs(pool_first, size, 1e-3, 0.75, 2.0, kernel, stride, ceil)


def grads(fn, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (y * weight).sum().backward()
    return y.detach(), x.grad


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 24),
    h=st.integers(3, 15),
    w=st.integers(3, 15),
    size=st.integers(1, 6),
    kernel=st.integers(2, 3),
    stride=st.integers(1, 3),
    ceil=st.booleans(),
    pool_first=st.booleans(),
    ties=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_the_training_kernels_give_the_modules_gradients(
    n, c, h, w, size, kernel, stride, ceil, pool_first, ties, seed
):
    torch.manual_seed(seed)
    x = torch.randn(n, c, h, w, dtype=torch.float64) * 30
    if ties:  # equal values in a window: the gradient goes to the first maximum, as max_pool2d sends it
        x = x.round().clamp(-2, 2)
    x = x.contiguous(memory_format=CL)
    args = stage_args(pool_first, size, kernel, stride, ceil)
    reference = modules(pool_first, size, 1e-3, 0.75, 2.0, kernel, stride, ceil)
    with torch.no_grad():
        weight = torch.randn_like(reference(x.clone()))
    got_y, got_dx = grads(lambda t: fused.stage(t, args), x, weight)
    want_y, want_dx = grads(reference, x, weight)
    torch.testing.assert_close(got_y, want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_dx, want_dx, rtol=1e-10, atol=1e-12)
    assert got_dx.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("pool_first", [False, True])
def test_gradcheck_of_the_fused_stage_in_float64(pool_first):
    torch.manual_seed(1)
    x = (torch.randn(2, 7, 9, 8, dtype=torch.float64) * 20).contiguous(memory_format=CL).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fused.stage(t, stage_args(pool_first, 3)), (x,))


@pytest.mark.parametrize("pool_first", [False, True])
def test_the_training_stage_gives_the_same_bits_through_its_registered_operators(pool_first):
    """fused.stage trains through a plain autograd.Function that calls the kernels (less host time per step);
    under a dispatch mode it goes through alexnet::relu_lrn_pool_train and its backward operator instead, which
    the mode then sees. The two give the same bits."""
    torch.manual_seed(0)
    x = (torch.randn(2, 16, 13, 13) * 30).contiguous(memory_format=CL)
    args = stage_args(pool_first)
    weight = torch.randn(2, 16, 6, 6)
    lean = grads(lambda t: fused.stage(t, args), x, weight)
    with OpLog() as log:
        through_operators = grads(lambda t: fused.stage(t, args), x, weight)
    assert log.count(TRAIN) == 1 and log.count("alexnet.relu_lrn_pool_backward") == 1
    for a, b in zip(lean, through_operators, strict=True):
        assert torch.equal(a, b)


def test_a_second_derivative_through_the_training_stage_is_the_modules():
    """backward(create_graph=True) through relu → norm → pool (a gradient penalty): the stage recomputes its
    gradient with a graph from the conv output it kept."""
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 9, 9, dtype=torch.float64) * 20).contiguous(memory_format=CL)
    reference = modules(False, 5, 1e-3, 0.75, 2.0, 3, 2, True)
    penalties = []
    for fn in (lambda t: fused.stage(t, stage_args(False)), reference):
        leaf = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(fn(leaf * 1).square().sum(), leaf, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), leaf)
        penalties.append(gg)
    torch.testing.assert_close(penalties[0], penalties[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("pool_first", [False, True])
def test_the_training_kernels_take_bfloat16_as_autocast_produces_it(pool_first):
    torch.manual_seed(0)
    x = (torch.randn(2, 32, 27, 27) * 30).to(torch.bfloat16).contiguous(memory_format=CL)
    weight = torch.randn(2, 32, 13, 13).to(torch.bfloat16)
    reference = modules(pool_first, 5, 1e-3, 0.75, 2.0, 3, 2, True)
    got_y, got_dx = grads(lambda t: fused.stage(t, stage_args(pool_first)), x, weight)
    want_y, want_dx = grads(reference, x, weight)
    torch.testing.assert_close(got_y.float(), want_y.float(), rtol=8e-3, atol=0)
    torch.testing.assert_close(got_dx.float(), want_dx.float(), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_a_training_step_gives_the_same_gradients_with_and_without_the_fused_stages(name, monkeypatch):
    torch.manual_seed(0)
    model = build_model(name).train().to(memory_format=CL)
    size = model.default_input_size
    x = (torch.randn(2, 3, size, size) * 2).contiguous(memory_format=CL)
    monkeypatch.setenv("ALEXNET_LINEAR", "0")  # fc6-8's own summation order: tests/test_linear_train.py
    results = []
    for fuse in ("1", "0"):
        monkeypatch.setenv("ALEXNET_FUSE", fuse)
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        model(x).logsumexp(1).sum().backward()
        results.append([p.grad.clone() for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize("pool_first", [False, True])
def test_the_fused_stage_keeps_fewer_bytes_for_backward_than_the_modules(pool_first):
    x = torch.randn(2, 96, 55, 55).contiguous(memory_format=CL).requires_grad_()

    def saved_bytes(fn) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x * 1.0)  # a fresh non-leaf, as a conv output is
        return sum(seen.values())

    fast = saved_bytes(lambda t: fused.stage(t, stage_args(pool_first)))
    slow = saved_bytes(modules(pool_first, 5, 1e-3, 0.75, 2.0, 3, 2, True))
    assert fast < slow / 2


def test_the_visualisations_layer_walk_fuses_only_the_stages_nobody_asked_to_see(monkeypatch):
    from alexnet.models.capture import walk

    torch.manual_seed(0)
    model = build_model("alexnet").eval()
    x = torch.randn(2, 3, 227, 227).contiguous(memory_format=CL)
    with torch.inference_mode(), OpLog() as log:
        logits, kept = walk(model, x, "fc8", ["norm1", "pool2", "relu5"])
    assert log.count(STAGE) == 1  # stage 2; stage 1 runs as modules, since norm1 was asked for
    assert kept["norm1"].shape == (2, 96, 55, 55) and kept["pool2"].shape == (2, 256, 13, 13)
    monkeypatch.setenv("ALEXNET_FUSE", "0")
    with torch.inference_mode(), OpLog() as log:
        want_logits, want = walk(model, x, "fc8", ["norm1", "pool2", "relu5"])
    assert log.count(STAGE) == 0
    torch.testing.assert_close(logits, want_logits)
    for name in want:
        torch.testing.assert_close(kept[name], want[name])


def test_torch_compile_traces_the_modules_in_one_graph():
    model = build_model("caffenet").eval().to(memory_format=CL)
    x = torch.randn(1, 3, 227, 227).contiguous(memory_format=CL)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # a graph break would raise
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_the_flattened_pool5_maps_give_their_gradient_back_channels_last_with_the_same_numbers(monkeypatch):
    """fc6's input is pool5 flattened in NCHW order either way; in CPU training the gradient of channels-last
    maps comes back channels-last (the max-pool's backward is 3× slower on an NCHW gradient), same numbers."""
    features = build_model("alexnet").features
    torch.manual_seed(0)
    leaf = torch.randn(2, 256, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 256 * 36)

    def grad_reaching_pool5(trunk: nn.Sequential) -> torch.Tensor:
        x = leaf * 1  # pool5's output is no leaf: its gradient is seen as produced
        seen: list[torch.Tensor] = []
        x.register_hook(seen.append)
        y = fused.flatten(trunk, x)
        assert torch.equal(y, torch.flatten(x.detach(), 1))
        y.backward(g)
        return seen[0]

    fast = grad_reaching_pool5(features)
    assert fast.is_contiguous(memory_format=torch.channels_last) and torch.equal(fast, g.view(2, 256, 6, 6))
    # torch.flatten as it is: no LRN to fuse (alexnet_owt), or ALEXNET_FUSE=0
    assert grad_reaching_pool5(build_model("alexnet_owt").features).is_contiguous()
    monkeypatch.setenv("ALEXNET_FUSE", "0")
    assert grad_reaching_pool5(features).is_contiguous()
