"""`alexnet linear-probe`: a linear SVM and a softmax on each layer's fixed features, Zeiler & Fergus §5.3's
Table 7 ("we vary the number of layers retained from the ImageNet model and place either a linear SVM or softmax
classifier on top"), scored by Caltech's mean per-class accuracy over random splits."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet import create_model
from alexnet.analysis import linear_probe as lp
from alexnet.analysis.linear_classifiers import (
    TOLERANCE,
    Standardiser,
    fit,
    newton_points,
    principal_coordinates,
)
from alexnet.cli import main
from alexnet.data.folders import files_under
from alexnet.data.split import split_folder
from alexnet.errors import DataError
from alexnet.inputs import prepare
from alexnet.models.capture import capture

PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.fixture(scope="module")
def photo_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/<photo>/<crop>.jpg: twelve crops (positions, sizes, mirrors) of each of three real photographs."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("probe") / "photos"
    rng = np.random.default_rng(0)
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        (root / name).mkdir(parents=True)
        for i in range(12):
            w, h = image.size
            side = int(rng.integers(min(w, h) * 6 // 10, min(w, h)))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            crop = image.crop((x, y, x + side, y + side)).resize((160, 160))
            if i % 2:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def _blobs(n: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randn(k, d, generator=g)[y] + 1.5 * torch.randn(n, d, generator=g)
    return x.double(), y


def _objective(
    kind: str, weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, C: float
):
    """The two objectives as the module docstring writes them, straight from the formulas."""
    scores = x @ weight + bias
    if kind == "softmax":
        return 0.5 * weight.square().sum() + C * F.cross_entropy(scores, y, reduction="sum")
    t = -torch.ones_like(scores)
    t[torch.arange(len(y)), y] = 1
    hinge = (1 - t * scores).clamp(min=0).square().sum()
    return 0.5 * (weight.square().sum() + bias.square().sum()) + C * hinge


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_the_softmax_is_scikit_learns_l2_logistic_regression(C: float) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _blobs(120, 20, 4)
    ours = fit("softmax", x, y, 4, C, tolerance=1e-6)  # both near the one optimum of the same objective
    theirs = sklearn.LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x.numpy(), y.numpy())
    assert ours.converged
    probabilities = torch.softmax(ours.decision(x), 1).numpy()
    # two iterative solutions, each within a gradient of ~1e-6 of the optimum: their probabilities agree to 1e-4
    np.testing.assert_allclose(probabilities, theirs.predict_proba(x.numpy()), atol=1e-4)


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_the_svm_is_liblinears_one_vs_rest_squared_hinge_svm(C: float) -> None:
    svm = pytest.importorskip("sklearn.svm")
    x, y = _blobs(120, 20, 4)
    ours = fit("svm", x, y, 4, C)
    theirs = svm.LinearSVC(C=C, tol=1e-10, max_iter=1_000_000).fit(x.numpy(), y.numpy())
    assert ours.converged
    np.testing.assert_allclose(ours.decision(x).numpy(), theirs.decision_function(x.numpy()), atol=1e-4)


@pytest.mark.parametrize("kind", ["svm", "softmax"])
def test_each_classifier_ends_where_its_objectives_gradient_vanishes(kind: str) -> None:
    """An optimality certificate independent of the solver, in the regime of conv features: more features than
    images, separable data, a large C."""
    x, y = _blobs(60, 300, 5, seed=1)
    x, _ = principal_coordinates(x, x[:1], Standardiser.of(x))
    model = fit(kind, x, y, 5, 10.0)
    assert model.converged
    weight = model.weight.clone().requires_grad_()
    bias = model.bias.clone().requires_grad_()
    _objective(kind, weight, bias, x, y, 10.0).backward()
    gradient = torch.cat([weight.grad.flatten(), bias.grad.flatten()])
    # per image and unit of C, as `converged` measures it; the SVM's Newton steps end at the exact optimum
    assert gradient.abs().max() / (10.0 * len(x)) <= (TOLERANCE if kind == "softmax" else 1e-9)


@pytest.mark.parametrize("kind", ["svm", "softmax"])
@pytest.mark.parametrize("d", [300, 25])
def test_principal_coordinates_change_no_decision(kind: str, d: int) -> None:
    """The rotation onto the training images' principal axes (in their span when the features outnumber them)
    is exact: the test images' scores are those of the classifier on the standardised features themselves."""
    x, y = _blobs(70, d, 3, seed=2)
    x_train, y_train, x_test = x[:50].float(), y[:50], x[50:].float()
    standardise = Standardiser.of(x_train)
    train_at, test_at = principal_coordinates(x_train, x_test, standardise)
    rotated = fit(kind, train_at, y_train, 3, 0.1, tolerance=1e-6)
    scores, converged = rotated.decision(test_at), rotated.converged
    direct = fit(kind, standardise(x_train), y_train, 3, 0.1, tolerance=1e-6)
    assert converged and direct.converged
    # the SVM's Newton steps end at the exact optimum; the softmax's L-BFGS within a gradient of 1e-6 of it
    close = 1e-6 if kind == "svm" else 1e-4
    torch.testing.assert_close(scores, direct.decision(standardise(x_test)), atol=close, rtol=close)


def test_the_svms_newton_point_is_the_same_from_the_active_block_or_from_the_whole_inverse() -> None:
    """β_A = M_AA⁻¹ t_A, solved directly or through the inverse of a principal block of M⁻¹ (the faster way when
    most images are active), on active sets of every size."""
    x, y = _blobs(40, 60, 4, seed=3)
    system = x @ x.T + 1 + torch.eye(40, dtype=torch.float64) / 2
    sign = -torch.ones(40, 4, dtype=torch.float64)
    sign[torch.arange(40), y] = 1
    active = torch.rand(40, 4, generator=torch.Generator().manual_seed(0)) < torch.tensor(
        [0.1, 0.5, 0.9, 1.0]
    )
    direct = newton_points(system, sign, active, complement=False)
    through_inverse = newton_points(system, sign, active, complement=True)
    torch.testing.assert_close(through_inverse, direct)
    assert (direct[~active] == 0).all()
    a = active[:, 1].nonzero().squeeze(1)
    torch.testing.assert_close(system[a][:, a] @ direct[a, 1], sign[a, 1])


def test_standardising_centres_and_scales_each_feature_by_the_training_images() -> None:
    x = torch.randn(40, 7, dtype=torch.float64) * torch.arange(1, 8) + 3
    x[:, 2] = 5.0  # a constant feature (a dead unit): centred, not divided by zero
    z = Standardiser.of(x)(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(7, dtype=torch.float64))
    torch.testing.assert_close(
        z[:, [0, 1, 3, 4, 5, 6]].std(0, correction=0), torch.ones(6, dtype=torch.float64)
    )
    assert (z[:, 2] == 0).all()


def test_layers_1_to_7_are_each_blocks_output_in_the_papers_order() -> None:
    # AlexNet §3.5: conv → ReLU → LRN → max-pool; ZF Fig. 3: conv → ReLU → max-pool → contrast normalisation
    assert lp.block_outputs(create_model("alexnet")) == [
        "pool1", "pool2", "relu3", "relu4", "pool5", "relu6", "relu7",
    ]  # fmt: skip
    assert lp.block_outputs(create_model("zfnet")) == [
        "norm1", "norm2", "relu3", "relu4", "pool5", "relu6", "relu7",
    ]  # fmt: skip


def test_mean_class_accuracy_weighs_every_class_alike() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 0, 0, 2, 1])  # class 0: 4/4, class 1: 0/1, class 2: 1/2
    assert lp.mean_class_accuracy(predicted, labels) == pytest.approx((1 + 0 + 0.5) / 3)


def test_trial_t_draws_the_split_that_data_split_seed_s_plus_t_writes(
    photo_classes: Path, tmp_path: Path
) -> None:
    classes, splits = lp.probe_splits(photo_classes, train_per_class=5, test_per_class=4, trials=3, seed=7)
    assert classes == sorted(PHOTOS) and len(splits) == 3
    for t, (train, test) in enumerate(splits):
        out = tmp_path / f"seed{7 + t}"
        split_folder(photo_classes, out, train_per_class=5, val_per_class=4, seed=7 + t)
        for part, items in (("train", train), ("val", test)):
            for c, name in enumerate(classes):
                ours = sorted(str(f.resolve()) for f, label in items if label == c)
                theirs = sorted(os.path.realpath(f) for f in files_under(out / part / name))
                assert ours == theirs and len(ours) == (5 if part == "train" else 4)
    assert splits[0] != splits[1]


def test_a_split_data_set_is_one_trial_as_it_is(photo_classes: Path, tmp_path: Path) -> None:
    root = tmp_path / "split"
    split_folder(photo_classes, root, train_per_class=8, seed=0)
    classes, splits = lp.probe_splits(root)
    assert classes == sorted(PHOTOS) and len(splits) == 1
    train, test = splits[0]
    assert (len(train), len(test)) == (24, 12)
    with pytest.raises(DataError, match="split already"):
        lp.probe_splits(root, trials=5)
    with pytest.raises(DataError, match="split already"):
        lp.probe_splits(root, train_per_class=30)


def test_too_small_classes_and_unknown_exclusions_are_one_line(photo_classes: Path) -> None:
    with pytest.raises(DataError, match="fewer than --train-per-class 12 plus one to test on"):
        lp.probe_splits(photo_classes, train_per_class=12)
    with pytest.raises(DataError, match="--exclude cat: no such class folder"):
        lp.probe_splits(photo_classes, train_per_class=5, exclude=["cat"])
    with pytest.raises(DataError, match="no such folder"):
        lp.probe_splits(photo_classes / "missing")


def test_features_are_the_layers_activations_of_the_evaluation_crop(photo_classes: Path) -> None:
    torch.manual_seed(0)
    model = create_model("alexnet")
    paths = files_under(photo_classes / "coffee")[:3]
    feats, bad = lp.layer_features(model, paths, ["pool2", "relu7"], batch_size=2)
    assert bad == [] and feats["pool2"].shape == (3, 256 * 13 * 13) and feats["relu7"].shape == (3, 4096)
    x = torch.stack([prepare(model, p).tensor for p in paths])
    maps = capture(model, x, ["pool2", "relu7"])
    torch.testing.assert_close(feats["pool2"], maps["pool2"].flatten(1))
    torch.testing.assert_close(feats["relu7"], maps["relu7"])
    pooled, _ = lp.layer_features(model, paths, ["pool2", "relu7"], pool_to=4)
    assert pooled["pool2"].shape == (3, 256 * 4 * 4) and pooled["relu7"].shape == (3, 4096)
    torch.testing.assert_close(pooled["pool2"], F.adaptive_avg_pool2d(maps["pool2"], 4).flatten(1))


def test_features_larger_than_half_the_memory_are_refused_with_a_way_out(
    photo_classes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lp, "_memory", lambda: 1 << 20)
    with pytest.raises(DataError, match="--pool-to N"):
        lp.layer_features(create_model("alexnet"), files_under(photo_classes / "coffee"), ["pool1"])


def test_three_photographs_are_told_apart_by_layer_1_of_an_untrained_net(photo_classes: Path) -> None:
    """Each class is crops of one photograph: colour and texture statistics that even random filters keep almost
    linearly separable; the result records each trial."""
    torch.manual_seed(0)
    result = lp.linear_probe(
        create_model("alexnet"), photo_classes, layers=["pool1", "relu4"], train_per_class=8, trials=2
    )
    assert (result.classes, result.trials, result.train_images, result.test_images) == (
        3,
        2,
        [24, 24],
        [12, 12],
    )
    assert [(r.layer, r.classifier) for r in result.rows] == [
        ("pool1", "svm"), ("pool1", "softmax"), ("relu4", "svm"), ("relu4", "softmax"),
    ]  # fmt: skip
    for row in result.rows:  # chance is 1/3; at most two of the twelve test images wrong, in each trial
        assert row.converged and len(row.mean_class_acc) == 2
        assert min(row.mean_class_acc) >= 10 / 12 and min(row.accuracy) >= 10 / 12
    table = result.table()
    assert re.search(r"pool1 +69,984 +\d+\.\d % ± \d+\.\d +\d+\.\d % ± \d+\.\d", table)
    assert "mean ± std over 2 trials" in table


def test_an_unreadable_image_is_left_out_and_named(photo_classes: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(photo_classes, root)
    (root / "coffee" / "00.jpg").write_bytes(b"not a jpeg")
    result = lp.linear_probe(
        create_model("alexnet"), root, layers=["pool1"], classifiers=["softmax"], train_per_class=11
    )
    assert result.skipped == [str(root / "coffee" / "00.jpg")]
    assert result.train_images[0] + result.test_images[0] == 35


def test_a_second_probe_reads_the_cached_features_back(
    photo_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another C or classifier on the same images needs no forward pass: the features come from --cache."""
    import alexnet.analysis.features as features

    torch.manual_seed(0)
    model = create_model("alexnet")
    kwargs = {"layers": ["pool2", "relu6"], "train_per_class": 6, "cache_dir": tmp_path / "cache"}
    first = lp.linear_probe(model, photo_classes, **kwargs)
    cached = lp.linear_probe(model, photo_classes, C=0.1, **kwargs)

    def no_network(*args: object, **kw: object) -> None:
        raise AssertionError("the network ran again")

    monkeypatch.setattr(features, "capture", no_network)
    again = lp.linear_probe(model, photo_classes, **kwargs)
    assert [r.mean_class_acc for r in again.rows] == [r.mean_class_acc for r in first.rows]
    assert cached.C == 0.1 and len(list((tmp_path / "cache").iterdir())) == 1
    with pytest.raises(AssertionError, match="ran again"):  # other maps: other features, not the cache's
        lp.linear_probe(model, photo_classes, pool_to=3, **kwargs)


def test_one_layers_features_share_retrievals_cache_however_they_are_asked_for(
    photo_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import alexnet.analysis.features as features

    model = create_model("alexnet")
    files = files_under(photo_classes / "coffee")
    gallery = features.extract_features(model, files, "pool5", cache_dir=tmp_path)  # as retrieval asks
    monkeypatch.setattr(features, "capture", lambda *a, **k: pytest.fail("the network ran again"))
    feats, bad = lp.layer_features(model, files, ["pool5"], cache_dir=tmp_path)
    assert bad == [] and list(feats) == ["pool5"]
    torch.testing.assert_close(feats["pool5"], gallery.features)


def test_the_networks_own_classifier_is_not_a_layer_to_probe(photo_classes: Path) -> None:
    with pytest.raises(DataError, match="fc8 is the network's own classifier"):
        lp.linear_probe(create_model("alexnet"), photo_classes, layers=["fc8"], train_per_class=5)


def test_cli_prints_the_table_and_json(photo_classes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["linear-probe", str(photo_classes), "--model", "alexnet", "--layers", "pool1", "relu7"]
    args += ["--train-per-class", "6", "--test-per-class", "3", "--workers", "0", "-q", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "untrained" in out and "svm" in out and "softmax" in out and "relu7" in out
    assert main([*args, "--json", "--classifier", "svm", "-C", "0.5"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["C"] == 0.5 and record["test_images"] == [9] and record["classes"] == 3
    assert [(r["layer"], r["classifier"]) for r in record["rows"]] == [("pool1", "svm"), ("relu7", "svm")]
    assert set(record["rows"][0]) >= {
        "features",
        "mean_class_acc",
        "std",
        "trials_mean_class_acc",
        "converged",
    }


def test_cli_a_missing_folder_is_named_before_any_weights_are_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["linear-probe", str(tmp_path / "nope"), "--weights", str(tmp_path / "missing.safetensors")])
        == 2
    )
    assert "nope: no such folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "conv9"], "conv9"),
        (["-C", "0"], "-C must be positive"),
        (["--trials", "0"], "--trials must be at least 1"),
        (["--pool-to", "0"], "--pool-to must be at least 1"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_code_2(
    photo_classes: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert main(["linear-probe", str(photo_classes), "--model", "alexnet", "-q", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_cli_help_names_the_paper(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["linear-probe", "--help"])
    assert e.value.code == 0
    assert "Table 7" in capsys.readouterr().out


def _sigint_at_fit(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Ctrl-C arrives while the ``n``-th classifier (1-based) is being fitted."""
    import signal

    real, calls = lp.fit, []

    def fit(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(lp, "fit", fit)


@pytest.mark.parametrize(
    ("at_fit", "stopped", "layers", "trials"),
    [
        (5, "after 1 of 3 trials", ["pool2", "relu7"], 1),  # in trial 2's first layer: trial 1 kept whole
        (8, "after 2 of 3 trials", ["pool2", "relu7"], 2),  # in trial 2's last fit: the trial finishes
        (1, "after 1 of 2 layers of the first of 3 trials", ["pool2"], 1),
    ],
)
def test_ctrl_c_during_the_fits_keeps_the_finished_trials_or_layers(
    photo_classes: Path,
    monkeypatch: pytest.MonkeyPatch,
    ctrl_c_reaches_us: None,
    at_fit: int,
    stopped: str,
    layers: list[str],
    trials: int,
) -> None:
    """The fits under way finish (all of a layer's classifiers), then the probe stops with the trials that had
    finished, each row's numbers those of the uninterrupted probe's first trials."""
    from alexnet.stopping import StopSignals

    torch.manual_seed(0)
    model = create_model("alexnet")
    kwargs = {"layers": ["pool2", "relu7"], "train_per_class": 6, "trials": 3}
    whole = lp.linear_probe(model, photo_classes, **kwargs)
    _sigint_at_fit(monkeypatch, at_fit)
    part = lp.linear_probe(model, photo_classes, signals=StopSignals(), **kwargs)
    assert part.stopped == stopped and not part.complete and part.trials == trials
    assert [r.layer for r in part.rows] == [layer for layer in layers for _ in ("svm", "softmax")]
    for r in part.rows:
        assert r.mean_class_acc == whole.row(r.layer, r.classifier).mean_class_acc[:trials]
    assert part.train_images == whole.train_images[:trials]
    assert part.table().splitlines()[-1] == f"stopped early: {stopped}"
    assert part.to_json()["complete"] is False


def test_cli_ctrl_c_during_the_fits_prints_the_table_so_far_and_exits_130(
    photo_classes: Path,
    monkeypatch: pytest.MonkeyPatch,
    ctrl_c_reaches_us: None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    _sigint_at_fit(monkeypatch, 2)  # pool2's softmax, the first trial's second fit
    args = ["linear-probe", str(photo_classes), "--model", "alexnet", "--layers", "pool2", "relu7"]
    args += ["--trials", "2", "--train-per-class", "6", "--workers", "0", "-q", "--cache", str(tmp_path)]
    assert main(args) == 130
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[2:-2]] == ["pool2"]  # the rows of the table
    assert "stopped early: after 1 of 2 layers of the first of 2 trials" in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        "alexnet: SIGINT: stopped after 1 of 2 layers of the first of 2 trials: the table is over those only; "
        f"the features stay in {tmp_path}: the same command goes on from them"
    )


def test_with_a_cache_other_trials_seeds_and_counts_read_the_same_features(
    photo_classes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache of an unsplit folder holds every image of its classes, so its key does not depend on the draw."""
    import alexnet.analysis.features as features

    torch.manual_seed(0)
    model = create_model("alexnet")
    cache = tmp_path / "cache"
    first = lp.linear_probe(model, photo_classes, layers=["pool5"], train_per_class=5, cache_dir=cache)
    monkeypatch.setattr(features, "capture", lambda *a, **k: pytest.fail("the network ran again"))
    again = lp.linear_probe(
        model, photo_classes, layers=["pool5"], train_per_class=6, test_per_class=2, trials=2, seed=3,
        cache_dir=cache,
    )  # fmt: skip
    assert again.trials == 2 and len(list(cache.iterdir())) == 1
    monkeypatch.undo()
    uncached = lp.linear_probe(model, photo_classes, layers=["pool5"], train_per_class=5)
    assert first.row("pool5", "svm").mean_class_acc == uncached.row("pool5", "svm").mean_class_acc


def test_a_cache_takes_only_the_drawn_images_when_the_classes_hold_many_more(
    photo_classes: Path, tmp_path: Path
) -> None:
    """One training and one test image of each class's twelve: extracting all 36 would be six times the work
    (30 a class drawn from ImageNet's 1,300 would be 16 times), so the cache holds the six drawn."""
    from safetensors import safe_open

    lp.linear_probe(create_model("alexnet"), photo_classes, layers=["pool5"], train_per_class=1,
                    test_per_class=1, cache_dir=tmp_path)  # fmt: skip
    (folder,) = tmp_path.iterdir()
    counts = []
    for shard in folder.iterdir():
        with safe_open(str(shard), framework="pt") as f:
            counts.append(int((f.metadata() or {})["count"]))
    assert sum(counts) == 6 == 3 * (1 + 1)
