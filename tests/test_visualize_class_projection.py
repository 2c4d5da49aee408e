"""A class score's projection to pixels (``alexnet.visualize.deconvnet.class_projection``): Simonyan et al.'s
class saliency (ICLR 2014 workshop, §3.1) is the score's gradient, guided backpropagation (Springenberg et al.
2015) and the deconvnet's rules carried through the classifier are Captum's ``GuidedBackprop`` and
``Deconvolution``; targets, the model's mode and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.errors import InputSizeError, SelectionError
from alexnet.visualize.deconvnet import class_projection, saliency_map
from alexnet.weights import WeightsMeta, save_weights

NAMES = ["alexnet", "alexnet_owt", "zfnet", "caffenet"]

pytestmark = [  # Captum's notices about what it does to the model and input for the comparisons
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients:UserWarning"),
]


def _model(name: str, dtype: torch.dtype = torch.float64) -> alexnet.AlexNetFamily:
    """float64: in float32 a random zfnet's max-pool near-ties part autograd's own float32 gradient from its
    float64 one by a few per cent (either path), so the comparisons are made where both are exact."""
    torch.manual_seed(0)
    return alexnet.create_model(name, num_classes=10, init="pytorch").eval().to(dtype)


def _images(model: alexnet.AlexNetFamily, n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    side = model.default_input_size
    return torch.randn(n, 3, side, side, dtype=next(model.parameters()).dtype)


def ten_class_weights(folder: Path) -> Path:
    """The float32 model of :func:`_model` (alexnet, classes ``class0`` … ``class9``) as a weights file in
    ``folder``, for the commands' tests."""
    path = folder / "model.safetensors"
    classes = [f"class{i}" for i in range(10)]
    save_weights(_model("alexnet", torch.float32), path, WeightsMeta(classes=classes))
    return path


def run_visualize(capsys: pytest.CaptureFixture[str], kind: str, *args: str) -> tuple[int, str, str]:
    """``alexnet visualize KIND ARGS…``: the exit code, stdout and stderr."""
    try:
        code = main(["visualize", kind, *args])
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    scale = float(theirs.abs().max())
    assert scale > 0
    return float((ours - theirs).abs().max()) / scale


@pytest.mark.parametrize("name", NAMES)
def test_the_gradient_rule_is_the_class_scores_gradient_with_respect_to_the_image(name: str) -> None:
    """§3.1: w = ∂S_c/∂I at the image, by autograd through the model's own forward (fast paths included)."""
    model = _model(name)
    x = _images(model)
    ours = class_projection(model, x, [3, 7], rule="gradient")
    xx = x.clone().requires_grad_(True)
    logits = model(xx)
    (grad,) = torch.autograd.grad(logits[0, 3] + logits[1, 7], xx)
    assert _relative_error(ours.images, grad) < 1e-10
    torch.testing.assert_close(ours.scores, torch.stack([logits[0, 3], logits[1, 7]]).detach())
    assert ours.targets.tolist() == [3, 7]


@pytest.mark.parametrize("name", NAMES)
def test_where_every_pooling_window_ties_the_gradient_is_still_autograds_through_the_model(name: str) -> None:
    """A flat grey image ties every interior max-pool window, at zero and above it; in fp32 the projection takes
    its switches in the layout the model's forward runs in, and is still autograd's gradient through
    ``model(x)``."""
    model = _model(name, torch.float32)
    x = torch.full((1, 3, model.default_input_size, model.default_input_size), 0.25)
    ours = class_projection(model, x, 1, rule="gradient").images
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xx)[0, 1], xx)
    assert _relative_error(ours, grad) < 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_the_guided_rule_is_captums_guided_backprop(name: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = _model(name)
    x = _images(model)
    ours = class_projection(model, x, [3, 7], rule="guided").images
    theirs = captum_attr.GuidedBackprop(model).attribute(x, target=[3, 7])
    assert _relative_error(ours, theirs) < 1e-10


def test_the_deconvnet_rule_is_captums_deconvolution_where_no_lrn_differs() -> None:
    """Captum's ``Deconvolution`` rectifies the signal at each ReLU as ZF do, but takes an LRN's true backward
    where ZF pass the signal through (ZF §2.1): the two agree on a network without LRN, and differ with one."""
    captum_attr = pytest.importorskip("captum.attr")
    model = _model("alexnet_owt")
    x = _images(model)
    ours = class_projection(model, x, [3, 7], rule="deconvnet").images
    assert _relative_error(ours, captum_attr.Deconvolution(model).attribute(x, target=[3, 7])) < 1e-10
    lrn = _model("alexnet")
    x = _images(lrn)
    ours = class_projection(lrn, x, [3, 7], rule="deconvnet").images
    assert _relative_error(ours, captum_attr.Deconvolution(lrn).attribute(x, target=[3, 7])) > 1e-3


def test_the_three_rules_differ_and_guided_is_the_gradient_with_negative_signals_dropped() -> None:
    """Guided backpropagation's pixels are sharper than the gradient's, not the same map: at each ReLU it keeps
    only positive signals where the unit was on, so it can only be the gradient where no signal was negative."""
    model = _model("alexnet")
    x = _images(model, 1)
    pictures = {
        rule: class_projection(model, x, 2, rule).images for rule in ("gradient", "guided", "deconvnet")
    }
    scale = float(pictures["gradient"].abs().max())
    for a, b in [("gradient", "guided"), ("guided", "deconvnet"), ("gradient", "deconvnet")]:
        assert not torch.allclose(pictures[a], pictures[b], atol=1e-3 * scale), (a, b)


def test_the_default_target_is_each_images_top_class_and_one_target_serves_all() -> None:
    model = _model("caffenet")
    x = _images(model, 3)
    with torch.no_grad():
        top = model(x).argmax(1)
    assert class_projection(model, x).targets.tolist() == top.tolist()
    one = class_projection(model, x, 4)
    assert one.targets.tolist() == [4, 4, 4]
    each = class_projection(model, x, [4, 4, 4])
    torch.testing.assert_close(one.images, each.images)


def test_a_batch_is_its_images_one_at_a_time() -> None:
    model = _model("zfnet")
    x = _images(model, 3)
    batch = class_projection(model, x, [1, 5, 9]).images
    alone = torch.cat([class_projection(model, x[i : i + 1], t).images for i, t in enumerate([1, 5, 9])])
    assert _relative_error(batch, alone) < 1e-12


def test_the_saliency_map_is_the_largest_magnitude_over_the_colour_channels() -> None:
    """§3.1: M_ij = max_c |w_h(i,j,c)|."""
    pixels = torch.tensor([[[[1.0, -4.0]], [[-3.0, 2.0]], [[0.5, 0.0]]]])  # 1×3×1×2
    assert saliency_map(pixels).tolist() == [[[3.0, 4.0]]]
    assert saliency_map(pixels[0]).tolist() == [[3.0, 4.0]]


def test_the_model_is_left_as_it_was() -> None:
    model = _model("alexnet", torch.float32).train()
    class_projection(model, _images(model, 1))
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(target=10), SelectionError, r"class 10 is out of range \(0–9\)"),
        (dict(target=[1, 2, 3]), SelectionError, "3 targets for 2 images"),
        (dict(rule="saliency"), SelectionError, "unknown rule 'saliency'"),
        (dict(images=torch.zeros(2, 3, 195, 195)), InputSizeError, "takes 227×227 images"),
    ],
)
def test_a_target_rule_or_image_size_the_model_cannot_take_is_one_clear_error(kwargs, error, message) -> None:
    model = _model("alexnet", torch.float32)
    images = kwargs.pop("images", torch.zeros(2, 3, 227, 227))
    with pytest.raises(error, match=message):
        class_projection(model, images, **kwargs)
