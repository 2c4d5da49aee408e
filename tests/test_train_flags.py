"""Every training value is an `alexnet train` flag; the flags reach the config, and on --resume they take effect."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch

from alexnet.cli import build_parser, main
from alexnet.cli.train import resolve_config
from alexnet.errors import TrainingError
from alexnet.train.config import TrainConfig
from alexnet.train.loop import _check_resumable
from alexnet.train.recipes import resolve_recipe

NEW_FLAGS = [
    "--grad-clip",
    "1.5",
    "--min-lr",
    "1e-5",
    "--plateau-patience",
    "2",
    "--max-reductions",
    "5",
    "--bias-lr-mult",
    "2",
    "--bias-decay-mult",
    "0",
    "--bias-init",
    "0.1",
]
EXPECTED = dict(
    grad_clip=1.5,
    min_lr=1e-5,
    plateau_patience=2,
    max_reductions=5,
    bias_lr_mult=2.0,
    bias_decay_mult=0.0,
    bias_init=0.1,
)


def _train_flags() -> set[str]:
    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    return {s for a in train._actions for s in a.option_strings}


def test_every_training_config_value_has_a_train_flag() -> None:
    flags = _train_flags()
    missing = [f.name for f in fields(TrainConfig) if "--" + f.name.replace("_", "-") not in flags]
    assert missing == []  # model, recipe and out included (--model, --recipe, --out)


def test_clipping_schedule_and_bias_flags_reach_the_training_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["train", "--out", str(tmp_path / "r"), *NEW_FLAGS])
    cfg = resolve_config(args)
    assert {k: getattr(cfg, k) for k in EXPECTED} == EXPECTED


def test_the_new_optimizer_flags_may_change_on_resume_like_the_learning_rate(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    resolve_recipe("krizhevsky2012", out=str(run)).save(run / "config.json")
    optimizer_flags = NEW_FLAGS[: NEW_FLAGS.index("--bias-init")]
    args = build_parser().parse_args(["train", "--resume", "--out", str(run), *optimizer_flags])
    cfg = resolve_config(args)
    expected = {k: v for k, v in EXPECTED.items() if k != "bias_init"}
    assert {k: getattr(cfg, k) for k in expected} == expected
    _check_resumable(cfg, {"config": resolve_recipe("krizhevsky2012", out=str(run)).to_dict()})


def test_a_new_init_on_resume_is_refused_the_weights_began_otherwise(tmp_path: Path) -> None:
    recipe = resolve_recipe("krizhevsky2012", out=str(tmp_path))
    recipe.save(tmp_path / "config.json")
    saved = recipe.to_dict()
    for flags, needle in (
        (["--bias-init", "0.1"], "without --bias-init"),
        (["--init", "kaiming"], "--init paper"),
    ):
        args = build_parser().parse_args(["train", "--resume", "--out", str(tmp_path), *flags])
        with pytest.raises(TrainingError, match=needle):
            _check_resumable(resolve_config(args), {"config": saved})


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--grad-clip", "-1"], "gradient clipping norm must be positive and finite (got -1.0)"),
        (["--grad-clip", "0"], "gradient clipping norm must be positive"),
        (["--min-lr=-1e-3"], "min lr must be >= 0"),
        (["--plateau-patience", "-1"], "plateau patience must be >= 0"),
        (["--max-reductions", "-2"], "max reductions must be >= 0"),
        (["--bias-lr-mult", "-2"], "bias lr mult must be >= 0 and finite"),
        (["--bias-decay-mult", "inf"], "bias decay mult must be >= 0 and finite"),
        (["--bias-init", "nan"], "bias init must be a finite number"),
        (["--recipe", "demo", "--bias-init", "0.1"], "bias init applies to the paper init only"),
    ],
)
def test_a_bad_value_of_a_new_flag_is_one_line_with_exit_code_2(
    flags: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("alexnet: error: ") and needle in err, err
    assert not out.exists()  # refused before the run folder was made


def test_an_unknown_train_flag_points_to_train_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "--grad-clipping", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "alexnet train: error: unrecognized arguments: --grad-clipping 1 (see alexnet train --help)"
    )


def test_bias_init_sets_the_biases_the_paper_init_made_non_zero_and_only_those() -> None:
    from alexnet.train.loop import _fresh_model

    model = _fresh_model(TrainConfig(model="alexnet", bias_init=0.1), num_classes=10)
    biases = {
        name: float(model.layer(name).bias.unique().item()) for name in ("conv1", "conv2", "fc7", "fc8")
    }
    assert biases == {"conv1": 0.0, "conv2": pytest.approx(0.1), "fc7": pytest.approx(0.1), "fc8": 0.0}
    paper = _fresh_model(TrainConfig(model="alexnet"), num_classes=10)
    assert torch.all(paper.layer("conv2").bias == 1.0)  # AlexNet §5 without the flag
    with pytest.raises(TrainingError, match="zfnet's init sets no bias to a non-zero constant"):
        _fresh_model(TrainConfig(model="zfnet", bias_init=0.1), num_classes=10)
    # PyTorch's default init (alexnet_owt) draws every bias at random: no constant to replace, fc8's included
    with pytest.raises(TrainingError, match="alexnet_owt's init sets no bias to a non-zero constant"):
        _fresh_model(TrainConfig(model="alexnet_owt", bias_init=0.1), num_classes=10)


def test_a_resume_message_says_without_stats_not_none() -> None:
    from alexnet.train.loop import _check_resumable

    cfg = TrainConfig(stats="/data/stats.json")
    with pytest.raises(TrainingError) as e:
        _check_resumable(cfg, {"config": {"stats": None}})
    assert str(e.value) == (
        "--resume: the run was trained without --stats, not with --stats /data/stats.json; resume with the same "
        "value, or start a new run"
    )
    with pytest.raises(TrainingError, match=r"trained with --classes 5, not without --classes;"):
        _check_resumable(TrainConfig(), {"config": {"classes": 5}})
    with pytest.raises(TrainingError, match=r"trained with --batch-size 4, not 2;"):
        _check_resumable(TrainConfig(batch_size=2), {"config": {"batch_size": 4}})


def test_amp_training_on_a_cpu_without_bf16_kernels_warns_that_it_runs_emulated(
    tmp_path, monkeypatch, caplog
):
    """An AVX2 CPU: checked with the run's device, before its data."""
    from alexnet.errors import DataError
    from alexnet.models import postops
    from alexnet.train.config import TrainConfig
    from alexnet.train.loop import train

    monkeypatch.setattr(postops, "bf16_supported", lambda: False)
    cfg = TrainConfig(
        model="alexnet", out=str(tmp_path / "run"), device="cpu", amp=True, data=str(tmp_path / "no")
    )
    with caplog.at_level("WARNING", logger="alexnet.train"), pytest.raises(DataError):
        train(cfg, progress=False)
    assert "no bfloat16 kernels in oneDNN" in caplog.text and "emulated" in caplog.text


@pytest.mark.parametrize(
    ("recipe", "model"),
    [("krizhevsky2012", "alexnet"), ("caffe", "bvlc_alexnet"), ("zeiler2013", "zfnet"),
     ("torchvision", "alexnet_owt"), ("demo", "alexnet"), (None, "alexnet")],
)  # fmt: skip
def test_without_model_a_recipe_trains_the_model_its_source_trained(recipe: str | None, model: str) -> None:
    argv = ["train"] + (["--recipe", recipe] if recipe else [])
    cfg = resolve_config(build_parser().parse_args(argv))
    assert cfg.model == model and cfg.out.startswith(f"runs/{model}-{recipe or 'krizhevsky2012'}-")
    chosen = resolve_config(build_parser().parse_args([*argv, "--model", "zfnet_b"]))
    assert chosen.model == "zfnet_b"  # --model still decides
