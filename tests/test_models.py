"""The registered architectures: counts, shapes, layer names, groups and initialisation as the papers state."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import alexnet
from alexnet.errors import InputSizeError, LayerNotFound, ModelNotFound
from alexnet.models import LocalResponseNorm, renormalize_filters_

REGISTERED = ["alexnet", "caffenet", "bvlc_alexnet", "alexnet_owt", "zfnet", "zfnet_b"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_exactly_the_documented_models():
    """In a fresh interpreter (0.2 s: the registry imports no torch): tests register models of their own here."""
    import subprocess
    import sys

    code = "import alexnet; print(','.join(alexnet.list_models()))"
    listed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert listed.stdout.strip().split(",") == REGISTERED


def test_unknown_model_names_the_valid_ones():
    with pytest.raises(ModelNotFound, match="choose one of: alexnet, caffenet"):
        alexnet.create_model("resnet50")


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("alexnet", 60_965_224),  # two-tower layout of AlexNet Fig. 2
        ("caffenet", 60_965_224),
        ("bvlc_alexnet", 60_965_224),
        ("alexnet_owt", 61_100_840),  # torchvision
        ("zfnet", 62_357_608),  # Zeiler & Fergus Fig. 3
    ],
)
def test_parameter_counts_match_the_papers(name, count):
    assert n_params(alexnet.create_model(name)) == count


def test_num_classes_changes_only_fc8():
    m = alexnet.create_model("alexnet", num_classes=10)
    assert m.layer("fc8").out_features == 10
    assert n_params(m) == 60_965_224 - 4096 * 990 - 990


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("size", [224, 227])
def test_every_model_accepts_224_and_227_inputs(name, size):
    m = alexnet.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, size, size)).shape == (2, 7)
        feats = m.forward_features(torch.randn(1, 3, size, size))
    assert feats.shape[-2:] == (6, 6)


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_an_input_size_fc6_cannot_take_is_named_in_the_error(name):
    """fc6 takes the paper's 6×6 pool5 map (AlexNet §3.5, ZFNet Fig. 3): another size is a clear error, in
    training and in the fused inference path alike."""
    model = alexnet.create_model(name)
    for mode in (model.train, model.eval):
        mode()
        with (
            torch.no_grad(),
            pytest.raises(InputSizeError, match=rf"{name} takes .* this input gives pool5 maps of 2×2"),
        ):
            model(torch.randn(1, 3, 99, 99))


def test_default_input_sizes():
    sizes = {n: alexnet.create_model(n).default_input_size for n in REGISTERED}
    assert sizes == {
        "alexnet": 227,
        "caffenet": 227,
        "bvlc_alexnet": 227,
        "alexnet_owt": 224,
        "zfnet": 224,
        "zfnet_b": 224,
    }


def test_zfnet_feature_maps_follow_figure_3():
    m = alexnet.create_model("zfnet").eval()
    x = torch.randn(1, 3, 224, 224)
    sizes = {}
    with torch.no_grad():
        for name, layer in m.named_layers():
            if name.startswith("fc") or name == "drop6":
                break
            x = layer(x)
            sizes[name] = x.shape[-1]
    assert [sizes[k] for k in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")] == [
        110,
        55,
        26,
        13,
        13,
        13,
        13,
        6,
    ]
    assert m.layer("conv1").kernel_size == (7, 7) and m.layer("conv1").stride == (2, 2)
    assert m.layer("conv2").stride == (2, 2)
    assert all(m.layer(f"conv{i}").groups == 1 for i in range(1, 6))


# AlexNet §5: biases 1 in conv2, conv4, conv5 and the fully-connected hidden layers, 0 elsewhere (CaffeNet's too)
ALEXNET_BIASES = {"conv1": 0, "conv2": 1, "conv3": 0, "conv4": 1, "conv5": 1, "fc6": 1, "fc7": 1, "fc8": 0}


def _biases(model) -> dict[str, float]:
    """Each weight layer's bias, which its init sets to one value."""
    return {n: float(model.layer(n).bias.unique().item()) for n in ALEXNET_BIASES}


TRUNK_AFTER_CONV2 = ["conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pool5"]  # no norm after conv2


@pytest.mark.parametrize("name", ["zfnet", "zfnet_b"])
def test_zfnet_pools_then_normalises_after_conv1_and_conv2_only(name):
    """ZF Fig. 3: "conv → ReLU → max pooling → contrast normalisation" in layers 1 and 2, none in 3–5. The map
    sizes cannot tell the order (pooling and normalisation keep each other's sizes), so the order is read here."""
    m = alexnet.create_model(name)
    assert m.layer_names()[:15] == [
        "conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2", *TRUNK_AFTER_CONV2,
    ]  # fmt: skip
    for norm in ("norm1", "norm2"):  # Fig. 3 gives no constants: AlexNet §3.3's
        lrn = m.layer(norm)
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.alpha_over_size) == (5, 1e-4, 0.75, 2.0, False)


def test_bvlc_alexnet_normalises_then_pools_with_caffe_lrn():
    """Caffe's models/bvlc_alexnet: conv → relu → norm → pool (the paper's order), LRN local_size 5, alpha 1e-4,
    beta 0.75 in Caffe's convention (k=1, alpha divided by the window size)."""
    m = alexnet.create_model("bvlc_alexnet")
    assert m.layer_names()[:15] == [
        "conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", *TRUNK_AFTER_CONV2,
    ]  # fmt: skip
    for norm in ("norm1", "norm2"):
        lrn = m.layer(norm)
        assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.alpha_over_size) == (5, 1e-4, 0.75, 1.0, True)


def test_caffenet_uses_caffe_reference_init():
    """models/bvlc_reference_caffenet: biases 1 in conv2, conv4, conv5, fc6, fc7 (0 elsewhere), weights
    N(0, 0.01) except fc6 and fc7 at 0.005."""
    torch.manual_seed(0)
    m = alexnet.create_model("caffenet")
    assert _biases(m) == ALEXNET_BIASES
    stds = {n: float(m.layer(n).weight.detach().std()) for n in ("conv3", "fc6", "fc7", "fc8")}
    assert stds == pytest.approx({"conv3": 0.01, "fc6": 0.005, "fc7": 0.005, "fc8": 0.01}, rel=0.02)


def test_zfnet_b_widens_conv3_to_conv5():
    m = alexnet.create_model("zfnet_b")
    assert [m.layer(f"conv{i}").out_channels for i in (3, 4, 5)] == [512, 1024, 512]


def test_alexnet_layer_order_and_table():
    m = alexnet.create_model("alexnet")
    assert m.layer_names()[:8] == ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2"]
    c = [m.layer(f"conv{i}") for i in range(1, 6)]
    assert [x.out_channels for x in c] == [96, 256, 384, 384, 256]
    assert [x.kernel_size[0] for x in c] == [11, 5, 3, 3, 3]
    assert [x.groups for x in c] == [1, 2, 1, 2, 2]  # conv3 is dense across both towers (§3.5)
    assert c[0].stride == (4, 4)
    pool = m.layer("pool1")
    assert (pool.kernel_size, pool.stride) == (3, 2)  # overlapping pooling, §3.4
    norm = m.layer("norm1")
    assert (norm.size, norm.alpha, norm.beta, norm.k, norm.alpha_over_size) == (5, 1e-4, 0.75, 2.0, False)


def test_caffenet_pools_before_normalising_with_caffe_lrn():
    m = alexnet.create_model("caffenet")
    assert m.layer_names()[:4] == ["conv1", "relu1", "pool1", "norm1"]
    norm = m.layer("norm1")
    assert (norm.k, norm.alpha_over_size, norm.sum_alpha) == (1.0, True, pytest.approx(2e-5))


def test_alexnet_owt_has_torchvision_state_dict_keys():
    import torchvision

    ours = alexnet.create_model("alexnet_owt").state_dict()
    theirs = torchvision.models.alexnet().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_alexnet_owt_gives_torchvision_logits_with_the_same_weights():
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    ours = alexnet.create_model("alexnet_owt").eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_paper_initialisation_alexnet_section_5():
    torch.manual_seed(0)
    m = alexnet.create_model("alexnet")
    assert _biases(m) == ALEXNET_BIASES
    w = m.layer("fc6").weight.detach()
    assert abs(float(w.mean())) < 1e-4 and float(w.std()) == pytest.approx(0.01, rel=0.01)


def test_bvlc_alexnet_uses_caffe_init():
    m = alexnet.create_model("bvlc_alexnet")
    assert float(m.layer("conv2").bias[0]) == pytest.approx(0.1)
    assert float(m.layer("fc6").weight.std()) == pytest.approx(0.005, rel=0.02)
    assert float(m.layer("fc8").weight.std()) == pytest.approx(0.01, rel=0.05)


def test_zfnet_initialisation_section_3():
    m = alexnet.create_model("zfnet")
    assert all(float(m.layer(f"conv{i}").bias.abs().max()) == 0 for i in range(1, 6))
    assert float(m.layer("conv3").weight.std()) == pytest.approx(0.01, rel=0.02)


@pytest.mark.parametrize("conv", ["conv2", "conv4", "conv5"])
def test_grouped_layers_keep_the_towers_apart(conv):
    """AlexNet Fig. 2: in conv2/4/5 a tower's kernels see only their own tower's maps of the layer below."""
    m = alexnet.create_model("alexnet")
    layer = m.layer(conv)
    x = torch.randn(1, layer.in_channels, 13, 13, requires_grad=True)
    y = layer(x)
    y[:, : layer.out_channels // 2].sum().backward()
    half = layer.in_channels // 2
    assert x.grad[:, half:].abs().max() == 0
    assert x.grad[:, :half].abs().max() > 0


def test_conv3_connects_to_both_towers():
    layer = alexnet.create_model("alexnet").layer("conv3")
    x = torch.randn(1, 256, 13, 13, requires_grad=True)
    layer(x)[:, :192].sum().backward()
    assert x.grad[:, 128:].abs().max() > 0 and x.grad[:, :128].abs().max() > 0


def test_layers_are_addressable_by_paper_names():
    m = alexnet.create_model("alexnet")
    assert isinstance(m.layer("conv5"), nn.Conv2d)
    assert isinstance(m.layer("norm2"), LocalResponseNorm)
    assert isinstance(m.layer("pool5"), nn.MaxPool2d)
    assert isinstance(m.layer("fc7"), nn.Linear)
    assert m.layer_path("fc8") == "classifier.6"
    with pytest.raises(LayerNotFound, match="valid layers: conv1"):
        m.layer("conv6")


def test_dropout_acts_on_fc6_and_fc7_outputs_in_the_paper_models():
    """AlexNet §4.2: dropout "in the first two fully-connected layers" (Caffe: drop6/drop7 after relu6/relu7)."""
    names = alexnet.create_model("alexnet").layer_names()
    assert names[names.index("fc6") :] == ["fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8"]


def test_channels_last_gives_the_same_logits():
    m = alexnet.create_model("alexnet").eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        ref = m(x)
        out = m.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_overrides_change_config_fields_and_reject_unknown_ones():
    m = alexnet.create_model("alexnet", dropout=0.0)
    assert m.layer("drop6").p == 0.0
    with pytest.raises(TypeError, match="unknown model option"):
        alexnet.create_model("alexnet", wings=2)


def test_filter_renormalisation_caps_rms_at_one_tenth():
    """ZFNet §3: filters whose RMS exceeds 0.1 are renormalised to RMS 0.1; others are untouched."""
    m = alexnet.create_model("zfnet")
    conv = m.layer("conv1")
    with torch.no_grad():
        conv.weight[:10].mul_(50)  # RMS 0.5
    before = conv.weight[10:].clone()
    changed = renormalize_filters_(m)
    rms = conv.weight.pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert changed == 10
    torch.testing.assert_close(rms[:10], torch.full((10,), 0.1))
    assert torch.equal(conv.weight[10:], before)


def test_grouped_conv_as_block_diagonal_dense_conv_is_the_same_convolution():
    """AlexNet §3.2's towers: the CUDA fast path (one dense conv, zeros between the groups) computes the grouped
    conv exactly, and its weight gradient lands only on the towers' own weights."""
    from alexnet.models.layers import GroupedConv2d, block_diagonal

    torch.manual_seed(0)
    conv = GroupedConv2d(96, 256, 5, padding=2, groups=2)
    x = torch.randn(2, 96, 9, 9, dtype=torch.float64)
    conv = conv.double()
    dense = torch.nn.functional.conv2d(x, block_diagonal(conv.weight, 2), conv.bias, padding=2)
    torch.testing.assert_close(dense, conv(x))
    w = conv.weight.detach().clone().requires_grad_()
    g = torch.randn_like(dense)
    torch.nn.functional.conv2d(x, block_diagonal(w, 2), conv.bias, padding=2).backward(g)
    conv.weight.grad = None
    conv(x).backward(g)
    torch.testing.assert_close(w.grad, conv.weight.grad)
    assert block_diagonal(conv.weight, 2)[:128, 48:].abs().sum() == 0  # tower 1 sees none of tower 2's maps


def test_the_dense_tower_weight_is_built_in_the_dtype_and_layout_the_convolution_runs_in():
    """On CUDA the towers' dense weight is written once in autocast's dtype and cuDNN's channels-last layout
    (no cast or layout copy after it): the same values as the cast dense weight, and the gradient reaches the
    float32 weight as the float32 dense weight's would, cast back."""
    from alexnet.models.layers import block_diagonal

    torch.manual_seed(0)
    w = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    dense = block_diagonal(w, 2, torch.float64, torch.channels_last)
    assert dense.dtype == torch.float64 and dense.is_contiguous(memory_format=torch.channels_last)
    want = block_diagonal(w, 2)
    assert torch.equal(dense, want.double())
    g = torch.randn(8, 6, 5, 5, dtype=torch.float64)
    (got_dw,) = torch.autograd.grad(dense, w, g)
    (want_dw,) = torch.autograd.grad(want, w, g.float())
    assert got_dw.dtype == torch.float32 and torch.equal(got_dw, want_dw)


def test_the_dense_tower_weight_costs_three_operators_forward_and_two_backward():
    """Each step builds the dense weight anew, so its operators are launches a host must make: zeros, the cast,
    one indexed copy; its gradient one gather and the cast back (no copy of the whole dense gradient)."""
    from alexnet.models.layers import block_diagonal
    from test_dispatch_support import OpLog

    w = torch.randn(8, 3, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    block_diagonal(w, 2, torch.bfloat16, torch.channels_last)  # the tower index is made once
    kernels = {"aten.zero_", "aten._to_copy", "aten.index_put_", "aten.index", "aten.copy_", "aten.clone"}
    with OpLog() as forward:
        dense = block_diagonal(w, 2, torch.bfloat16, torch.channels_last)
    with OpLog() as backward:
        dense.backward(torch.ones_like(dense))
    assert sorted(n for n in forward.names if n in kernels) == [
        "aten._to_copy",
        "aten.index_put_",
        "aten.zero_",
    ]
    assert sorted(n for n in backward.names if n in kernels) == ["aten._to_copy", "aten.index"]


def test_space_to_depth_writes_its_kernel_in_the_dtype_and_layout_the_convolution_runs_in(monkeypatch):
    """conv1's rearranged kernel is cast and laid out channels-last in its one copy: the convolution is handed
    a weight it need not copy again (the gradient still reaches the float32 weight)."""
    from alexnet.models import layers

    seen = []
    conv2d = torch.nn.functional.conv2d

    def spy(x, weight, bias=None, *args):
        seen.append(
            (
                x.is_contiguous(memory_format=torch.channels_last),
                weight.dtype,
                weight.is_contiguous(memory_format=torch.channels_last),
            )
        )
        return conv2d(x, weight, bias, *args)

    monkeypatch.setattr(layers.F, "conv2d", spy)
    x = torch.randn(2, 3, 31, 29)
    weight = torch.randn(8, 3, 11, 11, requires_grad=True)
    layers.space_to_depth_conv2d(x, weight, None, 4, (2, 2), torch.float64).sum().backward()
    assert seen == [(True, torch.float64, True)]
    assert weight.grad is not None and weight.grad.dtype == torch.float32


def test_paper_models_use_the_tower_conv_with_unchanged_state_dict_keys():
    from alexnet.factory import create_model
    from alexnet.models.layers import GroupedConv2d

    model = create_model("alexnet")
    assert [n for n, m in model.named_layers() if isinstance(m, GroupedConv2d)] == ["conv2", "conv4", "conv5"]
    assert "features.4.weight" in model.state_dict()


@settings(max_examples=40, deadline=None)
@given(
    kernel=st.integers(1, 11),
    stride=st.integers(2, 5),
    padding=st.integers(0, 3),
    h=st.integers(11, 30),
    w=st.integers(11, 30),
    channels=st.integers(1, 4),
    channels_last=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_space_to_depth_conv_is_the_strided_convolution(
    kernel, stride, padding, h, w, channels, channels_last, seed
):
    """conv1's CUDA form (a stride-1 conv over the image rearranged into stride² times the channels) computes
    the strided conv and its gradients, for every kernel, stride and padding, whether the stride divides the
    kernel and the image or not, and for either layout of the image."""
    from alexnet.models.layers import space_to_depth_conv2d

    torch.manual_seed(seed)
    x = torch.randn(2, channels, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    weight = torch.randn(5, channels, kernel, kernel, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64)
    want = nn.functional.conv2d(x, weight, bias, stride, padding)
    got = space_to_depth_conv2d(x, weight, bias, stride, (padding, padding))
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    want_dx, want_dw = torch.autograd.grad(want, (x, weight), g)
    got_dx, got_dw = torch.autograd.grad(got, (x, weight), g)
    torch.testing.assert_close(got_dx, want_dx)
    torch.testing.assert_close(got_dw, want_dw)


def test_space_to_depth_conv_casts_the_image_on_the_way():
    """Under autocast conv1 hands the float32 image and the half-precision dtype to the rearrangement, which
    casts it in its first copy; the result is the conv of the cast image, and the gradient reaches the image
    in its own dtype."""
    from alexnet.models.layers import space_to_depth_conv2d

    torch.manual_seed(0)
    x = torch.randn(2, 3, 31, 29, requires_grad=True)
    weight = torch.randn(8, 3, 7, 7, dtype=torch.float64)
    got = space_to_depth_conv2d(x, weight, None, 2, (1, 1), torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, nn.functional.conv2d(x.double(), weight, None, 2, 1))
    got.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_only_the_image_convolution_is_built_as_space_to_depth():
    """The rearrangement is for the 3-channel image (cuDNN's kernels for it are the slow ones); ZFNet's stride-2
    conv2 on 96 maps stays a plain convolution."""
    from alexnet.factory import create_model
    from alexnet.models.layers import SpaceToDepthConv2d

    for name in ("alexnet", "caffenet", "zfnet", "alexnet_owt"):
        model = create_model(name)
        rearranged = [n for n, m in model.named_layers() if type(m) is SpaceToDepthConv2d]
        assert rearranged == ["conv1"], name
    assert create_model("zfnet").layer("conv2").stride == (2, 2)


def test_first_conv_is_the_space_to_depth_conv_with_unchanged_state_dict_and_cpu_output():
    from alexnet.factory import create_model
    from alexnet.models.layers import SpaceToDepthConv2d

    for name in ("alexnet", "zfnet"):
        model = create_model(name)
        conv = model.features[0]
        assert type(conv) is SpaceToDepthConv2d and "features.0.weight" in model.state_dict()
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(
            conv(x), nn.functional.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding)
        )


def test_the_docs_spelling_alexnet_dot_subpackage_works_after_a_plain_import():
    """README writes `alexnet.visualize.deconvnet(...)`, docs `alexnet.analysis.summarize(...)`."""
    import subprocess
    import sys

    code = "import alexnet; alexnet.visualize.deconvnet; alexnet.analysis.summarize; alexnet.weights.read_weights"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
    with pytest.raises(AttributeError, match="no attribute 'resnet'"):
        alexnet.resnet  # noqa: B018


@pytest.mark.parametrize(("name", "init"), [("alexnet", "gaussian"), ("zfnet", "pytorch")])
def test_one_layers_reset_draws_what_the_whole_models_initialisation_draws(name: str, init: str) -> None:
    """``reset_layer`` is ``reset_parameters`` one layer at a time: from the same generator state, each layer
    in forward order draws the same weights (the paper's N(0, σ) and constant biases, or PyTorch's)."""
    torch.manual_seed(0)
    whole = alexnet.create_model(name, init=init)
    torch.manual_seed(0)
    layered = alexnet.create_model(name, init=init)
    torch.manual_seed(1)
    whole.reset_parameters()
    torch.manual_seed(1)
    for layer in layered.learnable_layers():
        layered.reset_layer(layer)
    for (key, a), b in zip(whole.state_dict().items(), layered.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    assert layered.learnable_layers() == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    if init == "gaussian":  # AlexNet §5: fc6's weights N(0, 0.01), its biases 1
        fc6 = layered.layer("fc6")
        assert float(fc6.weight.std()) == pytest.approx(0.01, rel=0.01) and bool((fc6.bias == 1).all())


def test_a_layer_reset_on_a_copy_leaves_the_model_alone_and_a_layer_without_weights_is_refused() -> None:
    model = alexnet.create_model("caffenet")
    before = model.layer("conv2").weight.clone()
    copy = nn.Conv2d(96, 256, 5, padding=2, groups=2)
    model.reset_layer("conv2", copy)
    assert torch.equal(model.layer("conv2").weight, before)
    assert float(copy.weight.std()) == pytest.approx(0.01, rel=0.05) and bool((copy.bias == 1).all())
    with pytest.raises(
        LayerNotFound, match="'relu5' has no weights to initialise; layers with weights: conv1"
    ):
        model.reset_layer("relu5")
