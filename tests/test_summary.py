"""Per-layer parameters / computation, computed from the model, agree with published figures and FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import alexnet
from alexnet.analysis import summarize


def test_torchvision_alexnet_is_0_714_gmac():
    s = summarize(alexnet.create_model("alexnet_owt"))
    assert s.totals["macs"] == pytest.approx(0.714e9, rel=1e-3)
    assert s.totals["params"] == 61_100_840


def test_paper_alexnet_is_about_0_72_gmac():
    s = summarize(alexnet.create_model("alexnet"))
    assert 0.72e9 <= s.totals["macs"] <= 0.73e9


def test_zfnet_is_about_1_17_gmac():
    s = summarize(alexnet.create_model("zfnet"))
    assert s.totals["macs"] == pytest.approx(1170.33e6, rel=0.005)


@pytest.mark.parametrize("name", ["alexnet", "zfnet", "alexnet_owt", "caffenet"])
def test_conv_and_fc_flops_equal_torch_flop_counter(name):
    model = alexnet.create_model(name).eval()
    s = summarize(model)
    ours = sum(r.flops for r in s.layers if r.type in ("Conv2d", "Linear"))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, s.input_size, s.input_size))
    counts = counter.get_flop_counts()["Global"]
    theirs = sum(v for op, v in counts.items() if "conv" in str(op) or "mm" in str(op))
    assert ours == theirs


def test_rows_report_shapes_params_and_memory():
    s = summarize(alexnet.create_model("alexnet"))
    rows = {r.name: r for r in s.layers}
    assert rows["conv1"].output_shape == [96, 55, 55]
    assert rows["conv1"].params == 96 * 3 * 11 * 11 + 96
    assert rows["conv1"].activation_bytes == 96 * 55 * 55 * 4
    assert rows["pool5"].output_shape == [256, 6, 6]
    assert sum(r.params for r in s.layers) == 60_965_224


def test_receptive_fields_and_strides():
    rows = {r.name: r for r in summarize(alexnet.create_model("alexnet_owt")).layers}
    assert (rows["conv1"].receptive_field, rows["conv1"].stride) == (11, 4)
    assert (rows["pool5"].receptive_field, rows["pool5"].stride) == (195, 32)  # torchscan's figure
    z = {r.name: r for r in summarize(alexnet.create_model("zfnet")).layers}
    assert (z["conv1"].receptive_field, z["conv1"].stride) == (7, 2)


def test_parameters_mostly_fc_computation_mostly_conv():
    sp = summarize(alexnet.create_model("alexnet")).split()
    assert sp["fc"]["params_pct"] > 90 and sp["conv"]["macs_pct"] > 90
    assert sp["fc"]["params_pct"] + sp["conv"]["params_pct"] == pytest.approx(100)


def test_elementwise_layers_are_counted():
    rows = {r.name: r for r in summarize(alexnet.create_model("alexnet")).layers}
    assert rows["relu1"].flops == 96 * 55 * 55
    assert rows["norm1"].flops == 96 * 55 * 55 * (5 + 3)
    assert rows["pool1"].flops == 96 * 27 * 27 * 8


def test_other_input_sizes_change_the_counts():
    s227 = summarize(alexnet.create_model("alexnet"), 227)
    s224 = summarize(alexnet.create_model("alexnet"), 224)
    assert s224.layers[0].output_shape == [96, 54, 54]
    assert s224.totals["macs"] < s227.totals["macs"]
