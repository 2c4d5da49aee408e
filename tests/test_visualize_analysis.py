"""ZF Fig. 5 invariance curves, AlexNet Fig. 4 retrieval, ZF Fig. 4 feature evolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet
from alexnet.analysis import features
from alexnet.analysis.features import extract_features
from alexnet.inputs import prepare
from alexnet.models.capture import capture
from alexnet.visualize.evolution import evolution, plot_evolution, read_snapshot, run_snapshots
from alexnet.visualize.invariance import invariance, plot_invariance, transformed_inputs
from alexnet.visualize.retrieval import (
    nearest,
    nearest_in_blocks,
    plot_retrieval,
    retrieve,
)


@pytest.fixture(scope="module")
def model() -> alexnet.models.AlexNetFamily:
    torch.manual_seed(0)
    return alexnet.create_model("alexnet_owt", init="pytorch").eval()


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    import skimage.data

    pics = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    return [torch.from_numpy(np.ascontiguousarray(p)).permute(2, 0, 1).contiguous() for p in pics]


def test_identity_transform_gives_the_evaluation_input(model, photos) -> None:
    x = transformed_inputs(model, photos[0], "rotation", np.array([0.0]))[0]
    torch.testing.assert_close(x, prepare(model, photos[0]).tensor, atol=1e-4, rtol=0)  # fp32 grid sampling


@pytest.mark.parametrize(
    ("kind", "values"),
    [("translation", [-40.0, 0.0, 40.0]), ("scale", [0.8, 1.0, 1.4]), ("rotation", [0.0, 45.0, 180.0])],
)
def test_invariance_curves_are_zero_at_the_identity(model, photos, kind: str, values: list[float]) -> None:
    curves = invariance(model, photos[:2], kind, np.array(values))
    for layer, d in curves.distances.items():
        assert d.shape == (2, 3)
        ident = values.index(0.0 if kind != "scale" else 1.0)
        assert np.all(d[:, ident] < 1e-3 * d.max()), layer
        assert np.all(np.delete(d, ident, axis=1) > 0)
    # At the identity the true-class probability is the one of the untransformed image.
    x = torch.stack([prepare(model, p).tensor for p in photos[:2]])
    probs = capture(model, x, ["fc8"])["fc8"].softmax(1)
    for i, t in enumerate(curves.targets):
        assert curves.probability[i, ident] == pytest.approx(float(probs[i, t]), abs=1e-5)
    assert len(plot_invariance([curves], ["a", "b"]).axes) == 3


def test_nearest_is_euclidean_and_sorted() -> None:
    g = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    d, i = nearest(torch.tensor([[0.0, 0.0]]), g, 3)
    assert i.tolist() == [[0, 2, 3]] and d.tolist() == [[0.0, 1.0, 2.0]]


def test_retrieval_finds_the_query_itself_first_and_caches_each_shard(
    model, gallery_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    files = sorted((gallery_dir / "train").rglob("*.png"))
    g = extract_features(model, files, cache_dir=tmp_path, shard=3)
    assert g.features.shape == (8, 4096)
    assert float(g.features.min()) >= 0  # AlexNet §6.1: the hidden layer's activations, after fc7's ReLU
    (folder,) = tmp_path.glob("relu7-*")
    assert sorted(f.name for f in folder.iterdir()) == [f"{n:06d}.safetensors" for n in range(3)]  # 3 + 3 + 2
    monkeypatch.setattr(
        features, "_extract", lambda *a: pytest.fail("extracted again, not read from the cache")
    )
    again = extract_features(model, files, cache_dir=tmp_path, shard=3)
    torch.testing.assert_close(again.features, g.features)
    assert again.paths == g.paths == [str(f) for f in files]
    queries = [files[0], files[5]]
    r = retrieve(model, queries, again, k=3)
    assert [r.gallery[int(n)] for n in r.neighbours[:, 0]] == [str(files[0]), str(files[5])]
    assert np.allclose(r.distances[:, 0], 0, atol=1e-3) and (np.diff(r.distances, axis=1) >= 0).all()
    assert len(plot_retrieval(model, r).axes) == 2 * 4


@pytest.mark.parametrize("sizes", [[7], [1, 6], [3, 3, 1], [2, 0, 5]])
def test_the_search_over_blocks_equals_the_search_over_the_whole_gallery(sizes: list[int]) -> None:
    """Block by block, one block in memory at a time, the k nearest are those of the whole matrix."""
    torch.manual_seed(0)
    gallery, queries = torch.randn(7, 16), torch.randn(3, 16)
    blocks = list(gallery.split(sizes)) if 0 not in sizes else [gallery[:2], gallery[:0], gallery[2:]]
    whole = torch.cdist(queries.double(), gallery.double()).topk(4, dim=1, largest=False)
    d, i = nearest_in_blocks(queries, blocks, 4)
    assert torch.equal(i, whole.indices)
    torch.testing.assert_close(d, whole.values)
    d, i = nearest_in_blocks(queries, blocks, 10)  # more than the gallery holds: all of it, nearest first
    assert i.shape == (3, 7) and (d.diff(dim=1) >= 0).all()


def test_evolution_reads_checkpoints_in_step_order(model, photos, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(1)
    later = alexnet.create_model("alexnet_owt", init="pytorch")
    for step, m in ((200, later), (10, model)):
        torch.save({"format": "x", "model": m.state_dict(), "epoch": step // 100, "step": step},
                   run / "checkpoints" / f"step-{step:08d}.pt")  # fmt: skip
    files = run_snapshots(run)
    assert [f.name for f in files] == ["step-00000010.pt", "step-00000200.pt"]
    snaps = [read_snapshot(f) for f in files]
    assert snaps[0].label == "epoch 0, step 10"
    x = torch.stack([prepare(model, p).tensor for p in photos[:2]])
    ev = evolution(model, x, snaps, "conv2", [3, 7])
    assert ev.projections.shape == (2, 2, 3, 224, 224)
    # Column 0 is `model`'s own weights: its strongest conv2 activation, found independently.
    acts = capture(model, x, ["conv2"])["conv2"][:, 3]
    assert ev.values[0, 0] == pytest.approx(float(acts.max()), rel=1e-5)
    assert ev.image[0, 0] == int(acts.flatten(1).amax(1).argmax())
    assert len(plot_evolution(model, ev).axes) == 4
