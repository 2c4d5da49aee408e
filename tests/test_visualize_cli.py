"""``alexnet visualize <kind>``: every kind writes its files; bad input is one line on stderr and exit code 2."""

from __future__ import annotations

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
        "activations": [*run, *img, "--all", "--stage", "norm", "--top", "16"],
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


BAD = [
    (["deconv", "--layer", "conv9"], "valid layers"),
    (["deconv", "--layer", "fc7"], "trunk"),
    (["deconv", "--layer", "conv5", "--channel", "256"], "out of range"),
    (["deconv", "--layer", "conv5", "--channel", "1", "--unit", "13,0"], "outside"),
    (["deconv", "--unit", "x"], "ROW,COL"),
    (["activations", "--layer", "norm9"], "valid layers"),
    (["occlusion", "--stride", "0"], "at least 1"),
    (["top9", "--data", "DATA", "--channels", "300"], "out of range"),
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


def test_missing_run_and_weights_is_one_line(setup, capsys, tmp_path: Path) -> None:
    code, _, err = _run(capsys, ["filters", "--run", str(tmp_path), "--out", str(tmp_path)])
    assert code == 2 and "model.safetensors" in err
