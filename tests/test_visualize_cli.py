"""``alexnet visualize <kind>``: every kind writes its files; bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.weights import save_weights


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run folder (model.safetensors + two checkpoints), two photographs, a tiny data set."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("vis")
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet_owt")
    run = root / "run"
    save_weights(model, run / "model.safetensors")
    (run / "checkpoints").mkdir()
    for step in (5, 9):
        torch.save({"model": model.state_dict(), "step": step}, run / "checkpoints" / f"step-{step:08d}.pt")
    images = []
    for name in ("chelsea", "coffee", "astronaut"):
        path = root / f"{name}.jpg"
        Image.fromarray(getattr(skimage.data, name)()).save(path, quality=90)
        images.append(path)
        folder = root / "data" / "train" / name
        folder.mkdir(parents=True)
        Image.fromarray(getattr(skimage.data, name)()).save(folder / "a.png")
    (root / "data" / "val").symlink_to(root / "data" / "train")
    text = root / "notes.jpg"
    text.write_text("not an image")
    return {
        "root": root,
        "run": run,
        "img": images[0],
        "img2": images[1],
        "data": root / "data",
        "text": text,
    }


def _run(capsys, args: list[str]) -> tuple[int, list[str], str]:
    try:
        code = main(["visualize", *args])
    except SystemExit as e:  # argparse's own errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, [line for line in out.splitlines() if line], err


def _kind_args(kind: str, s: dict[str, Path]) -> list[str]:
    run = ["--run", str(s["run"])]
    img = [str(s["img"])]
    return {
        "activations": [*run, *img, "--all", "--stage", "pool", "--top", "16"],
        "filters": [*run, *img],
        "deconv": [*run, *img, "--layer", "pool2", "--channel", "3", "--unit", "4,4"],
        "top9": [
            *run,
            "--data",
            str(s["data"]),
            "--layer",
            "conv5",
            "--channels",
            "0,2-3",
            "--batch-size",
            "2",
        ],
        "occlusion": [*run, *img, "--size", "64", "--stride", "40"],
        "evolution": [*run, *img, "--layer", "conv3", "--channels", "0,1"],
        "invariance": [*run, *img],
        "retrieval": [*run, *img, "--data", str(s["data"]), "--neighbours", "2"],
    }[kind]


KINDS = ["activations", "filters", "deconv", "top9", "occlusion", "evolution", "invariance", "retrieval"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_writes_pngs_and_numbers(kind: str, setup, capsys, tmp_path: Path) -> None:
    code, lines, err = _run(capsys, [kind, *_kind_args(kind, setup), "--out", str(tmp_path)])
    assert code == 0, err
    paths = [Path(line) for line in lines]
    assert paths and all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert any(p.suffix == ".png" for p in paths)
    assert any(p.suffix in (".npz", ".json") for p in paths)
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_deconv_rules_write_side_by_side_and_record_their_rule(setup, capsys, tmp_path: Path) -> None:
    """--rule gradient / guided write next to the deconvnet's files, not over them; the .npz names the rule."""
    args = ["deconv", *_kind_args("deconv", setup), "--out", str(tmp_path)]
    written: dict[str, np.ndarray] = {}
    for rule in ("deconvnet", "gradient", "guided"):
        code, lines, err = _run(capsys, [*args, "--rule", rule])
        assert code == 0, err
        (npz,) = [Path(line) for line in lines if line.endswith(".npz")]
        assert npz.name == f"chelsea_pool2_ch3_unit4-4_{'deconv' if rule == 'deconvnet' else rule}.npz"
        with np.load(npz) as z:
            assert str(z["rule"]) == rule
            written[rule] = z["projection"]
    assert len(list(tmp_path.glob("*projection.png"))) == 3
    assert not np.allclose(written["deconvnet"], written["guided"])
    code, _, err = _run(capsys, [*args, "--rule", "saliency"])
    assert code == 2 and "invalid choice: 'saliency'" in err


def test_deconv_of_the_class_scores_projects_a_class_through_the_classifier(
    setup, capsys, tmp_path: Path
) -> None:
    """--layer fc8: a class (default the top one) by each rule; the gradient's figure adds Simonyan et al.'s
    saliency map (§3.1), the largest magnitude over colours, kept in the .npz with the class's score."""
    from alexnet.visualize.deconvnet import class_projection

    model = alexnet.create_model("alexnet_owt", weights=setup["run"] / "model.safetensors").eval()
    x = alexnet.inputs.prepare(model, setup["img"]).tensor.unsqueeze(0)
    top = class_projection(model, x, rule="gradient")
    args = ["deconv", "--run", str(setup["run"]), str(setup["img"]), "--layer", "fc8", "--out", str(tmp_path)]
    code, lines, err = _run(capsys, [*args, "--rule", "gradient"])
    assert code == 0, err
    c = int(top.targets[0])
    assert [Path(line).name for line in lines] == [
        f"chelsea_fc8_class{c}_gradient.png",
        f"chelsea_fc8_class{c}_gradient_projection.png",
        f"chelsea_fc8_class{c}_gradient.npz",
    ]
    with np.load(tmp_path / f"chelsea_fc8_class{c}_gradient.npz") as z:
        np.testing.assert_allclose(z["projection"], top.images[0].numpy(), rtol=1e-5, atol=1e-9)
        np.testing.assert_array_equal(z["saliency"], np.abs(z["projection"]).max(0))
        assert int(z["channel"]) == c and float(z["score"]) == pytest.approx(float(top.scores[0]), rel=1e-5)
    code, lines, err = _run(capsys, [*args, "--rule", "guided", "--channel", "7"])
    assert code == 0, err
    with np.load(tmp_path / "chelsea_fc8_class7_guided.npz") as z:
        assert "saliency" not in z and str(z["rule"]) == "guided" and int(z["channel"]) == 7


def test_deconv_of_a_classifier_unit_projects_it_through_the_classifier_first(
    setup, capsys, tmp_path: Path
) -> None:
    """--layer relu7: each image's strongest unit by default (a chosen one with --channel), its projection the
    library's ``deconvnet`` of that unit; named like a feature map's, with no unit."""
    from alexnet.models.capture import capture
    from alexnet.visualize.deconvnet import deconvnet

    model = alexnet.create_model("alexnet_owt", weights=setup["run"] / "model.safetensors").eval()
    x = alexnet.inputs.prepare(model, setup["img"]).tensor.unsqueeze(0)
    strongest = int(capture(model, x, ["relu7"])["relu7"][0].argmax())
    args = [
        "deconv",
        "--run",
        str(setup["run"]),
        str(setup["img"]),
        "--layer",
        "relu7",
        "--out",
        str(tmp_path),
    ]
    code, lines, err = _run(capsys, args)
    assert code == 0, err
    npz = tmp_path / f"chelsea_relu7_ch{strongest}_deconv.npz"
    assert str(npz) in lines
    with np.load(npz) as z:
        expected = deconvnet(model, x, "relu7", strongest)[0].numpy()
        np.testing.assert_allclose(z["projection"], expected, rtol=1e-5, atol=1e-7 * np.abs(expected).max())
        assert z["unit"].size == 0 and int(z["channel"]) == strongest and np.abs(expected).max() > 0
    code, lines, err = _run(capsys, [*args, "--channel", "5", "--rule", "guided"])
    assert code == 0, err
    assert str(tmp_path / "chelsea_relu7_ch5_guided.npz") in lines


def test_top9_json_lists_nine_per_channel_and_resume_reuses_the_state(setup, capsys, tmp_path: Path) -> None:
    import json

    args = [
        "top9",
        "--run",
        str(setup["run"]),
        "--data",
        str(setup["data"]),
        "--layer",
        "pool1",
        "--channels",
        "1",
    ]
    code, _, err = _run(capsys, [*args, "--out", str(tmp_path)])
    assert code == 0, err
    data = json.loads((tmp_path / "top9" / "pool1" / "top9.json").read_text())
    assert data["images_seen"] == 3 and len(data["channels"]) == 64
    assert all(len(c["top"]) == 3 for c in data["channels"])  # only 3 images in the data set
    code, _, err = _run(capsys, [*args, "--out", str(tmp_path), "--resume"])
    assert code == 0, err
    again = json.loads((tmp_path / "top9" / "pool1" / "top9.json").read_text())
    assert again == data
    with np.load(tmp_path / "top9" / "pool1" / "top9.npz") as z:
        assert z["values"].shape == (64, 9)
    # another rule's grids beside the deconvnet's, from the finished pass (the stream does not depend on it)
    code, lines, err = _run(capsys, [*args, "--out", str(tmp_path), "--resume", "--rule", "guided"])
    assert code == 0, err
    assert [Path(line).name for line in lines] == ["top9.json", "top9.npz", "channel_001_guided.png"]
    assert (tmp_path / "top9" / "pool1" / "channel_001.png").is_file()


def test_top9_resume_with_another_model_or_data_is_one_line_and_overwrites_nothing(
    setup, capsys, tmp_path: Path
) -> None:
    base = ["top9", "--layer", "pool1", "--channels", "0", "--out", str(tmp_path)]
    code, _, err = _run(capsys, [*base, "--run", str(setup["run"]), "--data", str(setup["data"])])
    assert code == 0, err
    folder = tmp_path / "top9" / "pool1"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    attempts = [
        (["--model", "zfnet", "--data", str(setup["data"])], "model alexnet_owt, not zfnet"),
        (["--model", "alexnet_owt", "--data", str(setup["data"])], "weights"),  # untrained: other weights
        (["--run", str(setup["run"]), "--data", str(setup["data"] / "val" / "coffee")], "images"),
    ]
    for extra, message in attempts:
        code, lines, err = _run(capsys, [*base, *extra, "--resume"])
        assert code == 2 and not lines
        assert err.count("\n") == 1 and "cannot resume" in err and message in err, err
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


BAD = [
    (["deconv", "--layer", "conv9"], "valid layers"),
    (["deconv", "--layer", "fc9"], "valid layers"),
    (["deconv", "--layer", "fc7", "--unit", "0,0"], "fc7 has no map to take a unit of"),
    (["deconv", "--layer", "relu6", "--channel", "4096"], "channel 4096 is out of range for relu6 (0–4095)"),
    (["deconv", "--layer", "fc8", "--channel", "1000"], "class 1000 is out of range (0–999)"),
    (["deconv", "--layer", "fc8", "--unit", "1,1"], "its units are the classes (--channel)"),
    (["deconv", "--layer", "conv5", "--channel", "256"], "out of range"),
    (["deconv", "--layer", "conv5", "--channel", "1", "--unit", "13,0"], "outside"),
    (["deconv", "--unit", "x"], "ROW,COL"),
    (["activations", "--layer", "norm9"], "valid layers"),
    (["occlusion", "--stride", "0"], "at least 1"),
    (["top9", "--data", "DATA", "--channels", "300"], "out of range"),
    (["top9", "--data", "DATA", "--channels", "5-2"], "reversed channel range '5-2'"),
    (["top9", "--data", "DATA", "--channels", "0,,1"], "expected channels like"),
    (["top9", "--data", "DATA", "--split", "nosplit"], "no split 'nosplit'"),
    (["retrieval", "--data", "DATA", "--split", "nosplit"], "(found: train, val)"),
    (["activations", "--all", "--stage", "norm"], "alexnet_owt has no norm layers"),
    (["activations", "--stage", "pool"], "--stage applies only with --all"),
    (["activations", "--all", "--layer", "conv2"], "--layer or --all"),
    (["deconv", "--unit", "13,0"], "outside"),
    (["top9", "--data", "DATA", "--workers", "-1"], "--workers must be at least 0"),
    (["retrieval", "--data", "DATA", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["deconv", "--device", "gpu"], "unknown device 'gpu'"),
    (["occlusion", "--device", "cuda:99"], "'cuda:99'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD)
def test_bad_input_is_one_line_and_exit_code_2(
    extra: list[str], message: str, setup, capsys, tmp_path
) -> None:
    kind, *rest = extra
    rest = [str(setup["data"]) if a == "DATA" else a for a in rest]
    images = [] if kind == "top9" else [str(setup["img"])]
    code, _, err = _run(capsys, [kind, "--run", str(setup["run"]), *images, *rest, "--out", str(tmp_path)])
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_a_non_image_file_is_one_line_and_exit_code_2(setup, capsys, tmp_path: Path) -> None:
    for kind in ("activations", "deconv", "occlusion"):
        code, _, err = _run(
            capsys, [kind, "--run", str(setup["run"]), str(setup["text"]), "--out", str(tmp_path)]
        )
        assert code == 2 and err.count("\n") == 1 and "not an image" in err


@pytest.mark.parametrize("kind", ["activations", "deconv", "filters", "invariance"])
def test_a_bad_image_after_good_ones_stops_the_command_before_it_writes_anything(
    kind: str, setup, capsys, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    images = [str(setup["img"]), str(setup["img2"]), str(setup["text"])]
    code, _, err = _run(capsys, [kind, "--run", str(setup["run"]), *images, "--out", str(out)])
    assert code == 2 and err.count("\n") == 1 and "notes.jpg: not an image" in err
    assert not out.exists()


def test_missing_run_and_weights_is_one_line(setup, capsys, tmp_path: Path) -> None:
    code, _, err = _run(capsys, ["filters", "--run", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2 and "model.safetensors" in err and err.count("\n") == 1


def test_channel_lists_parse_in_order_once_and_refuse_what_selects_nothing() -> None:
    import argparse

    from alexnet.cli.visualize import _channels

    assert _channels("0,5,10-12") == [0, 5, 10, 11, 12]
    assert _channels(" 3, 1-3,3") == [3, 1, 2]  # order kept, each channel once
    assert _channels("7-7") == [7]
    for bad in ("5-2", "", "0,,1", "0,", "a", "-3", "1-2-3", "1.5", "0-999999999"):
        with pytest.raises(argparse.ArgumentTypeError):
            _channels(bad)


def test_images_with_the_same_name_get_distinct_outputs_with_their_own_content(
    setup, capsys, tmp_path: Path
) -> None:
    """``a/chelsea.jpg`` and ``b/chelsea.jpg`` (different pictures) must not overwrite each other's files."""
    import shutil

    from alexnet.inputs import prepare
    from alexnet.models.capture import capture
    from alexnet.weights import load_pretrained

    first, second = tmp_path / "a" / "chelsea.jpg", tmp_path / "b" / "chelsea.jpg"
    for src, dst in ((setup["img"], first), (setup["img2"], second)):
        dst.parent.mkdir()
        shutil.copy(src, dst)
    run = ["--run", str(setup["run"]), str(first), str(second)]
    out = tmp_path / "out"
    code, lines, err = _run(capsys, ["activations", *run, "--layer", "conv1", "--out", str(out)])
    assert code == 0, err
    assert len(set(lines)) == len(lines) == 6 and all(Path(line).is_file() for line in lines)
    maps = [Path(line) for line in lines if line.endswith("_activations.npz")]
    assert [p.name for p in maps] == ["chelsea_1_activations.npz", "chelsea_2_activations.npz"]
    model = load_pretrained(None, str(setup["run"] / "model.safetensors"))
    for path, image in zip(maps, (first, second), strict=True):
        want = capture(model, prepare(model, image).tensor.unsqueeze(0), ["conv1"])["conv1"][0]
        with np.load(path) as z:
            np.testing.assert_allclose(z["conv1"], want.numpy(), rtol=1e-4, atol=1e-4)
    code, lines, err = _run(capsys, ["deconv", *run, "--layer", "pool1", "--channel", "2", "--out", str(out)])
    assert code == 0, err
    assert len(set(lines)) == len(lines) == 6 and all(Path(line).is_file() for line in lines)
    recorded = []
    for line in lines:
        if line.endswith(".npz"):
            with np.load(line) as z:
                recorded.append(str(z["image"]))
    assert recorded == [str(first), str(second)]


def test_deconv_unit_without_channel_projects_the_channel_strongest_at_that_unit(
    setup, capsys, tmp_path: Path
) -> None:
    from alexnet.inputs import prepare
    from alexnet.models.capture import capture
    from alexnet.weights import load_pretrained

    model = load_pretrained(None, str(setup["run"] / "model.safetensors"))
    acts = capture(model, prepare(model, setup["img"]).tensor.unsqueeze(0), ["relu2"])["relu2"][0]
    row, col = 3, 20
    assert acts[:, row, col].max() > 0
    want = int(acts[:, row, col].argmax())
    assert want != int(acts.flatten(1).amax(1).argmax())  # the case that picked a map dark at the unit
    args = [
        "deconv",
        "--run",
        str(setup["run"]),
        str(setup["img"]),
        "--layer",
        "relu2",
        "--out",
        str(tmp_path),
    ]
    code, lines, err = _run(capsys, [*args, "--unit", f"{row},{col}"])
    assert code == 0, err
    npz = Path(next(line for line in lines if line.endswith(".npz")))
    assert npz.name == f"chelsea_relu2_ch{want}_unit{row}-{col}_deconv.npz"
    with np.load(npz) as z:
        assert int(z["channel"]) == want and z["unit"].tolist() == [row, col] and str(z["layer"]) == "relu2"
        assert np.abs(z["projection"]).max() > 0
    # The whole map of that channel is another file: runs with and without --unit do not overwrite each other.
    code, whole, err = _run(capsys, [*args, "--channel", str(want)])
    assert code == 0, err
    assert not set(whole) & set(lines)
    with np.load(next(line for line in whole if line.endswith(".npz"))) as z:
        assert z["unit"].size == 0 and int(z["channel"]) == want


def test_every_visualize_option_has_help_and_states_its_default() -> None:
    import argparse

    from alexnet.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    visualize = sub.choices["visualize"]
    kinds = next(a for a in visualize._actions if isinstance(a, argparse._SubParsersAction))
    for kind, p in kinds.choices.items():
        for action in p._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            name = f"visualize {kind} {action.option_strings[0]}"
            assert action.help, f"{name} has no help"
            if action.default not in (None, False):
                assert "default" in action.help, f"{name}: the help does not state its default"


def test_evolution_follows_a_run_that_has_not_finished_while_the_other_kinds_ask_for_its_final_weights(
    setup, capsys, tmp_path: Path
) -> None:
    from test_train_support import fake_run_checkpoint

    run = tmp_path / "run"
    for step in (3, 6):
        fake_run_checkpoint(run, step)
    args = [
        "--run",
        str(run),
        str(setup["img"]),
        "--layer",
        "conv2",
        "--channels",
        "0",
        "--out",
        str(tmp_path),
    ]
    code, lines, err = _run(capsys, ["evolution", *args])
    assert code == 0, err
    record = json.loads(next(Path(p) for p in lines if p.endswith(".json")).read_text())
    assert record["snapshots"] == ["step 3", "step 6"]  # no epoch in these checkpoints
    assert record["rule"] == "deconvnet"
    code, lines, err = _run(capsys, ["evolution", *args, "--rule", "gradient"])
    assert code == 0, err
    assert [Path(line).name for line in lines] == [
        f"evolution_conv2_gradient.{e}" for e in ("png", "npz", "json")
    ]
    with (
        np.load(tmp_path / "evolution_conv2_gradient.npz") as z,
        np.load(tmp_path / "evolution_conv2.npz") as d,
    ):
        assert str(z["rule"]) == "gradient" and str(d["rule"]) == "deconvnet"
        assert not np.allclose(z["projections"], d["projections"])
    code, _, err = _run(capsys, ["deconv", "--run", str(run), str(setup["img"]), "--out", str(tmp_path)])
    assert code == 2
    assert f"the run has not finished; `alexnet train --resume --out {run}` finishes it" in err


def test_a_folder_stands_for_its_image_files_and_one_without_any_is_one_line(
    setup, capsys, tmp_path: Path
) -> None:
    import shutil

    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    shutil.copy(setup["img"], photos / "a.jpg")
    shutil.copy(setup["img2"], photos / "more" / "b.jpg")
    (photos / "notes.txt").write_text("left out: not named as an image")
    out = tmp_path / "out"
    code, lines, err = _run(
        capsys, ["activations", "--run", str(setup["run"]), str(photos), "--out", str(out)]
    )
    assert code == 0, err
    assert sorted(Path(p).name for p in lines if p.endswith(".npz")) == [
        "a_activations.npz",
        "b_activations.npz",
    ]
    (tmp_path / "empty").mkdir()
    code, _, err = _run(
        capsys, ["activations", "--run", str(setup["run"]), str(tmp_path / "empty"), "--out", str(out)]
    )
    assert code == 2 and err == f"alexnet: error: {tmp_path / 'empty'}: no image files in this folder\n"
