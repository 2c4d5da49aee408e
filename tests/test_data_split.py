"""`alexnet data-split`: a folder of class folders with no train/val split → an ImageNet-layout folder of links,
as Zeiler & Fergus §5.2 split Caltech-101 (N random training images per class, up to M others to test on)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alexnet.cli import main
from alexnet.data.folders import ImageFolder, files_under
from alexnet.data.split import split_folder
from alexnet.errors import DataError

SIZES = {"accordion": 12, "anchor": 7, "ant": 9}


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """Class folders of different sizes (Caltech's are 31–800), one with a sub-folder and a hidden file."""
    root = tmp_path / "101_ObjectCategories"
    for name, n in SIZES.items():
        for i in range(n):
            sub = root / name / ("more" if name == "ant" and i % 3 == 0 else "")
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"image_{i:04d}.jpg").write_bytes(f"{name} {i}".encode())
    (root / "anchor" / ".DS_Store").write_bytes(b"x")
    return root


def _split(out: Path) -> dict[str, dict[str, list[str]]]:
    """split → class → the source files its links point to."""
    return {
        split: {
            c.name: sorted(str(Path(os.path.realpath(f))) for f in files_under(c))
            for c in (out / split).iterdir()
        }
        for split in ("train", "val")
    }


def test_each_class_gets_n_random_training_images_and_up_to_m_others_to_validate_on(
    flat: Path, tmp_path: Path
) -> None:
    out = tmp_path / "caltech"
    summary = split_folder(flat, out, train_per_class=5, val_per_class=3, seed=0)
    got = _split(out)
    for name, n in SIZES.items():
        source = {str(f.resolve()) for f in files_under(flat / name)}
        train, val = set(got["train"][name]), set(got["val"][name])
        assert len(train) == 5 and len(val) == min(3, n - 5) and not train & val
        assert train | val <= source  # links to the class's own files, the hidden one never among them
    assert (summary.classes, summary.train, summary.val) == (3, 15, 8)  # anchor has 7: 5 + 2
    assert (out / "train" / "ant" / "more").is_dir()  # a file's place in its class folder is kept
    # every command reads the result: torchvision's ImageFolder layout
    assert ImageFolder(out, "train", None).classes == sorted(SIZES)
    record = json.loads((out / "split.json").read_text())
    assert (
        record["seed"] == 0
        and record["train_per_class"] == 5
        and record["per_class"]["anchor"]
        == {
            "train": 5,
            "val": 2,
        }
    )


def test_a_class_split_depends_on_the_seed_and_its_name_not_on_the_other_classes(
    flat: Path, tmp_path: Path
) -> None:
    split_folder(flat, tmp_path / "a", train_per_class=4, seed=1)
    split_folder(flat, tmp_path / "b", train_per_class=4, seed=1, exclude=["anchor"])
    split_folder(flat, tmp_path / "c", train_per_class=4, seed=2)
    a, b, c = (_split(tmp_path / x) for x in "abc")
    assert "anchor" not in b["train"] and a["train"]["ant"] == b["train"]["ant"]
    assert a["val"]["accordion"] == b["val"]["accordion"]
    assert a["train"] != c["train"]  # another seed, another split (ZF §5.2 averaged five)


def test_without_a_training_count_a_share_of_each_class_is_held_out(flat: Path, tmp_path: Path) -> None:
    summary = split_folder(flat, tmp_path / "f", val_fraction=0.25)
    assert summary.per_class == {"accordion": (9, 3), "anchor": (5, 2), "ant": (7, 2)}
    summary = split_folder(flat, tmp_path / "v", val_per_class=2, copy=True)
    assert summary.per_class == {"accordion": (10, 2), "anchor": (5, 2), "ant": (7, 2)}
    copied = next((tmp_path / "v" / "val" / "anchor").iterdir())
    assert not copied.is_symlink() and copied.read_bytes().startswith(b"anchor ")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train-per-class", "7"], "class 'anchor' has 7 images: fewer than --train-per-class 7 plus one"),
        (["--val-per-class", "9"], "class 'anchor' has 7 images: fewer than --val-per-class 9 plus one"),
        (["--exclude", "zebra"], "--exclude zebra: no such class folder"),
        (["--val-fraction", "0"], "--val-fraction must be between 0 and 1"),
        (["--val-fraction", "0.2", "--val-per-class", "2"], "give it alone"),
        (["--train-per-class", "0"], "--train-per-class must be at least 1"),
    ],
)
def test_a_split_that_cannot_be_made_is_one_line_and_writes_nothing(
    flat: Path, tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["data-split", str(flat), "--out", str(out), "-q", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["101_ObjectCategories"]


def test_an_existing_output_a_split_folder_or_an_output_inside_the_source_is_refused(
    flat: Path, tmp_path: Path
) -> None:
    split_folder(flat, tmp_path / "done", train_per_class=2)
    with pytest.raises(DataError, match="already exists and is not empty"):
        split_folder(flat, tmp_path / "done", train_per_class=2)
    with pytest.raises(DataError, match="already has train/ and val/ splits"):
        split_folder(tmp_path / "done", tmp_path / "again")
    with pytest.raises(DataError, match="inside"):
        split_folder(flat, flat / "split")


@pytest.mark.parametrize(
    "failure", [KeyboardInterrupt(), OSError(28, "No space left on device")], ids=["ctrl-c", "disk-full"]
)
def test_an_interrupted_or_failed_split_leaves_nothing_behind(
    flat: Path, tmp_path: Path, monkeypatch, failure: BaseException
) -> None:
    from alexnet.errors import OutputError

    made, real = [], os.symlink

    def link_then_stop(src: str, dst: str) -> None:  # stops after four links
        if len(made) == 4:
            raise failure
        made.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "symlink", link_then_stop)
    expected = KeyboardInterrupt if isinstance(failure, KeyboardInterrupt) else OutputError
    with pytest.raises(expected, match=None if expected is KeyboardInterrupt else "No space left on device"):
        split_folder(flat, tmp_path / "out", train_per_class=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["101_ObjectCategories"]  # no partial folder either


def test_the_command_prints_what_it_made_and_names_files_in_no_class_folder(
    flat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (flat / "stray.jpg").write_bytes(b"x")
    assert main(["data-split", str(flat), "--out", str(tmp_path / "c"), "--train-per-class", "5", "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == (
        f"{tmp_path / 'c'}: 3 classes, 15 train / 13 val images (5 / 2–7 per class, seed 0; links to {flat})"
    )
    assert (
        err.strip() == f"alexnet: note: 1 file directly in {flat}, in no class folder, left out (stray.jpg)"
    )
