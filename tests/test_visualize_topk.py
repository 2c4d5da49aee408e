"""ZF Fig. 2 streaming top-k: equals brute force, resumes to the same result, renders patches + projections."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import alexnet
from alexnet.errors import DataError, Interrupted
from alexnet.inputs import prepare
from alexnet.models.capture import capture
from alexnet.visualize import topk
from alexnet.visualize.topk import (
    TopK,
    folder_items,
    render_top9,
    stream_topk,
    topk_json,
    write_topk,
)


def _photos() -> list[tuple[torch.Tensor, str]]:
    """Ten distinct real images: three photographs, their mirror images and crops."""
    import skimage.data

    base = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]
    items = []
    for i, pic in enumerate(base):
        t = torch.from_numpy(np.ascontiguousarray(pic)).permute(2, 0, 1).contiguous()
        items.append((t, f"photo{i}"))
        items.append((t.flip(-1).contiguous(), f"photo{i}_mirror"))
        items.append((t[:, : t.shape[1] * 3 // 4, : t.shape[2] * 3 // 4].contiguous(), f"photo{i}_crop"))
    items.append((items[0][0][:, 40:, 60:].contiguous(), "photo0_crop2"))
    return items


@pytest.fixture(scope="module")
def model() -> alexnet.models.AlexNetFamily:
    torch.manual_seed(0)
    return alexnet.create_model("zfnet", init="pytorch").eval()


def brute_force(model, items, layer, k):
    x = torch.stack([prepare(model, im).tensor for im, _ in items])
    acts = capture(model, x, [layer])[layer].flatten(2).amax(2)  # N×C: each image's strongest unit
    values, index = acts.T.sort(dim=1, descending=True, stable=True)
    return values[:, :k].numpy(), index[:, :k].numpy()


def test_streaming_topk_equals_brute_force(model) -> None:
    items = _photos()
    state = stream_topk(model, items, "pool2", k=4, batch_size=3)
    values, index = brute_force(model, items, "pool2", 4)
    np.testing.assert_allclose(state.values, values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.images, index)
    assert state.seen == len(items)
    # Only kept images' paths are remembered (memory bounded by channels × k).
    assert set(state.paths) == set(np.unique(state.images).tolist())
    # The recorded unit holds the recorded value.
    x = prepare(model, items[int(state.images[5, 0])][0]).tensor.unsqueeze(0)
    row, col = state.units[5, 0]
    assert capture(model, x, ["pool2"])["pool2"][0, 5, row, col] == pytest.approx(state.values[5, 0])


def test_resume_continues_to_the_same_result(model, tmp_path: Path) -> None:
    items = _photos()
    straight = stream_topk(model, items, "conv3", k=3, batch_size=2)
    # An interrupted run: it saw the first 6 images (saving every batch) and stopped.
    stream_topk(model, items[:6], "conv3", k=3, batch_size=2, state_dir=tmp_path, save_every=1)
    assert TopK.load(tmp_path).seen == 6
    resumed = stream_topk(model, items, "conv3", k=3, batch_size=2, state_dir=tmp_path, resume=True)
    np.testing.assert_allclose(resumed.values, straight.values, rtol=1e-5)
    np.testing.assert_array_equal(resumed.images, straight.images)
    np.testing.assert_array_equal(resumed.units, straight.units)
    assert resumed.paths == straight.paths and resumed.seen == len(items)


@pytest.mark.parametrize("batch_under_way", ["readable", "unreadable"])
def test_ctrl_c_mid_pass_saves_the_batch_under_way_and_resume_gives_the_uninterrupted_result(
    model, tmp_path: Path, monkeypatch, ctrl_c_reaches_us, batch_under_way: str
) -> None:
    """SIGINT arrives while the third batch is being read: that batch is finished and saved (not only the
    every-10-batches state), also when none of its files decodes; the pass stops with exit code 130, the
    handlers are restored and --resume completes it as one pass would."""
    items = _photos()
    if batch_under_way == "unreadable":
        bad = tmp_path / "notes.jpg"
        bad.write_text("not an image")
        items = [*items[:4], (bad, "notes-1.jpg"), (bad, "notes-2.jpg"), *items[4:]]
    state_dir = tmp_path / "state"
    straight = stream_topk(model, items, "conv3", k=3, batch_size=2)
    before = signal.getsignal(signal.SIGINT)

    read = topk.prepared_batches

    def ctrl_c_in_batch_3(*args, **kwargs):
        for n, batch in enumerate(read(*args, **kwargs), 1):
            if n == 3:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(topk, "prepared_batches", ctrl_c_in_batch_3)
    with pytest.raises(Interrupted) as stopped:
        stream_topk(model, iter(items), "conv3", k=3, batch_size=2, state_dir=state_dir, total=len(items))
    monkeypatch.undo()
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == (
        f"SIGINT: stopped after 6 of {len(items)} images; state saved in {state_dir}: run the same command "
        "with --resume to continue"
    )
    assert signal.getsignal(signal.SIGINT) is before
    saved = TopK.load(state_dir)
    assert (saved.seen, saved.skipped) == ((6, 0) if batch_under_way == "readable" else (4, 2))
    resumed = stream_topk(model, items, "conv3", k=3, batch_size=2, state_dir=state_dir, resume=True)
    np.testing.assert_allclose(resumed.values, straight.values, rtol=1e-5)
    np.testing.assert_array_equal(resumed.images, straight.images)
    assert resumed.paths == straight.paths
    assert (resumed.seen, resumed.skipped) == (straight.seen, straight.skipped)


def test_unreadable_files_are_skipped_and_counted(model, tmp_path: Path, chelsea_jpeg: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    state = stream_topk(model, [(bad, str(bad)), (chelsea_jpeg, str(chelsea_jpeg))], "conv1", k=2)
    assert state.seen == 1 and state.skipped == 1
    assert (state.images[:, 0] == 0).all() and (state.images[:, 1] == -1).all()


def test_json_boxes_are_receptive_fields_and_grids_render(model, tmp_path: Path) -> None:
    items = [(p, f"{tmp_path}/img{i}.png") for i, (p, _) in enumerate(_photos()[:9])]
    from PIL import Image

    for t, path in items:
        Image.fromarray(t.permute(1, 2, 0).numpy()).save(path)
    files = [(Path(p), p) for _, p in items]
    state = stream_topk(model, files, "conv5", k=9, batch_size=5)
    data = topk_json(model, state, 224)
    entry = data["channels"][7]["top"][0]
    field = alexnet.analysis.summary.receptive_fields(model)["conv5"]
    assert entry["box"] == list(field.box(*entry["unit"], 224))
    assert len(data["channels"]) == 256 and len(data["channels"][0]["top"]) == 9
    written = write_topk(model, state, tmp_path / "out") + render_top9(model, state, tmp_path / "out", [0, 7])
    assert [p.name for p in written] == ["top9.json", "top9.npz", "channel_000.png", "channel_007.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_another_rules_grids_are_its_projections_and_sit_beside_the_deconvnets(model, tmp_path: Path) -> None:
    """``rule``: the same nine units projected by the gradient or guided pass (their own grid, not ZF's)."""
    from PIL import Image

    from alexnet.analysis.summary import receptive_fields
    from alexnet.predict import preprocessing_of
    from alexnet.visualize.deconvnet import deconvnet
    from alexnet.visualize.plot import field_crop, projection_to_image
    from alexnet.visualize.topk import render_channel

    paths = []
    for i, photo in enumerate(_photos()[:3]):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(photo[0].permute(1, 2, 0).numpy()).save(paths[-1])
    state = stream_topk(model, [(p, str(p)) for p in paths], "conv4", k=9, batch_size=3)
    grids = {rule: render_channel(model, state, 5, rule)[1] for rule in ("deconvnet", "guided")}
    assert not np.allclose(grids["deconvnet"], grids["guided"], atol=0.02)
    # the strongest entry's tile is its own guided projection, cropped to the unit's receptive field
    _, path, row, col = state.entries(5)[0]
    x = prepare(model, path).tensor[None]
    alone = deconvnet(model, x, "conv4", 5, (row, col), rule="guided")[0]
    prep = preprocessing_of(model)
    field = receptive_fields(model)["conv4"]
    side = min(field.size, prep.input_size)
    tile = field_crop(projection_to_image(alone, prep), field.box(row, col), side, 0.5)
    np.testing.assert_allclose(grids["guided"][:side, :side], tile, atol=2e-3)
    written = render_top9(model, state, tmp_path / "out", [5], rule="guided")
    assert [p.name for p in written] == ["channel_005_guided.png"]


def test_resume_refuses_another_model_weights_layer_or_images_and_writes_nothing(
    model, tmp_path: Path
) -> None:
    items = _photos()[:4]
    stream_topk(model, items, "conv1", k=2, batch_size=2, state_dir=tmp_path)
    saved = (tmp_path / "state.npz").read_bytes()
    torch.manual_seed(1)
    retrained = alexnet.create_model("zfnet", init="pytorch").eval()  # same name, other weights
    torch.manual_seed(0)
    other = alexnet.create_model("alexnet_owt", init="pytorch").eval()
    renamed = [(im, f"elsewhere/{name}") for im, name in items]
    cases = [
        (retrained, items, "conv1", 2, ["weights"]),
        (other, items, "conv1", 2, ["model zfnet, not alexnet_owt", "weights"]),
        (model, items, "relu1", 2, ["layer conv1, not relu1"]),
        (model, items, "conv1", 3, ["top-2, not top-3"]),
        (model, renamed, "conv1", 2, ["images: the first 4"]),
        (model, items[:3], "conv1", 2, ["images: it consumed 4, this listing has only 3"]),
    ]
    for net, listing, layer, k, expected in cases:
        with pytest.raises(DataError, match="cannot resume") as e:
            stream_topk(net, listing, layer, k=k, batch_size=2, state_dir=tmp_path, resume=True)
        assert all(part in str(e.value) for part in expected), str(e.value)
        assert "\n" not in str(e.value)
        assert (tmp_path / "state.npz").read_bytes() == saved  # refused before anything was written
    earlier = TopK.load(tmp_path)
    earlier.decoding = ""  # a pass begun before large JPEGs were decoded at reduced size
    earlier.save(tmp_path)
    with pytest.raises(DataError, match="decoded whole by an earlier version"):
        stream_topk(model, items, "conv1", k=2, batch_size=2, state_dir=tmp_path, resume=True)


def test_resume_refuses_a_state_that_does_not_record_its_origin(model, tmp_path: Path) -> None:
    TopK.empty("conv1", 96, 2).save(tmp_path)  # as an older version wrote it: no model, weights or listing
    with pytest.raises(DataError, match="does not record"):
        stream_topk(model, _photos()[:2], "conv1", k=2, state_dir=tmp_path, resume=True)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_a_split_missing_from_a_root_with_splits_is_refused_not_streamed_whole(tmp_path: Path) -> None:
    _touch(tmp_path / "train" / "cat" / "a.jpg")
    _touch(tmp_path / "val" / "cat" / "b.jpg")
    assert [name for _, name in folder_items(tmp_path, "val")] == [str(tmp_path / "val" / "cat" / "b.jpg")]
    with pytest.raises(DataError, match=r"no split 'nosplit' in .* \(found: train, val\)"):
        folder_items(tmp_path, "nosplit")


def test_a_folder_without_split_folders_is_read_whole_in_path_order(tmp_path: Path) -> None:
    files = [
        _touch(tmp_path / "cat" / "b.jpg"),
        _touch(tmp_path / "cat" / "a.jpg"),
        _touch(tmp_path / "z.jpg"),
    ]
    got = [name for _, name in folder_items(tmp_path, "val")]
    assert got == sorted(str(f) for f in files)


def test_the_listing_names_files_by_absolute_path_whatever_the_working_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """A pass started with a relative --data resumes from another folder: the digest of the images consumed is
    over the same names."""
    image = _touch(tmp_path / "data" / "val" / "cat" / "b.jpg")
    monkeypatch.chdir(tmp_path)
    relative = folder_items("data", "val")
    monkeypatch.chdir(tmp_path / "data")
    assert [n for _, n in relative] == [n for _, n in folder_items(tmp_path / "data", "val")] == [str(image)]


def test_batches_decoded_by_worker_processes_are_prepare_s_inputs_in_order(model, tmp_path: Path) -> None:
    """Top-9's and retrieval's decoding in worker processes hands over, span by span and in order, exactly the
    tensors prepare() makes in this process, and the places of the files that do not decode."""
    from PIL import Image

    from alexnet.inputs import prepared_batches, spans

    files: list[Path] = []
    for image, name in _photos()[:5]:
        files.append(tmp_path / f"{name}.jpg")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1], quality=90)
    (tmp_path / "notes.jpg").write_text("not an image")
    files.insert(2, tmp_path / "notes.jpg")
    chunks = spans(len(files), 4)
    assert chunks == [(0, 4), (4, 6)] and spans(6, 4, start=5) == [(5, 6)]
    got = list(prepared_batches(model, files, chunks, workers=2))
    assert [bad for _, bad in got] == [[2], []]
    readable = [f for f in files if f.name != "notes.jpg"]
    expected = torch.stack([prepare(model, f).tensor for f in readable])
    assert torch.equal(torch.cat([batch for batch, _ in got]), expected)
    assert list(prepared_batches(model, files, [(2, 3)])) == [(None, [0])]


def test_a_pass_with_decoding_workers_keeps_what_the_pass_in_one_process_keeps(model, tmp_path: Path) -> None:
    from PIL import Image

    items = []
    for image, name in _photos()[:7]:
        path = tmp_path / f"{name}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        items.append((path, str(path)))
    items.insert(3, (tmp_path / "gone.png", str(tmp_path / "gone.png")))  # listed, then missing
    alone = stream_topk(model, items, "conv2", k=3, batch_size=3)
    helped = stream_topk(model, items, "conv2", k=3, batch_size=3, workers=2)
    np.testing.assert_array_equal(helped.values, alone.values)
    np.testing.assert_array_equal(helped.images, alone.images)
    np.testing.assert_array_equal(helped.units, alone.units)
    assert (helped.paths, helped.seen, helped.skipped) == (alone.paths, 7, 1)
