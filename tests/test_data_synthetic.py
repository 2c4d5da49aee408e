"""The built-in shapes data set: ImageNet layout, deterministic bytes, cached, generated atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from alexnet.data.folders import ImageFolder, check_split
from alexnet.data.images import read_image
from alexnet.data.synthetic import (
    SHAPES,
    class_folder_names,
    dataset_dir,
    ensure_builtin_dataset,
    render_image,
)
from alexnet.errors import DataError

SMALL = {"classes": 4, "train_per_class": 5, "val_per_class": 2, "size": 64, "progress": False}


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.jpg"))
    }


def test_builtin_set_has_imagenet_layout_and_counts(tmp_path):
    root = ensure_builtin_dataset(tmp_path, workers=1, **SMALL)
    assert root == dataset_dir(tmp_path, classes=4, train_per_class=5, val_per_class=2, size=64)
    assert root.parent == tmp_path and "s0" in root.name and "p64" in root.name
    for split, count in (("train", 5), ("val", 2)):
        ds = ImageFolder(root, split)
        assert ds.classes == ["00_circle", "01_square", "02_triangle", "03_star"]
        assert len(ds) == 4 * count
        assert check_split(ds, progress=False, cache=False) == []
    image = read_image(next(root.glob("train/01_square/*.jpg")))
    assert image.shape == (3, 64, 64)
    # No half-written temporary folder is left next to the set.
    assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_same_seed_gives_same_bytes_whatever_the_worker_count(tmp_path):
    a = ensure_builtin_dataset(tmp_path / "a", workers=1, **SMALL)
    b = ensure_builtin_dataset(tmp_path / "b", workers=2, **SMALL)
    assert digest(a) == digest(b)
    c = ensure_builtin_dataset(tmp_path / "c", seed=1, workers=1, **SMALL)
    assert c.name != a.name
    da, dc = digest(a), digest(c)
    assert da.keys() == dc.keys() and all(da[k] != dc[k] for k in da)


def test_existing_set_is_reused_not_regenerated(tmp_path):
    root = ensure_builtin_dataset(tmp_path, workers=1, **SMALL)
    first = next(root.glob("val/*/*.jpg"))
    first.write_bytes(b"marker")  # would be overwritten by a regeneration
    assert ensure_builtin_dataset(tmp_path, workers=1, **SMALL) == root
    assert first.read_bytes() == b"marker"


def test_default_location_follows_alexnet_data(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path))
    assert dataset_dir().parent == tmp_path
    monkeypatch.delenv("ALEXNET_DATA")
    assert dataset_dir().parent == Path("~/.cache/alexnet").expanduser()


def test_classes_are_told_apart_by_form_and_rendering_is_seeded():
    names = list(SHAPES)
    assert len(names) == len(set(names)) == 10
    assert class_folder_names(10)[-1] == "09_arrow"
    rng = lambda: np.random.default_rng(7)  # noqa: E731
    a = np.asarray(render_image("star", rng(), 96))
    b = np.asarray(render_image("star", rng(), 96))
    assert a.shape == (96, 96, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(render_image("ring", rng(), 96)))


@pytest.mark.parametrize("bad", [{"classes": 0}, {"classes": 11}, {"train_per_class": 0}, {"size": 8}])
def test_bad_parameters_raise_data_error(tmp_path, bad):
    with pytest.raises(DataError):
        ensure_builtin_dataset(tmp_path, **{**SMALL, **bad})


def test_interrupted_generation_leaves_no_half_set(tmp_path, monkeypatch):
    import alexnet.data.synthetic as synthetic

    calls = {"n": 0}
    real = synthetic.encode_jpeg

    def failing(img):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # e.g. Ctrl-C half-way
        return real(img)

    monkeypatch.setattr(synthetic, "encode_jpeg", failing)
    with pytest.raises(KeyboardInterrupt):
        ensure_builtin_dataset(tmp_path, workers=1, **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither the set nor its temporary folder
    monkeypatch.setattr(synthetic, "encode_jpeg", real)
    root = ensure_builtin_dataset(tmp_path, workers=1, **SMALL)
    assert len(list(root.rglob("*.jpg"))) == 4 * (5 + 2)
