"""A run that starts from trained weights (`alexnet train --weights W [--freeze LAYER]`): ZF §5.2's new softmax
classifier on fixed layers 1–7, and fine-tuning every layer; the images prepared as the weights record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alexnet.cli import build_parser, main
from alexnet.cli.train import resolve_config
from alexnet.data.preprocess import Preprocessing
from alexnet.diagnostics.health import HealthMonitor
from alexnet.errors import TrainingError
from alexnet.models import build_model, renormalize_filters_
from alexnet.train.finetune import Start, adapt, freeze_
from alexnet.train.loop import train
from alexnet.train.recipes import resolve_recipe
from alexnet.weights import WeightsMeta, read_weights, save_weights
from test_train_support import TINY, register_tiny, step_losses, tiny_data

# Caffe's convention (BGR, 0–255, mean pixel), unlike the demo recipe's own (RGB 0–1, mean/std): a run that
# started from these weights must feed its images this way
CAFFE_LIKE = Preprocessing(
    input_size=63,
    resize=72,
    mean=(104.0, 117.0, 123.0),
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    pixel_scale=255.0,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights of the tiny network for 5 classes (the data has 3), recording a Caffe-style preprocessing."""
    register_tiny()
    torch.manual_seed(7)
    model = build_model(TINY, num_classes=5)
    meta = WeightsMeta(model=TINY.name, num_classes=5, classes=list("vwxyz"), preprocessing=CAFFE_LIKE)
    return save_weights(model, tmp_path_factory.mktemp("source") / "source.safetensors", meta)


def _config(data: Path, out: Path, **overrides: object):
    register_tiny()
    base = dict(model=TINY.name, data=str(data), out=str(out), batch_size=4, workers=0, max_steps=4)
    return resolve_recipe("demo", **{**base, **overrides})  # with weights: normalize="weights" by default


def test_freeze_fc7_trains_a_new_classifier_on_fixed_layers_as_zf_section_5_2(
    tmp_path: Path, data: Path, source: Path
) -> None:
    # ZF §5.2: "keep layers 1-7 ... fixed and train a new softmax classifier on top"; the tiny network's
    # fc3 plays fc7, fc4 plays fc8
    health = HealthMonitor(every=1)
    result = train(
        _config(data, tmp_path / "run", weights=str(source), freeze="fc3"), callbacks=[health], progress=False
    )
    before, _ = read_weights(source)
    after, meta = read_weights(result.weights)
    classifier = "classifier.3"  # fc4
    for key, value in before.items():
        if key.startswith(classifier):
            assert after[key].shape[0] == 3  # a new layer for the data's 3 classes
        else:
            assert torch.equal(after[key], value), key  # fixed, bit for bit
    # the images were prepared as the weights record (BGR, 0–255, Caffe's mean), not as the demo recipe does
    assert meta.preprocessing == CAFFE_LIKE
    assert meta.extra["started_from"] == str(source) and meta.extra["fixed_through"] == "fc3"
    assert meta.classes == sorted(meta.classes) and len(meta.classes) == 3
    # fixed layers have no gradient to watch: no "gradient vanishes" warning, only the trained layer's numbers
    log = (tmp_path / "run" / "train.log").read_text()
    assert "vanishes" not in log and "--freeze fc3: conv1, conv2, fc3 fixed" in log
    last = health.records[-1]
    assert [lh.layer for lh in last.layers if lh.grad_norm is not None] == ["fc4"]
    assert all(lh.act_std is not None for lh in last.layers)


def test_a_fine_tuned_run_resumes_as_if_never_stopped_without_its_starting_weights(
    tmp_path: Path, data: Path, source: Path
) -> None:
    weights = tmp_path / "start.safetensors"
    weights.write_bytes(source.read_bytes())
    whole = train(
        _config(data, tmp_path / "whole", weights=str(weights), freeze="conv1", max_steps=6), progress=False
    )
    expected = step_losses(whole.run_dir)
    cut = _config(
        data, tmp_path / "cut", weights=str(weights), freeze="conv1", max_steps=3, checkpoint_every=3
    )
    train(cut, progress=False)
    weights.unlink()  # the checkpoint holds the network and how its images are prepared
    resumed = train(cut.with_overrides(max_steps=6), resume=True, progress=False)
    got = step_losses(resumed.run_dir)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    torch.testing.assert_close(
        torch.tensor([got[s] for s in range(1, 7)]), torch.tensor([expected[s] for s in range(1, 7)])
    )
    a, meta = read_weights(resumed.weights)
    b, _ = read_weights(whole.weights)
    assert all(torch.equal(a[k], b[k]) for k in a) and meta.preprocessing == CAFFE_LIKE
    with pytest.raises(TrainingError, match="--freeze"):  # what is fixed cannot change on --resume
        train(cut.with_overrides(max_steps=8, freeze="conv2"), resume=True, progress=False)


def test_the_classifier_is_kept_for_the_weights_classes_and_replaced_for_others() -> None:
    register_tiny()
    torch.manual_seed(0)
    net = build_model(TINY, num_classes=3)
    fc = net.get_classifier().weight.clone()
    start = Start(net, "w", None, None)
    kept, note = adapt(start, ["a", "b", "c"], dropout=TINY.dropout)
    assert kept is net and torch.equal(kept.get_classifier().weight, fc)
    assert note == "--weights w: fc4 kept (the data has its 3 classes)"
    other, note = adapt(Start(build_model(TINY, num_classes=3), "w", None, None), list("abcd"), dropout=0.25)
    assert note == "--weights w: a new fc4 for 4 classes (the weights' has 3)"
    # as many classes, but other ones (the weights name theirs): a new layer as well
    named = build_model(TINY, num_classes=3)
    named.weights_meta = WeightsMeta(classes=["x", "y", "z"])
    before = named.get_classifier().weight.clone()
    renamed, note = adapt(Start(named, "w", None, None), ["a", "b", "c"], dropout=TINY.dropout)
    assert note == "--weights w: a new fc4 for the data's 3 classes (the weights' 3 are others: x, y, z)"
    assert not torch.equal(renamed.get_classifier().weight, before)
    assert renamed.weights_meta.classes is None  # the record no longer names the weights' classes
    assert other.num_classes == 4 and other.get_classifier().weight.shape == (4, 32)
    assert other.config.dropout == 0.25 and all(
        m.p == 0.25 for m in other.modules() if isinstance(m, torch.nn.Dropout)
    )


def test_imagenet_weights_keep_their_classifier_on_imagenets_wnid_folders() -> None:
    from alexnet.data.classes import imagenet_classes
    from alexnet.train.finetune import same_classes

    wnids = [f"n{i:08d}" for i in range(1000)]  # sorted, as ILSVRC's folders are
    assert same_classes(list(imagenet_classes()), wnids)  # torchvision's names are the sorted wnids' order
    assert not same_classes(list(imagenet_classes()), wnids[:999])  # 999 classes: not ImageNet's
    assert same_classes(None, ["a", "b"]) and not same_classes(["a", "b"], ["b", "a"])


def test_freeze_fixes_the_layers_up_to_the_one_named_and_the_optimizer_leaves_them_out() -> None:
    from alexnet.train.optim import build_optimizer

    register_tiny()
    net = build_model(TINY, num_classes=3)
    assert freeze_(net, "conv2") == ["conv1", "conv2"]
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {"classifier.0.weight", "classifier.0.bias", "classifier.3.weight", "classifier.3.bias"}
    optimizer = build_optimizer(net, resolve_recipe("krizhevsky2012", model=TINY.name))
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 4
    # ZF §3's renormalisation leaves a fixed layer as it is
    with torch.no_grad():
        net.layer("conv1").weight.mul_(100)
    big = net.layer("conv1").weight.clone()
    renormalize_filters_(net, 0.01)
    assert torch.equal(net.layer("conv1").weight, big)
    with pytest.raises(TrainingError, match="no such layer; its layers: conv1, relu1"):
        freeze_(build_model(TINY, num_classes=3), "conv9")
    with pytest.raises(TrainingError, match="nothing would learn; --freeze fc3 trains only fc4"):
        freeze_(build_model(TINY, num_classes=3), "fc4")


def test_train_with_weights_defaults_to_their_model_and_their_preprocessing(
    source: Path, tmp_path: Path
) -> None:
    register_tiny()
    args = build_parser().parse_args(["train", "--weights", str(source), "--out", str(tmp_path / "r")])
    cfg = resolve_config(args)
    assert (cfg.model, cfg.normalize, cfg.weights) == (TINY.name, "weights", str(source.absolute()))
    args = build_parser().parse_args(["train", "--weights", str(source), "--normalize", "mean", "--out", "r"])
    assert resolve_config(args).normalize == "mean"  # asked for: the run's choice (the log says it differs)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--freeze", "conv9"], "--freeze conv9: tiny_alexnet_test has no such layer"),
        (["--freeze", "fc4"], "nothing would learn"),
        (["--bias-init", "0.1"], "--bias-init with --weights"),
        (["--input-size", "99"], "--input-size 99: the weights"),
        (
            ["--weights", "nowhere.safetensors"],
            "--weights nowhere.safetensors: no such weights file or run folder",
        ),
    ],
)
def test_a_bad_fine_tuning_option_is_one_line_with_exit_code_2(
    flags: list[str],
    message: str,
    source: Path,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register_tiny()
    args = [
        "train",
        "--weights",
        str(source),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "r"),
        "-q",
        *flags,
    ]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_normalize_weights_needs_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "--normalize", "weights", "--out", str(tmp_path / "r")]) == 2
    assert "needs --weights" in capsys.readouterr().err


def test_weights_with_another_normalisation_warn_that_the_inputs_differ(
    tmp_path: Path, data: Path, source: Path
) -> None:
    cfg = _config(data, tmp_path / "run", weights=str(source), normalize="meanstd", max_steps=1)
    train(cfg, progress=False)
    log = (tmp_path / "run" / "train.log").read_text()
    assert "were trained on inputs 63px of 72 BGR ×255 − mean (104.0, 117.0, 123.0)" in log
    _, meta = read_weights(tmp_path / "run" / "model.safetensors")
    assert meta.preprocessing is not None and meta.preprocessing.channel_order == "RGB"
    # the normalisation asked for, the crop of the weights: 63 of 72 (not 63 of 256)
    assert (meta.preprocessing.input_size, meta.preprocessing.resize) == (63, 72)
    with pytest.raises(TrainingError, match="--input-size 99: the weights"):
        train(cfg.with_overrides(input_size=99, out=str(tmp_path / "other")), progress=False)


def test_weights_given_on_resume_of_a_run_that_began_without_them_are_refused(
    tmp_path: Path, source: Path
) -> None:
    from alexnet.train.loop import _check_resumable

    register_tiny()
    saved = resolve_recipe("demo", model=TINY.name).to_dict()
    del (
        saved["weights"],
        saved["freeze"],
    )  # a checkpoint written before the flags existed: trained without them
    args = build_parser().parse_args(["train", "--resume", "--out", str(tmp_path), "--weights", str(source)])
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(TrainingError, match="the run was trained without --weights"):
        _check_resumable(resolve_config(args), {"config": saved})


def test_the_classifier_layer_learns_at_its_own_multiple_of_the_rate() -> None:
    """Caffe's fine-tuning practice: a new last layer learns faster than the layers it starts from."""
    from alexnet.train.optim import LRSchedule, build_optimizer, load_optimizer_state

    register_tiny()
    torch.manual_seed(0)
    net = build_model(TINY, num_classes=3)
    cfg = resolve_recipe(
        "krizhevsky2012", model=TINY.name, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=0.01
    ).with_overrides(classifier_lr_mult=10.0, bias_lr_mult=2.0)
    optimizer = build_optimizer(net, cfg)
    fc4, conv1 = net.layer("fc4"), net.layer("conv1")
    assert [g["params"] for g in optimizer.param_groups[2:]] == [[fc4.weight], [fc4.bias]]
    assert [g["lr_mult"] for g in optimizer.param_groups] == [1.0, 2.0, 10.0, 20.0]
    LRSchedule(cfg, 10, 10).apply(optimizer, 0)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    net(torch.randn(2, 3, 63, 63)).square().sum().backward()
    grads = {
        "fc4": fc4.weight.grad.clone(),
        "conv1": conv1.weight.grad.clone(),
        "bias": fc4.bias.grad.clone(),
    }
    optimizer.step()
    torch.testing.assert_close(before["classifier.3.weight"] - fc4.weight.detach(), 0.1 * grads["fc4"])
    torch.testing.assert_close(before["classifier.3.bias"] - fc4.bias.detach(), 0.2 * grads["bias"])
    torch.testing.assert_close(before["features.0.weight"] - conv1.weight.detach(), 0.01 * grads["conv1"])
    # without a multiple of its own, the layer is in the two common groups: a checkpoint of one is refused by
    # the other, not loaded into the wrong groups
    plain = build_optimizer(net, cfg.with_overrides(classifier_lr_mult=1.0))
    with pytest.raises(TrainingError, match="trained with a --classifier-lr-mult of its own"):
        load_optimizer_state(plain, optimizer.state_dict(), net, cfg.with_overrides(classifier_lr_mult=1.0))
