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


def _per_file(model: torch.nn.Module, root: Path, ten_crop: bool) -> tuple[list[int], list[int], int, int]:
    """(images per class, top-1 hits per class, top-1 hits, top-5 hits), one file at a time."""
    transform = eval_transform(model.weights_meta.preprocessing, ten_crop=ten_crop)
    files = sorted((root / "val").glob("*/*.jpg"))
    classes = sorted(p.name for p in (root / "val").iterdir())
    images, hits, top5 = [0] * len(classes), [0] * len(classes), 0
    with torch.no_grad():
        for f in files:
            x = transform(read_image(f))
            probs = model(x if ten_crop else x[None]).softmax(1).mean(0)
            ranked = probs.argsort(descending=True).tolist()
            target = classes.index(f.parent.name)
            images[target] += 1
            hits[target] += ranked[0] == target
            top5 += target in ranked[:5]
    return images, hits, sum(hits), top5


@pytest.mark.parametrize("ten_crop", [False, True])
def test_evaluate_counts_top1_and_top5_like_a_per_file_loop(data: Path, ten_crop: bool) -> None:
    model = _model()
    result = evaluate(model, data, ten_crop=ten_crop, batch_size=4, progress=False)
    images, hits, top1, top5 = _per_file(model, data, ten_crop)
    assert result.images == sum(images) == 18 and result.skipped == 0
    assert result.top1_err == pytest.approx(1 - top1 / 18)
    assert result.top5_err == pytest.approx(1 - top5 / 18)
    assert (result.class_images, result.class_hits) == (images, hits)
    assert result.balanced  # 3 images a class: the mean class accuracy is the top-1 accuracy
    assert result.to_json() == {
        "top1_err": result.top1_err,
        "top5_err": result.top5_err,
        "top1_acc": pytest.approx(top1 / 18),
        "top5_acc": pytest.approx(top5 / 18),
        "mean_class_acc": pytest.approx(top1 / 18),
        "images": 18,
        "skipped": 0,
        "complete": True,
    }


def test_classes_with_fewer_images_weigh_as_much_in_the_mean_class_accuracy(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Caltech-101's measure (ZF §5.2): the mean over classes of each class's top-1 accuracy."""
    import shutil

    from alexnet.cli import main
    from alexnet.weights import save_weights

    root = tmp_path / "data"
    shutil.copytree(data, root)
    for extra in sorted((root / "val" / sorted(p.name for p in (root / "val").iterdir())[0]).glob("*.jpg"))[
        1:
    ]:
        extra.unlink()  # the first class keeps 1 image of 3
    model = _model()
    result = evaluate(model, root, batch_size=4, progress=False)
    images, hits, top1, _ = _per_file(model, root, False)
    assert result.class_images == images == [1, 3, 3, 3, 3, 3] and result.class_hits == hits
    assert result.top1_acc == pytest.approx(top1 / 16)
    assert result.mean_class_acc == pytest.approx(sum(h / n for h, n in zip(hits, images, strict=True)) / 6)
    assert not result.balanced
    weights = save_weights(model, tmp_path / "w.safetensors", model.weights_meta)
    capsys.readouterr()
    assert (
        main(["eval", "--weights", str(weights), "--data", str(root), "--workers", "0", "--per-class"]) == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[3] == f"mean per-class top-1 accuracy {100 * result.mean_class_acc:.2f}%  (over 6 classes)"
    assert out[4].split() == ["class", "images", "top-1", "acc"]
    assert [line.split()[1] for line in out[5:]] == ["1", "3", "3", "3", "3", "3"]
    assert out[5].split()[2] == f"{100 * hits[0]:.2f}%"


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


def _members(n: int = 3) -> list[torch.nn.Module]:
    members = []
    for seed in range(n):
        torch.manual_seed(10 + seed)
        m = create_model(register_tiny(), num_classes=6)
        m.weights_meta = WeightsMeta(preprocessing=Preprocessing(input_size=m.default_input_size))  # type: ignore[attr-defined]
        members.append(m.eval())
    return members


@pytest.mark.parametrize("ten_crop", [False, True])
def test_an_ensemble_is_scored_on_its_members_averaged_softmax_like_a_per_file_loop(
    data: Path, ten_crop: bool
) -> None:
    """AlexNet §6: "averaging the predictions of five similar CNNs"; with ten crops, over crops and networks."""
    from alexnet.models.ensemble import Ensemble

    members = _members()
    ensemble = Ensemble(members)
    x = torch.randn(4, 3, 63, 63)
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        torch.testing.assert_close(ensemble(x).softmax(1), mean, rtol=1e-5, atol=1e-7)
    result = evaluate(ensemble, data, ten_crop=ten_crop, batch_size=4, progress=False)
    transform = eval_transform(members[0].weights_meta.preprocessing, ten_crop=ten_crop)
    files = sorted((data / "val").glob("*/*.jpg"))
    classes = sorted(p.name for p in (data / "val").iterdir())
    hits = [0, 0]
    nll = 0.0  # continuous, so it pins the averaging where untrained networks' rankings would not
    with torch.no_grad():
        for f in files:
            x = transform(read_image(f))
            x = x if ten_crop else x[None]
            probs = torch.stack([m(x).softmax(1).mean(0) for m in members]).mean(0)
            ranked = probs.argsort(descending=True).tolist()
            target = classes.index(f.parent.name)
            hits[0] += ranked[0] == target
            hits[1] += target in ranked[:5]
            nll -= probs[target].log().item()
    assert result.images == len(files) == 18
    assert result.top1_err == pytest.approx(1 - hits[0] / len(files))
    assert result.top5_err == pytest.approx(1 - hits[1] / len(files))
    assert result.loss == pytest.approx(nll / len(files), rel=1e-5)
    alone = evaluate(members[0], data, ten_crop=ten_crop, batch_size=4, progress=False)
    assert alone.loss != pytest.approx(result.loss, rel=1e-5)  # not one member's numbers


def test_networks_that_take_other_inputs_or_predict_other_classes_are_not_averaged() -> None:
    from alexnet.errors import WeightsMismatch
    from alexnet.models.ensemble import Ensemble

    a, b = _members(2)
    b.weights_meta = WeightsMeta(
        preprocessing=Preprocessing(input_size=a.default_input_size, channel_order="BGR")
    )
    with pytest.raises(
        WeightsMismatch, match=r"a and b cannot be averaged: they take different inputs \(63px RGB"
    ):
        Ensemble([a, b], names=["a", "b"])
    a.weights_meta.classes = [f"c{i}" for i in range(6)]
    b.weights_meta = WeightsMeta(
        preprocessing=a.weights_meta.preprocessing, classes=[f"c{i}" for i in reversed(range(6))]
    )
    with pytest.raises(WeightsMismatch, match="their class lists differ"):
        Ensemble([a, b])
    c = create_model(register_tiny(), num_classes=4)
    with pytest.raises(WeightsMismatch, match="they predict 6 and 4 classes"):
        Ensemble([a, c])
    with pytest.raises(ValueError, match="at least two members"):
        Ensemble([a])


def test_eval_takes_repeated_weights_and_runs_as_one_ensemble(data: Path, tmp_path: Path, capsys) -> None:
    import json

    from alexnet.cli import main
    from alexnet.models.ensemble import Ensemble
    from alexnet.weights.io import save_weights

    members = _members(2)
    paths = [save_weights(m, tmp_path / f"m{i}.safetensors") for i, m in enumerate(members)]
    run = tmp_path / "run"
    run.mkdir()
    save_weights(members[1], run / "model.safetensors")
    want = evaluate(Ensemble(members), data, batch_size=4, progress=False).to_json()
    common = ["--data", str(data), "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    assert main(["eval", "--weights", str(paths[0]), "--weights", str(paths[1]), *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == want
    assert main(["eval", "--weights", str(paths[0]), "--run", str(run), *common]) == 0
    out = capsys.readouterr().out
    assert "18 images (centre crop, an ensemble of 2 networks' averaged softmax), 0 skipped" in out
    assert f"top-1 error {100 * want['top1_err']:.2f}%" in out


def test_predict_with_repeated_weights_shows_the_averaged_probabilities(tmp_path: Path, chelsea_jpeg, capsys):
    from alexnet.cli import main
    from alexnet.predict import input_transform
    from alexnet.weights.io import save_weights

    members = _members(2)
    paths = [str(save_weights(m, tmp_path / f"m{i}.safetensors")) for i, m in enumerate(members)]
    assert (
        main(["predict", str(chelsea_jpeg), "-w", paths[0], "-w", paths[1], "--topk", "6", "--device", "cpu"])
        == 0
    )
    shown = {
        int(line.split("(")[-1].rstrip(")")): float(line.split("%")[0]) / 100
        for line in capsys.readouterr().out.splitlines()[1:]
    }
    x = input_transform(members[0])(read_image(chelsea_jpeg))[None]
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1)[0] for m in members]).mean(0)
    assert shown == pytest.approx({i: float(p) for i, p in enumerate(mean)}, abs=5e-5)  # printed to 0.01 %
    without = tmp_path / "features.safetensors"
    save_weights(create_model(register_tiny(), num_classes=0), without)
    assert main(["predict", str(chelsea_jpeg), "-w", paths[0], "-w", str(without)]) == 2
    assert "features.safetensors has no classifier layer" in capsys.readouterr().err
