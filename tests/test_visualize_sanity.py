"""Sanity checks for saliency maps (Adebayo et al. 2018; ``alexnet.visualize.sanity`` and ``alexnet visualize
sanity``): the paper's finding on a photograph (guided backpropagation survives randomised top layers, the
gradient does not), cascading against independent randomisation, the seed, Spearman's coefficient with ties, the
model left alone, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.errors import SelectionError
from alexnet.visualize.deconvnet import class_projection
from alexnet.visualize.sanity import METHODS, data_randomization_test, randomization_test, spearman
from alexnet.weights import WeightsMeta, save_weights
from test_visualize_class_projection import _images, _model, run_visualize, ten_class_weights
from test_visualize_smoothgrad import _photograph


def test_spearmans_coefficient_is_scipys_with_ties_and_nan_for_a_constant_map() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(3, 200)).astype(np.float64)  # many ties, as rectified maps have
    b = a + rng.normal(size=(3, 200))
    ours = spearman(torch.from_numpy(a), torch.from_numpy(b))
    for i in range(3):
        assert float(ours[i]) == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-12)
    assert torch.isnan(spearman(torch.ones(1, 10), torch.arange(10.0)[None])).all()


def test_guided_backpropagation_survives_randomised_top_layers_and_the_gradient_does_not() -> None:
    """Adebayo et al. Fig. 2: with fc8 re-initialised the class's guided backpropagation of the chelsea photograph is
    nearly the trained network's (ρ ≈ 0.98 for this AlexNet, absolute values), its gradient not (≈ 0.5). The
    original step is the maps themselves (ρ = 1)."""
    model = _model("alexnet", torch.float32)
    res = randomization_test(model, _photograph(model), 3, ["gradient", "guided"], layers=["fc8", "fc7"])
    assert res.steps == ["original", "fc8", "fc7"] and res.methods == ["gradient", "guided"]
    assert res.spearman_abs[0, :, 0].tolist() == pytest.approx([1.0, 1.0])
    gradient, guided = res.spearman_abs[0, 0, 1], res.spearman_abs[0, 1, 1]
    assert guided > 0.9 and gradient < 0.7
    original = class_projection(model, _photograph(model), 3, "gradient").images[0].abs().sum(0)
    torch.testing.assert_close(res.maps[0, 0, 0], original)


def test_independent_randomisation_changes_one_layer_and_cascading_keeps_those_above_random() -> None:
    """Step i draws its layer from ``seed + i``: the independent test's fc7 step is the model with fc7 alone
    random, which is also the cascading test's first step over fc7 alone from ``seed + 1``; the cascading step
    over fc8 then fc7 differs from both (fc8 stays random)."""
    model = _model("alexnet_owt", torch.float32)
    x = _images(model, 1)
    independent = randomization_test(
        model, x, 2, ["gradient"], cascading=False, layers=["fc8", "fc7"], seed=4
    )
    alone = randomization_test(model, x, 2, ["gradient"], layers=["fc7"], seed=5)
    cascading = randomization_test(model, x, 2, ["gradient"], layers=["fc8", "fc7"], seed=4)
    torch.testing.assert_close(independent.maps[:, :, 2], alone.maps[:, :, 1])
    torch.testing.assert_close(independent.maps[:, :, 1], cascading.maps[:, :, 1])
    assert not torch.allclose(cascading.maps[:, :, 2], independent.maps[:, :, 2])


def test_the_seed_fixes_the_random_weights_and_the_model_and_global_generator_are_left_alone() -> None:
    model = _model("alexnet", torch.float32)
    x = _images(model, 1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = randomization_test(model, x, 1, ["guided", "gradcam"], layers=["fc8", "conv5"], seed=0)
    assert torch.equal(torch.rand(3), expected_draw)  # the user's generator untouched
    b = randomization_test(model, x, 1, ["guided", "gradcam"], layers=["fc8", "conv5"], seed=0)
    c = randomization_test(model, x, 1, ["guided", "gradcam"], layers=["fc8", "conv5"], seed=1)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    assert not torch.allclose(a.maps[:, :, 2], c.maps[:, :, 2])
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not model.training  # as it came


def test_every_method_has_a_map_and_a_row_of_each_similarity() -> None:
    model = _model("caffenet", torch.float32)
    x = _images(model, 2)
    res = randomization_test(model, x, None, samples=2, steps=2, layers=["fc8"])
    n, m, s = 2, 7, 2
    side = model.default_input_size
    assert res.maps.shape == (n, m, s, side, side) and bool((res.maps >= 0).all())
    for table in (res.spearman_abs, res.spearman, res.ssim):
        assert table.shape == (n, m, s)
    ok = ~torch.isnan(res.ssim[:, :, 0])  # a map of zeros (Grad-CAM's, rectified) has no SSIM
    assert res.ssim[:, :, 0][ok].tolist() == pytest.approx([1.0] * int(ok.sum()))
    with torch.no_grad():
        assert res.targets.tolist() == model(x).argmax(1).tolist()


def test_the_data_randomisation_test_compares_two_trainings_of_one_network() -> None:
    """The data randomisation test: each map of the model against the same map of another training of its architecture (here another
    initialisation): the model against itself is ρ = 1 throughout; against the other, guided backpropagation
    stays closer than the gradient (as under the model randomisation test); another architecture is refused."""
    import alexnet

    model = _model("alexnet", torch.float32)
    x = _photograph(model)
    itself = data_randomization_test(model, model, x, 3, ["gradient", "guided"], name="itself")
    assert itself.steps == ["original", "itself"] and itself.test == "data"
    assert itself.spearman_abs[0, :, 1].tolist() == pytest.approx([1.0, 1.0])
    torch.manual_seed(9)
    other = alexnet.create_model("alexnet", num_classes=10, init="pytorch").eval()
    res = data_randomization_test(model, other, x, 3, ["gradient", "guided"])
    assert res.spearman_abs[0, 1, 1] > res.spearman_abs[0, 0, 1]
    with pytest.raises(SelectionError, match="other is not the same network as the model"):
        data_randomization_test(model, _model("zfnet", torch.float32), x, 3, ["gradient"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(methods=["gradient", "lime"]), "unknown method 'lime'; choose from gradient, smoothgrad"),
        (dict(methods=[]), "no method given"),
        (dict(layers=["relu5"]), "'relu5' has no weights to randomise; choose from conv1"),
        (dict(layers=[]), "no layer to randomise"),
        (dict(target=10), r"class 10 is out of range \(0–9\)"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, message) -> None:
    model = _model("alexnet", torch.float32)
    with pytest.raises(SelectionError, match=message):
        randomization_test(model, torch.zeros(1, 3, 227, 227), **{"methods": ["gradient"], **kwargs})


# --- the command ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ten_class_weights(tmp_path_factory.mktemp("sanity"))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    return run_visualize(capsys, "sanity", *args)


def test_the_command_prints_the_correlations_and_writes_the_grid_and_the_numbers(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    args = ["--methods", "gradient,guided", "--layers", "fc8,fc7", "--target", "3", "--out", str(tmp_path)]
    code, out, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), *args)
    assert code == 0, err
    lines = out.splitlines()
    assert (
        lines[0] == "chelsea.jpg: class3 (3); Spearman rank correlation (absolute values) with the original"
    )
    assert lines[1].split() == ["fc8", "fc7"] and lines[2].split()[0] == "gradient"
    stem = tmp_path / "chelsea_sanity"
    assert lines[-3:] == [str(stem.with_suffix(s)) for s in (".png", ".json", ".npz")]
    numbers = json.loads(stem.with_suffix(".json").read_text())
    assert numbers["steps"] == ["original", "fc8", "fc7"] and numbers["target"] == 3
    assert numbers["test"] == "cascading" and numbers["seed"] == 0
    assert [f"{v:.2f}" for v in numbers["spearman_abs"]["guided"][1:]] == lines[3].split()[1:]
    saved = np.load(stem.with_suffix(".npz"))
    assert saved["maps"].shape == (2, 3, 227, 227) and saved["methods"].tolist() == ["gradient", "guided"]
    np.testing.assert_allclose(saved["spearman_abs"][:, 0], [1.0, 1.0])


def test_the_independent_test_is_named_so(capsys, weights: Path, chelsea_jpeg: Path, tmp_path) -> None:
    args = ["--methods", "gradcam", "--layers", "conv5", "--independent", "--out", str(tmp_path)]
    code, out, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), *args)
    assert code == 0, err
    assert out.splitlines()[-1] == str(tmp_path / "chelsea_sanity_independent.npz")
    numbers = json.loads((tmp_path / "chelsea_sanity_independent.json").read_text())
    assert numbers["test"] == "independent" and list(numbers["ssim"]) == ["gradcam"]


def test_against_a_run_the_command_runs_the_data_randomisation_test(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    import alexnet

    run = tmp_path / "random-labels"
    run.mkdir()
    torch.manual_seed(9)
    other = alexnet.create_model("alexnet", num_classes=10, init="pytorch")
    save_weights(other, run / "model.safetensors", WeightsMeta(classes=[f"class{i}" for i in range(10)]))
    args = ["--methods", "gradient,guided", "--against", str(run), "--samples", "2", "--out", str(tmp_path)]
    code, out, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), *args)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].split() == ["random-labels"] and [line.split()[0] for line in lines[2:4]] == [
        "gradient",
        "guided",
    ]
    numbers = json.loads((tmp_path / "chelsea_sanity_data.json").read_text())
    assert numbers["test"] == "data" and numbers["against"] == "random-labels" and "seed" not in numbers
    assert numbers["steps"] == ["original", "random-labels"]


def test_against_another_architecture_is_refused_before_any_image_is_read(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    other = tmp_path / "zf.safetensors"
    save_weights(_model("zfnet", torch.float32), other, WeightsMeta(classes=[f"class{i}" for i in range(10)]))
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "--weights", str(weights), str(chelsea_jpeg), "--against", str(other), "--out", str(out)
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "zf is not the same network as the model (zfnet, 10 classes, against alexnet, 10 classes)" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "gradient,lime"], "unknown method 'lime'"),
        (["--methods", "gradient,"], "expected comma-separated names"),
        (["--layers", "pool5"], "'pool5' has no weights to randomise"),
        (["--target", "12"], "class 12 is out of range"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--against", "no-such-run"], "no-such-run"),
        (["--against", "RUN", "--layers", "fc8"], "--against compares two trained networks"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    capsys, weights, chelsea_jpeg, tmp_path, args, message
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), "--out", str(out), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_lrp_is_compared_on_request_and_its_original_map_is_lrps_own() -> None:
    """Not one of Adebayo et al.'s methods (not in the default list), but ``methods=["lrp"]`` tests its composite."""
    from alexnet.visualize.lrp import lrp

    model = _model("alexnet", torch.float32)
    x = _images(model, 1)
    res = randomization_test(model, x, 4, ["lrp"], layers=["fc8"])
    assert res.methods == ["lrp"] and res.steps == ["original", "fc8"]
    torch.testing.assert_close(res.maps[0, 0, 0], lrp(model, x, 4).attributions[0].abs().sum(0))
    assert "lrp" not in METHODS
