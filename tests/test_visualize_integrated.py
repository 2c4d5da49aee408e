"""Integrated gradients (Sundararajan, Taly & Yan 2017; ``alexnet.visualize.integrated`` and ``alexnet visualize
integrated-gradients``): Eq. 1 against Captum's ``IntegratedGradients``, completeness (Proposition 1) where the
path crosses no kink, the quadrature rules, the black baseline, the model left alone, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.errors import SelectionError
from alexnet.visualize.integrated import black_image, integrated_gradients, nodes
from test_visualize_class_projection import NAMES, _images, _model, run_visualize, ten_class_weights


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    ("method", "output"),
    [("riemann_right", "probability"), ("riemann_middle", "score"), ("gausslegendre", "probability")],
)
def test_the_attributions_are_captums_integrated_gradients(name: str, method: str, output: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = _model(name)
    x = _images(model)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch)
        return torch.softmax(logits, 1) if output == "probability" else logits

    ours = integrated_gradients(model, x, [3, 7], steps=6, method=method, output=output, batch_size=4)
    baseline = black_image(model).to(x)[None].expand_as(x)
    theirs = captum_attr.IntegratedGradients(forward).attribute(
        x, baselines=baseline, target=[3, 7], n_steps=6, method=method
    )
    # Captum computes its points in float32 (torch.linspace(...).tolist()): 1e-8 apart in float64
    assert float((ours.attributions - theirs).abs().max()) <= 1e-6 * float(theirs.abs().max())


@pytest.mark.parametrize(("name", "method"), [("alexnet_owt", "riemann_right"), ("alexnet", "gausslegendre")])
def test_completeness_holds_where_the_path_crosses_no_kink(name: str, method: str) -> None:
    """Proposition 1: Σ_i IG_i(x) = F(x) − F(x'). Along a short path no ReLU or max-pool switches, so the score is
    linear there (alexnet_owt: exactly; alexnet's LRN is smooth and Gauss–Legendre integrates it to rounding)."""
    model = _model(name)
    x = _images(model, 1)
    torch.manual_seed(2)
    baseline = x[0] - 1e-6 * torch.randn_like(x[0])
    res = integrated_gradients(model, x, 4, baseline=baseline, steps=8, method=method, output="score")
    change = float(res.outputs[0] - res.baseline_outputs[0])
    assert change != 0
    # F(x) − F(x') is a difference of two scores 1e-6 apart, each rounded in float64: the comparison cannot be
    # finer than their rounding (a few ulps of the scores; the sums' order, and so the last bits, depends on the
    # number of threads)
    rounding = (
        16
        * torch.finfo(torch.float64).eps
        * max(abs(float(res.outputs[0])), abs(float(res.baseline_outputs[0])))
    )
    assert abs(float(res.delta[0])) <= 1e-7 * abs(change) + rounding
    assert float(res.attributions.sum()) == pytest.approx(change, rel=1e-7, abs=rounding)


def test_on_a_photograph_more_steps_bring_the_sum_towards_the_outputs_change() -> None:
    """§5: the sum approximates the integral; on a random AlexNet and the chelsea photograph, 8 points leave it
    further from completeness than 64 do."""
    import skimage.data

    from alexnet.predict import input_transform

    model = _model("alexnet_owt", torch.float32)
    photo = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1)
    x = input_transform(model)(photo)
    errors = []
    for steps in (8, 64):
        res = integrated_gradients(model, x, 3, steps=steps, method="riemann_middle", output="score")
        errors.append(abs(float(res.delta[0])) / abs(float(res.outputs[0] - res.baseline_outputs[0])))
    assert errors[1] < errors[0]


@pytest.mark.parametrize("method", ["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid"])
def test_the_riemann_rules_place_their_points_as_named_and_weigh_them_to_one(method: str) -> None:
    alphas, weights = nodes(method, 4)
    expected = {
        "riemann_right": [0.25, 0.5, 0.75, 1.0],  # §5's sum: k/m for k = 1…m
        "riemann_left": [0.0, 0.25, 0.5, 0.75],
        "riemann_middle": [0.125, 0.375, 0.625, 0.875],
        "riemann_trapezoid": [0.0, 1 / 3, 2 / 3, 1.0],
    }[method]
    assert alphas.tolist() == pytest.approx(expected)
    assert float(weights.sum()) == pytest.approx(1.0)
    if method == "riemann_trapezoid":  # the trapezoid rule's weights on 4 points: h/2, h, h, h/2 with h = 1/3
        assert weights.tolist() == pytest.approx([1 / 6, 1 / 3, 1 / 3, 1 / 6])


def test_gauss_legendre_integrates_polynomials_up_to_degree_2n_minus_1_exactly() -> None:
    alphas, weights = nodes("gausslegendre", 4)
    for k in range(8):
        assert float((weights * alphas**k).sum()) == pytest.approx(1 / (k + 1), rel=1e-12)


def test_the_black_baseline_is_the_models_preprocessing_of_a_black_picture() -> None:
    """§6's baseline, in the normalised input space: (0 − mean) / std per channel for ImageNet statistics; for
    Caffe's convention (BGR, pixels ×255 minus the mean pixel) minus the mean, channel by channel."""
    from alexnet.predict import preprocessing_of

    for name in ("alexnet", "caffenet"):
        model = _model(name, torch.float32)
        prep = preprocessing_of(model)
        black = black_image(model)
        assert black.shape == (3, model.default_input_size, model.default_input_size)
        expected = [
            (0 - m * prep.pixel_scale) / (s * prep.pixel_scale)
            for m, s in zip(prep.mean, prep.std, strict=True)
        ]
        if prep.channel_order == "BGR":
            expected = expected[::-1]
        assert black.flatten(1).mean(1).tolist() == pytest.approx(expected, rel=1e-5)
        assert float(black.flatten(1).std(1).max()) < 1e-5


def test_the_mean_baseline_is_the_zero_input_and_a_batch_is_its_images_one_at_a_time() -> None:
    model = _model("alexnet", torch.float32)
    x = _images(model, 3)
    res = integrated_gradients(model, x, [1, 5, 9], baseline="mean", steps=4, batch_size=3)
    zero = integrated_gradients(model, x, [1, 5, 9], baseline=torch.zeros_like(x[0]), steps=4, batch_size=4)
    torch.testing.assert_close(res.attributions, zero.attributions)
    alone = torch.cat(
        [
            integrated_gradients(model, x[i], t, baseline="mean", steps=4).attributions
            for i, t in enumerate([1, 5, 9])
        ]
    )
    scale = float(alone.abs().max())
    torch.testing.assert_close(res.attributions, alone, rtol=1e-4, atol=1e-5 * scale)
    assert res.targets.tolist() == [1, 5, 9]


def test_the_default_target_is_each_images_top_class() -> None:
    model = _model("caffenet", torch.float32)
    x = _images(model, 2)
    with torch.no_grad():
        top = model(x).argmax(1)
    assert integrated_gradients(model, x, steps=2).targets.tolist() == top.tolist()


def test_the_model_is_left_as_it_was() -> None:
    model = _model("alexnet", torch.float32).train()
    fixed = model.layer("fc8").weight
    fixed.requires_grad_(False)  # a fine-tuning run's frozen layer stays frozen, the rest trainable
    integrated_gradients(model, _images(model, 1), steps=2)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [p is not fixed for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(target=10), r"class 10 is out of range \(0–9\)"),
        (dict(method="simpson"), "unknown method 'simpson'"),
        (dict(method="riemann_trapezoid", steps=1), "riemann_trapezoid needs at least 2 steps"),
        (dict(steps=0), "riemann_right needs at least 1 steps, not 0"),
        (dict(baseline="white"), "unknown baseline 'white'; choose black, mean or pass a tensor"),
        (dict(baseline=torch.zeros(3, 5, 5)), r"the baseline is \(3, 5, 5\)"),
        (dict(output="logit"), "unknown output 'logit'"),
        (dict(batch_size=0), "batch size must be at least 1"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, message) -> None:
    model = _model("alexnet", torch.float32)
    with pytest.raises(SelectionError, match=message):
        integrated_gradients(model, torch.zeros(1, 3, 227, 227), **kwargs)


# --- the command ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ten_class_weights(tmp_path_factory.mktemp("integrated"))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    return run_visualize(capsys, "integrated-gradients", *args)


def test_the_command_writes_the_figure_and_the_numbers_and_reports_completeness(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    code, out, err = _run(
        capsys,
        "--weights",
        str(weights),
        str(chelsea_jpeg),
        "--target",
        "6",
        "--steps",
        "8",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1:] == [str(tmp_path / "chelsea_integrated.png"), str(tmp_path / "chelsea_integrated.npz")]
    saved = np.load(tmp_path / "chelsea_integrated.npz")
    assert saved["attributions"].shape == (3, 227, 227) and int(saved["target"]) == 6
    change = float(saved["output"]) - float(saved["baseline_output"])
    assert float(saved["attributions"].sum()) == pytest.approx(
        change + float(saved["delta"]), rel=1e-4, abs=1e-9
    )
    assert (
        str(saved["method"]) == "riemann_right"
        and int(saved["steps"]) == 8
        and str(saved["of"]) == "probability"
    )
    assert (
        lines[0].startswith("chelsea.jpg: class6 (6), probability ") and "from the black baseline" in lines[0]
    )
    assert f"{100 * abs(float(saved['delta'])) / abs(change):.1f} % off" in lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "12"], "class 12 is out of range"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--method", "riemann_trapezoid", "--steps", "1"], "riemann_trapezoid needs at least 2 steps"),
        (["--baseline", "white"], "invalid choice: 'white'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    capsys, weights, chelsea_jpeg, tmp_path, args, message
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), "--out", str(out), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())
