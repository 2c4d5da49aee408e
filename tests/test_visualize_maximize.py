"""Yosinski et al. 2015, §3: regularised activation maximisation (``alexnet.visualize.maximize`` and
``alexnet visualize maximize``). The regularisers against the toolbox's numpy/scipy formulas, the pixels → input
map against the model's own eval transform, the ascent's properties (the unit rises and leads its layer; a batch
gives each unit the image it gets alone), stopping, and bad selections."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch

import alexnet
from alexnet.cli import main
from alexnet.errors import LayerNotFound, SelectionError
from alexnet.predict import mean_image_of, normalize_crop, preprocessing_of
from alexnet.visualize import maximize as mx
from alexnet.weights import WeightsMeta, save_weights
from test_api_transforms import CAFFE_MEAN_IMAGE, _mean_image  # Caffe's BGR ×255 minus a varying mean image

QUICK = mx.preset(3, steps=12)


def _caffe_model() -> alexnet.AlexNetFamily:
    model = alexnet.create_model("caffenet", num_classes=10)
    model.weights_meta = WeightsMeta(preprocessing=CAFFE_MEAN_IMAGE, tensors={"mean_image": _mean_image()})
    return model


@pytest.fixture(scope="module")
def model() -> alexnet.AlexNetFamily:
    """PyTorch's default init: the paper's N(0, 0.01) leaves a random network's scores almost blind to the image
    (its biases decide them), so no ascent could make a class lead."""
    torch.manual_seed(0)
    return alexnet.create_model("alexnet", num_classes=10, init="pytorch")


# --- the regularisers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_gaussian_blur_is_scipys_gaussian_filter_per_channel(sigma: float) -> None:
    """The toolbox blurs each channel with ``scipy.ndimage.gaussian_filter(x, σ)``: same kernel, same edges."""
    x = torch.randn(2, 3, 31, 40, dtype=torch.float64)
    ours = mx.gaussian_blur(x, sigma).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(
                ours[n, c], scipy.ndimage.gaussian_filter(x[n, c].numpy(), sigma), atol=1e-12
            )


def test_a_zero_blur_radius_leaves_the_image_alone() -> None:
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(mx.gaussian_blur(x, 0.0), x)


@pytest.mark.parametrize("pct", [20.0, 50.0])
def test_small_norm_clipping_zeroes_the_pixels_below_the_images_percentile(pct: float) -> None:
    """θ_n_pct: pixels whose colour norm is under the image's percentile (numpy's) become the mean (0), all three
    channels; the others keep their values; each image has its own percentile."""
    x = torch.randn(2, 3, 10, 12, dtype=torch.float64)
    x[1] *= 50  # another scale: a shared percentile would clip all of image 0
    out = mx.clip_small_norm(x, pct)
    for n in range(2):
        norms = np.linalg.norm(x[n].numpy(), axis=0)
        small = norms < np.percentile(norms, pct)
        assert small.sum() == round(norms.size * pct / 100)  # distinct values: exactly that share
        expected = x[n].numpy() * ~small
        np.testing.assert_array_equal(out[n].numpy(), expected)


def test_small_contribution_clipping_uses_the_first_order_change_of_the_unit() -> None:
    """θ_c_pct: |Σ_c x·∂a/∂x| under the image's percentile → 0 (the toolbox's ``px_abs_benefit_percentile``)."""
    x, g = torch.randn(2, 3, 9, 9, dtype=torch.float64), torch.randn(2, 3, 9, 9, dtype=torch.float64)
    out = mx.clip_small_contribution(x, g, 90.0)
    for n in range(2):
        benefit = np.abs((g[n].numpy() * -x[n].numpy()).sum(0))
        small = benefit < np.percentile(benefit, 90.0)
        np.testing.assert_array_equal(out[n].numpy(), x[n].numpy() * ~small)
    assert torch.equal(mx.clip_small_contribution(x, g, 0.0), x)


def test_step_rules_give_the_step_each_promises() -> None:
    g = torch.randn(3, 3, 16, 16, dtype=torch.float64) * torch.tensor([1e-4, 1.0, 30.0]).view(3, 1, 1, 1)
    rms = mx.step_update(g, mx.Regularization(lr=2.0, lr_policy="rms"))
    torch.testing.assert_close(
        rms.flatten(1).pow(2).mean(1).sqrt(), torch.full((3,), 2.0, dtype=torch.float64)
    )
    const = mx.step_update(g, mx.Regularization(lr=100.0, lr_policy="constant"))
    torch.testing.assert_close(const, 100.0 * g)
    # progress: the linearised activation rises by 2.0 (g·Δ), unless the step size limit binds
    prog = mx.step_update(g, mx.Regularization(lr=1e12, lr_policy="progress", desired_progress=2.0))
    torch.testing.assert_close((prog * g).flatten(1).sum(1), torch.full((3,), 2.0, dtype=torch.float64))
    capped = mx.step_update(g, mx.Regularization(lr=0.5, lr_policy="progress", desired_progress=2.0))
    torch.testing.assert_close(capped[0], 0.5 * g[0])  # the tiny gradient would want a huge step
    assert torch.equal(mx.step_update(torch.zeros(1, 3, 4, 4), mx.Regularization()), torch.zeros(1, 3, 4, 4))


def test_presets_are_the_papers_table_1() -> None:
    """θ_decay, θ_b_width, θ_b_every, θ_n_pct, θ_c_pct of Table 1's four rows; the toolbox's step counts."""
    rows = {
        n: (p.decay, p.blur_radius, p.blur_every, p.norm_percentile, p.contribution_percentile)
        for n, p in mx.PRESETS.items()
    }
    assert rows == {
        1: (0.0, 0.5, 4, 50, 0),
        2: (0.3, 0.0, 0, 20, 0),
        3: (0.0001, 1.0, 4, 0, 0),
        4: (0.0, 0.5, 4, 0, 90),
    }
    assert [p.steps for p in mx.PRESETS.values()] == [500, 750, 1000, 1000]
    assert mx.preset(2, steps=5, decay=None).steps == 5 and mx.preset(2, decay=None).decay == 0.3


@pytest.mark.parametrize(
    "bad",
    [
        dict(decay=1.0),
        dict(norm_percentile=100),
        dict(steps=0),
        dict(lr=0.0),
        dict(lr=float("nan")),
        dict(lr_policy="adam"),
    ],
)
def test_impossible_settings_are_one_clear_error(bad: dict) -> None:
    with pytest.raises(SelectionError):
        mx.Regularization(**bad)


def test_an_unknown_preset_names_the_ones_there_are() -> None:
    with pytest.raises(SelectionError, match="presets 1, 2, 3, 4"):
        mx.preset(5)


# --- pixels → the model's input ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: alexnet.create_model("alexnet", num_classes=10), _caffe_model])
def test_pixels_reach_the_model_as_its_own_eval_transform_would_give_them(make) -> None:
    """Per-channel RGB mean/std, and Caffe's BGR ×255 minus the per-pixel mean image's centre (AlexNet §2): the
    differentiable map gives a uint8 crop the same numbers as ``normalize_crop``; the mean pixels give zeros."""
    model = make()
    size = model.default_input_size
    to_input = mx.PixelInput(preprocessing_of(model), mean_image_of(model), size)
    crop = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    torch.testing.assert_close(
        to_input(crop.float().unsqueeze(0))[0], normalize_crop(model, crop), atol=1e-4, rtol=1e-5
    )
    zero = to_input(to_input.mean.unsqueeze(0))
    assert zero.abs().max() < 1e-4


# --- the ascent -----------------------------------------------------------------------------------------------
def test_the_ascent_drives_each_class_score_up_until_it_leads(model) -> None:
    """The objective rises from the shared start, and every class ends as the model's top score (the toolbox's
    "majority success"); images stay valid pixels."""
    res = mx.maximize(model, "fc8", [1, 4, 7], settings=mx.preset(3, steps=25, lr=20.0))
    assert res.objective.shape == (3, 25) and res.steps == 25
    assert (res.best > res.objective[:, 0] + 0.02).all()  # scores of a random network: a few hundredths
    assert (res.first_top >= 0).all()
    assert res.pixels.min() >= 0 and res.pixels.max() <= 255
    scores = model.eval()(res.inputs)
    assert scores.argmax(1).tolist() == [1, 4, 7]
    torch.testing.assert_close(scores[[0, 1, 2], [1, 4, 7]], res.best, atol=1e-3, rtol=1e-4)
    assert not res.stuck.any()
    assert all(p.requires_grad for p in model.parameters())


def test_a_feature_maps_unit_defaults_to_the_centre_and_rises(model) -> None:
    res = mx.maximize(model, "conv5", [0, 3], settings=QUICK)
    assert res.unit == (6, 6)  # 13×13 maps
    assert (res.best > res.objective[:, 0]).all()
    chosen = mx.maximize(model, "conv5", [3], unit=(2, 9), settings=QUICK)
    assert chosen.unit == (2, 9) and chosen.best[0] > chosen.objective[0, 0]


def test_a_batch_gives_each_unit_the_image_it_gets_alone() -> None:
    """In float64, bit for bit: together, in batches of 2, or alone. (In float32 the batch sizes' kernels round
    differently, and within a few steps a max-pool's switch or a ReLU flips on a near-tie: the same ascent, another
    path.)"""
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet", num_classes=10, init="pytorch").double()
    together = mx.maximize(model, "fc8", [2, 5, 9], settings=QUICK, seed=3)
    chunked = mx.maximize(model, "fc8", [2, 5, 9], settings=QUICK, seed=3, batch_size=2)
    alone = mx.maximize(model, "fc8", [5], settings=QUICK, seed=3)
    assert torch.equal(together.pixels[1], alone.pixels[0])
    assert torch.equal(chunked.pixels, together.pixels)
    assert torch.equal(chunked.objective, together.objective)


def test_the_seed_picks_the_start_and_the_run_repeats(model) -> None:
    a = mx.maximize(model, "fc8", [0], settings=mx.preset(3, steps=2), seed=1)
    b = mx.maximize(model, "fc8", [0], settings=mx.preset(3, steps=2), seed=1)
    c = mx.maximize(model, "fc8", [0], settings=mx.preset(3, steps=2), seed=2)
    assert torch.equal(a.pixels, b.pixels) and not torch.equal(a.pixels, c.pixels)


@pytest.mark.parametrize("number", [1, 2, 4])
def test_every_preset_raises_its_units(model, number: int) -> None:
    res = mx.maximize(model, "fc8", [3], settings=mx.preset(number, steps=15))
    assert res.best[0] > res.objective[0, 0]


def test_the_mean_image_model_runs_in_its_own_convention() -> None:
    res = mx.maximize(_caffe_model(), "fc8", [2], settings=mx.preset(3, steps=10))
    assert res.best[0] > res.objective[0, 0] and res.pixels.shape == (1, 3, 227, 227)


def test_stopping_keeps_the_best_images_of_the_steps_taken(model) -> None:
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    res = mx.maximize(model, "fc8", [0, 1, 2], settings=QUICK, batch_size=2, stop=stop)
    assert res.channels == [0, 1] and res.steps == 3  # the second batch is not begun
    assert res.pixels.shape[0] == 2 and torch.isfinite(res.objective).all()


def test_a_dead_rectified_unit_is_reported_stuck() -> None:
    """A unit at 0 after its ReLU has no gradient: nothing can raise it (the toolbox's "grad 0 failure")."""
    model = alexnet.create_model("alexnet", num_classes=10)
    with torch.no_grad():
        model.layer("conv1").bias[5] = -1e4  # off for every image
        model.layer("conv1").bias[6] = 1e4  # on for every image
    res = mx.maximize(model, "relu1", [5, 6], settings=mx.preset(3, steps=2))
    assert res.stuck.tolist() == [True, False]


def test_a_callers_inference_mode_does_not_stop_the_ascent(model) -> None:
    with torch.inference_mode():
        res = mx.maximize(model, "fc8", [2], settings=mx.preset(3, steps=3, lr=20.0))
    assert res.best[0] > res.objective[0, 0]


def test_the_model_is_left_as_it_was(model) -> None:
    model.train()
    mx.maximize(model, "fc8", [0], settings=mx.preset(3, steps=2))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


@pytest.mark.parametrize(
    ("layer", "channels", "unit", "error", "message"),
    [
        ("fc8", [10], None, SelectionError, r"channel 10 is out of range for fc8 \(0–9\)"),
        ("conv5", [0], (13, 0), SelectionError, r"unit \(13, 0\) is outside conv5's 13×13 map"),
        ("fc7", [0], (1, 1), SelectionError, "fully connected"),
        ("drop6", [0], None, SelectionError, "dropout"),
        ("conv9", [0], None, LayerNotFound, "valid layers"),
        ("fc8", [], None, SelectionError, "no channels"),
    ],
)
def test_a_selection_the_model_lacks_is_one_clear_error(model, layer, channels, unit, error, message) -> None:
    with pytest.raises(error, match=message):
        mx.maximize(model, layer, channels, unit, settings=QUICK)


# --- the command ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("maximize") / "model.safetensors"
    names = [f"class{i}" for i in range(10)]
    save_weights(alexnet.create_model("alexnet", num_classes=10), path, WeightsMeta(classes=names))
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(["visualize", "maximize", *args])
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_writes_the_figure_one_image_per_unit_and_the_numbers(
    capsys, weights: Path, tmp_path: Path
) -> None:
    code, out, err = _run(
        capsys, "--weights", str(weights), "--channels", "1,3", "--steps", "6", "--out", str(tmp_path)
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("fc8 1 (class1): ") and lines[1].startswith("fc8 3 (class3): ")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["maximize_fc8.npz", "maximize_fc8.png", "maximize_fc8_ch1.png", "maximize_fc8_ch3.png"]
    saved = np.load(tmp_path / "maximize_fc8.npz")
    assert saved["pixels"].shape == (2, 227, 227, 3) and saved["objective"].shape == (2, 6)
    assert saved["channels"].tolist() == [1, 3] and str(saved["layer"]) == "fc8"
    assert '"blur_radius": 1.0' in str(saved["settings"])


def test_a_feature_map_unit_is_named_in_the_files(capsys, weights: Path, tmp_path: Path) -> None:
    code, _, err = _run(
        capsys, "--weights", str(weights), "--layer", "conv3", "--channels", "0", "--unit", "4,5",
        "--preset", "2", "--steps", "3", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "maximize_conv3_unit4-5.png").is_file()
    assert (tmp_path / "maximize_conv3_unit4-5_ch0.png").is_file()


def test_a_dead_unit_is_named_with_the_layer_to_climb_instead(capsys, tmp_path: Path) -> None:
    model = alexnet.create_model("alexnet", num_classes=10)
    with torch.no_grad():
        model.layer("conv1").bias[5] = -1e4
    weights = save_weights(model, tmp_path / "dead.safetensors")
    code, out, err = _run(
        capsys, "--weights", str(weights), "--layer", "relu1", "--channels", "5", "--steps", "2",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, err
    assert (
        out.splitlines()[0]
        == "relu1 5: no gradient at the start (a rectified unit at 0): climb conv1 instead"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channels", "12"], "channel 12 is out of range for fc8"),
        (["--layer", "conv5", "--unit", "20,1"], "outside conv5's 13×13 map"),
        (["--decay", "1.5"], "decay must be in [0, 1)"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--blur-radius", "500"], "a blur of width 500 px reaches 2000 px, beyond the 227-px image"),
        (["--layer", "fc99"], "no layer 'fc99'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(capsys, weights: Path, tmp_path: Path, args, message) -> None:
    code, _, err = _run(capsys, "--weights", str(weights), "--out", str(tmp_path), *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_ctrl_c_writes_the_best_images_so_far_and_exits_130(
    capsys, weights: Path, tmp_path: Path, monkeypatch, ctrl_c_reaches_us
) -> None:
    """SIGINT during the third step's update: the fourth step is measured, then the ascent stops."""
    update = mx.step_update
    calls = []

    def ctrl_c_in_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return update(*args, **kwargs)

    monkeypatch.setattr(mx, "step_update", ctrl_c_in_step_3)
    before = signal.getsignal(signal.SIGINT)
    code, out, err = _run(
        capsys, "--weights", str(weights), "--channels", "0-2", "--steps", "50", "--out", str(tmp_path)
    )
    assert code == 130
    assert "stopped after 4 of 50 steps, for 3 of 3 units" in err
    assert signal.getsignal(signal.SIGINT) is before
    saved = np.load(tmp_path / "maximize_fc8.npz")
    assert saved["objective"].shape == (3, 4)
    assert str(tmp_path / "maximize_fc8.png") in out
