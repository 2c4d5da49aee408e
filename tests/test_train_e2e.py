"""End to end through the real CLI: train → checkpoint → kill -9 → resume (same losses) → eval; NaN stop.

A tiny registered AlexNet-shaped model (tests/test_train_support.py) on a tiny generated data set keeps it fast;
the pipeline is the real one (JPEG decode, random crops, flips, PCA lighting, dropout, LRN, checkpoints).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from alexnet.train.checkpoint import list_checkpoints, load_checkpoint
from test_train_support import (
    TINY,
    assert_same_losses,
    cli_command,
    register_tiny,
    run_cli,
    step_losses,
    tiny_data,
)

pytestmark = pytest.mark.slow

TRAIN = [
    "train",
    "--model",
    TINY.name,
    "--recipe",
    "demo",
    "--input-size",
    "63",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "-q",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"))


def refused(capsys: pytest.CaptureFixture, *args: str) -> str:
    """stderr of an ``alexnet`` command that must be refused (exit code 2) before it trains: run in this process,
    with the tiny model registered, since a refusal needs no process of its own (each costs seconds of imports)."""
    from alexnet.cli import main

    register_tiny()
    capsys.readouterr()
    assert main(list(args)) == 2
    return capsys.readouterr().err


def test_resume_after_kill_9_reproduces_the_uninterrupted_loss_curve_and_eval_reads_the_run(
    tmp_path: Path, data: Path
) -> None:
    args = [*TRAIN, "--data", str(data), "--epochs", "4", "--checkpoint-every", "3", "--workers", "1"]
    ref = tmp_path / "ref"
    done = run_cli(tmp_path, *args, "--out", str(ref))
    assert done.returncode == 0, done.stderr
    expected = step_losses(ref)
    assert sorted(expected) == list(range(1, 25))  # 24 train images / batch 4 × 4 epochs

    # The same run, killed with SIGKILL as soon as a mid-epoch checkpoint exists, then resumed.
    cut = tmp_path / "cut"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cli_command(tmp_path, *args, "--out", str(cut)), env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while not list_checkpoints(cut) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(list_checkpoints(cut)[-1])
    assert ckpt["step"] < 24 and set(ckpt) >= {"model", "optimizer", "schedule", "rng", "epoch", "in_epoch"}

    resumed = run_cli(tmp_path, "train", "--resume", "--out", str(cut), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_losses(cut, expected)
    assert len(list_checkpoints(cut)) <= 3  # only the last few are kept

    run_files = {p.name for p in cut.iterdir()}
    assert {
        "config.json",
        "metrics.csv",
        "steps.csv",
        "train.log",
        "learning_curve.png",
        "model.safetensors",
    } <= (run_files)
    assert any((cut / "tensorboard").iterdir())
    with (cut / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # one row per evaluation, none duplicated
    # The three logs count epochs alike (from 1): an evaluation's step belongs to its epoch in steps.csv too.
    with (cut / "steps.csv").open() as f:
        step_epoch = {int(r["step"]): int(r["epoch"]) for r in csv.DictReader(f)}
    assert all(step_epoch[int(r["step"])] == int(r["epoch"]) for r in rows)
    assert step_epoch[1] == 1 and step_epoch[6] == 1 and step_epoch[7] == 2  # 6 steps per epoch
    with (cut / "health.csv").open() as f:
        assert all(int(r["epoch"]) == step_epoch[int(r["step"])] for r in csv.DictReader(f))
    assert set(rows[0]) == {
        "epoch", "step", "lr", "train_loss", "val_loss", "val_top1_err", "val_top5_err", "images_per_s",
        "data_wait",
    }  # fmt: skip
    # Both rates are blank only for an evaluation with no training step of its own in this process: the kill
    # can land between an epoch's last checkpoint and its evaluation, which the resumed run then makes at once.
    assert all((r["data_wait"] == "") == (r["images_per_s"] == "") for r in rows)
    assert all(0 <= float(r["data_wait"]) <= 1 for r in rows if r["data_wait"])
    assert sum(bool(r["data_wait"]) for r in rows) >= 3

    ev = run_cli(tmp_path, "eval", "--run", str(cut), "--json", "--workers", "0", "--ten-crop")
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert list(result) == [
        "top1_err", "top5_err", "top1_acc", "top5_acc", "mean_class_acc", "images", "skipped", "complete"
    ]  # fmt: skip
    assert result["images"] == 12 and result["skipped"] == 0
    assert result["top1_err"] == pytest.approx(1 - result["top1_acc"])


def test_non_finite_loss_stops_with_one_line_naming_the_step_and_the_last_checkpoint_survives(
    tmp_path: Path, data: Path
) -> None:
    run = tmp_path / "run"
    ok = run_cli(tmp_path, *TRAIN, "--data", str(data), "--max-steps", "2", "--out", str(run))
    assert ok.returncode == 0, ok.stderr
    assert (run / "health.csv").exists()  # diagnostics are on by default in every run
    good = load_checkpoint(list_checkpoints(run)[-1])
    bad = run_cli(tmp_path, "train", "--resume", "--out", str(run), "--max-steps", "40", "--lr", "1e6", "-q")
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "step" in lines[0] and "Traceback" not in bad.stderr, bad.stderr
    assert re.search(r"\b(conv|relu|norm|pool|fc|drop)\d\b", lines[0]), lines[
        0
    ]  # the first layer where NaN/inf appeared
    last = load_checkpoint(list_checkpoints(run)[-1])
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    assert last["step"] >= good["step"]
    assert "step" in (run / "train.log").read_text().splitlines()[-1]


def test_a_run_from_the_packed_store_trains_exactly_as_one_from_the_files(tmp_path: Path) -> None:
    from alexnet.data.packed import pack, store_dir

    data = tiny_data(tmp_path / "data")
    args = [*TRAIN, "--data", str(data), "--max-steps", "4"]
    files = run_cli(tmp_path, *args, "--out", str(tmp_path / "files"))
    assert files.returncode == 0, files.stderr
    for split in ("train", "val"):
        pack(data, split, progress=False)
    packed = run_cli(tmp_path, *args, "--out", str(tmp_path / "packed"))
    assert packed.returncode == 0, packed.stderr
    assert "decoded from the files" in (tmp_path / "files" / "train.log").read_text()
    assert f"pixels from {store_dir(data, 'train', 256)}" in (tmp_path / "packed" / "train.log").read_text()
    expected = step_losses(tmp_path / "files")
    assert sorted(expected) == [1, 2, 3, 4]
    assert step_losses(tmp_path / "packed") == expected  # the same batches, bit for bit


def test_resume_continues_in_the_folder_given_and_refuses_what_would_change_the_run(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    args = [*TRAIN, "--data", str(data), "--checkpoint-every", "1"]
    assert run_cli(tmp_path, *args, "--max-steps", "2", "--out", str(run)).returncode == 0
    assert json.loads((run / "config.json").read_text())["data"] == str(data.absolute())

    # A copied run continues in the copy; the original is left as it was.
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    resumed = run_cli(tmp_path, "train", "--resume", "--out", str(copy), "--max-steps", "3", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert list_checkpoints(copy)[-1].name == "step-00000003.pt"
    assert list_checkpoints(run)[-1].name == "step-00000002.pt"

    # A changed batch size would skip or repeat images: one line, exit code 2, nothing written.
    before = sorted(p.name for p in (copy / "checkpoints").iterdir())
    changed = refused(capsys, "train", "--resume", "--out", str(copy), "--batch-size", "2", "-q")
    assert changed.strip().splitlines() == [
        "alexnet: error: --resume: the run was trained with --batch-size 4, not 2; resume with the same value, "
        "or start a new run"
    ]
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == before

    # The data may move; data with other images may not (the epoch's order would differ).
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    on_moved = run_cli(
        tmp_path, "train", "--resume", "--out", str(copy), "--data", str(moved), "--max-steps", "4"
    )
    assert on_moved.returncode == 0, on_moved.stderr
    extra = sorted((moved / "train").glob("*/*"))[0]
    shutil.copy(extra, extra.with_name("extra_" + extra.name))
    grown = refused(capsys, "train", "--resume", "--out", str(copy), "--data", str(moved), "--max-steps", "5")
    assert "went over 24 training images, the data now has 25" in grown

    # A new run into a folder that holds one (its checkpoints cleaned up) is refused, not mixed into it.
    shutil.rmtree(run / "checkpoints")
    assert "already holds a run" in refused(capsys, *args, "--max-steps", "1", "--out", str(run))


def test_a_class_subset_trains_and_evaluates_on_those_classes_of_a_larger_val_split(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "two"
    done = run_cli(
        tmp_path, *TRAIN, "--data", str(data), "--classes", "2", "--max-steps", "1", "--out", str(run)
    )
    assert done.returncode == 0, done.stderr
    evaluated = run_cli(tmp_path, "eval", "--run", str(run), "--json", "--workers", "0")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["images"] == 2 * 4  # val has 3 classes of 4 images; the run learnt 2
    too_many = refused(capsys, *TRAIN, "--data", str(data), "--classes", "5", "--out", str(tmp_path / "five"))
    assert "--classes 5: " in too_many and "only 3 class folders" in too_many


def test_a_run_with_random_labels_says_so_and_trains_on_other_labels_from_the_first_step(
    tmp_path: Path, data: Path
) -> None:
    """Zhang et al. 2017, §2: the same seed, images and init, the labels alone replaced: the first step's loss is
    another, and train.log says how many labels changed and that validation keeps the true ones."""
    args = [*TRAIN, "--data", str(data), "--max-steps", "2"]
    true = run_cli(tmp_path, *args, "--out", str(tmp_path / "true"))
    assert true.returncode == 0, true.stderr
    random = run_cli(tmp_path, *args, "--random-labels", "1", "--out", str(tmp_path / "random"))
    assert random.returncode == 0, random.stderr
    assert step_losses(tmp_path / "random")[1] != step_losses(tmp_path / "true")[1]
    log = (tmp_path / "random" / "train.log").read_text()
    note = re.search(
        r"--random-labels 1 \(Zhang et al\. 2017, §2\): (\d+) of 24 training labels replaced", log
    )
    assert note is not None and 0 < int(note[1]) <= 24, log
    assert "the validation labels are the true ones" in log
    assert "random-labels" not in (tmp_path / "true" / "train.log").read_text()
