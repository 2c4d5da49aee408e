"""The papers' architecture ablations (models/ablations.py): removed layers keep the paper's names (AlexNet §7,
ZF Table 3), no LRN (AlexNet §3.3), non-overlapping pooling of equivalent dimensions (AlexNet §3.4), the one-GPU
net (AlexNet §3.2), fc6/fc7 widths (ZF Table 3); the top hidden layer standing in for layer 7; through
`alexnet train`, `eval`, `weights info`, `report`, `visualize` and `summary`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from alexnet.cli import main
from alexnet.errors import ModelOptionError
from alexnet.models import ArchConfig, Conv, ablate, build_model, get_config, removable
from alexnet.weights import load_pretrained, save_weights
from test_train_support import tiny_data


def _meta(config: ArchConfig) -> nn.Module:
    with torch.device("meta"):  # shapes and names only: no memory, no init
        return build_model(config)


def _params(config: ArchConfig) -> int:
    return sum(p.numel() for p in _meta(config).parameters())


def _conv(out: int, in_per_group: int, k: int) -> int:
    return out * in_per_group * k * k + out  # weights + biases


def test_the_paper_models_number_their_layers_1_to_8() -> None:
    for name in ("alexnet", "zfnet", "alexnet_owt"):
        config = get_config(name)
        assert config.conv_numbers() == [1, 2, 3, 4, 5]
        assert config.fc_numbers() == [6, 7, 8]


def test_removing_conv3_and_conv4_keeps_the_paper_names_and_conv5_reads_conv2s_maps() -> None:
    config = ablate(get_config("alexnet"), remove=("conv3", "conv4"))
    model = _meta(config)
    names = model.layer_names()
    assert [n for n in names if n.startswith(("conv", "fc"))] == [
        "conv1",
        "conv2",
        "conv5",
        "fc6",
        "fc7",
        "fc8",
    ]
    assert not {"relu3", "relu4"} & set(names)
    conv5 = model.layer("conv5")
    assert conv5.in_channels == 256 and conv5.groups == 2  # the towers now meet first at fc6 (AlexNet §3.5)
    # the two-tower AlexNet's 60,965,224, less conv3 and conv4, with conv5 reading 128 maps a tower, not 192
    full = get_config("alexnet")
    assert _params(full) == 60_965_224
    expected = 60_965_224 - _conv(384, 256, 3) - _conv(384, 192, 3) - _conv(256, 192, 3) + _conv(256, 128, 3)
    assert _params(config) == expected == 59_268_712
    assert config.ablation == "without conv3, conv4"


def test_without_fc6_and_fc7_pool5_feeds_fc8_directly() -> None:
    """ZF Table 3, "Removed layers 6,7"."""
    config = ablate(get_config("zfnet"), remove=("fc6", "fc7"))
    model = build_model(config).eval()
    assert [n for n in model.layer_names() if n.startswith("fc")] == ["fc8"]
    assert model.layer("fc8").in_features == 256 * 6 * 6
    assert model.num_features == 256 * 6 * 6
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


def test_without_fc7_fc6s_rectified_dropped_output_feeds_fc8() -> None:
    model = _meta(ablate(get_config("alexnet"), remove=["fc7"]))
    assert model.layer_names()[-4:] == ["fc6", "relu6", "drop6", "fc8"]
    assert model.layer("fc8").in_features == 4096


def test_without_lrn_no_norm_layer_is_left_and_no_parameter_changes() -> None:
    """AlexNet §3.3: response normalisation adds no parameters."""
    for name in ("alexnet", "caffenet", "zfnet"):
        config = ablate(get_config(name), lrn=False)
        assert not [n for n in _meta(config).layer_names() if n.startswith("norm")]
        assert _params(config) == _params(get_config(name))


@pytest.mark.parametrize(("name", "size"), [("alexnet", 227), ("caffenet", 227), ("zfnet", 224)])
def test_non_overlapping_pooling_gives_maps_of_equivalent_dimensions(name: str, size: int) -> None:
    """AlexNet §3.4: s = z = 2 "produces output of equivalent dimensions" to s = 2, z = 3."""
    full, ablated = get_config(name), ablate(get_config(name), overlapping_pool=False)
    assert (ablated.pool_kernel, ablated.pool_stride) == (2, 2)

    def pooled(config: ArchConfig) -> list[tuple[int, ...]]:
        model = build_model(config).eval()
        sizes: list[tuple[int, ...]] = []
        for layer in ("pool1", "pool2", "pool5"):
            model.layer(layer).register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
        with torch.no_grad():
            model(torch.randn(1, 3, size, size))
        return sizes

    assert pooled(ablated) == pooled(full)
    assert pooled(full)[-1] == (6, 6)
    assert _params(ablated) == _params(full)


def test_fc_width_resizes_fc6_and_fc7_as_zf_table_3_does() -> None:
    for width in (2048, 8192):
        config = ablate(get_config("zfnet"), fc_width=width)
        model = _meta(config)
        assert (model.layer("fc6").out_features, model.layer("fc7").out_features) == (width, width)
        assert model.layer("fc8").in_features == width
        convs = _params(get_config("zfnet")) - sum(
            p.numel() for n in ("fc6", "fc7", "fc8") for p in _meta(get_config("zfnet")).layer(n).parameters()
        )
        assert _params(config) == convs + (9216 + 1) * width + (width + 1) * width + (width + 1) * 1000


def test_one_tower_is_alexnets_one_gpu_net_of_about_the_same_size() -> None:
    """AlexNet §3.2 and its footnote: half as many kernels in each conv layer but the last, on one GPU, so that
    the two nets have "approximately the same number of parameters"."""
    config = ablate(get_config("alexnet"), one_tower=True)
    model = _meta(config)
    convs = [model.layer(f"conv{i}") for i in range(1, 6)]
    assert [c.out_channels for c in convs] == [48, 128, 192, 192, 256]
    assert all(c.groups == 1 for c in convs)
    expected = (
        (_conv(48, 3, 11) + _conv(128, 48, 5) + _conv(192, 128, 3) + _conv(192, 192, 3) + _conv(256, 192, 3))
        + (9216 + 1) * 4096
        + (4096 + 1) * 4096
        + (4096 + 1) * 1000
    )
    assert _params(config) == expected == 59_798_312  # against the two-tower 60,965,224
    with pytest.raises(ModelOptionError, match="zfnet has one tower already"):
        ablate(get_config("zfnet"), one_tower=True)


def test_the_top_hidden_layer_stands_in_for_layer_7_where_fc7_was_removed() -> None:
    """AlexNet §6.1's "last, 4096-dimensional hidden layer" (retrieval), ZF's layer 7 (invariance,
    correspondence): relu7 in the paper networks, relu6 without fc7, pool5 without fc6 and fc7."""
    from alexnet.visualize.invariance import default_feature_layers

    for remove, relu, fc in (
        ((), "relu7", "fc7"),
        (("fc7",), "relu6", "fc6"),
        (("fc6", "fc7"), "pool5", "pool5"),
    ):
        model = _meta(ablate(get_config("zfnet"), remove=remove))
        assert (model.top_hidden(), model.top_hidden(rectified=False)) == (relu, fc)
        assert default_feature_layers(model) == ("pool1", fc)


def test_retrieval_and_correspondence_read_the_top_hidden_layer_of_a_network_without_fc7(
    tmp_path: Path, chelsea_jpeg: Path
) -> None:
    from PIL import Image

    from alexnet.analysis.features import extract_features
    from alexnet.visualize.correspondence import correspondence
    from alexnet.visualize.retrieval import retrieve

    torch.manual_seed(0)
    model = build_model(ablate(get_config("alexnet"), remove=["fc7"]), num_classes=5).eval()
    result = correspondence(
        model, torch.randn(2, 3, 227, 227), {"eye": [(10, 10), (20, 20)]}, size=16, draws=2
    )
    assert result.layers == ["pool5", "relu6"] and set(result.pairs) == {"pool5", "relu6"}

    mirrored = tmp_path / "mirrored.jpg"
    Image.open(chelsea_jpeg).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    gallery = extract_features(model, [chelsea_jpeg, mirrored])
    assert gallery.layers == ["relu6"] and next(gallery.feature_blocks()).shape == (2, 4096)
    found = retrieve(model, [chelsea_jpeg], gallery, k=2)
    assert found.neighbours[0, 0] == 0 and found.distances[0, 0] < 1e-3  # the image itself, in relu6 space


def test_removed_layers_keep_their_own_paper_init() -> None:
    """AlexNet §5: biases 1 in conv2, conv4, conv5, fc6 and fc7, 0 elsewhere; the layers left keep theirs."""
    model = build_model(ablate(get_config("alexnet"), remove=("conv3", "fc6")))
    for name, bias in (
        ("conv1", 0.0),
        ("conv2", 1.0),
        ("conv4", 1.0),
        ("conv5", 1.0),
        ("fc7", 1.0),
        ("fc8", 0.0),
    ):
        assert torch.all(model.layer(name).bias == bias), name


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(["alexnet", "caffenet", "bvlc_alexnet", "zfnet", "zfnet_b", "alexnet_owt"]),
    chosen=st.sets(st.sampled_from(["conv3", "conv4", "fc6", "fc7"])),
)
def test_removing_any_layers_drops_exactly_their_stages_and_one_at_a_time_is_the_same(
    name: str, chosen: set[str]
) -> None:
    full = get_config(name)
    config = ablate(full, remove=sorted(chosen))
    gone = {n[-1] for n in chosen}  # the stage numbers: conv3 takes relu3 with it, fc7 relu7 and drop7
    kept = [n for n in _meta(full).layer_names() if n[-1] not in gone]
    assert _meta(config).layer_names() == kept
    stepwise = full
    for layer in sorted(chosen):
        stepwise = ablate(stepwise, remove=[layer])
    assert (stepwise.convs, stepwise.fcs) == (config.convs, config.fcs)
    assert (
        ArchConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    )  # as a weights file keeps it


@pytest.mark.parametrize(
    ("name", "options", "needle"),
    [
        ("alexnet", {"remove": ["conv5"]}, "cannot remove conv5 from alexnet: it has its own pooling"),
        ("alexnet", {"remove": ["conv2"]}, "cannot remove conv2"),
        ("alexnet", {"remove": ["fc8"]}, "cannot remove fc8 from alexnet: it is the classifier"),
        ("alexnet", {"remove": ["conv9"]}, "no such layer; removable: conv3, conv4, fc6, fc7"),
        ("alexnet", {"remove": ["fc6", "fc7"], "fc_width": 2048}, "has no hidden fc layer to resize"),
        ("alexnet", {"fc_width": 0}, "fc width must be a whole number ≥ 1"),
        ("alexnet_owt", {"lrn": False}, "alexnet_owt has no response normalisation to remove"),
    ],
)
def test_an_ablation_the_network_cannot_take_is_one_clear_error(
    name: str, options: dict, needle: str
) -> None:
    with pytest.raises(ModelOptionError, match=needle):
        ablate(get_config(name), **options)


def test_a_removal_that_would_leave_groups_unable_to_split_the_maps_is_refused() -> None:
    alexnet = get_config("alexnet")
    odd = alexnet.with_overrides(
        convs=(alexnet.convs[0], Conv(255, 5, padding=2, pool=True), *alexnet.convs[2:])
    )
    with pytest.raises(ModelOptionError, match="conv4's 2 groups cannot split the 255 maps"):
        ablate(odd, remove=["conv3"])


def test_an_unablated_configs_record_has_no_ablation_fields() -> None:
    """Weights files of the registered networks read as before the ablations existed."""
    record = get_config("alexnet").to_dict()
    assert "ablation" not in record and all(
        "number" not in spec for spec in (*record["convs"], *record["fcs"])
    )
    assert ArchConfig.from_dict(record) == get_config("alexnet")
    ablated = ablate(get_config("alexnet"), remove=["conv3"]).to_dict()
    assert ablated["ablation"] == "without conv3" and [c["number"] for c in ablated["convs"]] == [1, 2, 4, 5]


def test_remove_takes_a_comma_separated_string_as_the_command_line_does() -> None:
    assert ablate(get_config("alexnet"), remove="conv3,fc7") == ablate(
        get_config("alexnet"), remove=["conv3", "fc7"]
    )


def test_no_ablation_is_the_registered_config_itself() -> None:
    assert ablate(get_config("alexnet")) is get_config("alexnet")
    assert removable(get_config("zfnet")) == ["conv3", "conv4", "fc6", "fc7"]


def test_an_ablated_model_saves_and_loads_by_its_record(tmp_path: Path) -> None:
    model = build_model(ablate(get_config("alexnet"), remove=("conv4",), lrn=False), num_classes=5)
    path = save_weights(model, tmp_path / "w.safetensors")
    loaded = load_pretrained("alexnet", path)
    assert loaded.layer_names() == model.layer_names()
    assert loaded.config.ablation == "without conv4; no LRN"
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def _alexnet(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's refusals
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_with_an_ablation_records_it_and_every_command_reads_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tiny_data(tmp_path / "data")
    run = tmp_path / "run"
    common = ["--recipe", "demo", "--data", str(data), "--batch-size", "4", "--workers", "0", "-q"]
    flags = ["--remove", "conv4,fc7", "--no-lrn", "--fc-width", "64"]
    code, out, err = _alexnet(capsys, "train", *common, *flags, "--max-steps", "1", "--out", str(run))
    assert code == 0, err
    saved = json.loads((run / "config.json").read_text())
    assert (saved["remove"], saved["lrn"], saved["fc_width"]) == (["conv4", "fc7"], False, 64)
    log = (run / "train.log").read_text()
    assert "--remove conv4,fc7 --no-lrn --fc-width 64: conv1 → conv2 → conv3 → conv5 → fc6 → fc8" in log

    code, out, err = _alexnet(capsys, "weights", "info", str(run / "model.safetensors"))
    assert code == 0 and "ablation:       without conv4, fc7; no LRN; fc6 64 wide" in out
    code, out, err = _alexnet(capsys, "eval", "--run", str(run), "--json", "--workers", "0")
    assert code == 0, err
    assert json.loads(out)["images"] == 3 * 4

    code, out, err = _alexnet(capsys, "report", str(run), "--top9-images", "8", "--quiet")
    assert code == 0, err
    page = (run / "report.html").read_text()
    assert "<title>alexnet (without conv4, fc7; no LRN; fc6 64 wide) — run run</title>" in page
    assert "<th>remove</th><td>conv4,fc7</td>" in page

    # ZF Fig. 5's layer 7 is the top hidden layer of a network without fc7
    code, out, err = _alexnet(
        capsys, "visualize", "invariance", "--run", str(run), str(next((data / "val").rglob("*.jpg"))),
        "--out", str(tmp_path / "inv"),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "inv" / "invariance.json").read_text())["layers"] == ["pool1", "fc6"]

    # resuming with another architecture would load checkpoints into the wrong network
    code, out, err = _alexnet(capsys, "train", "--resume", "--out", str(run), "--remove", "conv4", "-q")
    assert code == 2 and "trained with --remove conv4,fc7, not conv4" in err
    code, out, err = _alexnet(capsys, "train", "--resume", "--out", str(run), "--lrn", "-q")
    assert code == 2 and "trained with --no-lrn, not with --lrn" in err
    code, out, err = _alexnet(capsys, "train", "--resume", "--out", str(run), "--max-steps", "2", *flags)
    assert code == 0, err

    # fine-tuning starts from the weights' own architecture
    code, out, err = _alexnet(
        capsys,
        "train",
        *common,
        "--weights",
        str(run / "model.safetensors"),
        "--remove",
        "conv3",
        "--out",
        str(tmp_path / "ft"),
    )
    assert code == 2 and "--remove conv3 change the architecture of a fresh model" in err
    assert not (tmp_path / "ft").exists()


def test_bad_ablation_flags_are_refused_before_any_data_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-data"
    for flags, needle in (
        (["--remove", "conv5"], "cannot remove conv5 from alexnet"),
        (["--remove", "conv3,,conv4"], "give layer names separated by commas"),
        (["--model", "alexnet_owt", "--no-lrn"], "alexnet_owt has no response normalisation"),
    ):
        code, _, err = _alexnet(capsys, "train", "--data", str(missing), *flags, "--out", str(tmp_path / "r"))
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_summary_tables_the_ablated_network(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _alexnet(capsys, "summary", "alexnet", "--remove", "conv3,conv4", "--json")
    assert code == 0, err
    table = json.loads(out)
    assert table["model"] == "alexnet (without conv3, conv4)"
    assert [r["name"] for r in table["layers"] if r["type"] == "Conv2d"] == ["conv1", "conv2", "conv5"]
    assert sum(r["params"] for r in table["layers"]) == 59_268_712
    code, out, err = _alexnet(capsys, "summary", "alexnet", "--remove", "pool5")
    assert code == 2 and "cannot remove pool5" in err


def test_summary_sets_each_model_beside_its_ablation_with_original(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ZF Table 3's row "removed layers 3, 4" next to ZFNet itself: the removed layers' rows are blank."""
    code, out, err = _alexnet(
        capsys, "summary", "--compare", "zfnet", "--remove", "conv3,conv4", "--with-original"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split("|")[1:] == [
        " zfnet (224)".ljust(36),
        " zfnet (without conv3, conv4) (224)".ljust(35),
    ]
    conv3 = next(line for line in lines if line.startswith("conv3"))
    assert "885,120" in conv3.split("|")[1] and conv3.split("|")[2].strip() == "—"
    params = next(line for line in lines if line.startswith("params"))
    assert [c.strip() for c in params.split("|")[1:]] == ["62,357,608", "59,850,088"]
    code, _, err = _alexnet(capsys, "summary", "zfnet", "--no-lrn", "--with-original")
    assert code == 2 and "use it with --compare" in err


def test_non_overlapping_pooling_asked_of_a_network_that_has_it_is_refused() -> None:
    flat = get_config("alexnet").with_overrides(pool_kernel=2)
    with pytest.raises(ModelOptionError, match="2×2 at stride 2 already"):
        ablate(flat, overlapping_pool=False)
