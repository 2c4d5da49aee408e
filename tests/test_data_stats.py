"""Training-set statistics against numpy (mean image, channel mean/std, RGB covariance eigen-decomposition)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data.images import read_image
from alexnet.data.stats import DataStats, compute_stats, stats_file

SIZE = 48


@pytest.fixture(autouse=True)
def _private_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """Four real photographs (different sizes and aspect ratios) in two classes, plus one broken file."""
    import skimage.data

    photos = {
        "animal": [skimage.data.chelsea(), skimage.data.astronaut()],
        "thing": [skimage.data.coffee(), skimage.data.rocket()],
    }
    for cls, images in photos.items():
        folder = tmp_path / "d" / "train" / cls
        folder.mkdir(parents=True)
        for i, arr in enumerate(images):
            Image.fromarray(arr).save(folder / f"{i}.png" if i else folder / f"{i}.jpg")
    (tmp_path / "d" / "train" / "thing" / "broken.jpg").write_bytes(b"nope")
    return tmp_path / "d"


def numpy_pixels(root: Path) -> np.ndarray:
    """N×S×S×3 float64 in 0–1: the same decode, rescale and centre crop; the statistics are left to numpy."""
    from torchvision.transforms import v2

    t = v2.Compose([v2.Resize(SIZE, antialias=True), v2.CenterCrop(SIZE)])
    files = sorted(p for p in (root / "train").rglob("*") if p.is_file() and p.name != "broken.jpg")
    return np.stack([t(read_image(f, min_side=SIZE)).permute(1, 2, 0).numpy() / 255.0 for f in files]).astype(
        np.float64
    )


def test_statistics_equal_numpys(photo_folder):
    stats = compute_stats(photo_folder, size=SIZE, progress=False)
    px = numpy_pixels(photo_folder)
    assert stats.images == 4 and stats.skipped == 1
    np.testing.assert_allclose(stats.mean_image.permute(1, 2, 0).numpy(), px.mean(0), atol=1e-6)
    flat = px.reshape(-1, 3)
    np.testing.assert_allclose(stats.mean_rgb, flat.mean(0), rtol=1e-6)  # pixels are float32 in the pipeline
    np.testing.assert_allclose(
        stats.std_rgb, flat.std(0, ddof=1), rtol=1e-6
    )  # pixels are float32 in the pipeline
    cov = np.cov(flat.T)
    val, vec = np.linalg.eigh(cov)
    val, vec = val[::-1], vec[:, ::-1]
    np.testing.assert_allclose(stats.eigval, val, rtol=1e-6)
    ours = np.asarray(stats.eigvec)
    np.testing.assert_allclose(np.abs((ours * vec).sum(0)), 1.0, atol=1e-6)  # same axes, up to sign
    np.testing.assert_allclose(
        ours @ np.diag(stats.eigval) @ ours.T, cov, rtol=1e-6
    )  # pixels are float32 in the pipeline
    assert (ours.sum(0) <= 0).all()  # the documented sign convention


def test_max_images_takes_a_fixed_subset(photo_folder):
    a = compute_stats(photo_folder, size=SIZE, max_images=2, progress=False)
    b = compute_stats(photo_folder, size=SIZE, max_images=2, progress=False)
    assert a.images + a.skipped == 2 and a.mean_rgb == b.mean_rgb  # 2 files drawn, broken ones skipped


def test_mean_image_in_the_models_convention_makes_the_mean_patch_zero(photo_folder):
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import eval_transform

    stats = compute_stats(photo_folder, size=SIZE, progress=False)
    caffe = Preprocessing(
        input_size=40,
        resize=SIZE,
        mean_image=True,
        std=(1.0, 1.0, 1.0),
        channel_order="BGR",
        pixel_scale=255.0,
    )
    mean = stats.mean_image_for(caffe)
    assert torch.allclose(mean, stats.mean_image.flip(0) * 255)
    # An image equal to the (rounded) mean comes out ≈ 0 after subtraction, crop and all.
    img = (stats.mean_image * 255).round().to(torch.uint8)
    assert eval_transform(caffe, mean_image=mean)(img).abs().max() <= 0.5 + 1e-4
    assert stats.mean_image_for(Preprocessing(resize=2 * SIZE)).shape == (3, 2 * SIZE, 2 * SIZE)


def test_save_and_load_round_trip(photo_folder, tmp_path):
    stats = compute_stats(photo_folder, size=SIZE, progress=False)
    path = stats.save(tmp_path / "stats.safetensors")
    back = DataStats.load(path)
    assert back.summary() == stats.summary()  # JSON round-trips floats exactly
    assert torch.equal(back.mean_image, stats.mean_image)
    assert json.loads(path.with_suffix(".json").read_text())["images"] == 4


def test_cli_prints_json_and_writes_files(photo_folder, tmp_path, capsys):
    out = tmp_path / "mine"
    assert main(["data-stats", str(photo_folder), "--size", str(SIZE), "--json", "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["images"] == 4 and info["skipped"] == 1 and len(info["eigvec"]) == 3
    assert Path(info["out"]).is_file() and out.with_suffix(".json").is_file()


@pytest.mark.parametrize(
    ("given", "written"), [("s.json", "s"), ("s.safetensors", "s"), ("s", "s"), ("s.v2", "s.v2")]
)
def test_out_names_one_pair_of_files_that_train_stats_reads_by_the_same_name(
    photo_folder, tmp_path, capsys, given, written
):
    out = tmp_path / "out"
    assert main(["data-stats", str(photo_folder), "--size", str(SIZE), "--out", str(out / given)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{written}.json", f"{written}.safetensors"]
    assert stats_file(out / given) == out / f"{written}.safetensors"  # what `train --stats` opens


def test_cli_bad_path_is_one_line_and_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "alexnet.cli", "data-stats", "/no/such/folder"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        "alexnet: error: no data folder /no/such/folder: expected the layout "
        "/no/such/folder/train/<class>/<image files> (e.g. /no/such/folder/train/n01440764/x.JPEG)"
    ]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--split", "val"], "has no 'val' folder"),
        (["--max-images", "0"], "--max-images) must be ≥ 1, not 0"),
        (["--size", "8"], "--size) must be 16–1024 pixels, not 8"),
        (["--size", "x"], "argument --size: invalid int value: 'x'"),
        (["--workers", "-1"], "--workers must be ≥ 0, not -1"),
    ],
)
def test_cli_bad_flags_are_one_line_and_exit_2(photo_folder, args, says, capsys):
    try:
        code = main(["data-stats", str(photo_folder), *args])
    except SystemExit as e:  # argparse's own errors (one line, see cli._common.ArgumentParser)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert says in err
