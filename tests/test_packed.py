"""alexnet.data.packed: pre-resized 256×256 pixels (AlexNet §2) read back instead of decoding the files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data.folders import BadSample, ImageFolder
from alexnet.data.loader import make_loader
from alexnet.data.packed import PackedPixels, attach, pack, store_dir
from alexnet.data.preprocess import Preprocessing
from alexnet.data.transforms import central_patch, eval_transform, train_transform
from alexnet.errors import Interrupted

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
PRE = Preprocessing(input_size=227)


def photo_folder(root: Path, per_class: int = 3) -> Path:
    """Real photographs as JPEGs (and one PNG) of several sizes: some large enough for the DCT-domain
    downscaling, some smaller than 256 on a side, one portrait."""
    import skimage.data

    sizes = [(451, 300), (600, 540), (200, 260), (320, 480)]
    for c, name in enumerate(PHOTOS[:2]):
        photo = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for i in range(per_class):
            folder = root / "train" / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            image = photo.resize(sizes[(c + i) % len(sizes)], Image.BICUBIC)
            image.save(folder / f"img_{i}.jpg", quality=90)
        val = root / "val" / f"class_{c}"
        val.mkdir(parents=True, exist_ok=True)
        photo.save(val / "val_0.png")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return photo_folder(tmp_path / "data")


def batches(dataset: ImageFolder, n: int = 2, workers: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = make_loader(dataset, 2, train=True, seed=3, workers=workers, pin_memory=False)
    return [b for b, _ in zip(loader, range(n), strict=False)]


def test_packed_pixels_are_the_transforms_central_patch_of_each_file(folder):
    pixels = pack(folder, "train", progress=False)
    files = ImageFolder(folder, "train")
    assert pixels.done == pixels.count == len(files) == 6
    patch = central_patch(256)
    for index, (path, _) in enumerate(files.samples):
        stored = pixels.image(path)
        assert stored is not None and stored.shape == (3, 256, 256) and stored.dtype == torch.uint8
        assert torch.equal(stored, patch(files.load(index)[0]))


def test_training_batches_from_the_store_equal_those_from_the_files(folder, monkeypatch):
    import alexnet.data.folders as folders

    pack(folder, "train", progress=False)
    files = ImageFolder(folder, "train", train_transform(PRE))
    packed = ImageFolder(folder, "train", train_transform(PRE))
    assert attach(packed, PRE.resize) is not None
    expected = batches(files)

    def no_file(*args, **kwargs):
        raise AssertionError("a file was read although the store holds it")

    monkeypatch.setattr(folders, "read_image", no_file)  # the forked workers inherit it
    for (a, ta), (b, tb) in zip(expected, batches(packed, workers=2), strict=True):
        assert torch.equal(ta, tb)
        assert torch.equal(a, b)  # same random crops, mirrors and PCA lighting, same pixels


@pytest.mark.parametrize(("decode_on_device", "workers"), [(False, 0), (True, 0), (False, 1)])
def test_batches_finished_on_the_device_read_the_store_and_match_the_cpu_loader(
    folder, monkeypatch, decode_on_device, workers
):
    """With a worker process, a stored patch is stacked into the batch straight from the store's mapping."""
    import alexnet.data.folders as folders
    import alexnet.data.on_device as on_device

    pack(folder, "train", progress=False)
    files = ImageFolder(folder, "train", train_transform(PRE))
    packed = ImageFolder(folder, "train", train_transform(PRE))
    attach(packed, PRE.resize)
    expected = batches(files)

    def no_file(*args, **kwargs):
        raise AssertionError("a file was read although the store holds it")

    monkeypatch.setattr(on_device, "read_bytes", no_file)
    monkeypatch.setattr(folders, "read_image", no_file)
    loader = make_loader(
        packed,
        2,
        train=True,
        seed=3,
        augment_device="cpu",
        decode_on_device=decode_on_device,
        workers=workers,
    )
    got = [b for b, _ in zip(loader, range(2), strict=False)]
    for (a, ta), (b, tb) in zip(expected, got, strict=True):
        assert torch.equal(ta, tb)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # batched on the device: fp32 rounding


def test_a_view_of_the_store_is_read_in_place_and_never_leaves_the_worker_uncopied(folder):
    """``image(copy=False)`` is the store's own (read-only, shared) map, without torch's warning about it; the
    copy is a tensor of its own. A stored patch that would cross to the main process on its own (not stacked
    into a batch) is copied first."""
    import warnings

    from alexnet.data.on_device import Encoded, EncodedItems, collate_encoded

    pixels = pack(folder, "train", progress=False)
    dataset = ImageFolder(folder, "train", train_transform(PRE))
    attach(dataset, PRE.resize)
    path = dataset.samples[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view, again = pixels.image(path, copy=False), pixels.image(path, copy=False)
    copy = pixels.image(path)
    assert torch.equal(view, copy) and view.data_ptr() == again.data_ptr() != copy.data_ptr()

    item, target, seed = EncodedItems(dataset)[(1, 7)]
    assert isinstance(item, Encoded) and item.borrowed and item.patched
    assert torch.equal(item.data, dataset.load(1)[0])
    alone = Encoded(item.path, item.data, patched=False, borrowed=True)  # as a non-patch would travel
    sent, *_ = collate_encoded([(alone, target, seed)])
    assert isinstance(sent, list) and not sent[0].borrowed
    assert torch.equal(sent[0].data, item.data) and sent[0].data.data_ptr() != item.data.data_ptr()


def test_evaluation_reads_the_store_of_its_split(folder, monkeypatch):
    pack(folder, "val", progress=False)
    files = ImageFolder(folder, "val", eval_transform(PRE))
    packed = ImageFolder(folder, "val", eval_transform(PRE))
    attach(packed, PRE.resize)
    decoded = []
    import alexnet.data.folders as folders

    real = folders.read_image
    monkeypatch.setattr(folders, "read_image", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    for i in range(len(files)):
        assert torch.equal(files[i][0], packed[i][0])
    assert len(decoded) == len(files)  # only the plain folder decoded anything


def test_a_file_changed_after_packing_is_decoded_from_the_file(folder):
    pixels = pack(folder, "train", progress=False)
    dataset = ImageFolder(folder, "train")
    attach(dataset, 256)
    path = dataset.samples[0][0]
    Image.new("RGB", (300, 300), (200, 10, 10)).save(path, quality=95)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    assert pixels.image(path) is None
    image, _ = dataset.load(0)
    assert isinstance(image, torch.Tensor)
    assert abs(int(image[0].float().mean()) - 200) < 5  # the new red image, not the stored photograph


def test_packing_again_repacks_only_the_files_changed_since(folder, monkeypatch):
    import alexnet.data.packed as packed

    pack(folder, "train", progress=False)
    dataset = ImageFolder(folder, "train")
    path = dataset.samples[4][0]
    Image.new("RGB", (300, 300), (10, 10, 200)).save(path, quality=95)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    decoded: list[int] = []
    real = packed._Decode.__getitem__

    def spy(self, i):
        decoded.append(self.rows[i])
        return real(self, i)

    monkeypatch.setattr(packed._Decode, "__getitem__", spy)
    pixels = pack(folder, "train", progress=False)
    assert decoded == [4]
    image = pixels.image(path)
    assert image is not None and abs(int(image[2].float().mean()) - 200) < 5  # the new blue image, stored
    assert pack(folder, "train", progress=False).done == 6 and decoded == [4]  # nothing left to do


def test_a_file_added_after_packing_is_packed_alone_and_a_deleted_ones_row_is_left_unused(
    folder, monkeypatch
):
    import alexnet.data.packed as packed

    pack(folder, "train", progress=False)
    before = ImageFolder(folder, "train")
    kept = {str(p): packed.PackedPixels.open(folder, "train", 256).image(p) for p, _ in before.samples}
    deleted = before.samples[1][0]
    deleted.unlink()
    added = deleted.parent / "zz_new.jpg"  # sorts last in its class, between rows of the old order
    Image.new("RGB", (300, 280), (200, 10, 10)).save(added, quality=95)
    decoded: list[str] = []
    real = packed._Decode.__getitem__

    def spy(self, i):
        decoded.append(self.paths[self.rows[i]].name)
        return real(self, i)

    monkeypatch.setattr(packed._Decode, "__getitem__", spy)
    pixels = pack(folder, "train", progress=False)
    assert decoded == ["zz_new.jpg"]  # not the whole split again
    image = pixels.image(added)
    assert image is not None and abs(int(image[0].float().mean()) - 200) < 5
    for path, pixels_before in kept.items():  # every other file reads back as before
        if path != str(deleted):
            assert torch.equal(pixels.image(path), pixels_before)
    after = ImageFolder(folder, "train")
    attach(after, 256)
    assert all(after.pixels.image(p) is not None for p, _ in after.samples)  # the reader finds every file
    from alexnet.data.packed import summary

    counts = summary(pixels)
    assert (counts["images"], counts["packed"], counts["unused"]) == (len(after), len(after), 1)


def test_a_file_that_does_not_decode_is_counted_and_skipped_as_without_a_store(folder):
    bad = folder / "train" / "class_0" / "img_1.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    pixels = pack(folder, "train", progress=False)
    from alexnet.data.packed import summary

    info = summary(pixels)
    assert (info["packed"], info["unreadable"], info["unreadable_files"]) == (5, 1, [str(bad)])
    dataset = ImageFolder(folder, "train", train_transform(PRE))
    attach(dataset, 256)
    index = [p for p, _ in dataset.samples].index(bad)
    assert isinstance(dataset[index], BadSample)


def test_a_killed_pack_resumes_where_it_stopped_and_ends_with_every_image(folder, monkeypatch):
    script = (
        "import sys, time; import alexnet.data.packed as p\n"
        "real = p._Decode.__getitem__\n"
        "def slow(self, i):\n"
        "    time.sleep(0.3)\n"
        "    return real(self, i)\n"
        "p._Decode.__getitem__ = slow\n"
        f"p.pack({str(folder)!r}, 'train', chunk=1, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    meta = store_dir(folder, "train", 256) / "meta.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = json.loads(meta.read_text())["done"] if meta.is_file() else 0
        if done >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped = json.loads(meta.read_text())["done"]
    assert 2 <= stopped < 6

    import alexnet.data.packed as packed

    decoded: list[int] = []
    real = packed._Decode.__getitem__
    monkeypatch.setattr(packed._Decode, "__getitem__", lambda self, i: decoded.append(i) or real(self, i))
    resumed = pack(folder, "train", progress=False)
    assert resumed.done == 6
    assert [d + stopped for d in decoded] == list(range(stopped, 6))  # only what the killed run had not done
    files = ImageFolder(folder, "train")
    for index, (path, _) in enumerate(files.samples):
        image = resumed.image(path)
        assert image is not None and torch.equal(image, central_patch(256)(files.load(index)[0]))


def test_ctrl_c_mid_pack_keeps_the_chunk_under_way_and_packing_again_finishes(
    folder, monkeypatch, ctrl_c_reaches_us
):
    """SIGINT while the second chunk decodes: that chunk is written before the pack stops (exit code 130)."""
    import alexnet.data.packed as packed

    real = packed._Decode.__getitem__

    def ctrl_c_at_item_2(self, i):
        if i == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, i)

    monkeypatch.setattr(packed._Decode, "__getitem__", ctrl_c_at_item_2)
    with pytest.raises(Interrupted) as stopped:
        pack(folder, "train", chunk=2, progress=False)
    store = store_dir(folder, "train", 256)
    assert stopped.value.exit_code == 130
    assert str(stopped.value) == (
        f"SIGINT: stopped after packing 4 of 6 images into {store}; run the same command to go on from there"
    )
    assert json.loads((store / "meta.json").read_text())["done"] == 4
    monkeypatch.setattr(packed._Decode, "__getitem__", real)
    assert pack(folder, "train", chunk=2, progress=False).done == 6


def test_sigterm_to_the_process_group_stops_a_pack_with_workers_after_the_chunk_under_way(folder):
    """systemd, SLURM and ``kill -TERM -PGID`` signal the workers too: they leave it to the main process."""
    script = (
        "import time; import alexnet.data.packed as p\n"
        "from alexnet.cli._common import run_safely\n"
        "real = p._Decode.__getitem__\n"
        "def slow(self, i):\n"
        "    time.sleep(0.3)\n"
        "    return real(self, i)\n"
        "p._Decode.__getitem__ = slow\n"
        f"raise SystemExit(run_safely(lambda: p.pack({str(folder)!r}, 'train', chunk=1, workers=1, "
        "progress=False)))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    meta = store_dir(folder, "train", 256) / "meta.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (meta.is_file() and json.loads(meta.read_text())["done"] >= 1):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    done = json.loads(meta.read_text())["done"]
    assert 1 <= done < 6
    assert err.strip().splitlines()[-1] == (
        f"alexnet: SIGTERM: stopped after packing {done} of 6 images into {meta.parent}; run the same command "
        "to go on from there"
    )
    assert pack(folder, "train", progress=False).done == 6


def test_packing_onto_a_disk_without_room_stops_before_writing(folder, monkeypatch):
    import shutil

    from alexnet.errors import DataError

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 10**5))
    with pytest.raises(DataError, match=r"needs 1\.1 MiB more in .* which has 0\.1 MiB free"):
        pack(folder, "train", progress=False)  # 6 images of 192 KiB
    assert not (store_dir(folder, "train", 256) / "pixels.u8").exists()


def test_the_store_is_ignored_when_it_does_not_fit_the_reader(folder, monkeypatch):
    pack(folder, "train", size=128, progress=False)
    dataset = ImageFolder(folder, "train")
    assert attach(dataset, 256) is None  # another size
    assert attach(dataset, 128) is None  # packed with min_side 128, read with 256
    small = ImageFolder(folder, "train", min_side=128)
    assert attach(small, 128) is not None
    monkeypatch.setenv("ALEXNET_PACKED", "0")
    assert attach(ImageFolder(folder, "train", min_side=128), 128) is None


def test_a_store_of_format_1_without_exif_orientation_is_ignored_and_packed_again(folder):
    """Format 1 stored a photo with an EXIF orientation as it lies in the file, not turned as it is shown."""
    pack(folder, "train", progress=False)
    store = store_dir(folder, "train", 256)
    meta = json.loads((store / "meta.json").read_text())
    (store / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    pixels = store / "pixels.u8"
    pixels.write_bytes(bytes(pixels.stat().st_size))  # what format 1 held is not what format 2 holds
    assert PackedPixels.open(folder, "train", 256) is None  # read from the files meanwhile
    again = pack(folder, "train", progress=False)
    assert json.loads((store / "meta.json").read_text())["format"] == 2
    files, patch = ImageFolder(folder, "train"), central_patch(256)
    for index, (path, _) in enumerate(files.samples):
        assert torch.equal(again.image(path), patch(files.load(index)[0])), path  # every row packed again


@pytest.mark.parametrize("damage", ["truncated pixels", "no file list", "bad stat"])
def test_a_damaged_store_is_ignored_with_a_warning_and_the_files_are_read(folder, caplog, damage):
    store = pack(folder, "train", progress=False).store
    if damage == "truncated pixels":
        os.truncate(store / "pixels.u8", 1000)
    elif damage == "no file list":
        (store / "files.txt").unlink()
    else:
        (store / "stat.npy").write_bytes(b"not numpy")
    dataset = ImageFolder(folder, "train", train_transform(PRE))
    assert attach(dataset, 256) is None
    assert "damaged packed store" in caplog.text
    assert len(batches(dataset, n=1)) == 1  # decoded from the files
    assert pack(folder, "train", progress=False).done == 6  # packing again starts over
    assert attach(dataset, 256) is not None


def test_the_store_pickles_without_its_memory_map(folder):
    import pickle

    pixels = pack(folder, "train", progress=False)
    path = ImageFolder(folder, "train").samples[0][0]
    assert pixels.image(path) is not None  # maps opened
    clone = pickle.loads(pickle.dumps(pixels))
    assert clone._pixels is None and clone._stat is None
    assert torch.equal(clone.image(path), pixels.image(path))
    assert isinstance(PackedPixels.open(folder, "train", 256), PackedPixels)


def test_training_uses_the_store_when_the_data_has_one(folder):
    from alexnet.train.config import TrainConfig
    from alexnet.train.data import open_run_data, ten_crop_split

    pack(folder, progress=False)
    pack(folder, "val", progress=False)
    cfg = TrainConfig(model="alexnet", data=str(folder))
    data = open_run_data(cfg, PRE, progress=False)
    assert data.train.pixels is not None and data.val.pixels is not None
    assert ten_crop_split(data, PRE).pixels is data.val.pixels


def test_data_pack_cli_packs_train_and_val_and_reports_them(folder, capsys):
    from alexnet.cli import main

    assert main(["data-pack", str(folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [(i["split"], i["images"], i["packed"]) for i in info] == [("train", 6, 6), ("val", 2, 2)]
    assert info[0]["bytes"] == 6 * 3 * 256 * 256
    stored = np.fromfile(store_dir(folder, "val", 256) / "pixels.u8", dtype=np.uint8)
    assert stored.size == 2 * 3 * 256 * 256 and stored.any()


def test_data_pack_cli_reports_bad_input_in_one_line(tmp_path):
    for args, message in (
        ([str(tmp_path / "missing")], "no data folder"),
        ([str(tmp_path)], "neither a train nor a val folder"),
        ([str(tmp_path), "--workers", "-1"], "--workers"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "alexnet.cli", "data-pack", *args], capture_output=True, text=True
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_data_pack_of_a_split_with_no_readable_image_reports_it_and_fails(tmp_path, capsys):
    from alexnet.cli import main

    (tmp_path / "train" / "c0").mkdir(parents=True)
    (tmp_path / "train" / "c0" / "a.jpg").write_text("not an image")
    assert main(["data-pack", str(tmp_path), "--size", "32", "--json"]) == 2
    out, err = capsys.readouterr()
    assert [(i["images"], i["packed"], i["unreadable"]) for i in json.loads(out)] == [(1, 0, 1)]
    assert (
        err.strip().splitlines()[-1]
        == f"alexnet: error: no readable image in {tmp_path / 'train'}: nothing was packed"
    )


def read_only(root: Path, monkeypatch) -> None:
    """``root`` as a read-only mount: creating a folder under it fails with EROFS (as root too)."""
    import errno

    real = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self.is_relative_to(root):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_a_read_only_data_set_is_packed_and_read_under_alexnet_packed_dir(folder, tmp_path, monkeypatch):
    """A shared read-only ImageNet: ALEXNET_PACKED_DIR holds the store, for data-pack and for every reader
    (worker processes included); nothing is written under ROOT."""
    elsewhere = tmp_path / "stores"
    monkeypatch.setenv("ALEXNET_PACKED_DIR", str(elsewhere))
    read_only(folder, monkeypatch)
    pixels = pack(folder, "train", progress=False)
    assert pixels.store == store_dir(folder, "train", 256) and elsewhere in pixels.store.parents
    assert pixels.store.parent.name.startswith("data-") and not (folder / ".packed").exists()
    files = ImageFolder(folder, "train", train_transform(PRE))
    packed = ImageFolder(folder, "train", train_transform(PRE))
    assert attach(packed, PRE.resize) is not None
    for (a, ta), (b, tb) in zip(batches(files), batches(packed, workers=2), strict=True):
        assert torch.equal(ta, tb) and torch.equal(a, b)
    twin = photo_folder(tmp_path / "other" / "data")  # same folder name, another data set: its own store
    assert store_dir(twin, "train", 256) != pixels.store
    assert attach(ImageFolder(twin, "train"), 256) is None


def test_packing_a_read_only_data_set_is_a_one_line_error_naming_alexnet_packed_dir(
    folder, tmp_path, capsys, monkeypatch
):
    from alexnet.cli import main

    monkeypatch.delenv("ALEXNET_PACKED_DIR", raising=False)
    read_only(folder, monkeypatch)
    code = main(["data-pack", str(folder), "--split", "train"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot write the packed store" in err and "ALEXNET_PACKED_DIR" in err
    assert len(err.splitlines()) == 1
    monkeypatch.setenv("ALEXNET_PACKED_DIR", str(tmp_path / "stores"))
    assert main(["data-pack", str(folder), "--split", "train"]) == 0
    assert attach(ImageFolder(folder, "train"), 256) is not None
