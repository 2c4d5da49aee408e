"""ZF §4.2's correspondence analysis (Table 1, Fig. 8): the sign-change measure, the squares, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet
from alexnet.cli import main
from alexnet.data.transforms import eval_crop
from alexnet.errors import SelectionError
from alexnet.predict import preprocessing_of
from alexnet.visualize.correspondence import (
    correspondence,
    crop_position,
    masked,
    pair_sign_changes,
    sign_change,
)


@pytest.fixture(scope="module")
def model() -> alexnet.models.AlexNetFamily:
    """A small alexnet as `make demo` trains it: 99-pixel crops of images resized to 112."""
    from alexnet.data.preprocess import Preprocessing
    from alexnet.weights import WeightsMeta

    torch.manual_seed(0)
    net = alexnet.create_model("alexnet", num_classes=10, input_size=99).eval()
    net.weights_meta = WeightsMeta(preprocessing=Preprocessing(input_size=99, resize=112))
    return net


def test_sign_change_is_the_hamming_distance_of_the_signs_per_feature() -> None:
    a = torch.tensor([1.0, -2.0, 0.0, 3.0, 0.0])
    b = torch.tensor([2.0, 1.0, 0.0, -1.0, 5.0])  # differs at 1, 3 and 4 (0 is a sign of its own)
    assert sign_change(a, b) == pytest.approx(3 / 5)
    assert sign_change(a, a * 7) == 0.0
    eps = torch.stack([a, b, -a])
    # ZF's Δ sums over i ≠ j; H is symmetric, so the pairs i < j: (a, b), (a, −a), (b, −a)
    np.testing.assert_allclose(pair_sign_changes(eps), [3 / 5, 3 / 5, sign_change(b, -a)])


def test_the_same_part_of_identical_images_changes_their_features_identically(model) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 99, 99).repeat(3, 1, 1, 1)
    r = correspondence(model, x, {"spot": [(40, 30)] * 3}, size=20, draws=4)
    scores = r.scores()
    for layer in ("pool5", "relu7"):
        assert scores[layer]["spot"] == {"mean": 0.0, "std": 0.0}  # Δ = 0: a perfect correspondence
        assert scores[layer]["random"]["mean"] > 0  # independent squares per image change them otherwise
        assert len(r.pairs[layer]["random"]) == 4 * 3  # draws × pairs
    assert r.boxes["spot"] == [(40, 30)] * 3 and len(r.boxes["random"]) == 3
    # and the same seed gives the same random squares, hence the same numbers
    again = correspondence(model, x, {"spot": [(40, 30)] * 3}, size=20, draws=4)
    np.testing.assert_array_equal(again.pairs["pool5"]["random"], r.pairs["pool5"]["random"])


def test_the_mask_is_the_mean_pixel_inside_the_square_only() -> None:
    x = torch.randn(2, 3, 16, 16)
    m = masked(x, [(2, 3), (10, 0)], 5)
    assert torch.all(m[0, :, 2:7, 3:8] == 0) and torch.all(m[1, :, 10:15, 0:5] == 0)
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[0, :, 2:7, 3:8] = False
    keep[1, :, 10:15, 0:5] = False
    assert torch.equal(m[keep], x[keep]) and not torch.equal(m, x)


@pytest.mark.parametrize(("height", "width"), [(300, 451), (451, 300), (256, 256), (97, 640)])
def test_a_pixel_of_the_image_lands_where_the_evaluation_crop_puts_it(model, height, width) -> None:
    """Paint one bright dot, crop as evaluation does, and find it where crop_position says."""
    pre = preprocessing_of(model)
    rng = np.random.default_rng(height + width)
    for _ in range(5):
        y, x = int(rng.integers(height // 3, 2 * height // 3)), int(rng.integers(width // 3, 2 * width // 3))
        image = torch.zeros(3, height, width, dtype=torch.uint8)
        image[:, max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3] = 255
        crop = eval_crop(pre)(image).float().sum(0)
        row, col = crop_position(pre.resize, pre.input_size, height, width, x + 0.5, y + 0.5)
        if not (0 <= row < pre.input_size and 0 <= col < pre.input_size):
            assert crop.max() < 255  # cut away by the crop
            continue
        ys, xs = torch.nonzero(crop > crop.max() / 2, as_tuple=True)  # the dot's footprint after resizing
        assert abs(ys.float().mean() - row) <= 1.0 and abs(xs.float().mean() - col) <= 1.0


def test_bad_part_positions_are_refused_with_what_was_wrong(model) -> None:
    x = torch.zeros(2, 3, 99, 99)
    with pytest.raises(SelectionError, match="at least two"):
        correspondence(model, x[:1], {"eye": [(0, 0)]})
    with pytest.raises(SelectionError, match="has 1 positions for 2 images"):
        correspondence(model, x, {"eye": [(0, 0)]})
    with pytest.raises(SelectionError, match="does not fit in the 99×99 input"):
        correspondence(model, x, {"eye": [(0, 0), (80, 0)]}, size=32)
    with pytest.raises(SelectionError, match="baseline's name"):
        correspondence(model, x, {"random": [(0, 0), (0, 0)]})


def _photos(tmp_path: Path) -> list[Path]:
    import skimage.data

    cat = skimage.data.chelsea()  # 300×451
    paths = [tmp_path / "cat.jpg", tmp_path / "mirrored.png", tmp_path / "shifted.jpg"]
    Image.fromarray(cat).save(paths[0])
    Image.fromarray(np.ascontiguousarray(cat[:, ::-1])).save(paths[1])
    Image.fromarray(cat[20:, 30:]).save(paths[2])
    return paths


def test_cli_prints_table_1_and_writes_fig_8_and_the_numbers(model, tmp_path: Path, capsys) -> None:
    from alexnet.weights import save_weights

    weights = save_weights(model, tmp_path / "m.safetensors", model.weights_meta)
    photos = _photos(tmp_path)
    # the cat's left eye and nose, in each file's own pixels (mirrored: x → 450 − x; shifted: −30, −20)
    parts = {"left eye": [[170, 120], [280, 120], [140, 100]], "nose": [[215, 190], [235, 190], [185, 170]]}
    (tmp_path / "parts.json").write_text(json.dumps(parts))
    args = ["visualize", "correspondence", "--weights", str(weights), "--parts", str(tmp_path / "parts.json")]
    assert (
        main([*args, *map(str, photos), "--out", str(tmp_path / "out"), "--draws", "3", "--size", "24"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["pool5", "relu7"]
    assert [line.split()[0] for line in lines[1:4]] == ["left", "nose", "random"]
    assert lines[4:] == [
        str(tmp_path / "out" / "correspondence.png"),
        str(tmp_path / "out" / "correspondence.json"),
    ]
    saved = json.loads((tmp_path / "out" / "correspondence.json").read_text())
    assert saved["layers"] == ["pool5", "relu7"] and saved["size"] == 24 and saved["draws"] == 3
    assert set(saved["scores"]["pool5"]) == {"left eye", "nose", "random"}
    for layer in saved["scores"].values():
        for score in layer.values():
            assert 0 <= score["mean"] <= 1 and score["std"] >= 0
    # the squares sit where the crop shows the points: the eye of the original and of its mirror image
    pre = preprocessing_of(model)
    top, left = saved["squares"]["left eye"][0]
    row, col = crop_position(pre.resize, pre.input_size, 300, 451, 170.5, 120.5)  # pixel (170, 120)'s centre
    assert (top, left) == (round(row - 12), round(col - 12))
    assert Image.open(tmp_path / "out" / "correspondence.png").size[0] > 0


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("not json", "not a readable JSON parts file"),
        ("[1, 2]", "expected a JSON object of parts"),
        ('{"eye": [[1, 2]]}', "part 'eye' has 1 positions for 3 images"),
        ('{"eye": [[1], [2], [3]]}', "part 'eye' should be a list of [x, y] pixels"),
        ('{"eye": [[1, 1], [100, 100], [100, 100]]}', "is outside the 99×99 centre crop"),
    ],
)
def test_a_bad_parts_file_is_one_line_and_writes_nothing(
    model, tmp_path: Path, capsys, content, says
) -> None:
    from alexnet.weights import save_weights

    weights = save_weights(model, tmp_path / "m.safetensors", model.weights_meta)
    (tmp_path / "parts.json").write_text(content)
    args = ["visualize", "correspondence", "--weights", str(weights), "--parts", str(tmp_path / "parts.json")]
    assert main([*args, *map(str, _photos(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and says in err
    assert not (tmp_path / "out" / "correspondence.json").exists()
