"""Deconvnet (ZF §2.1) against an independent autograd formulation, for every registered model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import alexnet
from alexnet.analysis.summary import receptive_fields
from alexnet.errors import InputSizeError, LayerNotFound, SelectionError
from alexnet.models import LocalResponseNorm, fused
from alexnet.models.capture import capture
from alexnet.models.first_conv import strided_transpose
from alexnet.predict import preprocessing_of
from alexnet.visualize.deconvnet import deconvnet, deconvnet_strongest


class _RectifiedBackward(torch.autograd.Function):
    """ReLU forward; backward passes relu(signal), ignoring the forward on/off pattern (ZF §2.1)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return g.clamp(min=0)


def _input_gradient(
    x: torch.Tensor, y: torch.Tensor, channel: int, unit: tuple[int, int] | None
) -> torch.Tensor:
    """The gradient w.r.t. ``x`` of (the selected activations of ``y`` · their values)."""
    mask = torch.zeros_like(y)
    if unit is None:
        mask[:, channel] = 1
    else:
        mask[:, channel, unit[0], unit[1]] = 1
    (y * (mask * y.detach())).sum().backward()
    assert x.grad is not None
    return x.grad


def autograd_projection(
    model: nn.Module, images: torch.Tensor, layer: str, channel: int, unit: tuple[int, int] | None
) -> torch.Tensor:
    """Gradient of (selected activation · its value) w.r.t. the input; LRN's backward is the identity."""
    x = images.clone().requires_grad_(True)
    y = x
    for name, m in model.named_layers():
        if isinstance(m, nn.Linear) and y.ndim > 2:
            y = torch.flatten(y, 1)
        if isinstance(m, nn.ReLU):
            y = _RectifiedBackward.apply(y)
        elif isinstance(m, LocalResponseNorm):
            y = y + (m(y) - y).detach()  # value of LRN, gradient of the identity
        elif isinstance(m, nn.Conv2d):
            # No bias in the projection: the bias is constant in x, so it does not change the gradient anyway.
            y = m(y)
        else:
            y = m(y)
        if name == layer:
            break
    return _input_gradient(x, y, channel, unit)


def _photos(model: nn.Module, n: int = 2) -> torch.Tensor:
    import skimage.data

    t = preprocessing_of(model).eval_transform()
    pics = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()][:n]
    return torch.stack([t(torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1)) for p in pics])


CASES = [
    ("alexnet", "conv5", 7, None),
    ("alexnet", "conv4", 9, (3, 8)),
    ("alexnet", "pool2", 30, "max"),
    ("alexnet", "norm1", 50, None),
    ("caffenet", "norm2", 200, "max"),
    ("caffenet", "pool5", 3, None),
    ("zfnet", "relu3", 100, "max"),
    ("zfnet", "pool5", 17, None),
    ("alexnet_owt", "pool1", 10, None),
    ("alexnet_owt", "relu5", 42, "max"),
    ("bvlc_alexnet", "pool2", 11, "max"),
    ("zfnet_b", "conv4", 600, None),  # Table 2 (b)'s widened conv4: 1024 maps
    ("alexnet", "relu7", "max", None),  # a classifier unit: through fc7, relu6, fc6 to pool5 first
    ("zfnet", "fc6", 123, None),
]


@pytest.mark.parametrize(("name", "layer", "channel", "unit"), CASES)
def test_deconvnet_equals_rectified_backward_formulation(
    name: str, layer: str, channel: int | str, unit: tuple[int, int] | str | None
) -> None:
    torch.manual_seed(0)
    model = alexnet.create_model(name, init="pytorch").eval()
    images = _photos(model)
    if unit == "max":  # a rectified unit may be 0 for a fixed choice; take the first image's strongest one
        fmap = capture(model, images[:1], [layer])[layer][0, channel]
        flat = int(fmap.argmax())
        unit = (flat // fmap.shape[1], flat % fmap.shape[1])
    if channel == "max":  # a classifier unit that is on for the first image
        channel = int(capture(model, images[:1], [layer])[layer][0].argmax())
    assert not isinstance(unit, str) and not isinstance(channel, str)
    ours = deconvnet(model, images, layer, channel, unit)
    ref = autograd_projection(model, images, layer, channel, unit)
    assert ours.shape == images.shape
    assert ref.abs().max() > 0, "the chosen activation should be non-zero on real photographs"
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


class _GuidedBackward(torch.autograd.Function):
    """ReLU forward; backward passes relu(signal) where the forward input was positive (Springenberg et al.)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return g.clamp(min=0) * (x > 0)


def gradient_projection(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    channel: int,
    unit: tuple[int, int] | None,
    guided: bool,
) -> torch.Tensor:
    """Autograd through the model's own layers (the LRN's true backward): the plain gradient of (selected
    activation · its value) w.r.t. the input, or with guided ReLUs. In the layout the model's forward takes
    (channels-last on CPU with an LRN), as the projection does: in fp32 the two layouts' sums round apart, enough
    to part a max-pool's near-tie now and then."""
    x = fused.kernel_layout(model.features, images).clone().requires_grad_(True)
    y = x
    for name, m in model.named_layers():
        if isinstance(m, nn.Linear) and y.ndim > 2:
            y = torch.flatten(y, 1)
        y = (_GuidedBackward.apply(y) if guided else torch.relu(y)) if isinstance(m, nn.ReLU) else m(y)
        if name == layer:
            break
    return _input_gradient(x, y, channel, unit)


RULE_CASES = [
    ("alexnet", "conv5", 7, None),
    ("alexnet", "norm1", 50, None),
    ("caffenet", "norm2", 200, "max"),
    ("zfnet", "pool5", 17, None),
    ("alexnet_owt", "relu5", 42, "max"),
    ("caffenet", "fc7", 77, None),
]


@pytest.mark.parametrize("rule", ["gradient", "guided"])
@pytest.mark.parametrize(("name", "layer", "channel", "unit"), RULE_CASES)
def test_gradient_and_guided_rules_equal_autograd_through_the_real_lrn(
    rule: str, name: str, layer: str, channel: int, unit: tuple[int, int] | str | None
) -> None:
    """Simonyan et al.'s saliency (the exact gradient) and Springenberg et al.'s guided backpropagation, taken
    with the deconvnet's downward pass, against autograd through the network's own modules."""
    torch.manual_seed(0)
    model = alexnet.create_model(name, init="pytorch").eval()
    images = _photos(model)
    if unit == "max":
        fmap = capture(model, images[:1], [layer])[layer][0, channel]
        flat = int(fmap.argmax())
        unit = (flat // fmap.shape[1], flat % fmap.shape[1])
    assert not isinstance(unit, str)
    ours = deconvnet(model, images, layer, channel, unit, rule=rule)
    ref = gradient_projection(model, images, layer, channel, unit, guided=rule == "guided")
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))
    if layer != "norm1":  # the three rules differ, once a ReLU's on/off pattern or sign matters
        assert not torch.allclose(
            ours, deconvnet(model, images, layer, channel, unit), atol=1e-3 * float(ref.abs().max())
        )


def test_an_unknown_rule_is_one_clear_error() -> None:
    model = alexnet.create_model("alexnet").eval()
    with pytest.raises(SelectionError, match="unknown rule 'saliency'; choose deconvnet, gradient, guided"):
        deconvnet(model, torch.zeros(1, 3, 227, 227), "conv5", 0, rule="saliency")


def test_deconvnet_is_batched_image_by_image() -> None:
    torch.manual_seed(1)
    model = alexnet.create_model("alexnet", init="pytorch").eval()
    images = _photos(model, 3)
    batch = deconvnet(model, images, "pool5", 11)
    one = torch.cat([deconvnet(model, images[i : i + 1], "pool5", 11) for i in range(3)])
    assert batch.shape == (3, 3, 227, 227)
    torch.testing.assert_close(batch, one, rtol=1e-4, atol=1e-6 * float(one.abs().max()))


@pytest.mark.parametrize(
    ("name", "layer"), [("alexnet", "conv3"), ("zfnet", "pool2"), ("alexnet_owt", "conv2")]
)
def test_unit_projection_is_zero_outside_its_receptive_field(name: str, layer: str) -> None:
    torch.manual_seed(2)
    model = alexnet.create_model(name, init="pytorch").eval()
    images = _photos(model, 1)
    size = images.shape[-1]
    row, col = 4, 5
    proj = deconvnet(model, images, layer, 0, (row, col))[0].abs().sum(0)
    top, left, bottom, right = receptive_fields(model)[layer].box(row, col, size)
    inside = torch.zeros_like(proj, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    assert proj[inside].sum() > 0
    assert proj[~inside].abs().max() == 0


def test_strongest_projects_each_images_argmax() -> None:
    torch.manual_seed(3)
    model = alexnet.create_model("zfnet", init="pytorch").eval()
    images = _photos(model, 2)
    strongest = deconvnet_strongest(model, images, "conv4", 5)
    maps = capture(model, images, ["conv4"])["conv4"][:, 5]  # the channel's map per image
    assert strongest.values.shape == (2,)
    for i in range(2):
        row, col = (int(v) for v in strongest.units[i])
        assert maps[i].flatten().argmax() == row * maps.shape[-1] + col  # the unit is the map's maximum
        assert float(strongest.values[i]) == pytest.approx(float(maps[i].max()))
        single = deconvnet(model, images[i : i + 1], "conv4", 5, (row, col))
        torch.testing.assert_close(strongest.images[i : i + 1], single)


def test_bad_selection_raises_typed_errors() -> None:
    model = alexnet.create_model("alexnet", init="pytorch").eval()
    x = torch.zeros(1, 3, 227, 227)
    with pytest.raises(LayerNotFound, match="conv1"):
        deconvnet(model, x, "conv9", 0)
    with pytest.raises(SelectionError, match="fc7 has no map to take a unit of"):
        deconvnet(model, x, "fc7", 0, (0, 0))
    with pytest.raises(SelectionError, match="0–4095"):
        deconvnet(model, x, "fc7", 4096)
    with pytest.raises(InputSizeError, match="takes 227×227 images"):  # the classifier reads one size
        deconvnet(model, torch.zeros(1, 3, 195, 195), "fc7", 0)
    with pytest.raises(SelectionError, match="0–255"):
        deconvnet(model, x, "conv5", 256)
    with pytest.raises(SelectionError, match="13×13"):
        deconvnet(model, x, "conv5", 0, (13, 0))


@settings(max_examples=40, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 11), st.integers(1, 11)),
    stride=st.tuples(st.integers(1, 5), st.integers(1, 5)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    extra=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    map_size=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    channels=st.tuples(st.integers(1, 6), st.integers(1, 4)),
)
def test_the_sub_pixel_transpose_equals_conv_transpose2d(kernel, stride, padding, extra, map_size, channels):
    """conv1's strided transpose as one stride-1 convolution and a pixel shuffle: the same numbers as
    ``F.conv_transpose2d`` for any kernel, stride, padding and output size (AlexNet's 11×11/4, ZF's 7×7/2 and
    5×5/2 among them), the size a conv layer's input had (up to ``stride − 1`` rows and columns more)."""
    (kh, kw), (sy, sx), (py, px) = kernel, stride, padding
    py, px = min(py, kh - 1), min(px, kw - 1)  # a conv's padding is below its kernel
    (h, w), (cin, cout) = map_size, channels
    size = tuple(
        (n - 1) * s - 2 * p + k + e % s
        for n, s, p, k, e in ((h, sy, py, kh, extra[0]), (w, sx, px, kw, extra[1]))
    )
    assume(min(size) >= 1)
    torch.manual_seed(0)
    y, weight = (
        torch.randn(2, cin, h, w, dtype=torch.float64),
        torch.randn(cin, cout, kh, kw, dtype=torch.float64),
    )
    out_pad = (extra[0] % sy, extra[1] % sx)
    expected = torch.nn.functional.conv_transpose2d(y, weight, None, (sy, sx), (py, px), out_pad)
    got = strided_transpose(y, weight, (sy, sx), (py, px), size)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
