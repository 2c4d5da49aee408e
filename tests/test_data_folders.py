"""ImageNet-layout folders: class order, subsets, layout errors, bad-file policy, every image mode → RGB."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.data.folders import BadSample, ImageFolder, check_file, check_split, collate_skip_bad
from alexnet.data.images import read_image
from alexnet.data.loader import make_loader
from alexnet.data.preprocess import Preprocessing
from alexnet.data.transforms import eval_transform
from alexnet.errors import DataError, ImageError


@pytest.fixture(autouse=True)
def _private_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def jpeg_bytes(chelsea: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(chelsea[::4, ::4]).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def make_folder(root: Path, layout: dict[str, dict[str, int]], data: bytes) -> Path:
    """``layout``: split → class → number of copies of the JPEG ``data``."""
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"img_{i:03d}.jpg").write_bytes(data)
    return root


def test_class_index_is_sorted_folder_order_like_torchvision(tmp_path, jpeg_bytes):
    from torchvision.datasets import ImageFolder as TVImageFolder

    wnids = ["n04592741", "n01440764", "n02102040", "b_other"]
    root = make_folder(tmp_path / "d", {"train": {w: 2 for w in wnids}}, jpeg_bytes)
    ds = ImageFolder(root, "train")
    tv = TVImageFolder(root / "train")
    assert ds.classes == tv.classes == sorted(wnids)
    assert [(str(p), t) for p, t in ds.samples] == tv.samples


def test_files_in_sub_folders_of_a_class_count_in_torchvisions_order(tmp_path, jpeg_bytes):
    from torchvision.datasets import ImageFolder as TVImageFolder

    root = make_folder(tmp_path / "d", {"train": {"cat": 2, "dog": 1}}, jpeg_bytes)
    for rel in ["cat/2019/b.jpg", "cat/2019/a.jpg", "cat/a b/z.jpg", "cat/2019/deep/y.jpg", "dog/0/x.jpg"]:
        (root / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "train" / rel).write_bytes(jpeg_bytes)
    (root / "train" / "cat" / ".hidden").mkdir()
    (root / "train" / "cat" / ".hidden" / "skipped.jpg").write_bytes(jpeg_bytes)
    ds = ImageFolder(root, "train")
    tv = TVImageFolder(root / "train", is_valid_file=lambda p: "/." not in p)
    assert [(str(p), t) for p, t in ds.samples] == tv.samples
    assert len(ds) == 8 and ds.empty_classes == []
    first = ImageFolder(root, "train", images_per_class=3)  # the class folder's own files first
    assert [p.relative_to(root / "train").as_posix() for p, _ in first.samples][:3] == [
        "cat/img_000.jpg",
        "cat/img_001.jpg",
        "cat/2019/a.jpg",
    ]


def test_a_symbolic_link_loop_in_a_class_folder_is_listed_once_not_followed_forever(tmp_path, jpeg_bytes):
    root = make_folder(tmp_path / "d", {"train": {"a": 1, "b": 1}}, jpeg_bytes)
    (root / "train" / "a" / "loop").symlink_to(root / "train" / "a", target_is_directory=True)
    (root / "train" / "b" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # dangling
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "s.jpg").write_bytes(jpeg_bytes)
    (root / "train" / "b" / "linked").symlink_to(tmp_path / "shared", target_is_directory=True)
    ds = ImageFolder(root, "train")
    assert [p.relative_to(root / "train").as_posix() for p, _ in ds.samples] == [
        "a/img_000.jpg",
        "b/img_000.jpg",
        "b/linked/s.jpg",
    ]


def test_subsets_take_first_classes_and_first_files(tmp_path, jpeg_bytes):
    root = make_folder(tmp_path / "d", {"train": {c: 5 for c in "dcba"}}, jpeg_bytes)
    ds = ImageFolder(root, "train", classes=2, images_per_class=3)
    assert ds.classes == ["a", "b"]
    assert [(p.parent.name, p.name, t) for p, t in ds.samples] == [
        (c, f"img_{i:03d}.jpg", t) for t, c in enumerate("ab") for i in range(3)
    ]


def test_val_uses_train_class_list_and_may_miss_a_class(tmp_path, jpeg_bytes):
    root = make_folder(
        tmp_path / "d", {"train": {"a": 1, "b": 1, "c": 1}, "val": {"a": 1, "c": 2}}, jpeg_bytes
    )
    train = ImageFolder(root, "train")
    val = ImageFolder(root, "val", class_names=train.classes)
    assert val.classes == ["a", "b", "c"]
    assert val.targets == [0, 2, 2]
    (root / "val" / "zzz").mkdir()
    with pytest.raises(DataError, match="zzz"):
        ImageFolder(root, "val", class_names=train.classes)


def test_wrong_layouts_say_what_was_expected(tmp_path, jpeg_bytes):
    with pytest.raises(DataError, match=r"no data folder .*train/<class>/<image files>"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"no 'train' folder.*train/<class>/"):
        ImageFolder(tmp_path / "d")
    (tmp_path / "d" / "train").mkdir()
    (tmp_path / "d" / "train" / "loose.jpg").write_bytes(jpeg_bytes)
    with pytest.raises(DataError, match="no class folders"):
        ImageFolder(tmp_path / "d")
    (tmp_path / "d" / "train" / "cls").mkdir()
    with pytest.raises(DataError, match="no files"):
        ImageFolder(tmp_path / "d")
    with pytest.raises(DataError, match="≥ 1"):
        ImageFolder(tmp_path / "d", classes=0)


def write_bad_files(folder: Path, jpeg: bytes) -> dict[str, str]:
    """One file of each kind of damage; returns name → a word its reason must contain."""
    png = io.BytesIO()
    Image.new("RGB", (40, 30), (1, 2, 3)).save(png, format="PNG")
    files = {
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8, "image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "notes.txt": (b"this is not an image\n", "not an image"),
        "empty.jpg": (b"", "empty"),
        "truncated.png": (png.getvalue()[:-30], "readable"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: word for name, (_, word) in files.items()}


def test_bad_files_are_skipped_counted_and_named(tmp_path, jpeg_bytes, caplog):
    root = make_folder(tmp_path / "d", {"train": {"a": 3, "b": 3}}, jpeg_bytes)
    expected = write_bad_files(root / "train" / "b", jpeg_bytes)
    ds = ImageFolder(root, "train")
    assert len(ds) == 6 + len(expected)
    with caplog.at_level(logging.WARNING, logger="alexnet.data"):
        bad = check_split(ds, max_bad_fraction=1.0, progress=False)
    assert {Path(p).name for p, _ in bad} == set(expected)
    for path, reason in bad:
        assert expected[Path(path).name] in reason, (path, reason)
        assert path in caplog.text
    assert ds.bad == bad and len(ds) == 6
    assert all(check_file(p) is None for p, _ in ds.samples)
    # The verdicts are cached: a second dataset over the same files gets the same answer.
    again = ImageFolder(root, "train")
    assert check_split(again, max_bad_fraction=1.0, progress=False) == bad


def test_more_than_one_percent_bad_stops_before_training(tmp_path, jpeg_bytes, caplog):
    root = make_folder(tmp_path / "d", {"train": {"a": 99}}, jpeg_bytes)
    (root / "train" / "a" / "zz_broken.jpg").write_bytes(b"garbage")
    ok = ImageFolder(root, "train")  # 1 of 100 = 1 %: allowed
    assert len(check_split(ok, progress=False)) == 1
    (root / "train" / "a" / "zz_broken2.jpg").write_bytes(b"garbage")
    too_many = ImageFolder(root, "train")  # 2 of 101 > 1 %
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="alexnet.data"),
        pytest.raises(DataError, match=r"2 of 101 files .* unreadable .*zz_broken\.jpg") as raised,
    ):
        check_split(too_many, progress=False)
    assert str(raised.value).endswith(f"`alexnet data-pack {root} --split train --json` lists every one)")
    assert not caplog.records  # one error naming a few, not a line per bad file before it


@pytest.mark.parametrize("workers", [0, 2])
def test_file_that_fails_to_decode_is_dropped_and_reported_by_the_loader(tmp_path, jpeg_bytes, workers):
    root = make_folder(tmp_path / "d", {"train": {"a": 4, "b": 4}}, jpeg_bytes)
    ds = ImageFolder(root, "train", eval_transform(Preprocessing(input_size=64, resize=72)))
    broken = root / "train" / "b" / "img_002.jpg"
    body = bytearray(jpeg_bytes)
    for k in range(600, len(body) - 200, 7):  # scribble over the entropy-coded data, keep header and EOI
        body[k] = 0xFF if k % 2 else 0x00
    broken.write_bytes(body)
    check_split(ds, progress=False)
    assert len(ds) == 8  # the cheap header check cannot see this damage …
    loader = make_loader(ds, 3, train=False, workers=workers)
    seen = sum(len(y) for _, y in loader)
    assert seen == 7  # … decoding can: the loader drops it and tells the main process
    assert [p for p, _ in loader.bad] == [str(broken)]
    assert ds.bad == loader.bad


def test_collate_drops_markers_and_returns_their_paths():
    good = (torch.zeros(3, 4, 4), 1)
    images, targets, bad = collate_skip_bad([good, BadSample("x.jpg", "broken"), good])
    assert images.shape == (2, 3, 4, 4) and targets.tolist() == [1, 1] and bad == [("x.jpg", "broken")]
    images, targets, bad = collate_skip_bad([BadSample("y.jpg", "broken")])
    assert len(targets) == 0 and bad == [("y.jpg", "broken")]


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_every_image_mode_comes_out_rgb_of_the_right_size(tmp_path, chelsea):
    rgb = Image.fromarray(chelsea)
    gray16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    assert gray16.mode == "I;16"  # really a 16-bit PNG
    images = {
        "gray.jpg": encode(rgb.convert("L"), "JPEG"),
        "cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "gray16.png": encode(gray16, "PNG"),
        "palette.png": encode(rgb.convert("P"), "PNG"),
        "tiny.png": encode(rgb.resize((7, 5)), "PNG"),
        "tiny.jpg": encode(rgb.resize((5, 7)), "JPEG"),
    }
    folder = tmp_path / "d" / "train" / "modes"
    folder.mkdir(parents=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    ds = ImageFolder(tmp_path / "d", "train", eval_transform(Preprocessing()))
    assert check_split(ds, progress=False) == []
    for i, (path, _) in enumerate(ds.samples):
        x, _ = ds[i]
        assert x.shape == (3, 227, 227) and x.dtype == torch.float32, path.name
        raw = read_image(path)
        assert raw.dtype == torch.uint8 and raw.shape[0] == 3, path.name
    gray = read_image(folder / "gray16.png")
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    expected = torch.from_numpy(np.asarray(rgb.convert("L")))
    assert torch.equal(gray[0], expected)  # 16-bit v·257 → 8-bit v exactly
    cmyk = read_image(folder / "cmyk.jpg").float()
    assert (cmyk - torch.from_numpy(chelsea).permute(2, 0, 1).float()).abs().mean() < 12  # colours survive
    assert read_image(folder / "tiny.png").shape == (3, 5, 7)


def test_an_animated_gif_decodes_to_its_first_frame(tmp_path):
    red, blue = (Image.new("RGB", (30, 20), c) for c in ((255, 0, 0), (0, 0, 255)))
    folder = tmp_path / "d" / "train" / "anim"
    folder.mkdir(parents=True)
    path = folder / "anim.gif"
    red.save(path, format="GIF", save_all=True, append_images=[blue], duration=100, loop=0)
    with Image.open(path) as im:
        assert im.n_frames == 2  # really animated
    frame = read_image(path)
    assert frame.shape == (3, 20, 30) and frame.dtype == torch.uint8
    assert frame[:, 0, 0].tolist() == [255, 0, 0] and bool((frame == frame[:, :1, :1]).all())
    ds = ImageFolder(tmp_path / "d", "train", eval_transform(Preprocessing()))
    assert check_split(ds, progress=False) == []  # a training folder takes it too
    assert ds[0][0].shape == (3, 227, 227)


def test_an_image_too_thin_to_rescale_is_refused_before_the_resize_and_a_panorama_is_not(tmp_path):
    """AlexNet §2 rescales the shorter side to 256: a 1×1,000,000 PNG (3 KB) would become 256 M pixels long."""
    line, pano = tmp_path / "line.png", tmp_path / "pano.png"
    Image.new("RGB", (1_000_000, 1), (100, 150, 200)).save(line)
    Image.new("RGB", (3000, 300), (1, 2, 3)).save(pano)  # 10:1
    with pytest.raises(ImageError, match=r"1000000×1 is more than 100 times longer than wide"):
        read_image(line)
    assert "more than 100 times longer" in (check_file(line) or "")  # the up-front check drops it too
    assert read_image(pano).shape == (3, 300, 3000) and check_file(pano) is None


def test_large_jpeg_decodes_at_reduced_size_keeping_shorter_side(tmp_path, chelsea):
    big = Image.fromarray(chelsea).resize((1804, 1200), Image.Resampling.BICUBIC)
    path = tmp_path / "big.jpg"
    big.save(path, quality=90)
    full = read_image(path)
    reduced = read_image(path, min_side=256)
    assert full.shape == (3, 1200, 1804)
    assert reduced.shape == (3, 300, 451)  # 1/4 scale: 1/8 would give 150 < 256
    from torchvision.transforms import v2

    a = v2.functional.resize(full, [256], antialias=True).float()
    b = v2.functional.resize(reduced, [256], antialias=True).float()
    assert (a - b).abs().mean() < 3  # same picture after the rescale the pipeline does anyway
    small = tmp_path / "small.jpg"
    shutil.copy(path, small)
    assert read_image(small, min_side=700).shape == (3, 1200, 1804)  # < 2×700: no reduction


def test_jpeg_size_from_the_frame_header_equals_pillows(chelsea):
    from alexnet.data.images import jpeg_size

    img = Image.fromarray(chelsea)
    exif = Image.Exif()
    exif[0x010E] = "x" * 5000  # a long ImageDescription: the frame header comes after a big APP1 segment
    variants = {
        "baseline": encode(img, "JPEG"),
        "gray": encode(img.convert("L"), "JPEG"),
        "cmyk": encode(img.convert("CMYK"), "JPEG"),
    }
    buf = io.BytesIO()
    img.save(buf, format="JPEG", progressive=True, exif=exif)
    variants["progressive+exif"] = buf.getvalue()
    for name, data in variants.items():
        assert jpeg_size(data) == Image.open(io.BytesIO(data)).size == (451, 300), name
    assert jpeg_size(b"\xff\xd8\xff\xe0\x00") is None  # cut short: unknown, decoded normally


# EXIF 2.3 §4.6.4 (tag 274), written out on the stored H×W×3 array: what a viewer shows for each orientation.
SHOWN = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored
    3: lambda a: a[::-1, ::-1],  # turned 180°
    4: lambda a: a[::-1, :],  # flipped upside down
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # turned 90° clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transposed across the other diagonal
    8: lambda a: np.rot90(a, 1),  # turned 90° counter-clockwise
}


def with_orientation(img: Image.Image, fmt: str, orientation: int, **options) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif, **options)
    return buf.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_photo_with_an_exif_orientation_is_decoded_as_a_viewer_shows_it(tmp_path, chelsea, orientation):
    """A phone stores a portrait photo sideways with an orientation tag: the network must see it upright, as the
    browser that uploaded it shows it. Every decoder: torchvision's (JPEG, PNG, WebP), JPEG at reduced size
    (Pillow's draft), Pillow's fallback (TIFF)."""
    from alexnet.data.images import decode_rgb, oriented_size

    stored = Image.fromarray(chelsea)  # 451×300
    big = stored.resize((1804, 1200))
    cases = {
        "jpeg": (stored, "JPEG", {}, None),
        "jpeg reduced": (big, "JPEG", {}, 256),
        "png": (stored, "PNG", {}, None),
        "webp": (stored, "WEBP", {"lossless": True}, None),
        "tiff": (stored, "TIFF", {}, None),
    }
    for name, (img, fmt, options, min_side) in cases.items():
        upright = decode_rgb(with_orientation(img, fmt, 1, **options), min_side=min_side)
        turned = decode_rgb(with_orientation(img, fmt, orientation, **options), min_side=min_side)
        want = np.ascontiguousarray(SHOWN[orientation](upright.permute(1, 2, 0).numpy()))
        assert torch.equal(turned, torch.from_numpy(want).permute(2, 0, 1)), name
        with Image.open(io.BytesIO(with_orientation(img, fmt, orientation, **options))) as header:
            shown = (img.height, img.width) if orientation >= 5 else (img.width, img.height)
            assert oriented_size(header) == shown, name  # from the header alone: serve, correspondence


def test_the_exif_orientation_is_read_from_the_jpeg_header_in_either_byte_order_and_malformed_is_upright():
    from alexnet.data.images import jpeg_orientation

    def app1(tiff: bytes) -> bytes:
        payload = b"Exif\0\0" + tiff
        return b"\xff\xd8\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + b"\xff\xdb\x00\x04ab"

    def entry(order: str, tag: int, kind: int, value: int) -> bytes:
        return tag.to_bytes(2, order) + kind.to_bytes(2, order) + (1).to_bytes(4, order) + value.to_bytes(
            2, order
        ) + b"\0\0"  # fmt: skip

    for order, mark in (("little", b"II"), ("big", b"MM")):
        head = mark + (42).to_bytes(2, order) + (8).to_bytes(4, order)
        ifd = (2).to_bytes(2, order) + entry(order, 0x010F, 2, 0) + entry(order, 0x0112, 3, 6)
        assert jpeg_orientation(app1(head + ifd)) == 6, order
        assert jpeg_orientation(app1(head + ifd)[:40]) == 1, order  # cut short inside the IFD
        assert (
            jpeg_orientation(app1(head + (1).to_bytes(2, order) + entry(order, 0x0112, 3, 9))) == 1
        )  # no such
        assert (
            jpeg_orientation(app1(head + (1).to_bytes(2, order) + entry(order, 0x0112, 4, 6))) == 1
        )  # not SHORT
        assert jpeg_orientation(app1(head[:4] + (4000).to_bytes(4, order))) == 1  # IFD0 past the segment
    assert jpeg_orientation(app1(b"XX" + b"\0" * 20)) == 1  # no byte order
    assert jpeg_orientation(b"\xff\xd8\xff\xe0\x00\x10JFIF\0") == 1  # no EXIF at all


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_no_jpeg_header_makes_the_orientation_reader_fail(tail):
    from alexnet.data.images import jpeg_orientation, jpeg_size

    for head in (b"\xff\xd8" + tail, b"\xff\xd8\xff\xe1\x00\x40Exif\0\0" + tail):
        assert jpeg_orientation(head) in range(1, 9)
        jpeg_size(head)


def test_unreadable_files_are_named_up_to_the_limit_then_counted_in_one_line(caplog):
    from alexnet.data.folders import LOG_LIMIT, log_unreadable

    bad = [(f"/data/train/n01/{i}.JPEG", "not an image") for i in range(LOG_LIMIT + 15)]
    with caplog.at_level(logging.WARNING, logger="alexnet.data"):
        log_unreadable(bad)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:LOG_LIMIT] == [f"skipping unreadable file {p}: not an image" for p, _ in bad[:LOG_LIMIT]]
    assert lines[LOG_LIMIT:] == [f"skipping 15 more unreadable files ({LOG_LIMIT + 15} in all)"]


def test_the_loader_names_a_file_that_fails_every_epoch_once_and_counts_the_rest_per_pass(
    tmp_path, jpeg_bytes, caplog, monkeypatch
):
    import alexnet.data.folders as folders
    import alexnet.data.loader as loader_module

    monkeypatch.setattr(loader_module, "LOG_LIMIT", 2)
    root = make_folder(tmp_path / "d", {"train": {"a": 5}}, jpeg_bytes)
    ds = ImageFolder(root, "train", eval_transform(Preprocessing(input_size=64, resize=72)))
    broken = [p for p, _ in ds.samples[1:]]  # pass the header check, fail to decode
    real, damaged = folders.read_image, set(map(str, broken))

    def read_image(path, **kw):
        if str(path) in damaged:
            raise ImageError(f"{path}: image file is truncated")
        return real(path, **kw)

    monkeypatch.setattr(folders, "read_image", read_image)
    loader = make_loader(ds, 2, train=False)
    with caplog.at_level(logging.WARNING, logger="alexnet.data"):
        for _ in range(2):
            assert sum(len(y) for _, y in loader) == 1
    lines = [r.getMessage() for r in caplog.records]
    named = [f"skipped unreadable file {p}: " for p in broken[:2]]
    assert [line[: len(n)] for line, n in zip(lines[:2], named, strict=True)] == named
    more = "skipped 2 more unreadable files in this pass (the first 2 were named)"
    assert lines[2:] == [more, more]  # the second pass names nobody again, and counts its unnamed ones
    assert len(loader.bad) == 8  # every skip is still counted
