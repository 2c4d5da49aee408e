"""SmoothGrad (Smilkov et al. 2017; ``alexnet.visualize.smoothgrad`` and ``alexnet visualize smoothgrad``): §3's
mean over noisy copies and its two later statistics against Captum's ``NoiseTunnel``, the paper's reason for it
(the raw gradient moves with a small change of the image, the smoothed map much less), the noise level, the
seed, the model left alone, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.errors import SelectionError
from alexnet.visualize.deconvnet import class_projection
from alexnet.visualize.integrated import black_image, integrated_gradients
from alexnet.visualize.smoothgrad import magnitude, smoothgrad
from test_visualize_class_projection import _images, _model, run_visualize, ten_class_weights

pytestmark = [  # Captum's notices about what it does to the model and input for the comparisons
    pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning"),
    pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients:UserWarning"),
]


def _captum_sigma(res) -> float:
    """The σ Captum is handed: ours, as the float32 value both draws are scaled by."""
    return float(torch.tensor(float(res.sigmas[0]), dtype=torch.float32))


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max()) / float(theirs.abs().max())


@pytest.mark.parametrize("statistic", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_the_gradients_statistics_are_captums_noise_tunnel_over_saliency(statistic: str) -> None:
    """§3: M̂_c(x) = 1/n Σ M_c(x + N(0, σ²)) with M_c the class score's gradient; the mean square (Hooker et al.)
    and the variance (Adebayo et al.) as ``NoiseTunnel``'s ``nt_type`` — Captum drawing its noise after
    ``torch.manual_seed(seed)``, here from a generator of that seed."""
    captum_attr = pytest.importorskip("captum.attr")
    model = _model("alexnet")
    x = _images(model, 1)
    ours = smoothgrad(
        model, x, 3, "gradient", samples=6, noise=0.15, statistic=statistic, seed=5, batch_size=4
    )
    torch.manual_seed(5)
    theirs = captum_attr.NoiseTunnel(captum_attr.Saliency(model)).attribute(
        x, nt_type=statistic, nt_samples=6, stdevs=_captum_sigma(ours), target=3, abs=False
    )
    assert _relative_error(ours.attributions, theirs) < 1e-10


@pytest.mark.parametrize(("name", "method"), [("zfnet", "guided"), ("alexnet_owt", "deconvnet")])
def test_the_other_rules_smoothed_are_captums_noise_tunnel_over_theirs(name: str, method: str) -> None:
    """§4.4: SmoothGrad of guided backpropagation; of the deconvnet's rules where Captum's ``Deconvolution`` is
    theirs (no LRN: tests/test_visualize_class_projection.py)."""
    captum_attr = pytest.importorskip("captum.attr")
    model = _model(name)
    x = _images(model, 1)
    ours = smoothgrad(model, x, 7, method, samples=4, seed=2)
    attribution = {"guided": captum_attr.GuidedBackprop, "deconvnet": captum_attr.Deconvolution}[method]
    torch.manual_seed(2)
    theirs = captum_attr.NoiseTunnel(attribution(model)).attribute(
        x, nt_samples=4, stdevs=_captum_sigma(ours), target=7
    )
    assert _relative_error(ours.attributions, theirs) < 1e-10


def test_smoothgrad_of_integrated_gradients_is_captums_noise_tunnel_over_theirs() -> None:
    """§4.4 smooths integrated gradients too; the black baseline stays where it is for every noisy copy."""
    captum_attr = pytest.importorskip("captum.attr")
    model = _model("caffenet")
    x = _images(model, 1)

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(batch), 1)

    ours = smoothgrad(model, x, 2, "integrated", samples=3, seed=4, steps=4)
    torch.manual_seed(4)
    theirs = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(probabilities)).attribute(
        x,
        nt_samples=3,
        stdevs=_captum_sigma(ours),
        target=2,
        baselines=black_image(model).to(x)[None],
        n_steps=4,
        method="riemann_right",
    )
    # Captum computes its path's points in float32 (test_visualize_integrated.py)
    assert _relative_error(ours.attributions, theirs) < 1e-6


def _photograph(model) -> torch.Tensor:
    import skimage.data

    from alexnet.predict import input_transform

    photo = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1)
    return input_transform(model)(photo)[None]


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_a_small_change_of_the_photograph_moves_the_raw_gradient_far_more_than_smoothgrad() -> None:
    """§3: the gradient "fluctuates sharply at small scales", so a map of it says little about the image's
    neighbourhood; averaged over noise it does not. Noise of 5 % of the range on the chelsea photograph leaves a
    random AlexNet's raw gradient map little correlated with the first (≈ 0.25), SmoothGrad's close to it
    (≈ 0.7, 50 samples, the default seed)."""
    model = _model("alexnet", torch.float32)
    x = _photograph(model)
    torch.manual_seed(7)
    y = x + 0.05 * float(x.max() - x.min()) * torch.randn_like(x)
    raw = [class_projection(model, image, 3, "gradient").images for image in (x, y)]
    smooth = [smoothgrad(model, image, 3).attributions for image in (x, y)]
    assert _correlation(*smooth) > _correlation(*raw) + 0.3


def test_without_noise_the_statistics_are_the_map_its_square_and_zero() -> None:
    model = _model("alexnet_owt")
    x = _images(model, 1)
    single = class_projection(model, x, 4, "guided").images
    res = {
        s: smoothgrad(model, x, 4, "guided", 3, 0.0, s).attributions
        for s in ("smoothgrad", "smoothgrad_sq", "vargrad")
    }
    scale = float(single.abs().max())  # three equal maps summed and divided by 3: rounding apart
    torch.testing.assert_close(res["smoothgrad"], single, rtol=1e-12, atol=1e-14 * scale)
    torch.testing.assert_close(res["smoothgrad_sq"], single * single, rtol=1e-12, atol=1e-14 * scale**2)
    assert float(res["vargrad"].abs().max()) <= 1e-12 * scale**2
    integrated = smoothgrad(model, x, 4, "integrated", 1, 0.0, steps=3, output="score").attributions
    expected = integrated_gradients(model, x, 4, steps=3, output="score").attributions
    torch.testing.assert_close(integrated, expected, rtol=1e-12, atol=0)


def test_sigma_is_the_noise_level_times_each_images_own_range() -> None:
    """§4.2: the noise level is σ / (x_max − x_min), per image, in the model's input units."""
    model = _model("alexnet", torch.float32)
    x = _images(model, 1)
    x = torch.cat([x, 3 * x])
    res = smoothgrad(model, x, 0, samples=1, noise=0.2)
    expected = [0.2 * float(image.max() - image.min()) for image in x]
    assert res.sigmas.tolist() == pytest.approx(expected, rel=1e-6)
    assert float(res.sigmas[1]) == pytest.approx(3 * float(res.sigmas[0]), rel=1e-5)


def test_the_seed_fixes_the_maps_whatever_the_batch_size_and_another_seed_moves_them() -> None:
    model = _model("alexnet", torch.float32)
    x = _images(model, 1)
    first = smoothgrad(model, x, 1, samples=5, seed=3, batch_size=5).attributions
    again = smoothgrad(model, x, 1, samples=5, seed=3, batch_size=2).attributions
    other = smoothgrad(model, x, 1, samples=5, seed=4, batch_size=5).attributions
    torch.testing.assert_close(again, first, rtol=1e-5, atol=1e-6 * float(first.abs().max()))
    assert _relative_error(other, first) > 0.1


@pytest.mark.parametrize("batch_size", [1, 5, 16, 40])
def test_the_copies_noise_is_one_calls_draw_whatever_the_batch_size(batch_size: int) -> None:
    """Drawn 16 copies at a time (a batch and a block held, not every copy): the same numbers as one
    ``torch.randn`` call for all 37 copies, which is Captum's draw, also for a copy whose size is no multiple
    of 16 (3×99×99)."""
    from alexnet.visualize.smoothgrad import _noise

    shape, sigma = torch.Size((3, 99, 99)), torch.tensor(0.3)
    chunks = list(_noise(torch.Generator().manual_seed(8), 37, shape, sigma, batch_size))
    assert [len(c) for c in chunks] == [min(batch_size, 37 - i) for i in range(0, 37, batch_size)]
    expected = torch.randn((37, *shape), generator=torch.Generator().manual_seed(8)) * sigma
    assert torch.equal(torch.cat(chunks), expected)


def test_a_batchs_first_image_is_that_image_alone_and_the_next_draw_new_noise() -> None:
    """Each image's copies are drawn in turn from one generator: the first image's are those it has alone."""
    model = _model("alexnet", torch.float32)
    x = _images(model, 1).expand(2, -1, -1, -1).contiguous()
    both = smoothgrad(model, x, 5, samples=3, seed=1).attributions
    alone = smoothgrad(model, x[0], 5, samples=3, seed=1).attributions
    torch.testing.assert_close(both[:1], alone, rtol=1e-5, atol=1e-6 * float(alone.abs().max()))
    assert _relative_error(both[1:], both[:1]) > 0.1  # the same image, other noise


def test_the_default_target_is_each_images_top_class_without_noise() -> None:
    model = _model("caffenet", torch.float32)
    x = _images(model, 2)
    with torch.no_grad():
        top = model(x).argmax(1)
    assert smoothgrad(model, x, samples=1).targets.tolist() == top.tolist()


def test_the_model_is_left_as_it_was() -> None:
    model = _model("alexnet", torch.float32).train()
    fixed = model.layer("fc8").weight
    fixed.requires_grad_(False)
    for method in ("gradient", "integrated"):
        smoothgrad(model, _images(model, 1), method=method, samples=2, steps=2)
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [p is not fixed for p in model.parameters()]
    assert all(p.grad is None for p in model.parameters())


def test_the_display_sums_the_colours_magnitudes_and_caps_the_top_percent() -> None:
    """§4.1: absolute values, outliers capped: the largest 1 % are all 1, the least value 0."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 50, 40))
    shown = magnitude(values)
    summed = np.abs(values).sum(0)
    assert shown.shape == (50, 40) and shown.min() == 0 and shown.max() == 1
    assert (shown[summed >= np.percentile(summed, 99)] == 1).all()
    assert (shown[summed < np.percentile(summed, 99)] < 1).all()
    np.testing.assert_allclose(magnitude(-values), shown)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(target=10), r"class 10 is out of range \(0–9\)"),
        (dict(method="lrp"), "unknown method 'lrp'; choose deconvnet, gradient, guided, integrated"),
        (dict(statistic="mean"), "unknown statistic 'mean'; choose smoothgrad, smoothgrad_sq, vargrad"),
        (dict(samples=0), "samples must be at least 1, not 0"),
        (dict(noise=-0.1), "the noise level must be a finite number ≥ 0, not -0.1"),
        (dict(noise=float("nan")), "the noise level must be a finite number ≥ 0, not nan"),
        (dict(noise=float("inf")), "the noise level must be a finite number ≥ 0, not inf"),
        (dict(batch_size=0), "batch size must be at least 1"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, message) -> None:
    model = _model("alexnet", torch.float32)
    with pytest.raises(SelectionError, match=message):
        smoothgrad(model, torch.zeros(1, 3, 227, 227), **{"samples": 1, **kwargs})


# --- the command ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ten_class_weights(tmp_path_factory.mktemp("smoothgrad"))


def _run(capsys, *args: str) -> tuple[int, str, str]:
    return run_visualize(capsys, "smoothgrad", *args)


def test_the_command_writes_the_figure_and_the_numbers(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    from alexnet.inputs import prepare
    from alexnet.weights import load_pretrained

    code, out, err = _run(
        capsys,
        "--weights",
        str(weights),
        str(chelsea_jpeg),
        "--target",
        "6",
        "--samples",
        "4",
        "--out",
        str(tmp_path),
    )
    assert code == 0, err
    assert out.splitlines() == [
        str(tmp_path / "chelsea_smoothgrad.png"),
        str(tmp_path / "chelsea_smoothgrad.npz"),
    ]
    saved = np.load(tmp_path / "chelsea_smoothgrad.npz")
    model = load_pretrained(None, str(weights))
    x = prepare(model, chelsea_jpeg).tensor
    expected = smoothgrad(model, x, 6, samples=4)
    np.testing.assert_allclose(saved["attributions"], expected.attributions[0].numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        saved["single"], class_projection(model, x, 6, "gradient").images[0].numpy(), rtol=1e-5, atol=1e-9
    )
    assert int(saved["target"]) == 6 and float(saved["sigma"]) == pytest.approx(float(expected.sigmas[0]))
    assert (str(saved["method"]), str(saved["statistic"]), int(saved["samples"])) == (
        "gradient",
        "smoothgrad",
        4,
    )
    assert float(saved["noise"]) == 0.15 and int(saved["seed"]) == 0 and "steps" not in saved


def test_the_command_names_its_files_by_statistic_and_method(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    args = [
        "--method",
        "integrated",
        "--statistic",
        "vargrad",
        "--samples",
        "2",
        "--steps",
        "2",
        "--of",
        "score",
    ]
    code, out, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), "--out", str(tmp_path), *args)
    assert code == 0, err
    assert out.splitlines()[0] == str(tmp_path / "chelsea_vargrad_integrated.png")
    saved = np.load(tmp_path / "chelsea_vargrad_integrated.npz")
    assert (saved["attributions"] >= 0).all()  # a variance
    assert int(saved["steps"]) == 2 and str(saved["output"]) == "score" and str(saved["baseline"]) == "black"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "12"], "class 12 is out of range"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--noise", "-1"], "the noise level must be a finite number ≥ 0, not -1.0"),
        (["--statistic", "mean"], "invalid choice: 'mean'"),
        (["--method", "lrp"], "invalid choice: 'lrp'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    capsys, weights, chelsea_jpeg, tmp_path, args, message
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), "--out", str(out), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())
