"""Corrupted training labels (Zhang et al. 2017, §2; ``alexnet.data.labels`` and ``alexnet train --random-labels``):
each label replaced with probability p by a uniform random class, a function of the seed and the file alone;
validation labels kept; the flag checked, recorded and fixed on --resume."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from alexnet.cli import build_parser, main
from alexnet.cli.train import resolve_config
from alexnet.data.folders import ImageFolder
from alexnet.data.labels import corrupt_labels
from alexnet.errors import DataError, TrainingError
from alexnet.train.loop import _check_resumable
from alexnet.train.recipes import resolve_recipe

CLASSES = 10
PER_CLASS = 200


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageNet-layout tree of empty files: labels come from the listing, no image is read."""
    root = tmp_path_factory.mktemp("labels")
    for c in range(CLASSES):
        d = root / "train" / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            (d / f"img{i:04d}.jpg").touch()
    return root


def _labels(dataset: ImageFolder) -> dict[str, int]:
    return {p.name + p.parent.name: t for p, t in dataset.samples}


@pytest.mark.parametrize("p", [0.2, 0.5, 1.0])
def test_each_label_is_replaced_with_probability_p_by_a_uniform_class(folder: Path, p: float) -> None:
    """§2: "independently with probability p, the label of each image is corrupted as a uniform random class".
    A replacement may draw the true class, so a label changes with probability p(1 − 1/C); over 2,000 files
    the count stays within 5 standard deviations of that, and with p = 1 the classes are drawn evenly."""
    dataset = ImageFolder(folder, "train")
    truth = [t for _, t in dataset.samples]
    changed = corrupt_labels(dataset, p, seed=0)
    n = len(truth)
    expected = n * p * (1 - 1 / CLASSES)
    assert abs(changed - expected) <= 5 * math.sqrt(expected * (1 - p * (1 - 1 / CLASSES)))
    assert changed == sum(a != b for a, (_, b) in zip(truth, dataset.samples, strict=True))
    if p == 1.0:
        counts = Counter(t for _, t in dataset.samples)
        assert len(counts) == CLASSES and max(counts.values()) - min(counts.values()) < 0.5 * n / CLASSES


def test_a_files_label_depends_on_the_seed_and_the_file_alone(folder: Path) -> None:
    """The same on every run; unchanged when other files are dropped (the check's bad files) or reordered; a
    new seed draws anew. p = 0 changes nothing."""
    full = ImageFolder(folder, "train")
    corrupt_labels(full, 0.5, seed=3)
    part = ImageFolder(folder, "train")
    part.samples = part.samples[::-3]
    corrupt_labels(part, 0.5, seed=3)
    assert all(_labels(full)[k] == v for k, v in _labels(part).items())
    again, other = ImageFolder(folder, "train"), ImageFolder(folder, "train")
    corrupt_labels(again, 0.5, seed=3)
    corrupt_labels(other, 0.5, seed=4)
    assert again.samples == full.samples and other.samples != full.samples
    untouched = ImageFolder(folder, "train")
    before = list(untouched.samples)
    assert corrupt_labels(untouched, 0.0, seed=3) == 0 and untouched.samples == before
    with pytest.raises(DataError, match=r"must be in \[0, 1\] \(got 1.5\)"):
        corrupt_labels(untouched, 1.5, seed=0)


def test_a_run_trains_on_the_corrupted_labels_and_validates_on_the_true_ones(tmp_path: Path) -> None:
    from alexnet.data.synthetic import ensure_builtin_dataset
    from alexnet.train.config import TrainConfig
    from alexnet.train.data import open_run_data, preprocessing_for

    root = ensure_builtin_dataset(
        tmp_path, classes=4, train_per_class=10, val_per_class=3, size=64, progress=False
    )
    cfg = TrainConfig(model="alexnet", recipe="demo", data=str(root), random_labels=1.0, seed=7)
    pre, _ = preprocessing_for(cfg, 227)
    data = open_run_data(cfg, pre, progress=False)
    truth = ImageFolder(root, "train")
    assert [p for p, _ in data.train.samples] == [p for p, _ in truth.samples]
    assert [t for _, t in data.train.samples] != [t for _, t in truth.samples]
    assert data.val.samples == ImageFolder(root, "val").samples


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_a_fraction_outside_0_to_1_is_one_line_with_exit_code_2(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), f"--random-labels={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"alexnet: error: the fraction of random labels must be in [0, 1] (got {float(value)})"
    assert not out.exists()


def test_the_fraction_is_recorded_and_a_new_one_on_resume_is_refused(tmp_path: Path) -> None:
    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--random-labels", "0.5"])
    cfg = resolve_config(args)
    assert cfg.random_labels == 0.5 and cfg.to_dict()["random_labels"] == 0.5
    saved = resolve_recipe("krizhevsky2012", out=str(tmp_path)).to_dict()
    with pytest.raises(TrainingError, match=r"the run was trained with --random-labels 0\.0, not 0\.5"):
        _check_resumable(cfg, {"config": saved})
    del saved["random_labels"]  # a checkpoint from before the flag trained on the true labels
    with pytest.raises(TrainingError, match=r"with --random-labels 0\.0, not 0\.5"):
        _check_resumable(cfg, {"config": saved})
