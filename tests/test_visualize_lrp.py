"""Layer-wise relevance propagation (Bach et al., PLoS ONE 2015; ``alexnet.visualize.lrp`` and ``alexnet visualize
lrp``): each rule against Captum's ``LRP`` with the same rule per layer (the LRN passed by ``IdentityRule``),
conservation where the rule promises it, z^B's formula and its positivity inside the pixel box, the composite's
layers, the model left alone, the command, bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import alexnet
from alexnet.errors import InputSizeError, SelectionError
from alexnet.inputs import prepare
from alexnet.models import LocalResponseNorm
from alexnet.visualize.lrp import _weighted, heatmap, layer_rules, lrp, pixel_bounds
from test_visualize_class_projection import _images, _model, _relative_error, run_visualize, ten_class_weights

NAMES = ["alexnet", "alexnet_owt", "zfnet", "caffenet"]

pytestmark = [  # Captum's notices about what it does to the model and input for the comparisons
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients:UserWarning"),
]


def _identity_rule() -> object:
    """Captum's ``IdentityRule``, mended: Captum hands a layer's relevance to the ReLU below it through the
    gradient's ``replace_out``, which ``IdentityRule`` does not set, so below an LRN that follows a ReLU (the
    paper's order: conv, ReLU, LRN, pool) the ReLU passes on the LRN's true gradient instead of its relevance
    (a relative error of ~1 on alexnet). This one sets it; CaffeNet's order (pool before the LRN) gives the
    same numbers either way."""
    lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")

    class Identity(lrp_rules.IdentityRule):  # type: ignore[misc, name-defined]
        def _create_backward_hook_input(self, inputs: torch.Tensor):
            def hook(grad: torch.Tensor) -> torch.Tensor:
                grad.replace_out = self.relevance_output[grad.device]  # type: ignore[attr-defined]
                return grad.replace_out  # type: ignore[attr-defined]

            return hook

    return Identity()


def _captum(model: alexnet.AlexNetFamily, x: torch.Tensor, target: list[int], rule: object) -> torch.Tensor:
    """Captum's LRP on a copy of ``model``: ``rule()`` for every conv and linear layer, ``EpsilonRule()`` (its
    1e-9: each window's relevance to its maximum) for the max-pools, the identity for the LRN."""
    lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
    from captum.attr import LRP

    model = copy.deepcopy(model)
    for _, m in model.named_layers():
        if isinstance(m, LocalResponseNorm | nn.LocalResponseNorm):
            m.rule = _identity_rule()
        elif isinstance(m, nn.Conv2d | nn.Linear):
            m.rule = rule()  # type: ignore[operator]
        elif isinstance(m, nn.MaxPool2d | nn.AdaptiveAvgPool2d):
            m.rule = lrp_rules.EpsilonRule()
    return LRP(model).attribute(x.clone(), target=target).detach()


@pytest.mark.parametrize("name", NAMES)
def test_the_epsilon_rule_is_captums_with_the_lrn_passed_unchanged(name: str) -> None:
    lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
    model = _model(name)
    x = _images(model)
    ours = lrp(model, x, [3, 7], rule="epsilon", epsilon=1e-3)
    theirs = _captum(model, x, [3, 7], lambda: lrp_rules.EpsilonRule(epsilon=1e-3))
    assert ours.targets.tolist() == [3, 7]
    assert _relative_error(ours.attributions.double(), theirs) < 1e-5


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_the_alpha1beta0_rule_is_captums_and_conserves_the_score(name: str) -> None:
    """Bach et al.'s αβ-rule with α = 1, β = 0 drops the biases and keeps only positive contributions: the pixels'
    relevances sum to the class's score (where it is positive)."""
    lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
    model = _model(name)
    x = _images(model)
    logits = model(x)
    target = [int(i) for i in logits.argmax(1)]
    ours = lrp(model, x, target, rule="alpha1beta0")
    theirs = _captum(model, x, target, lambda: lrp_rules.Alpha1_Beta0_Rule(set_bias_to_zero=True))
    assert _relative_error(ours.attributions.double(), theirs) < 1e-5
    assert (ours.scores > 0).all()
    torch.testing.assert_close(ours.conserved(), torch.ones(2, dtype=torch.float64), rtol=1e-5, atol=0)


def test_the_gamma_rule_is_captums_where_the_biases_are_not_positive() -> None:
    """LRP-γ raises the positive weights and biases by γ (the overview's ρ); Captum's ``GammaRule`` raises the
    weights only, so the two agree where no bias is positive."""
    lrp_rules = pytest.importorskip("captum.attr._utils.lrp_rules")
    model = _model("alexnet")
    with torch.no_grad():
        for _, m in model.named_layers():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.bias.copy_(-m.bias.abs())
    x = _images(model)
    rules = dict.fromkeys(model.learnable_layers(), "gamma")
    ours = lrp(model, x, [1, 2], gamma=0.5, rules=rules)
    theirs = _captum(model, x, [1, 2], lambda: lrp_rules.GammaRule(gamma=0.5))
    assert _relative_error(ours.attributions.double(), theirs) < 1e-5


def test_zb_is_the_papers_sum_over_the_box_corners() -> None:
    """Montavon et al. 2017's z^B: R_i = Σ_j (x_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / Σ_i (…) R_j, written out with
    unfolded patches for a small grouped strided convolution (ours adds 1e-9 to each total: a relative 1e-9)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    x = torch.rand(1, 4, 7, 7, dtype=torch.float64)
    low, high = (
        x.min() - torch.rand(4, 7, 7, dtype=torch.float64),
        x.max() + torch.rand(4, 7, 7, dtype=torch.float64),
    )
    r = torch.rand(1, 6, 4, 4, dtype=torch.float64)
    ours = _weighted(conv, x, r, "zb", 0.0, 0.0, (low, high))

    unfold = nn.Unfold(3, padding=1, stride=2)
    want = torch.zeros(1, 4 * 49, dtype=torch.float64)
    for g in range(2):  # each tower sees its own two input maps
        cin = slice(2 * g, 2 * g + 2)
        patches = [unfold(t[None, cin] if t.dim() == 3 else t[:, cin]) for t in (x, low, high)]  # 1×18×16
        w = conv.weight[3 * g : 3 * g + 3].flatten(1)  # 3×18
        wp, wm = w.clamp(min=0), w.clamp(max=0)
        contrib = (
            patches[0][0, None] * w[:, :, None]
            - patches[1][0, None] * wp[:, :, None]
            - patches[2][0, None] * wm[:, :, None]
        )  # out × (in·k·k) × places
        share = contrib / contrib.sum(1, keepdim=True) * r[0, 3 * g : 3 * g + 3].flatten(1)[:, None]
        folded = nn.Fold((7, 7), 3, padding=1, stride=2)(share.sum(0)[None])  # 1×2×7×7
        want.view(1, 4, 49)[:, cin] = folded.flatten(2)
    torch.testing.assert_close(ours.flatten(1), want, rtol=1e-7, atol=0)


@pytest.mark.parametrize("name", ["alexnet", "caffenet"])
def test_zb_relevance_of_a_photograph_is_positive_and_conserved_below_alpha1beta0(
    name: str, chelsea: np.ndarray
) -> None:
    """Inside the box between a black and a white picture every z^B contribution w⁺(x − l) + w⁻(x − h) is ≥ 0:
    positive relevance from above stays positive and sums to the same total."""
    model = _model(name)
    x = prepare(model, torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()).tensor.double()
    rules = {**dict.fromkeys(model.learnable_layers(), "alpha1beta0"), "conv1": "zb"}
    res = lrp(model, x, rules=rules)
    assert (res.attributions >= -1e-9 * res.scores.abs().max()).all()
    assert float(res.attributions.abs().sum()) > 0
    torch.testing.assert_close(res.conserved(), torch.ones(1, dtype=torch.float64), rtol=1e-5, atol=0)


def test_the_pixel_box_is_the_models_input_for_a_black_and_a_white_picture() -> None:
    model = _model("alexnet")
    x = _images(model, 1)
    low, high = pixel_bounds(model, x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(low[:, 0, 0].float(), -mean / std)
    torch.testing.assert_close(high[:, 0, 0].float(), (1 - mean) / std)
    assert low.shape == high.shape == x.shape[1:]


def test_the_composite_is_the_overviews_layer_groups_on_the_familys_layers() -> None:
    """zb at the image's conv, γ at the lower convs, ε at the upper two, LRP-0 at the fc layers; an ablated trunk
    keeps the grouping by position."""
    model = alexnet.create_model("alexnet")
    assert layer_rules(model, "composite") == {
        "conv1": "zb",
        "conv2": "gamma",
        "conv3": "gamma",
        "conv4": "epsilon",
        "conv5": "epsilon",
        "fc6": "zero",
        "fc7": "zero",
        "fc8": "zero",
    }
    assert set(layer_rules(model, "epsilon").values()) == {"epsilon"}
    res = lrp(_model("zfnet"), _images(_model("zfnet"), 1))
    assert res.layer_rules["conv1"] == "zb" and res.rule == "composite"


def test_lrp_leaves_the_model_as_it_was() -> None:
    model = _model("alexnet").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lrp(model, _images(model))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_the_heatmap_sums_the_colours_on_a_symmetric_scale() -> None:
    a = torch.zeros(3, 10, 10)
    a[0, 0, 0], a[1, 0, 0], a[2, 5, 5] = 2.0, 1.0, -3.0
    h = heatmap(a)
    assert h.shape == (10, 10)
    assert (
        h[0, 0] == 1.0 and h[5, 5] == -1.0
    )  # 2 of 100 pixels: the 99.5th percentile is 0, so the largest scales
    assert np.abs(h).max() <= 1
    many = torch.randn(3, 40, 40)
    assert np.abs(heatmap(many)).max() == 1.0 and (np.abs(heatmap(many)) == 1).mean() < 0.02


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rule": "z-plus"}, "unknown rule 'z-plus'"),
        ({"epsilon": -1.0}, "epsilon must be a finite number ≥ 0"),
        ({"gamma": float("nan")}, "gamma must be a finite number ≥ 0"),
        ({"rules": {"pool1": "epsilon"}}, "'pool1' has no weights for a rule"),
        ({"rules": {"conv2": "flat"}}, "unknown layer rule 'flat'"),
        ({"rules": {"conv2": "zb"}}, "the zb rule is for the image's own layer (conv1) only"),
        ({"target": 10}, "class 10 is out of range"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    model = _model("alexnet")
    with pytest.raises(SelectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lrp(model, _images(model, 1), **kwargs)


def test_an_image_of_the_wrong_size_and_a_model_without_classes_are_refused() -> None:
    model = _model("alexnet")
    with pytest.raises(InputSizeError):
        lrp(model, torch.zeros(1, 3, 150, 150, dtype=torch.float64))
    with pytest.raises(SelectionError, match="no classifier layer"):
        lrp(alexnet.create_model("alexnet", num_classes=0), torch.zeros(1, 3, 227, 227))


def test_the_command_writes_the_figure_and_the_numbers(tmp_path: Path, capsys, chelsea_jpeg) -> None:
    weights = ten_class_weights(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_visualize(
        capsys,
        "lrp",
        str(chelsea_jpeg),
        "--weights",
        str(weights),
        "--out",
        str(out),
        "--rule",
        "alpha1beta0",
    )
    assert code == 0, err
    png, npz = out / "chelsea_lrp_alpha1beta0.png", out / "chelsea_lrp_alpha1beta0.npz"
    assert str(png) in stdout and png.stat().st_size > 10_000
    data = np.load(npz)
    assert data["attributions"].shape == (3, 227, 227)
    assert str(data["rule"]) == "alpha1beta0"
    assert abs(float(data["attributions"].sum()) / float(data["score"]) - 1) < 1e-4


def test_the_command_refuses_bad_settings_in_one_line(tmp_path: Path, capsys, chelsea_jpeg) -> None:
    weights = ten_class_weights(tmp_path)
    code, _, err = run_visualize(
        capsys, "lrp", str(chelsea_jpeg), "--weights", str(weights), "--out", str(tmp_path), "--epsilon", "-1"
    )
    assert code == 2
    assert err.count("\n") == 1 and "epsilon must be a finite number ≥ 0" in err
