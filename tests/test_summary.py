"""Per-layer parameters / computation, computed from the model, agree with published figures and FlopCounterMode."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import alexnet
from alexnet.analysis import summarize


def _conv(side: int, out: int, kernel: int, inputs: int, groups: int = 1) -> int:
    """MACs of a conv layer from the paper's table: output side² × maps × (kernel² × input maps per group)."""
    return side * side * out * kernel * kernel * inputs // groups


FC = 9216 * 4096 + 4096 * 4096 + 4096 * 1000  # fc6 (256·6·6 inputs), fc7, fc8

# The layer tables written out: AlexNet §3.5 / Fig. 2 (two towers: conv2, 4, 5 see half the maps), ZFNet Fig. 3,
# torchvision's single-tower 64-192-384-256-256. Independent of the code under test.
PAPER_MACS = {
    "alexnet": _conv(55, 96, 11, 3)
    + _conv(27, 256, 5, 96, 2)
    + _conv(13, 384, 3, 256)
    + _conv(13, 384, 3, 384, 2)
    + _conv(13, 256, 3, 384, 2)
    + FC,
    "zfnet": _conv(110, 96, 7, 3)
    + _conv(26, 256, 5, 96)
    + _conv(13, 384, 3, 256)
    + _conv(13, 384, 3, 384)
    + _conv(13, 256, 3, 384)
    + FC,
    "alexnet_owt": _conv(55, 64, 11, 3)
    + _conv(27, 192, 5, 64)
    + _conv(13, 384, 3, 192)
    + _conv(13, 256, 3, 384)
    + _conv(13, 256, 3, 256)
    + FC,
}


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_macs_are_the_sum_over_the_papers_layer_table(name):
    assert summarize(alexnet.create_model(name)).totals["macs"] == PAPER_MACS[name]


def test_torchvision_alexnet_is_the_published_0_714_gmac():
    s = summarize(alexnet.create_model("alexnet_owt"))
    assert PAPER_MACS["alexnet_owt"] == 714_188_480 and round(s.totals["macs"] / 1e9, 3) == 0.714
    assert s.totals["params"] == 61_100_840


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


@pytest.mark.parametrize(
    ("model", "layer", "unit", "box"),
    [
        # AlexNet conv1, 11×11 stride 4, no padding: unit r sees input rows 4r … 4r+10
        ("alexnet", "conv1", (0, 0), (0, 0, 11, 11)),
        ("alexnet", "conv1", (3, 5), (12, 20, 23, 31)),
        # pool1 3×3/2 over conv1: conv1 units 2r … 2r+2, i.e. input rows 8r … 8r+18
        ("alexnet", "pool1", (2, 1), (16, 8, 35, 27)),
        # conv2 5×5, padding 2, over pool1: pool1 units r-2 … r+2, i.e. input rows 8r-16 … 8r+34
        ("alexnet", "conv2", (5, 4), (24, 16, 75, 67)),
        ("alexnet", "conv2", (0, 0), (0, 0, 35, 35)),  # clipped at the image's edge (227)
        # ZFNet conv1 7×7 stride 2, padding 1 (Fig. 3: 224 → 110): unit r sees input rows 2r-1 … 2r+5
        ("zfnet", "conv1", (10, 0), (19, 0, 26, 6)),
    ],
)
def test_receptive_field_boxes_are_the_hand_derived_input_windows(model, layer, unit, box):
    from alexnet.analysis.summary import receptive_fields

    net = alexnet.create_model(model)
    field = receptive_fields(net)[layer]
    assert field.box(*unit, net.default_input_size) == box


def test_neurons_per_layer_are_alexnet_section_3_5s_and_about_650_000():
    """§3.5: "the number of neurons in the network's remaining layers is given by 253,440–186,624–64,896–64,896–
    43,264–4096–4096–1000", and the abstract's "650,000 neurons". conv1's 55×55×96 maps hold 290,400 neurons: the
    paper's 253,440 does not match its own Fig. 2 (a known slip); every later layer matches exactly."""
    s = summarize(alexnet.create_model("alexnet"))
    rows = {r.name: r for r in s.layers}
    neurons = [
        math.prod(rows[n].output_shape)
        for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    ]
    assert neurons[1:] == [186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000]
    assert neurons[0] == 55 * 55 * 96 == 290_400
    assert sum(neurons) == 659_272  # "650,000 neurons"
