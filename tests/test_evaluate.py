"""Top-1/top-5 error and ten-crop evaluation, checked against a per-file, per-crop formulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alexnet.data.images import read_image
from alexnet.data.preprocess import Preprocessing
from alexnet.evaluate import class_probabilities, evaluate
from alexnet.factory import create_model
from alexnet.models import unregister
from alexnet.train.data import eval_transform
from alexnet.weights import WeightsMeta
from test_train_support import TINY, register_tiny, tiny_data


@pytest.fixture(autouse=True)
def _tiny_registered_only_here():
    """The tiny model is registered for these tests and removed after, so the registry stays as shipped."""
    yield
    unregister(TINY.name)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"), classes=6, train=1, val=3)


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    model = create_model(register_tiny(), num_classes=6)
    model.weights_meta = WeightsMeta(preprocessing=Preprocessing(input_size=model.default_input_size))  # type: ignore[attr-defined]
    return model.eval()


def test_ten_crop_probabilities_are_the_mean_of_the_ten_softmaxes() -> None:
    model = _model()
    crops = torch.randn(2, 10, 3, 63, 63)
    got = class_probabilities(model, crops)
    with torch.no_grad():
        want = torch.stack(
            [torch.stack([model(c[None]).softmax(1)[0] for c in image]).mean(0) for image in crops]
        )
    torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(1).detach(), torch.ones(2))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_evaluate_counts_top1_and_top5_like_a_per_file_loop(data: Path, ten_crop: bool) -> None:
    model = _model()
    result = evaluate(model, data, ten_crop=ten_crop, batch_size=4, progress=False)
    pre = model.weights_meta.preprocessing
    transform = eval_transform(pre, ten_crop=ten_crop)
    files = sorted((data / "val").glob("*/*.jpg"))
    classes = sorted(p.name for p in (data / "val").iterdir())
    top1 = top5 = 0
    with torch.no_grad():
        for f in files:
            x = transform(read_image(f))
            probs = model(x if ten_crop else x[None]).softmax(1).mean(0)
            ranked = probs.argsort(descending=True).tolist()
            target = classes.index(f.parent.name)
            top1 += ranked[0] == target
            top5 += target in ranked[:5]
    assert result.images == len(files) == 18 and result.skipped == 0
    assert result.top1_err == pytest.approx(1 - top1 / len(files))
    assert result.top5_err == pytest.approx(1 - top5 / len(files))
    assert result.to_json() == {
        "top1_err": result.top1_err,
        "top5_err": result.top5_err,
        "top1_acc": pytest.approx(top1 / len(files)),
        "top5_acc": pytest.approx(top5 / len(files)),
        "images": 18,
        "skipped": 0,
        "complete": True,
    }


def test_more_than_one_percent_corrupt_validation_files_is_refused(data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    victim = sorted((copy / "val").glob("*/*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    # 1 bad of 18 is over the 1 % limit: evaluation refuses with a clear error…
    from alexnet.errors import DataError

    with pytest.raises(DataError, match="unreadable"):
        evaluate(_model(), copy, progress=False)


def test_a_corrupt_validation_file_is_skipped_counted_and_left_out_of_the_error_rates(
    data: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data, copy)
    first = sorted((copy / "val").glob("*/*.jpg"))[0]
    for i in range(100):  # 118 files: one bad one is under the 1 % limit
        shutil.copy(first, first.with_name(f"extra_{i:03d}.jpg"))
    victim = sorted((copy / "val").glob("*/*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    model = _model()
    result = evaluate(model, copy, progress=False)
    victim.unlink()  # the same evaluation without the bad file
    clean = evaluate(model, copy, progress=False)
    assert result.skipped == 1 and result.images == 117 == clean.images
    assert result.top1_err == clean.top1_err and result.top5_err == clean.top5_err


def test_weights_trained_at_another_input_size_load_back_with_that_size(tmp_path: Path) -> None:
    from alexnet.weights import load_pretrained, save_weights

    model = create_model(register_tiny(), num_classes=6, input_size=95)  # alexnet train --input-size 95
    save_weights(model, tmp_path / "m.safetensors", WeightsMeta(classes=[str(i) for i in range(6)]))
    loaded = load_pretrained(None, tmp_path / "m.safetensors")
    assert loaded.default_input_size == 95
    x = torch.randn(2, 3, 95, 95)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


@pytest.mark.parametrize("as_json", [False, True])
def test_ctrl_c_mid_evaluation_prints_the_numbers_so_far_as_such_and_exits_130(
    data: Path, tmp_path: Path, monkeypatch, capsys, ctrl_c_reaches_us, as_json: bool
) -> None:
    """An hour-long ImageNet evaluation stopped by Ctrl-C: the batch under way is counted, no batch after it,
    and the numbers over the images seen are printed, marked as not the split's result."""
    import json
    import os
    import signal

    import alexnet.evaluate as ev
    from alexnet.cli import main
    from alexnet.weights.io import save_weights

    save_weights(_model(), tmp_path / "tiny.safetensors")
    real, calls = ev.class_probabilities, []

    def ctrl_c_in_batch_2(model, images):
        calls.append(len(images))
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(model, images)

    monkeypatch.setattr(ev, "class_probabilities", ctrl_c_in_batch_2)
    args = ["eval", "--weights", str(tmp_path / "tiny.safetensors"), "--data", str(data), "--batch-size", "4"]
    code = main([*args, "--workers", "0", "--device", "cpu", *(["--json"] if as_json else [])])
    out, err = capsys.readouterr()
    assert code == 130 and calls == [4, 4]
    assert err.splitlines()[-1] == (
        f"alexnet: SIGINT: stopped after 8 images of {data / 'val'}; the numbers printed are over those only"
    )
    if as_json:
        result = json.loads(out)
        assert (result["images"], result["complete"]) == (8, False)
    else:
        assert f"{data / 'val'}: 8 images (centre crop), 0 skipped so far (stopped early" in out
        assert "top-1 error" in out and "top-5 error" in out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_a_larger_input_size_never_decodes_a_jpeg_below_its_resize(tmp_path: Path, monkeypatch) -> None:
    """`--input-size 454` scales the resize to 512: the reduced-size JPEG decode (1/2, 1/4 … in the DCT domain)
    must keep the shorter side ≥ 512 in training's splits and in evaluation, not ≥ the default 256 (a 1200×1000
    photo was decoded to 600×500 and then enlarged)."""
    import skimage.data
    from PIL import Image

    import alexnet.data.folders as folders
    from alexnet.train.config import TrainConfig
    from alexnet.train.data import open_run_data, preprocessing_for, ten_crop_split

    for split in ("train", "val"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(skimage.data.astronaut()).resize((1200, 1000)).save(tmp_path / split / "a" / "x.jpg")
    cfg = TrainConfig(model="alexnet", data=str(tmp_path), input_size=454)
    pre, _ = preprocessing_for(cfg, 227)
    assert pre.resize == 512
    data = open_run_data(cfg, pre, progress=False)
    for split in (data.train, data.val, ten_crop_split(data, pre)):
        image = folders.read_image(split.samples[0][0], min_side=split.min_side)
        assert min(image.shape[1:]) >= 512, split

    opened: list[int | None] = []
    real = folders.ImageFolder.__init__

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        opened.append(self.min_side)

    monkeypatch.setattr(folders.ImageFolder, "__init__", record)
    model = _model()
    model.weights_meta = WeightsMeta(  # type: ignore[attr-defined]
        preprocessing=Preprocessing(input_size=model.default_input_size, resize=320)
    )
    evaluate(model, tmp_path, progress=False)
    assert opened == [320]


def test_ctrl_c_while_the_files_are_checked_stops_before_any_batch(
    data: Path, tmp_path: Path, monkeypatch, capsys, ctrl_c_reaches_us
) -> None:
    import os
    import signal

    import alexnet.data.folders as folders
    from alexnet.cli import main
    from alexnet.weights.io import save_weights

    save_weights(_model(), tmp_path / "tiny.safetensors")
    real = folders.check_split

    def ctrl_c_during_the_check(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(folders, "check_split", ctrl_c_during_the_check)
    args = ["eval", "--weights", str(tmp_path / "tiny.safetensors"), "--data", str(data), "--workers", "0"]
    assert main([*args, "--device", "cpu"]) == 130
    out, err = capsys.readouterr()
    assert out == ""
    assert (
        err.splitlines()[-1]
        == "alexnet: SIGINT: stopped before the first image was evaluated; nothing to report"
    )
