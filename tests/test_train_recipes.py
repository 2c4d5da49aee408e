"""Recipes resolve to the values their sources give, flags override them, and bad input is one clear line."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from alexnet.cli import main
from alexnet.cli.train import _BOOL_FLAGS, _VALUE_FLAGS
from alexnet.errors import TrainingError
from alexnet.train.config import TrainConfig
from alexnet.train.recipes import RECIPES, resolve_recipe


def test_krizhevsky2012_has_the_paper_values() -> None:
    c = resolve_recipe("krizhevsky2012")
    assert (c.optimizer, c.batch_size, c.momentum, c.weight_decay, c.lr) == (
        "paper_sgd",
        128,
        0.9,
        5e-4,
        0.01,
    )
    assert (c.schedule, c.lr_factor, c.max_reductions, c.epochs, c.dropout, c.init) == (
        "plateau",
        0.1,
        3,
        90,
        0.5,
        "paper",
    )


def test_caffe_zeiler_torchvision_recipes() -> None:
    caffe = resolve_recipe("caffe")
    assert (caffe.batch_size, caffe.max_steps, caffe.step_every, caffe.step_unit) == (
        256,
        450_000,
        100_000,
        "iter",
    )
    assert (caffe.bias_lr_mult, caffe.bias_decay_mult) == (2.0, 0.0)
    # bvlc_alexnet's readme: trained "not ... with the relighting data-augmentation"
    assert (caffe.model, caffe.pca_lighting) == ("bvlc_alexnet", 0.0)
    zf = resolve_recipe("zeiler2013")
    assert (zf.lr, zf.momentum, zf.batch_size, zf.dropout, zf.epochs, zf.renorm_rms) == (
        0.01,
        0.9,
        128,
        0.5,
        70,
        0.1,
    )
    tv = resolve_recipe("torchvision")  # the reference's global batch: 32 per GPU on 8 GPUs
    assert (tv.optimizer, tv.lr, tv.weight_decay, tv.step_every, tv.step_unit, tv.epochs, tv.batch_size) == (
        "sgd",
        0.01,
        1e-4,
        30,
        "epoch",
        90,
        256,
    )
    assert tv.pca_lighting == 0.0  # torchvision's reference has no colour augmentation


def test_zeiler2013_trains_on_the_ten_sub_crops_without_colour_augmentation() -> None:
    """ZF §3: "10 different sub-crops of size 224x224 (corners + center with(out) horizontal flips)", and no
    colour augmentation named; the AlexNet recipes keep §4.1's random crops and PCA lighting."""
    from alexnet.data.transforms import CornerCrop
    from alexnet.train.data import preprocessing_for, train_transform

    zf = resolve_recipe("zeiler2013", model="zfnet")
    assert (zf.train_crops, zf.pca_lighting) == ("ten", 0.0)
    pre, _ = preprocessing_for(zf, 224)
    steps = train_transform(pre, zf.pca_lighting, crops=zf.train_crops).transforms
    assert any(isinstance(t, CornerCrop) for t in steps)
    assert all(getattr(t, "lighting", None) is None for t in steps)
    ak = resolve_recipe("krizhevsky2012")
    assert (ak.train_crops, ak.pca_lighting) == ("random", 0.1)
    with pytest.raises(TrainingError, match="train crops must be one of random, ten"):
        resolve_recipe("zeiler2013", train_crops="fixed")


def test_overrides_replace_recipe_values_and_none_keeps_them() -> None:
    c = resolve_recipe("krizhevsky2012", lr=0.05, batch_size=None, epochs=3)
    assert (c.lr, c.batch_size, c.epochs, c.recipe) == (0.05, 128, 3, "krizhevsky2012")


def test_every_recipe_key_and_every_cli_flag_is_a_config_field() -> None:
    names = {f.name for f in fields(TrainConfig)}
    for recipe in RECIPES.values():
        assert set(recipe) <= names
    assert {dest for _, dest, _, _ in _VALUE_FLAGS} <= names
    assert {dest for _, dest, _ in _BOOL_FLAGS} <= names


def test_config_round_trips_through_json(tmp_path: Path) -> None:
    c = resolve_recipe("zeiler2013", model="zfnet", classes=10)
    assert TrainConfig.load(c.save(tmp_path / "config.json")) == c


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": -4}, "batch size"),
        ({"lr": 0.0}, "learning rate"),
        ({"epochs": 0}, "epochs"),
        ({"dropout": 1.5}, "dropout"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"nonsense": 1}, "unknown training option"),
        ({"lr": float("inf")}, "learning rate must be positive and finite"),
        ({"lr": float("nan")}, "learning rate"),
        ({"weight_decay": float("inf")}, "weight decay"),
        ({"lr_factor": -1.0}, "lr factor"),
        ({"lr_factor": float("nan")}, "lr factor"),
        ({"renorm_rms": float("inf")}, "renorm RMS"),
        ({"grad_clip": 0.0}, "gradient clipping"),
    ],
)
def test_bad_values_raise_training_error_naming_the_value(overrides: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        resolve_recipe("krizhevsky2012", **overrides)


def test_unknown_recipe_lists_the_known_ones() -> None:
    with pytest.raises(TrainingError, match="krizhevsky2012"):
        resolve_recipe("adam_lol")


def _one_line_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects a malformed value itself (still one line, code 2)
        code = int(e.code or 0)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["train", "--data", "/nonexistent/data", "--out", "{tmp}/r"], "no data folder"),
        (["train", "--recipe", "nope", "--out", "{tmp}/r"], "unknown recipe"),
        (["train", "--model", "vgg99", "--out", "{tmp}/r"], "unknown model"),
        (["train", "--batch-size", "-2", "--out", "{tmp}/r"], "batch size"),
        (["train", "--epochs", "0", "--out", "{tmp}/r"], "epochs"),
        (["train", "--lr", "abc"], "invalid float"),
        (["train", "--resume", "--out", "{tmp}/empty"], "not a run folder"),
        (["train", "--resume"], "--resume needs --out"),
        (["train", "--device", "cuda:3", "--out", "{tmp}/r"], "CUDA is not available"),
        (["eval", "--data", "{tmp}"], "give --weights FILE or --run DIR"),
        (["eval", "--weights", "{tmp}/missing.safetensors", "--data", "{tmp}"], "no such weights file"),
        (["eval", "--run", "{tmp}", "--data", "{tmp}"], "no model.safetensors"),
        (["eval", "--run", "{tmp}/missing", "--data", "{tmp}"], "missing: no such run folder"),
        (
            ["eval", "--run", "{tmp}/w.safetensors", "--data", "{tmp}"],
            "w.safetensors: a file, not a run folder",
        ),
        (["eval", "--weights", "{tmp}/empty", "--data", "{tmp}"], "empty: a folder, not a weights file"),
        (["eval", "--weights", "x", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_flags_and_paths_give_one_line_and_exit_code_2(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if args[0] == "train" and "--device" not in args and "--data" not in args:
        args += ["--data", str(tmp_path / "no-such-data")] if "--resume" in args else []
    err = _one_line_error(capsys, args)
    assert needle in err


def test_resume_of_a_run_folder_without_checkpoints_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    resolve_recipe("demo", out=str(run)).save(run / "config.json")
    err = _one_line_error(capsys, ["train", "--resume", "--out", str(run)])
    assert "no checkpoint" in err
