"""AlexNet Fig. 4 (left): images with their most probable labels, the correct one's bar red."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet
from alexnet.cli import main
from alexnet.data.preprocess import Preprocessing
from alexnet.errors import SelectionError
from alexnet.inputs import prepare
from alexnet.visualize.predictions import folder_target, plot_predictions, ranked
from alexnet.weights import WeightsMeta, save_weights

CLASSES = ["cat", "coffee", "astronaut", "rocket", "camera", "coins"]


@pytest.fixture(scope="module")
def model() -> alexnet.models.AlexNetFamily:
    torch.manual_seed(0)
    net = alexnet.create_model("alexnet", num_classes=len(CLASSES), input_size=99).eval()
    net.weights_meta = WeightsMeta(classes=CLASSES, preprocessing=Preprocessing(input_size=99, resize=112))
    return net


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Real photographs in folders named after their classes (as ROOT/val/<class>/), and one in a folder that
    names no class."""
    import skimage.data

    root = tmp_path_factory.mktemp("val")
    out = []
    for name, pic in [
        ("cat", skimage.data.chelsea()),
        ("coffee", skimage.data.coffee()),
        ("misc", skimage.data.rocket()),
    ]:
        (root / name).mkdir()
        Image.fromarray(pic).save(root / name / "x.jpg")
        out.append(root / name / "x.jpg")
    return out


def test_each_image_gets_its_top_k_and_its_correct_class_probability_and_rank(model, photos) -> None:
    x = torch.stack([prepare(model, p).tensor for p in photos])
    targets = [folder_target(model, p) for p in photos]
    assert targets == [0, 1, None]  # the folders name the classes; "misc" names none
    results = ranked(model, x, [str(p) for p in photos], targets, topk=3)
    with torch.no_grad():
        probs = model(x).softmax(1)
    for r, p, t in zip(results, probs, targets, strict=True):
        order = p.argsort(descending=True)
        assert [q.index for q in r.top] == order[:3].tolist()
        assert [q.probability for q in r.top] == pytest.approx(p[order[:3]].tolist(), rel=1e-5)
        if t is None:
            assert (r.target, r.target_label, r.target_probability, r.target_rank) == (None, None, None, None)
        else:
            assert r.target_label == CLASSES[t] and r.target_probability == pytest.approx(
                float(p[t]), rel=1e-5
            )
            assert r.target_rank == order.tolist().index(t) + 1
    with pytest.raises(SelectionError, match="class 6 is out of range"):
        ranked(model, x[:1], ["a"], [6])


def test_the_correct_labels_bar_is_red_only_when_it_is_in_the_top_k(model, photos) -> None:
    x = torch.stack([prepare(model, p).tensor for p in photos])
    crops = [np.zeros((99, 99, 3)) for _ in photos]
    first = [r.top[0].index for r in ranked(model, x, [str(p) for p in photos], [None] * 3)]
    for targets in (first, [0, 1, None], [5, 5, 5], [None, None, None]):
        results = ranked(model, x, [str(p) for p in photos], targets, topk=2)
        fig = plot_predictions(results, crops)
        red = sum(
            1
            for ax in fig.axes
            for bar in ax.patches
            if tuple(np.round(bar.get_facecolor()[:3], 2)) == (0.84, 0.15, 0.16)  # matplotlib's tab:red
        )
        assert red == sum(r.target_rank is not None and r.target_rank <= 2 for r in results)
        assert red == 3 or targets is not first  # each image's own top class: three red bars


def test_cli_writes_the_figure_and_the_numbers_and_takes_targets(
    model, photos, tmp_path: Path, capsys
) -> None:
    weights = save_weights(model, tmp_path / "m.safetensors", model.weights_meta)
    args = ["visualize", "predictions", "--weights", str(weights), *map(str, photos)]
    assert main([*args, "--out", str(tmp_path / "a"), "--topk", "4"]) == 0
    assert capsys.readouterr().out.split() == [
        str(tmp_path / "a" / "predictions.png"),
        str(tmp_path / "a" / "predictions.json"),
    ]
    saved = json.loads((tmp_path / "a" / "predictions.json").read_text())
    assert saved["topk"] == 4 and [len(i["top"]) for i in saved["images"]] == [4, 4, 4]
    assert [i["target_label"] for i in saved["images"]] == ["cat", "coffee", None]
    assert main([*args, "--out", str(tmp_path / "b"), "--targets", "3,3,2"]) == 0  # repeats allowed
    saved = json.loads((tmp_path / "b" / "predictions.json").read_text())
    assert [i["target"] for i in saved["images"]] == [3, 3, 2]
    capsys.readouterr()
    for bad, says in [
        ("1,2", "--targets gives 2 classes for 3 images"),
        ("1,9,2", "class 9 is out of range"),
    ]:
        assert main([*args, "--out", str(tmp_path / "c"), "--targets", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and says in err
    assert not (tmp_path / "c" / "predictions.json").exists()
