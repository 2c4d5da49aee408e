"""Grad-CAM (Selvaraju et al. 2017, §3; ``alexnet.visualize.gradcam`` and ``alexnet visualize gradcam``): Eq. 1's
weights and Eq. 2's map against Captum's ``LayerGradCam`` and against the formulas on captured maps, targets,
the upsampling, the model left alone, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import alexnet
from alexnet.errors import LayerNotFound, SelectionError
from alexnet.models.capture import capture
from alexnet.visualize.deconvnet import class_projection
from alexnet.visualize.gradcam import default_layer, gradcam
from alexnet.weights import WeightsMeta, save_weights
from test_visualize_class_projection import run_visualize


def _model(name: str) -> alexnet.AlexNetFamily:
    """PyTorch's init: the paper's N(0, 0.01) leaves a random network's gradients near the float32 floor."""
    torch.manual_seed(0)
    return alexnet.create_model(name, num_classes=10, init="pytorch").eval()


@pytest.mark.parametrize("name", ["alexnet", "alexnet_owt", "zfnet", "caffenet"])
@pytest.mark.parametrize("layer", ["relu5", "conv3", "pool2"])
def test_grad_cam_is_captums_layer_grad_cam(name: str, layer: str) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    model = _model(name)
    x = torch.randn(2, 3, model.default_input_size, model.default_input_size)
    ours = gradcam(model, x, layer, target=[3, 7])
    theirs = captum_attr.LayerGradCam(model, model.layer(layer)).attribute(
        x, target=[3, 7], relu_attributions=True
    )
    assert ours.maps.shape == theirs[:, 0].shape
    scale = max(float(theirs.detach().abs().max()), 1e-30)
    assert float((ours.maps - theirs[:, 0].detach()).abs().max()) <= 1e-4 * scale


@pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")
@pytest.mark.filterwarnings("ignore:Input Tensor .* did not already require gradients:UserWarning")
@pytest.mark.parametrize("name", ["alexnet", "alexnet_owt", "zfnet", "caffenet"])
@pytest.mark.parametrize("layer", ["relu5", "conv3"])
def test_guided_grad_cam_is_captums_with_bilinear_upsampling(name: str, layer: str) -> None:
    """§3 "Guided Grad-CAM": guided backpropagation × the upsampled map. In float64, where a random zfnet's
    max-pool near-ties cannot part two float32 paths."""
    captum_attr = pytest.importorskip("captum.attr")
    model = _model(name).double()
    x = torch.randn(2, 3, model.default_input_size, model.default_input_size, dtype=torch.float64)
    cam = gradcam(model, x, layer, target=[3, 7], guided=True)
    theirs = (
        captum_attr.GuidedGradCam(model, model.layer(layer))
        .attribute(x, target=[3, 7], interpolate_mode="bilinear")
        .detach()
    )
    ours = cam.guided_gradcam()
    assert ours.shape == theirs.shape == x.shape
    assert float((ours - theirs).abs().max()) <= 1e-10 * float(theirs.abs().max())
    # the product's factors: the same classes' guided backpropagation, and the map at the image's size
    expected = class_projection(model, x, [3, 7], "guided").images
    torch.testing.assert_close(cam.guided, expected)
    torch.testing.assert_close(ours, expected * cam.upsampled(x.shape[-2:])[:, None])


def test_guided_backpropagation_hardly_tells_two_classes_apart() -> None:
    """Selvaraju et al.'s reason for multiplying (§1, Fig. 1 (b) vs (h)): guided backpropagation of two classes is
    nearly the same picture (here > 0.9 correlated for a photograph), which the class's map then localises."""
    import skimage.data

    from alexnet.predict import preprocessing_of

    torch.manual_seed(0)
    model = alexnet.create_model("alexnet").eval()
    photo = torch.from_numpy(np.ascontiguousarray(skimage.data.chelsea())).permute(2, 0, 1)
    x = preprocessing_of(model).eval_transform()(photo)[None]
    cat, other = (class_projection(model, x, c, "guided").images.flatten().numpy() for c in (281, 700))
    assert np.corrcoef(cat, other)[0, 1] > 0.9


@pytest.mark.parametrize(
    ("name", "layer"), [("alexnet", "relu5"), ("zfnet", "conv3"), ("alexnet_owt", "pool2")]
)
def test_with_guided_the_map_from_the_shared_forward_pass_is_the_same_grad_cam(name: str, layer: str) -> None:
    """guided=True takes the maps and their gradient from the guided pass's recorded forward pass (one pass for
    both): the same Eq. 1 weights and Eq. 2 map as the autograd path."""
    model = _model(name)
    x = torch.randn(2, 3, model.default_input_size, model.default_input_size)
    plain, both = gradcam(model, x, layer, [3, 7]), gradcam(model, x, layer, [3, 7], guided=True)
    for field in ("maps", "weights", "scores", "probabilities"):
        ours, ref = getattr(both, field), getattr(plain, field)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()), msg=field)
    assert both.targets.tolist() == plain.targets.tolist() == [3, 7]


def test_guided_grad_cam_needs_the_guided_backpropagation() -> None:
    cam = gradcam(_model("alexnet"), torch.randn(1, 3, 227, 227))
    assert cam.guided is None
    with pytest.raises(ValueError, match="guided=True"):
        cam.guided_gradcam()


def test_the_map_is_eq_2_on_the_layers_own_maps_with_eq_1s_weights() -> None:
    """Eq. 2: ReLU(Σ_k α_k A^k) with A the captured maps; Eq. 1: α the spatial mean of ∂y^c/∂A, here checked by
    a finite difference of the score along one map's direction."""
    model = _model("alexnet")
    x = torch.randn(1, 3, 227, 227)
    cam = gradcam(model, x)
    assert cam.layer == default_layer(model) == "relu5"
    acts = capture(model, x, ["relu5"])["relu5"]
    expected = F.relu((cam.weights[:, :, None, None] * acts).sum(1))
    torch.testing.assert_close(cam.maps, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    # α_k · Z = the score's change per unit added to every element of map k (the head is a function of relu5)
    from alexnet.visualize.gradcam import _head_from

    k, eps = int(cam.weights[0].abs().argmax()), 1e-6  # small: no ReLU of the head may switch
    with torch.no_grad():
        bumped = acts.double().clone()
        bumped[:, k] += eps
        head = model.double()
        try:
            up = _head_from(head, "relu5", bumped)[0, cam.targets[0]]
            base = _head_from(head, "relu5", acts.double())[0, cam.targets[0]]
        finally:
            model.float()
    z = acts.shape[-1] * acts.shape[-2]
    assert float((up - base) / eps / z) == pytest.approx(float(cam.weights[0, k]), rel=1e-3)


def test_the_default_target_is_each_images_top_class_and_one_target_serves_all() -> None:
    model = _model("alexnet")
    x = torch.randn(3, 3, 227, 227)
    with torch.no_grad():
        logits = model(x)
    cam = gradcam(model, x)
    assert torch.equal(cam.targets, logits.argmax(1))
    torch.testing.assert_close(cam.scores, logits.max(1).values, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        cam.probabilities, torch.softmax(logits, 1).max(1).values, rtol=1e-4, atol=1e-6
    )
    assert gradcam(model, x, target=4).targets.tolist() == [4, 4, 4]
    one = gradcam(model, x[1], target=2)  # one unbatched image
    assert one.maps.shape == (1, 13, 13)


def test_upsampling_reaches_the_image_size_bilinearly() -> None:
    model = _model("zfnet")
    cam = gradcam(model, torch.randn(1, 3, 224, 224))
    big = cam.upsampled(224)
    assert big.shape == (1, 224, 224)
    assert (
        float(big.min()) >= float(cam.maps.min()) - 1e-6 and float(big.max()) <= float(cam.maps.max()) + 1e-6
    )


def test_the_model_is_left_as_it_was() -> None:
    model = _model("alexnet").train()
    gradcam(model, torch.randn(1, 3, 227, 227))
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(target=10), SelectionError, r"class 10 is out of range \(0–9\)"),
        (dict(target=[1, 2, 3]), SelectionError, "3 targets for 2 images"),
        (dict(layer="fc7"), LayerNotFound, "not in the convolutional trunk"),
        (dict(layer="conv9"), LayerNotFound, "valid layers"),
    ],
)
def test_a_target_or_layer_the_model_lacks_is_one_clear_error(kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        gradcam(_model("alexnet"), torch.randn(2, 3, 227, 227), **kwargs)


# --- the command ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gradcam") / "model.safetensors"
    save_weights(_model("alexnet"), path, WeightsMeta(classes=[f"class{i}" for i in range(10)]))
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    return run_visualize(capsys, "gradcam", *args)


def test_the_command_writes_the_overlay_and_the_numbers(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    code, out, err = _run(
        capsys, "--weights", str(weights), str(chelsea_jpeg), "--target", "6", "--out", str(tmp_path)
    )
    assert code == 0, err
    assert out.split() == [str(tmp_path / "chelsea_gradcam.png"), str(tmp_path / "chelsea_gradcam.npz")]
    saved = np.load(tmp_path / "chelsea_gradcam.npz")
    assert saved["map"].shape == (13, 13) and saved["upsampled"].shape == (227, 227)
    assert saved["weights"].shape == (256,) and int(saved["target"]) == 6 and str(saved["layer"]) == "relu5"
    assert 0 < float(saved["probability"]) < 1
    assert "guided" not in saved and "guided_gradcam" not in saved


def test_the_command_with_guided_adds_fig_1s_guided_panels_and_their_numbers(
    capsys, weights: Path, chelsea_jpeg: Path, tmp_path
) -> None:
    code, _, err = _run(
        capsys, "--weights", str(weights), str(chelsea_jpeg), "--guided", "--out", str(tmp_path)
    )
    assert code == 0, err
    saved = np.load(tmp_path / "chelsea_gradcam.npz")
    guided, product, heat = saved["guided"], saved["guided_gradcam"], saved["upsampled"]
    assert guided.shape == product.shape == (3, 227, 227) and np.abs(guided).max() > 0
    np.testing.assert_allclose(product, guided * heat[None], rtol=1e-6, atol=1e-12)
    with Image.open(
        tmp_path / "chelsea_gradcam.png"
    ) as png:  # four panels: twice the two-panel figure's width
        assert png.width == 2000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "12"], "class 12 is out of range"),
        (["--layer", "fc6"], "not in the convolutional trunk"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    capsys, weights, chelsea_jpeg, tmp_path, args, message
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, "--weights", str(weights), str(chelsea_jpeg), "--out", str(out), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
