"""Activation grids and ZF Fig. 7 occlusion maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import alexnet
from alexnet.errors import LayerNotFound, SelectionError
from alexnet.inputs import prepare
from alexnet.models.capture import capture
from alexnet.visualize.activations import (
    activation_grid,
    conv_stage_layers,
    plot_activations,
    plot_all_conv_layers,
    top_channels,
)
from alexnet.visualize.occlusion import occlusion, plot_occlusion


@pytest.fixture(scope="module")
def owt() -> alexnet.models.AlexNetFamily:
    torch.manual_seed(0)
    return alexnet.create_model("alexnet_owt", init="pytorch").eval()


def test_capture_matches_the_full_forward_pass(owt, chelsea) -> None:
    x = prepare(owt, torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()).tensor.unsqueeze(0)
    got = capture(owt, x.repeat(3, 1, 1, 1), ["conv1", "pool5", "fc7", "fc8"], batch_size=2)
    assert got["conv1"].shape == (3, 64, 55, 55)
    assert got["pool5"].shape == (3, 256, 6, 6)
    assert got["fc7"].shape == (3, 4096)
    with torch.inference_mode():
        torch.testing.assert_close(got["fc8"], owt(x.repeat(3, 1, 1, 1)))
        torch.testing.assert_close(got["pool5"], owt.forward_features(x.repeat(3, 1, 1, 1)))


def test_activation_grid_tiles_every_channel_scaled_to_its_own_range() -> None:
    acts = torch.zeros(5, 4, 3)
    for c in range(5):
        acts[c] = torch.arange(12.0).view(4, 3) * (c + 1)  # same pattern, different scale
    grid = activation_grid(acts, ncols=3, pad=1)
    assert grid.shape == (2 * 4 + 1, 3 * 3 + 2)
    first, fifth = grid[0:4, 0:3], grid[5:9, 4:7]
    np.testing.assert_allclose(first, fifth)  # per-channel normalisation removes the scale
    assert first.min() == 0 and first.max() == 1
    assert (grid[5:9, 8:11] == 1.0).all()  # the empty sixth cell is padding colour


def test_top_channels_orders_by_mean_activation() -> None:
    acts = torch.zeros(6, 2, 2)
    acts[4] = 5
    acts[1] = 3
    acts[2, 0, 0] = 1
    assert top_channels(acts, 3).tolist() == [4, 1, 2]
    with pytest.raises(SelectionError):
        top_channels(acts, 0)


def test_activation_figures_render_for_a_photograph(owt, chelsea) -> None:
    img = torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()
    fig = plot_activations(owt, img, "relu2", top=16)
    assert len(fig.axes) == 2
    fig = plot_all_conv_layers(owt, img, top=8)
    assert sum(1 for ax in fig.axes if ax.images) == 6


def test_occlusion_of_the_only_nonzero_region_drops_the_activation(owt) -> None:
    """Occluding zeros with zeros changes nothing; covering the only content gives the blank image's response."""
    image = torch.zeros(3, 224, 224)
    image[:, 96:128, 96:128] = torch.randn(3, 32, 32)  # content in one 32×32 square, 0 (= mean) elsewhere
    r = occlusion(owt, image, size=32, stride=32, batch_size=16, layer="relu5")
    assert r.activation.shape == r.probability.shape == r.label_map.shape == (7, 7)
    blank = capture(owt, torch.zeros(1, 3, 224, 224), ["relu5"])["relu5"][0, r.channel].sum()
    np.testing.assert_allclose(r.activation[3, 3], float(blank), rtol=1e-4, atol=1e-4)
    far = [(0, 0), (0, 6), (6, 0), (6, 6), (1, 5)]
    for i, j in far:
        np.testing.assert_allclose(r.activation[i, j], r.base_activation, rtol=1e-4)
    assert r.activation[3, 3] < r.base_activation
    assert r.target in r.labels and set(np.unique(r.label_map)) <= set(r.labels)


def test_each_occlusion_cell_is_the_model_on_the_image_with_that_square_greyed(owt, chelsea) -> None:
    """ZF §4.2 / Fig. 7, computed independently: for cell (i, j), grey (the mean: 0 after normalisation) the
    size×size square whose top-left pixel is (i·stride, j·stride), run the model, read the target's probability,
    the arg-max class and the followed map's total. Size ≠ stride and off-diagonal cells, so a transposed or shifted
    cell-to-pixel mapping shows."""
    p = prepare(owt, torch.from_numpy(chelsea).permute(2, 0, 1).contiguous())
    image = p.tensor[0] if p.tensor.ndim == 4 else p.tensor
    size, stride = 40, 61
    r = occlusion(owt, image, size=size, stride=stride, batch_size=5, target=281, channel=7)
    assert r.probability.shape == (4, 4) and r.target == 281 and r.channel == 7
    owt.eval()
    for i, j in [(0, 0), (0, 3), (2, 1), (3, 2)]:
        occluded = image.clone()
        occluded[:, i * stride : i * stride + size, j * stride : j * stride + size] = 0.0
        with torch.no_grad():
            probs = owt(occluded[None]).softmax(1)[0]
        relu5 = capture(owt, occluded[None], ["relu5"])["relu5"][0, 7].sum()
        np.testing.assert_allclose(r.probability[i, j], float(probs[281]), rtol=1e-4, atol=1e-7)
        assert r.label_map[i, j] == int(probs.argmax())
        np.testing.assert_allclose(r.activation[i, j], float(relu5), rtol=1e-4, atol=1e-4)


def test_occlusion_follows_the_strongest_map_and_the_top_class_and_plots_fig_7s_panels(owt, chelsea) -> None:
    p = prepare(owt, torch.from_numpy(chelsea).permute(2, 0, 1).contiguous())
    r = occlusion(owt, p.tensor, size=48, stride=44, batch_size=8)
    assert r.activation.shape == (5, 5)
    assert ((r.probability >= 0) & (r.probability <= 1)).all()
    assert r.layer == "relu5"
    # Fig. 7 (b): the map "with the strongest response in the unoccluded image"; (d): the class, by default the
    # unoccluded image's top prediction (its true class is not known here)
    owt.eval()
    with torch.no_grad():
        relu5 = capture(owt, p.tensor.reshape(1, *p.tensor.shape[-3:]), ["relu5"])["relu5"][0]
        top = int(owt(p.tensor.reshape(1, *p.tensor.shape[-3:])).argmax())
    assert r.channel == int(relu5.sum(dim=(1, 2)).argmax()) and r.target == top
    from alexnet.visualize.plot import uint8_to_float

    fig = plot_occlusion(r, uint8_to_float(p.crop))
    assert len([ax for ax in fig.axes if ax.images]) == 4
    titles = [ax.get_title()[:3] for ax in fig.axes if ax.images]
    assert titles == ["(a)", "(b)", "(d)", "(e)"]  # lettered as Fig. 7's columns; (c) is the deconvnet's
    with pytest.raises(SelectionError):
        occlusion(owt, p.tensor, size=500)
    with pytest.raises(SelectionError):
        occlusion(owt, p.tensor, target=1000)


def test_visualisations_refuse_what_the_model_cannot_take_before_any_work() -> None:
    """The model's own InputSizeError (not a shape error deep in conv2d or fc6, nor after an occlusion sweep)."""
    from alexnet.errors import InputSizeError, ModelOptionError
    from alexnet.predict import predict
    from alexnet.visualize.deconvnet import deconvnet

    model = alexnet.create_model("alexnet", num_classes=10, input_size=99).eval()
    with pytest.raises(InputSizeError, match="cannot take a 20×20 image"):
        deconvnet(model, torch.rand(1, 3, 20, 20), "conv5", channel=1)
    with pytest.raises(InputSizeError, match="cannot take a 20×20 image"):
        capture(model, torch.rand(1, 3, 20, 20), ["pool5"])
    with pytest.raises(InputSizeError, match=r"pool5 maps of 2×2 feed fc6.*gives pool5 maps of 4×4"):
        occlusion(model, torch.rand(3, 139, 139), size=60, stride=60)
    with pytest.raises(InputSizeError, match=r"not torch\.uint8"):
        deconvnet(model, torch.zeros(1, 3, 99, 99, dtype=torch.uint8), "conv5", channel=1)
    features = alexnet.create_model("alexnet", num_classes=0, input_size=99)
    with pytest.raises(SelectionError, match="no classifier layer"):
        occlusion(features, torch.rand(3, 99, 99), size=30, stride=30)
    with pytest.raises(ModelOptionError, match="without its classifier layer"):
        predict(features, torch.rand(1, 3, 99, 99))


def test_top_channels_ranks_one_images_channels_not_a_batch() -> None:
    from alexnet.visualize.activations import top_channels

    maps = torch.zeros(4, 5, 5)
    maps[2] = 3.0
    maps[0] = 1.0
    assert top_channels(maps, 2).tolist() == [2, 0]
    with pytest.raises(SelectionError, match=r"one image's maps \(C×H×W\)"):
        top_channels(maps[None], 2)


def test_capture_takes_one_layer_name_and_an_empty_batch() -> None:
    model = alexnet.create_model("alexnet", num_classes=10, input_size=99)
    assert capture(model, torch.rand(2, 3, 99, 99), "conv1")["conv1"].shape == (2, 96, 23, 23)
    empty = capture(model, torch.rand(0, 3, 99, 99), ["conv1", "pool5"])
    assert empty["conv1"].shape == (0, 96, 23, 23) and empty["pool5"].shape == (0, 256, 2, 2)


def test_field_crop_keeps_the_content_where_it_sits_in_the_field() -> None:
    from alexnet.visualize.plot import field_crop

    image = np.arange(10 * 10 * 3, dtype=np.float32).reshape(10, 10, 3)
    tile = field_crop(image, (-2, 7, 4, 13), 6, fill=-1.0)  # 2 rows above, 3 columns right of the image
    assert tile.shape == (6, 6, 3)
    np.testing.assert_array_equal(tile[2:, :3], image[0:4, 7:10])
    assert (tile[:2] == -1).all() and (tile[:, 3:] == -1).all()


@pytest.mark.parametrize("box", [(-60, -60, 135, 135), (-150, -20, 45, 175), (-5, -90, 190, 105)])
def test_a_field_larger_than_the_tile_shows_the_image_it_covers(box) -> None:
    """A 40-px input under a 195-px field (conv5 of a run trained with --input-size 40): the tile is the side×side
    window over the image, not an error."""
    from alexnet.visualize.plot import field_crop

    image = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    tile = field_crop(image, box, 40, fill=-1.0)
    # each field covers the whole image, and the 40-px window centred on it is the image, pixel for pixel
    np.testing.assert_array_equal(tile, image)


def test_a_field_larger_than_the_tile_over_part_of_the_image_keeps_that_part_where_it_sits() -> None:
    from alexnet.visualize.plot import field_crop

    image = np.random.default_rng(1).random((40, 40, 3), dtype=np.float32)
    tile = field_crop(image, (20, 30, 215, 225), 40, fill=-1.0)  # covers rows 20-39 and columns 30-39
    np.testing.assert_array_equal(tile[:20, :10], image[20:, 30:])  # the window starts where the field does
    assert (tile[20:] == -1).all() and (tile[:, 10:] == -1).all()  # the rest is the field beyond the image


def test_a_stage_the_model_lacks_entirely_is_an_error_not_relu_maps(owt) -> None:
    with pytest.raises(
        LayerNotFound, match="alexnet_owt has no norm layers; choose one of: conv, relu, pool"
    ):
        conv_stage_layers(owt, "norm")
    # A stage only some conv stages have: the others show their ReLU output, under its own name.
    assert conv_stage_layers(owt, "pool") == ["pool1", "pool2", "relu3", "relu4", "pool5"]
    lrn = alexnet.create_model("alexnet", init="pytorch")
    assert conv_stage_layers(lrn, "norm") == ["norm1", "norm2", "relu3", "relu4", "relu5"]


def test_written_occlusion_figures_have_fig_7s_five_columns_with_the_followed_maps_projection(
    owt, chelsea, tmp_path
) -> None:
    """ZF Fig. 7 (c): "a visualization of this feature map projected down into the input image": the deconvnet
    projection of the same relu5 map that column (b) follows, from the unoccluded image."""
    import json

    from PIL import Image

    from alexnet.visualize.deconvnet import deconvnet
    from alexnet.visualize.outputs import write_occlusion
    from alexnet.visualize.plot import projection_to_image

    Image.fromarray(chelsea).save(tmp_path / "cat.png")
    written = write_occlusion(owt, [tmp_path / "cat.png"], tmp_path / "out", size=64, stride=80)
    meta = next(p for p in written if p.suffix == ".json")
    channel = json.loads(meta.read_text())["channel"]
    with np.load(next(p for p in written if p.suffix == ".npz")) as z:
        projection = z["projection"]
    expected = deconvnet(owt, prepare(owt, tmp_path / "cat.png").tensor, "relu5", channel)[0]
    np.testing.assert_allclose(projection, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(projection).max() > 0
    r = occlusion(owt, prepare(owt, tmp_path / "cat.png").tensor, size=64, stride=80)
    fig = plot_occlusion(r, np.zeros((224, 224, 3)), projection=projection_to_image(expected))
    assert [ax.get_title()[:3] for ax in fig.axes if ax.images] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
