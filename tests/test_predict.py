"""`alexnet predict` and `alexnet.predict.predict_files`: folders of images, batches, JSON, stopping early."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet
from alexnet.cli import main
from alexnet.errors import ImageError
from alexnet.predict import image_paths, predict_files
from alexnet.weights import WeightsMeta, save_weights

NAMES = [f"class{i}" for i in range(6)]


@pytest.fixture(scope="module")
def small_model() -> alexnet.AlexNetFamily:
    torch.manual_seed(0)
    return alexnet.create_model("alexnet", num_classes=len(NAMES), input_size=99).eval()


@pytest.fixture
def weights(tmp_path: Path, small_model) -> Path:
    return save_weights(small_model, tmp_path / "small.safetensors", WeightsMeta(classes=NAMES))


@pytest.fixture
def photos(tmp_path: Path, chelsea: np.ndarray) -> Path:
    """A folder of photos as a camera or a download leaves it: images of several formats, one in a sub-folder, a
    sidecar text file and a hidden file."""
    root = tmp_path / "photos"
    (root / "2019").mkdir(parents=True)
    (root / ".thumbs").mkdir()
    Image.fromarray(chelsea).save(root / "b.jpg")
    Image.fromarray(chelsea[::2, ::3]).save(root / "a.PNG")
    Image.fromarray(255 - chelsea).save(root / "2019" / "c.webp")
    Image.fromarray(chelsea).save(root / ".thumbs" / "t.jpg")
    (root / "notes.txt").write_text("not an image, and not named as one")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def test_a_folder_is_its_image_files_sub_folders_too_in_order_others_left_out(photos):
    assert [str(p.relative_to(photos)) for p in image_paths([photos])] == ["a.PNG", "b.jpg", "2019/c.webp"]
    # a file named on its own is always tried, whatever its name
    (given,) = image_paths([photos / "notes.txt"])
    assert given == photos / "notes.txt"


def test_a_folder_without_images_is_an_error_in_its_place(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    (error,) = image_paths([tmp_path / "empty"])
    assert isinstance(error, ImageError) and error.path == str(tmp_path / "empty")
    assert "no image files" in str(error)


@pytest.mark.parametrize("batch_size", [1, 2, 32])
def test_batches_predict_what_one_image_at_a_time_predicts_in_the_order_given(
    small_model, photos, tmp_path, batch_size
):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    paths = [*image_paths([photos]), bad, photos / "b.jpg"]
    errors: list[ImageError] = []
    got = list(predict_files(small_model, paths, topk=3, batch_size=batch_size, on_error=errors.append))
    assert [Path(p) for p, _ in got] == [
        photos / "a.PNG",
        photos / "b.jpg",
        photos / "2019" / "c.webp",
        paths[-1],
    ]
    assert [e.path for e in errors] == [str(bad)]
    alone = [next(predict_files(small_model, [p], topk=3))[1] for p in paths if p != bad]
    for (_, batched), single in zip(got, alone, strict=True):
        assert [p.index for p in batched] == [p.index for p in single]
        assert [p.probability for p in batched] == pytest.approx([p.probability for p in single], abs=1e-5)
    assert [p.index for p in got[1][1]] == [p.index for p in got[3][1]]  # the same file, in another batch


def test_without_on_error_a_bad_image_raises(small_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    with pytest.raises(ImageError, match=r"bad\.png"):
        list(predict_files(small_model, [bad]))


def test_stop_ends_the_run_between_batches(small_model, photos):
    paths = [photos / "b.jpg"] * 7
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 2  # two batches run, the third is never started

    got = list(predict_files(small_model, paths, batch_size=3, stop=stop))
    assert len(got) == 6


def test_cli_predicts_a_folder_and_prints_each_image_with_its_topk(capsys, weights, photos):
    assert main(["predict", str(photos), "--weights", str(weights), "--topk", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[::3] == [str(photos / "a.PNG"), str(photos / "b.jpg"), str(photos / "2019" / "c.webp")]
    assert all(line.strip().endswith(")") and "class" in line for i, line in enumerate(out) if i % 3)


def test_cli_json_lists_every_image_with_its_topk_or_its_error(capsys, weights, photos, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [str(photos / "b.jpg"), str(photos / "notes.txt"), str(tmp_path / "empty"), str(photos / "a.PNG")]
    assert main(["predict", *args, "--weights", str(weights), "--topk", "3", "--json", "-q"]) == 2
    out, err = capsys.readouterr()
    records = json.loads(out)
    assert [r["image"] for r in records] == args
    assert [("top" in r, "error" in r) for r in records] == [
        (True, False),
        (False, True),
        (False, True),
        (True, False),
    ]
    top = records[0]["top"]
    assert [t["label"] for t in top] == [NAMES[t["index"]] for t in top] and len(top) == 3
    assert sorted((t["probability"] for t in top), reverse=True) == [t["probability"] for t in top]
    assert 0 < sum(t["probability"] for t in top) <= 1 + 1e-6
    assert all(t["probability"] == float(f"{t['probability']:.7g}") for t in top)  # float32's digits only
    assert "no image files" in records[2]["error"]
    assert err.count("alexnet: error:") == 2  # the errors are on stderr too


def test_cli_refuses_a_batch_size_below_one(capsys, weights, photos):
    assert main(["predict", str(photos), "--weights", str(weights), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err


def test_sigterm_stops_after_the_batch_under_way_and_prints_what_it_did(capsys, weights, photos, monkeypatch):
    import alexnet.predict as predict_module

    real = predict_module.predict
    calls = []

    def predict_then_signal(*args, **kwargs):
        calls.append(True)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler stops a job, during the first batch
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict", predict_then_signal)
    images = [str(photos / "b.jpg")] * 5
    code = main(["predict", *images, "--weights", str(weights), "--batch-size", "2", "--json", "-q"])
    assert code == 128 + signal.SIGTERM and len(calls) == 1
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 2  # the first batch, printed
    assert "stopped after 2 of 5 images" in err


def test_ten_crop_averages_the_softmax_over_the_corners_the_centre_and_their_mirrors(photos):
    """AlexNet §4.1: "the network makes a prediction by extracting five 224 × 224 patches (the four corner patches
    and the center patch) as well as their horizontal reflections ..., and averaging the predictions made by the
    network's softmax layer on the ten patches" — checked against torchvision's five_crop and reflections."""
    from torchvision.transforms.v2 import functional as F

    from alexnet.data.images import read_image
    from alexnet.data.transforms import central_patch
    from alexnet.predict import normalize_crop, preprocessing_of
    from alexnet.train.init import kaiming_init_

    torch.manual_seed(1)
    model = alexnet.create_model("alexnet", num_classes=len(NAMES), input_size=99).eval()
    kaiming_init_(model)  # activations that keep their scale: each crop gets its own probabilities
    path = photos / "b.jpg"
    ((_, top),) = predict_files(model, [path], topk=len(NAMES), ten_crop=True)
    pre = preprocessing_of(model)
    patch = central_patch(pre.resize)(read_image(path, min_side=pre.resize))  # AlexNet §2's 256×256 image
    five = F.five_crop(patch, [pre.input_size, pre.input_size])
    # each patch's own reflection: torchvision's ten_crop mirrors the whole image first, whose centre crop is
    # then a pixel off the centre patch's mirror when the margin is odd (256 - 99 here)
    crops = [*five, *(F.horizontal_flip(c) for c in five)]
    x = torch.stack([normalize_crop(model, c) for c in crops])
    with torch.inference_mode():
        expected = model(x).softmax(dim=1).mean(dim=0)
    assert [p.index for p in top] == expected.argsort(descending=True).tolist()
    # fp32: the crops go through the network in another batch and order here
    assert [p.probability for p in top] == pytest.approx(
        expected.sort(descending=True).values.tolist(), abs=1e-5
    )
    ((_, centre),) = predict_files(model, [path], topk=len(NAMES))
    by_class = {p.index: p.probability for p in top}
    assert max(abs(p.probability - by_class[p.index]) for p in centre) > 1e-3  # ten crops are not the centre
