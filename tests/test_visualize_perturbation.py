"""Region perturbation (Samek et al., IEEE TNNLS 2017; ``alexnet.visualize.perturbation`` and ``alexnet visualize
perturbation``): the MoRF sequence, the tiles' order, the AOPC formula against the model's own outputs, an
ordering that knows each tile's effect beating a random one and its reverse, the noise pictures, the seed, the
command, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.errors import SelectionError
from alexnet.visualize.lrp import pixel_bounds
from alexnet.visualize.perturbation import (
    METHODS,
    noise_images,
    perturbed,
    pixel_scores,
    region_order,
    region_perturbation,
    table,
    tiles,
)
from test_visualize_class_projection import _images, _model, run_visualize, ten_class_weights

pytestmark = [pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")]


def test_the_grid_is_centred_and_a_region_too_large_is_refused() -> None:
    assert tiles(227, 227, 9) == (25, 25, 1, 1)
    assert tiles(224, 100, 9) == (24, 11, 4, 0)
    with pytest.raises(SelectionError, match="a 30×30 region does not fit a 20×40 image"):
        tiles(20, 40, 30)


def test_tiles_are_ranked_by_their_summed_score_ties_in_the_shuffles_order() -> None:
    scores = torch.zeros(2, 20, 20)  # a 2×2 grid of 9×9 tiles from (1, 1)
    scores[0, 1:10, 10:19] = 1.0  # tile 1
    scores[0, 10, 1] = 90.0  # one pixel of tile 2, the highest sum (tile 1: 81)
    scores[0, 0, 0] = 100.0  # outside the grid: not counted
    scores[1, 15, 15] = -1.0  # tile 3 lowest, the others tie
    assert region_order(scores[0], 9).tolist() == [2, 1, 0, 3]
    assert region_order(scores[1], 9).tolist() == [0, 1, 2, 3]
    assert region_order(scores[1], 9, torch.tensor([2, 3, 0, 1])).tolist() == [2, 0, 1, 3]
    assert region_order(scores[0], 9, torch.tensor([2, 3, 0, 1])).tolist() == [2, 1, 3, 0]  # 0 and 3 tie


def test_each_step_destroys_the_next_tile_and_keeps_the_ones_before_destroyed() -> None:
    """Samek et al.'s x⁽ᵏ⁾ = g(x⁽ᵏ⁻¹⁾, r_k): step k differs from step k − 1 in tile r_k alone, which holds the
    noise's pixels; step 0 is the image."""
    torch.manual_seed(0)
    x, noise = torch.rand(3, 20, 20), torch.rand(3, 20, 20) + 2
    seq = perturbed(x, noise, torch.tensor([3, 0, 2, 1]), 9, 3)
    assert seq.shape == (4, 3, 20, 20)
    torch.testing.assert_close(seq[0], x)
    for k, (r, c) in enumerate([(1, 1), (0, 0), (1, 0)], start=1):
        ys, xs = slice(1 + 9 * r, 10 + 9 * r), slice(1 + 9 * c, 10 + 9 * c)
        torch.testing.assert_close(seq[k][:, ys, xs], noise[:, ys, xs])
        changed = (seq[k] != seq[k - 1]).any(0)
        assert changed[ys, xs].all() and changed.sum() == 81
    torch.testing.assert_close(seq[3][:, 1:10, 10:19], x[:, 1:10, 10:19])  # tile 1 never reached


def test_the_noise_is_uniform_pictures_through_the_models_preprocessing() -> None:
    model = _model("alexnet")
    noise = noise_images(model, 2, (227, 227), seed=5)
    low, high = pixel_bounds(model, noise)
    assert ((noise >= low - 1e-6) & (noise <= high + 1e-6)).all()
    # every colour of every pixel 0-255: the mean near the middle of the box, the spread of a uniform picture
    middle = (low + high) / 2
    assert float((noise.double() - middle).mean().abs()) < 0.02
    torch.testing.assert_close(noise, noise_images(model, 2, (227, 227), seed=5))
    assert not torch.equal(noise, noise_images(model, 2, (227, 227), seed=6))


def test_the_curves_are_the_models_outputs_and_aopc_their_mean_fall() -> None:
    """AOPC = 1/(L+1) Σ_{k=0}^{L} f(x⁽⁰⁾) − f(x⁽ᵏ⁾), f the class's score read from the model for each perturbed image
    (here recomputed from the sequence the method's order gives)."""
    model = _model("alexnet_owt")
    x = _images(model, 2)
    methods = ["random", "gradient", "smoothgrad"]
    res = region_perturbation(model, x, [1, 4], methods, region=32, steps=5, seed=0, samples=3)
    assert res.methods == methods and res.targets.tolist() == [1, 4]
    assert res.outputs.shape == (2, 3, 6)
    torch.testing.assert_close(res.aopc, (res.outputs[..., :1] - res.outputs).mean(-1))
    with torch.no_grad():
        torch.testing.assert_close(res.outputs[:, 0, 0], model(x)[[0, 1], [1, 4]].double())
    from alexnet.visualize.attributions import class_maps

    # the second image's maps are its own, made as for it alone (SmoothGrad's noise from the seed)
    scores = pixel_scores(class_maps(model, x[1:], res.targets[1:], methods[1:], samples=3), methods[1:])
    g = torch.Generator().manual_seed(0)
    [torch.randperm(49, generator=g) for _ in range(2)]  # the random orders
    ties = [torch.randperm(49, generator=g) for _ in range(2)]
    noise = noise_images(model, 2, (224, 224), 0).double()
    for j in (1, 2):
        seq = perturbed(x[1], noise[1], region_order(scores[0, j - 1], 32, ties[1]), 32, 5)
        with torch.no_grad():
            torch.testing.assert_close(res.outputs[1, j], model(seq)[:, 4])


def test_an_order_that_knows_each_tiles_effect_beats_a_random_order_and_its_reverse() -> None:
    """The paper's premise: the faster the output falls, the better the map. A map holding each tile's own fall
    (the tile destroyed alone) must score a higher AOPC than the random order, and its reverse (least relevant
    first) a lower one."""
    model = _model("alexnet")
    x = _images(model, 1)
    target = 2
    rows, cols, top, left = tiles(227, 227, 32)
    noise = noise_images(model, 1, (227, 227), 0).double()
    with torch.no_grad():
        f0 = model(x)[0, target]
        oracle = torch.zeros(1, 227, 227, dtype=torch.float64)
        for t in range(rows * cols):
            r, c = divmod(t, cols)
            ys, xs = slice(top + 32 * r, top + 32 * (r + 1)), slice(left + 32 * c, left + 32 * (c + 1))
            one = x.clone()
            one[0, :, ys, xs] = noise[0, :, ys, xs]
            oracle[0, ys, xs] = (f0 - model(one)[0, target]) / 32**2
    res = region_perturbation(
        model, x, target, ["random"], {"oracle": oracle, "reverse": -oracle}, region=32, steps=20
    )
    random, best, worst = res.aopc[0].tolist()
    assert best > random > worst


def test_every_method_runs_and_the_seed_fixes_the_noise_and_the_random_order() -> None:
    model = _model("zfnet", torch.float32)
    x = _images(model, 1)
    kwargs = {"region": 56, "steps": 4, "samples": 2, "integration_steps": 2}
    res = region_perturbation(model, x, 0, METHODS, **kwargs)
    assert res.methods == list(METHODS) and torch.isfinite(res.aopc).all()
    again = region_perturbation(model, x, 0, ["random", "lrp"], **kwargs)
    torch.testing.assert_close(again.outputs[0], res.outputs[0, [0, METHODS.index("lrp")]])
    other = region_perturbation(model, x, 0, ["random"], seed=1, **kwargs)
    assert not torch.equal(other.outputs[0, 0], res.outputs[0, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"methods": ["gradient", "lime"]}, "unknown method 'lime'; choose from random, gradient"),
        ({"methods": []}, "no method given"),
        ({"region": 0}, "the region must be at least 1 pixel, not 0"),
        ({"steps": 0}, "steps must be at least 1, not 0"),
        ({"batch_size": 0}, "the batch size must be at least 1, not 0"),
        ({"samples": 0}, "SmoothGrad's samples must be at least 1, not 0"),
        ({"integration_steps": 0}, "integrated gradients' steps must be at least 1, not 0"),
        ({"output": "logit"}, "unknown output 'logit'"),
        ({"maps": {"gradient": torch.zeros(1, 227, 227)}, "methods": ["gradient"]}, "'gradient' is both"),
        ({"maps": {"mine": torch.zeros(1, 200, 200)}, "methods": []}, "map 'mine' is (1, 200, 200)"),
        ({"target": 10}, "class 10 is out of range"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    model = _model("alexnet", torch.float32)
    with pytest.raises(SelectionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        region_perturbation(model, _images(model, 1), **kwargs)


def test_the_command_prints_the_table_and_writes_the_curves(
    tmp_path: Path, capsys, chelsea_jpeg: Path
) -> None:
    weights = ten_class_weights(tmp_path)
    out = tmp_path / "out"
    args = ["--weights", str(weights), "--out", str(out), "--methods", "random,gradient,lrp", "--steps", "3"]
    code, stdout, err = run_visualize(capsys, "perturbation", str(chelsea_jpeg), str(chelsea_jpeg), *args)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "region perturbation (MoRF): 9×9 regions, 3 steps, 2 image(s), the class's score"
    assert sorted(line.split()[0] for line in lines[2:5]) == ["gradient", "lrp", "random"]
    numbers = json.loads((out / "perturbation.json").read_text())
    assert numbers["steps"] == 3 and len(numbers["methods"]["lrp"]["aopc"]) == 2
    assert len(numbers["methods"]["gradient"]["mean_fall"]) == 4
    data = np.load(out / "perturbation.npz")
    assert data["outputs"].shape == (2, 3, 4)
    assert (out / "perturbation.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "gradient,lime"], "unknown method 'lime'"),
        (["--region", "0"], "the region must be at least 1 pixel"),
        (["--steps", "-2"], "steps must be at least 1"),
        (["--target", "12"], "class 12 is out of range"),
        (["--samples", "0"], "--samples must be at least 1"),
        (["--integration-steps", "0"], "--integration-steps must be at least 1"),
    ],
)
def test_the_command_refuses_bad_settings_in_one_line(
    tmp_path: Path, capsys, chelsea_jpeg: Path, args: list[str], message: str
) -> None:
    weights = ten_class_weights(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_visualize(
        capsys, "perturbation", str(chelsea_jpeg), "--weights", str(weights), "--out", str(out), *args
    )
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not out.exists() or not any(out.iterdir())


def test_the_table_ranks_by_aopc_and_pairs_each_method_with_random_on_the_same_images() -> None:
    from alexnet.visualize.perturbation import Perturbation, table

    aopc = torch.tensor([[1.0, 3.0, 2.0], [2.0, 5.0, 2.0]], dtype=torch.float64)  # images × (random, a, b)
    res = Perturbation(
        ["random", "a", "b"], torch.zeros(2, 3, 2), aopc, torch.tensor([0, 1]), 9, 1, "score", 0
    )
    lines = table(res).splitlines()
    assert lines[1].split() == ["method", "AOPC", "±", "s.e.", "−", "random", "±", "s.e."]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert [line.split()[0] for line in lines[2:]] == ["a", "b", "random"]
    assert float(rows["a"][0]) == 4.0 and float(rows["a"][2]) == 2.5  # differences 2 and 3
    assert float(rows["a"][3]) == pytest.approx(0.5)  # their std (0.707) / √2
    assert float(rows["b"][2]) == 0.5 and float(rows["random"][2]) == 0.0
    alone = Perturbation(["a"], torch.zeros(2, 1, 2), aopc[:, 1:2], torch.tensor([0, 1]), 9, 1, "score", 0)
    assert "random" not in table(alone).splitlines()[1]


def test_a_stop_after_an_image_keeps_the_images_done() -> None:
    model = _model("alexnet_owt", torch.float32)
    x = _images(model, 3)
    kwargs = {"methods": ["random", "gradient"], "region": 56, "steps": 3}
    whole = region_perturbation(model, x, **kwargs)
    asked = []
    part = region_perturbation(model, x, stop=lambda: asked.append(1) or len(asked) == 2, **kwargs)
    assert not part.complete and part.asked == 3 and part.aopc.shape == (2, 2)
    torch.testing.assert_close(part.outputs, whole.outputs[:2])
    assert "the first 2 of 3 images (stopped early)" in table(part).splitlines()[0]
    assert whole.complete and "3 image(s)" in table(whole).splitlines()[0]


def test_ctrl_c_finishes_the_image_under_way_writes_the_images_done_and_exits_130(
    tmp_path: Path, capsys, chelsea_jpeg: Path, monkeypatch, ctrl_c_reaches_us
) -> None:
    """SIGINT while the first image's outputs are read: that image is finished, the second never started."""
    import os
    import signal

    from alexnet.visualize import perturbation

    real, calls = perturbation._outputs, []

    def ctrl_c_in_the_first_image(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(perturbation, "_outputs", ctrl_c_in_the_first_image)
    weights = ten_class_weights(tmp_path)
    out = tmp_path / "out"
    before = signal.getsignal(signal.SIGINT)
    args = ["--weights", str(weights), "--out", str(out), "--methods", "random,lrp", "--steps", "2"]
    code, stdout, err = run_visualize(capsys, "perturbation", str(chelsea_jpeg), str(chelsea_jpeg), *args)
    assert code == 130
    assert "alexnet: SIGINT: stopped after 1 of 2 images; their results are written" in err
    assert signal.getsignal(signal.SIGINT) is before
    assert "the first 1 of 2 images (stopped early)" in stdout.splitlines()[0]
    numbers = json.loads((out / "perturbation.json").read_text())
    assert numbers["complete"] is False and numbers["images_asked"] == 2 and len(numbers["images"]) == 1
    assert np.load(out / "perturbation.npz")["outputs"].shape == (1, 2, 3)
    assert str(out / "perturbation.png") in stdout
