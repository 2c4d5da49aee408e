"""Filter grids (AlexNet Fig. 3 layout) and the dead / high-frequency statistics of ZF Fig. 6."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import alexnet
from alexnet.errors import SelectionError
from alexnet.inputs import prepare
from alexnet.visualize.filters import (
    colour_fraction,
    conv1_blocks,
    conv2_grid,
    filter_statistics,
    high_frequency_fraction,
    plot_conv1_filters,
    plot_filter_statistics,
    tower_colour,
)


def test_two_tower_models_show_conv1_as_two_blocks_of_48() -> None:
    model = alexnet.create_model("alexnet")
    blocks = conv1_blocks(model)
    assert len(blocks) == 2
    # 48 kernels of 11×11 in 8 columns × 6 rows, 1 px between them.
    assert all(b.shape == (6 * 12 - 1, 8 * 12 - 1, 3) for b in blocks)
    w = model.layer("conv1").weight.detach()
    first, second = w[47], w[48]  # last of tower 1, first of tower 2
    tile47 = blocks[0][5 * 12 : 5 * 12 + 11, 7 * 12 : 7 * 12 + 11]
    tile48 = blocks[1][0:11, 0:11]
    for tile, kernel in ((tile47, first), (tile48, second)):
        expected = kernel.permute(1, 2, 0).numpy()
        expected = (expected - expected.min()) / (expected.max() - expected.min())
        np.testing.assert_allclose(tile, expected, atol=1e-6)


def test_single_tower_models_show_one_block() -> None:
    blocks = conv1_blocks(alexnet.create_model("zfnet"))
    assert len(blocks) == 1 and blocks[0].shape == (8 * 8 - 1, 12 * 8 - 1, 3)
    assert len(plot_conv1_filters(alexnet.create_model("alexnet_owt")).axes) == 1


def test_conv2_grid_has_a_row_per_filter_and_a_column_per_input_channel() -> None:
    grid = conv2_grid(alexnet.create_model("alexnet"), filters=4, inputs=10)
    assert grid.shape == (4 * 6 - 1, 10 * 6 - 1)
    with pytest.raises(SelectionError):
        conv2_grid(alexnet.create_model("alexnet"), filters=[300])


def _cosine(k: int, cycles: int) -> torch.Tensor:
    x = torch.arange(k, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * cycles * x / k)
    return wave.view(1, k).expand(k, k).expand(3, k, k).float()


def test_high_frequency_fraction_on_synthetic_filters() -> None:
    k = 11
    filters = torch.stack(
        [
            torch.ones(3, k, k),  # constant: all energy at DC
            _cosine(k, 1),  # 1/11 cycle per pixel: below 1/8
            _cosine(k, 4),  # 4/11 ≈ 0.36 cycle per pixel: above 1/8, aliases with stride 4
            _cosine(k, 1) + _cosine(k, 4),  # half and half
        ]
    )
    frac = high_frequency_fraction(filters, cutoff=1 / 8)
    np.testing.assert_allclose(frac.numpy(), [0.0, 0.0, 1.0, 0.5], atol=1e-6)


def test_statistics_find_dead_and_never_active_filters(chelsea) -> None:
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet", init="pytorch").eval()
    with torch.no_grad():
        model.layer("conv1").weight[3] = 0.0  # dead by norm
        model.layer("conv1").bias[10] = -1e6  # never active
    image = prepare(model, torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()).tensor.unsqueeze(0)
    stats = filter_statistics(model, "conv1", images=image)
    assert stats.stride == 4 and stats.cutoff == pytest.approx(1 / 8)
    assert np.flatnonzero(stats.dead_by_norm).tolist() == [3]
    assert stats.never_active is not None and 10 in set(np.flatnonzero(stats.never_active).tolist())
    assert stats.summary()["dead_by_norm"] == 1
    conv2 = filter_statistics(model, "conv2")
    assert conv2.cutoff == 0.25 and conv2.high_frequency.shape == (256,)
    assert len(plot_filter_statistics([stats, conv2]).axes) == 2
    with pytest.raises(SelectionError):
        filter_statistics(model, "pool1")


def test_colour_fraction_is_zero_for_grey_kernels_and_one_for_opponent_ones() -> None:
    """AlexNet §6.1 (Fig. 3): GPU 1's kernels "largely color-agnostic", GPU 2's "largely color-specific". Built
    here as the pixels see them (through the per-channel std): tower 1 the same pattern in R, G and B, tower 2 red
    minus green, and one kernel both: grey energy 3‖g‖², colour energy 2‖g‖², so 2/5 of it colour."""
    from alexnet.predict import preprocessing_of

    torch.manual_seed(0)
    model = alexnet.create_model("alexnet")
    std = torch.tensor(preprocessing_of(model).std).view(1, 3, 1, 1)
    g = torch.randn(96, 1, 11, 11)
    grey, opponent = torch.ones(1, 3, 1, 1), torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        w = model.layer("conv1").weight
        w[:48] = g[:48] * grey * std
        w[48:] = g[48:] * opponent * std
        w[95] = (g[95] * (grey + opponent) * std)[0]
    fractions = colour_fraction(model)
    np.testing.assert_allclose(fractions[:48], 0, atol=1e-6)
    np.testing.assert_allclose(fractions[48:95], 1, atol=1e-6)
    assert fractions[95] == pytest.approx(0.4, abs=1e-6)
    towers = tower_colour(model)
    assert towers == pytest.approx([0.0, float(fractions[48:].mean())], abs=1e-6)
    stats = filter_statistics(model, "conv1")
    assert stats.summary()["tower2_colour_fraction"] == pytest.approx(towers[1])
    assert stats.arrays()["colour_fraction"].shape == (96,)
    assert "colour fraction 0.00" in plot_conv1_filters(model).axes[0].get_title()
    assert len(tower_colour(alexnet.create_model("zfnet"))) == 1  # one tower
    assert "colour_fraction" not in filter_statistics(model, "conv2").arrays()


def test_random_kernels_are_two_thirds_colour() -> None:
    """iid weights put a third of their energy in the grey part: the chance level a trained tower is read against."""
    torch.manual_seed(0)
    assert tower_colour(alexnet.create_model("alexnet")) == pytest.approx([2 / 3, 2 / 3], abs=0.02)


@pytest.fixture(scope="module")
def equal_std_alexnet() -> alexnet.models.AlexNetFamily:
    from alexnet.data.preprocess import Preprocessing
    from alexnet.weights import WeightsMeta

    model = alexnet.create_model("alexnet")
    model.weights_meta = WeightsMeta(preprocessing=Preprocessing(std=(0.25, 0.25, 0.25)))
    return model


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), order=st.permutations([0, 1, 2]), scale=st.floats(0.01, 100.0))
def test_colour_fraction_is_a_share_blind_to_channel_order_and_scale(
    equal_std_alexnet: alexnet.models.AlexNetFamily, seed: int, order: list[int], scale: float
) -> None:
    """The grey and colour parts split a kernel's energy: the share lies in [0, 1], and neither the channels'
    order nor the kernel's size changes it (with equal stds, as here)."""
    model = equal_std_alexnet
    with torch.no_grad():
        model.layer("conv1").weight.copy_(
            torch.randn(96, 3, 11, 11, generator=torch.Generator().manual_seed(seed))
        )
    base = colour_fraction(model)
    assert ((base >= 0) & (base <= 1 + 1e-6)).all()
    with torch.no_grad():
        w = model.layer("conv1").weight
        w.copy_(w[:, order] * scale)
    np.testing.assert_allclose(colour_fraction(model), base, rtol=1e-5, atol=1e-6)
