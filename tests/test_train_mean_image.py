"""AlexNet §2's per-pixel mean image and §4.1's PCA of the user's own data, through training, the weights file,
evaluation and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.data.stats import DataStats, compute_stats
from alexnet.train.config import TrainConfig
from alexnet.train.data import preprocessing_for, train_transform
from alexnet.weights import load_pretrained, read_weights
from test_train_support import TINY, run_cli, tiny_data

TRAIN = ["train", "--model", TINY.name, "--recipe", "demo", "--input-size", "63", "--batch-size", "4"]
TRAIN += ["--workers", "0", "--max-steps", "2", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def stats(data: Path) -> DataStats:
    return compute_stats(data, "train", size=64, progress=False)


def test_data_stats_replace_imagenet_means_and_eigenvectors(stats: DataStats) -> None:
    pre, mean_image = preprocessing_for(TrainConfig(normalize="mean"), 227, stats)
    assert mean_image is None
    assert pre.mean == pytest.approx(tuple(255.0 * m for m in stats.mean_rgb))
    pre, _ = preprocessing_for(TrainConfig(normalize="meanstd"), 227, stats)
    assert pre.mean == pytest.approx(stats.mean_rgb) and pre.std == pytest.approx(stats.std_rgb)
    lighting = next(t for t in train_transform(pre, 0.1, stats=stats).transforms if hasattr(t, "lighting"))
    assert torch.allclose(lighting.lighting.eigval, torch.tensor(stats.eigval, dtype=torch.float32))


def test_normalize_image_subtracts_the_mean_image_at_the_training_resolution(stats: DataStats) -> None:
    pre, mean_image = preprocessing_for(TrainConfig(normalize="image", input_size=99), 227, stats)
    assert pre.mean_image and pre.pixel_scale == 255.0
    assert mean_image is not None and tuple(mean_image.shape) == (3, pre.resize, pre.resize) == (3, 112, 112)
    # 0–255 scale, the data's mean colour on average
    assert mean_image.mean(dim=(1, 2)) == pytest.approx([255.0 * m for m in stats.mean_rgb], rel=0.02)


@pytest.mark.slow
def test_a_mean_image_run_stores_its_mean_image_and_evaluates_and_predicts_with_it(
    tmp_path: Path, data: Path
) -> None:
    run = tmp_path / "run"
    r = run_cli(tmp_path, *TRAIN, "--data", str(data), "--normalize", "image", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert (run / "data_stats.safetensors").is_file()  # computed once, reused on --resume
    _, meta = read_weights(run / "model.safetensors")
    assert meta.preprocessing is not None and meta.preprocessing.mean_image
    mean_image = meta.tensors["mean_image"]
    assert tuple(mean_image.shape) == (3, meta.preprocessing.resize, meta.preprocessing.resize)
    ev = run_cli(tmp_path, "eval", "--run", str(run), "--data", str(data))
    assert ev.returncode == 0, ev.stderr
    # The run's checkpoint loads as weights with the same record (a model not registered in this process; the
    # mean image), and so does one written before checkpoints recorded them, rebuilt from the run's files.
    (checkpoint,) = (run / "checkpoints").glob("step-*.pt")
    state, from_checkpoint = read_weights(checkpoint)
    old = torch.load(checkpoint, weights_only=True)
    for key in ("architecture", "preprocessing", "mean_image"):
        del old[key]
    from alexnet.train.checkpoint import checkpoint_meta
    from test_train_support import register_tiny

    register_tiny()
    for record in (from_checkpoint, checkpoint_meta(old, checkpoint)):
        assert (record.model, record.classes, record.num_classes) == (
            meta.model,
            meta.classes,
            meta.num_classes,
        )
        assert (record.preprocessing, record.config) == (meta.preprocessing, meta.config)
        torch.testing.assert_close(record.tensors["mean_image"], mean_image, rtol=0, atol=0)
    final, _ = read_weights(run / "model.safetensors")
    assert all(torch.equal(state[k], final[k]) for k in final)  # the run ended where its last checkpoint is

    from alexnet.predict import input_transform, predict_files

    model = load_pretrained(None, run / "model.safetensors")
    image = next((data / "val").glob("*/*.jpg"))
    from alexnet.data.images import read_image

    x = input_transform(model)(read_image(image))
    crop = meta.preprocessing.input_size
    off = (meta.preprocessing.resize - crop) // 2
    # the centre of the mean image was subtracted, not a per-channel mean
    raw = input_transform(model).transforms[0](read_image(image))  # resized 3×resize×resize uint8
    raw = raw[:, off : off + crop, off : off + crop].float()
    torch.testing.assert_close(x, raw - mean_image[:, off : off + crop, off : off + crop], rtol=0, atol=1e-3)
    assert len(list(predict_files(model, [image], topk=1))) == 1
    # ZF §4 (Fig. 5)'s invariance inputs use the same mean image: the identity transformation is the evaluation input
    from alexnet.visualize.invariance import transformed_inputs

    same = transformed_inputs(model, read_image(image), "rotation", np.array([0.0]))[0]
    torch.testing.assert_close(same, x, rtol=0, atol=1e-2)


def test_missing_stats_file_is_one_line_and_exit_2(tmp_path: Path, data: Path) -> None:
    r = run_cli(tmp_path, *TRAIN, "--data", str(data), "--stats", str(tmp_path / "nope.safetensors"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "nope.safetensors" in r.stderr
