"""CPU inference with oneDNN post-ops (``alexnet.models.postops``): conv/fc + ReLU as one primitive computes what
the modules compute, and is taken only where nothing can tell the difference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alexnet.models import build_model, postops
from test_dispatch_support import OpLog, compiled_targets

CL = torch.channels_last
CONV = "mkldnn._convolution_pointwise"
LINEAR = "mkldnn._linear_pointwise"

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN"
)


def calls(model: nn.Module, x: torch.Tensor, grad: bool = False) -> tuple[int, int]:
    """How many conv and linear post-op primitives one forward of ``model`` runs."""
    with torch.set_grad_enabled(grad), OpLog() as log:
        model(x)
    return log.count(CONV), log.count(LINEAR)


def paper_model(name: str = "alexnet") -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(name).eval().to(memory_format=CL)
    size = model.default_input_size
    return model, (torch.randn(2, 3, size, size) * 2).contiguous(memory_format=CL)


@pytest.mark.parametrize("layout", [CL, torch.contiguous_format])
@pytest.mark.parametrize("layer", ["conv3", "conv4", "conv5"])  # conv4 and conv5: AlexNet §3.2's two towers
def test_a_conv_and_its_relu_give_the_relu_of_the_convolution_exactly(layer, layout):
    conv = build_model("alexnet").layer(layer).to(memory_format=layout)
    x = torch.randn(3, conv.in_channels, 13, 13).contiguous(memory_format=layout)
    with torch.inference_mode():
        got = postops.conv_relu(conv, x)
        want = torch.relu(conv(x))
    assert got.shape == want.shape and torch.equal(got, want)
    assert got.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_a_nan_in_the_input_reaches_the_logits_on_the_fast_paths_as_on_the_modules(name, train, monkeypatch):
    """oneDNN's ReLU post-op would make max(NaN, 0) = 0 in conv3–5 and fc6–7 (inference) and fc6–7 (training):
    a NaN in the network must reach its output and the loss, as nn.ReLU lets it."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, input_size=67).train(train).to(memory_format=CL)
    x = torch.rand(2, 3, 67, 67)
    x[0, :, 30, 30] = float("nan")
    x = x.contiguous(memory_format=CL)
    with torch.set_grad_enabled(train):
        fast = model(x)
        monkeypatch.setenv("ALEXNET_FUSE", "0")  # the modules, one by one
        slow = model(x)
    assert fast.isnan().any(1).tolist() == slow.isnan().any(1).tolist() == [True, False]


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_the_fast_head_is_as_close_to_float64_as_the_modules(name):
    model, _ = paper_model(name)
    torch.manual_seed(1)
    features = torch.rand(4, next(m for m in model.classifier if isinstance(m, nn.Linear)).in_features) * 3
    with torch.inference_mode():
        fast = postops.head(model.classifier, features)
        slow = model.classifier(features)
        exact = model.classifier.double()(features.double())
    # fp32 sums of 9216 products: both orders land within the same small distance of the float64 result
    tol = dict(rtol=1e-4, atol=1e-5 * float(exact.abs().max()))
    torch.testing.assert_close(fast.double(), exact, **tol)
    torch.testing.assert_close(slow.double(), exact, **tol)


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_paper_models_run_conv3_to_conv5_and_the_fc_layers_as_post_op_primitives(name):
    model, x = paper_model(name)
    assert calls(model, x) == (3, 3)  # conv3–5 with relu3–5; fc6 + relu6, fc7 + relu7, fc8


def test_alexnet_owt_keeps_torchvision_s_modules():
    model = build_model("alexnet_owt").eval().to(memory_format=CL)
    x = torch.randn(1, 3, 224, 224).contiguous(memory_format=CL)
    assert calls(model, x) == (0, 0)


def test_training_autograd_and_other_dtypes_run_the_modules(monkeypatch):
    model, x = paper_model()
    # autograd records the conv modules; fc6-8 take linear_train's products (tests/test_linear_train.py)
    assert calls(model, x, grad=True) == (0, 3)
    monkeypatch.setenv("ALEXNET_LINEAR", "0")
    assert calls(model, x, grad=True) == (0, 0)
    monkeypatch.delenv("ALEXNET_LINEAR")
    model.classifier.train()  # dropout active without autograd: the modules
    assert calls(model, x) == (3, 0)
    model.classifier.eval()
    with torch.autocast("cpu", dtype=torch.float16):  # bf16 autocast takes them (below); fp16 does not
        assert calls(model, x) == (0, 0)
    assert calls(model.double(), x.double()) == (0, 0)
    model.float()
    with torch.backends.mkldnn.flags(enabled=False):
        assert calls(model, x) == (0, 0)
    monkeypatch.setenv("ALEXNET_POSTOPS", "0")
    assert calls(model, x) == (0, 0)
    monkeypatch.setenv("ALEXNET_POSTOPS", "1")
    monkeypatch.setenv("ALEXNET_FUSE", "0")
    assert calls(model, x) == (0, 0)


@pytest.mark.skipif(not postops.bf16_supported(), reason="oneDNN has no bfloat16 kernels on this CPU")
@pytest.mark.parametrize("layer", ["conv3", "conv4"])
def test_under_bf16_autocast_a_conv_post_op_gives_what_autocast_gives_the_modules(layer):
    """Autocast hands the conv a bfloat16 input, weight and bias; the post-op primitive gets the same and gives
    the same bfloat16 output, the ReLU taken before the rounding changing nothing."""
    conv = build_model("alexnet").layer(layer).to(memory_format=CL)
    x = torch.randn(3, conv.in_channels, 13, 13).contiguous(memory_format=CL)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = postops.conv_relu(conv, x)
        want = torch.relu(conv(x))
    assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)


@pytest.mark.skipif(not postops.bf16_supported(), reason="oneDNN has no bfloat16 kernels on this CPU")
@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_under_bf16_autocast_the_paper_models_take_the_post_ops_with_the_modules_logits(name, monkeypatch):
    # (a CPU without them runs the modules: test_without_bf16_kernels_in_onednn_bf16_autocast_runs_the_modules)
    model, x = paper_model(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert calls(model, x) == (3, 3)
        with torch.inference_mode():
            fast = model(x)
            monkeypatch.setenv("ALEXNET_POSTOPS", "0")
            slow = model(x)
    assert fast.dtype == slow.dtype == torch.bfloat16
    # the same numbers here (oneDNN computes the fc layers both ways); allow another kernel's bf16 rounding
    torch.testing.assert_close(fast.float(), slow.float(), rtol=1e-2, atol=1e-2 * float(slow.abs().max()))


def test_without_bf16_kernels_in_onednn_bf16_autocast_runs_the_modules(monkeypatch):
    """An AVX2 CPU: oneDNN's bf16 primitives refuse to run there ("bf16 path needs the cpu support …", seen with
    the library built for -march=haswell and ONEDNN_MAX_CPU_ISA=AVX2), so the models leave bf16 to ATen."""
    monkeypatch.setattr(postops, "bf16_supported", lambda: False)
    model, x = paper_model("caffenet")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert calls(model, x) == (0, 0)
    assert calls(model, x) == (3, 3)  # float32 has its primitives everywhere


def test_a_hooked_layer_runs_as_itself_and_its_hook_sees_its_own_output():
    model, x = paper_model()
    seen: dict[str, torch.Tensor] = {}
    conv3 = model.layer("conv3").register_forward_hook(lambda m, i, o: seen.__setitem__("conv3", o.clone()))
    relu6 = model.layer("relu6").register_forward_hook(lambda m, i, o: seen.__setitem__("relu6", o.clone()))
    assert calls(model, x) == (2, 0)  # conv4 and conv5 still fused; the whole head runs as modules
    assert (seen["conv3"] < 0).any()  # the convolution's output before relu3
    assert seen["relu6"].shape == (2, 4096) and (seen["relu6"] >= 0).all()
    conv3.remove()
    relu6.remove()
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert calls(model, x) == (0, 0)
    finally:
        handle.remove()
    assert calls(model, x) == (3, 3)


def test_model_logits_with_post_ops_are_as_close_to_float64_as_without(monkeypatch):
    model, x = paper_model()
    with torch.inference_mode():
        fast = model(x)
        monkeypatch.setenv("ALEXNET_POSTOPS", "0")
        slow = model(x)
        exact = model.double()(x.double())
    tol = dict(rtol=1e-4, atol=1e-5 * float(exact.abs().max()))
    torch.testing.assert_close(fast.double(), exact, **tol)
    torch.testing.assert_close(slow.double(), exact, **tol)


def test_export_and_compile_see_the_modules():
    model, x = paper_model()
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("pointwise" in t for t in targets)
    compiled = compiled_targets(model, x)
    assert not any("pointwise" in t or "mkldnn" in t for t in compiled)
    assert any("conv2d" in t for t in compiled) and any(
        "linear" in t for t in compiled
    )  # the modules' operators
