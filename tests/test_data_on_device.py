"""The batch-level pipeline on the device (`--gpu-augment`, `--gpu-decode`), run here with augment_device="cpu":
the same batches as the CPU loader (same pixels, same per-sample crop, mirror and PCA lighting), the same
bad-file report."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from alexnet.data import on_device
from alexnet.data.folders import ImageFolder
from alexnet.data.loader import make_loader
from alexnet.data.on_device import BatchDecoder, _Plan
from alexnet.data.preprocess import Preprocessing
from alexnet.data.transforms import eval_transform, ten_crop, train_transform
from alexnet.errors import DataError

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
MODES = [  # workers decode and resize (--gpu-augment), or the device decodes too (--gpu-decode)
    pytest.param(False, id="augment"),
    pytest.param(True, id="decode"),
]


@pytest.fixture(autouse=True)
def _private_check_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def photo_root(tmp_path_factory) -> Path:
    """Two classes of real photographs in several sizes, as JPEG (baseline and progressive) and one PNG each."""
    root = tmp_path_factory.mktemp("photos")
    for c in range(2):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i, name in enumerate(PHOTOS):
            im = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
            im = im.resize((300 + 41 * i, 270 + 13 * c))
            im.save(folder / f"{name}.jpg", quality=90, progressive=bool(i % 2))
        gray = Image.fromarray(skimage.data.camera()).resize((280, 300))
        gray.save(folder / "camera_gray.jpg", quality=85)  # grayscale JPEG → RGB
        Image.fromarray(skimage.data.chelsea()).resize((290, 260)).save(folder / "chelsea.png")
    return root


def batches(ds: ImageFolder, **kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(make_loader(ds, 4, train=True, seed=7, epoch=1, pin_memory=False, **kwargs))


def assert_same_batches(root: Path, transform, decode: bool = True, **loader_kwargs) -> None:
    # decoding on the device is at full size: so is the CPU loader's here (min_side=None), for equal pixels
    ds = ImageFolder(root, "train", transform, min_side=None if decode else 256)
    on_workers = batches(ds, **loader_kwargs)
    on_device = batches(ds, augment_device="cpu", decode_on_device=decode, **loader_kwargs)
    assert len(on_workers) == len(on_device) > 0
    for (x1, y1), (x2, y2) in zip(on_workers, on_device, strict=True):
        assert torch.equal(y1, y2)
        assert x1.shape == x2.shape
        torch.testing.assert_close(x2, x1, rtol=0, atol=1e-5)


@pytest.mark.parametrize("decode", MODES)
def test_train_batches_equal_the_cpu_loaders(photo_root, decode):
    """Random crop, mirror and PCA lighting (AlexNet §4.1) drawn per sample from the same seeds."""
    pre = Preprocessing()
    assert _Plan.of(train_transform(pre)) is not None  # the batched path is the one under test
    assert_same_batches(photo_root, train_transform(pre), decode)


@pytest.mark.parametrize("workers", [0, 2])
def test_ten_sub_crop_batches_equal_the_cpu_loaders(photo_root, workers):
    """ZF §3's corner and centre crops (`--train-crops ten`) drawn per sample from the same seeds, in the main
    process or by the workers."""
    transform = train_transform(Preprocessing(input_size=224), pca=None, crops="ten")
    assert _Plan.of(transform) is not None
    assert_same_batches(photo_root, transform, False, workers=workers)


def test_large_jpegs_decoded_at_reduced_size_by_the_workers_equal_too(tmp_path):
    """--gpu-augment keeps the CPU loader's DCT-domain reduced decoding: a 1024-pixel photo decodes at half size."""
    folder = tmp_path / "big" / "train" / "a"
    folder.mkdir(parents=True)
    for name in PHOTOS:
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((1100, 1024)).save(
            folder / f"{name}.jpg"
        )
    assert_same_batches(tmp_path / "big", train_transform(Preprocessing()), decode=False)


@pytest.mark.parametrize("decode", MODES)
def test_photos_turned_by_their_exif_orientation_come_out_upright_on_the_device_too(tmp_path, decode):
    """nvJPEG (and torchvision's device decode) ignores EXIF orientation: such a file is decoded by the workers,
    upright, and the batches equal the CPU loader's."""
    folder = tmp_path / "turned" / "train" / "a"
    folder.mkdir(parents=True)
    for orientation, name in enumerate(PHOTOS, start=5):  # 5-8: the turns that swap width and height
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((300, 280)).save(
            folder / f"{name}.jpg", exif=exif
        )
    assert_same_batches(tmp_path / "turned", train_transform(Preprocessing()), decode)


def test_caffe_convention_and_no_flip_batches_equal_too(photo_root):
    pre = Preprocessing(
        input_size=224,
        mean=(104.0, 117.0, 123.0),
        std=(1.0, 1.0, 1.0),
        pixel_scale=255.0,
        channel_order="BGR",
    )
    assert_same_batches(photo_root, train_transform(pre, flip=False, pca_std=0.3))


@pytest.mark.parametrize("decode", MODES)
def test_eval_batches_equal_the_cpu_loaders(photo_root, decode):
    pre = Preprocessing()
    assert _Plan.of(eval_transform(pre)) is not None
    assert_same_batches(photo_root, eval_transform(pre), decode)


@pytest.mark.parametrize("decode", MODES)
def test_other_transforms_run_image_by_image_with_the_same_result(photo_root, decode):
    """Ten crops (AlexNet §4.1) and a per-pixel mean image (§2) take the exact per-image path."""
    pre = Preprocessing(mean_image=True, pixel_scale=255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    mean_image = torch.rand(3, 256, 256) * 255
    for tf in (ten_crop(Preprocessing()), train_transform(pre, mean_image=mean_image)):
        assert _Plan.of(tf) is None
        assert_same_batches(photo_root, tf, decode)


@pytest.mark.parametrize("decode", MODES)
def test_worker_processes_hand_over_patches_or_bytes(photo_root, decode):
    assert_same_batches(photo_root, train_transform(Preprocessing()), decode, workers=2)


def test_patches_cross_processes_as_one_uint8_batch(photo_root):
    from alexnet.data.on_device import EncodedItems, collate_encoded

    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    items = EncodedItems(ds)
    batch = collate_encoded([items[(i, i)] for i in range(3)])
    assert batch[0].pixels.dtype == torch.uint8 and batch[0].pixels.shape == (3, 3, 256, 256)


def test_workers_draw_each_patchs_random_parameters_under_its_seed_and_send_the_crops(photo_root):
    """A worker's collate draws the crop, mirror and lighting of each patch under its seed (the main process,
    which drives the training step, then only applies them) and sends each patch cut to its crop (79 % of the
    bytes); without a plan it leaves both to the main process."""
    from alexnet.data.on_device import EncodedItems, Patches, collate_encoded

    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    items = EncodedItems(ds)
    seeds = [11, 12, 13, 14]
    patches, _, got_seeds, _ = collate_encoded([items[(i, s)] for i, s in enumerate(seeds)], items.plan)
    assert isinstance(patches, Patches) and got_seeds == seeds
    plain, *_ = collate_encoded([items[(i, s)] for i, s in enumerate(seeds)])
    assert plain.params is None and plain.offsets is None and plain.pixels.shape == (4, 3, 256, 256)
    params, offsets = _Plan.of(ds.transform).draw(seeds, plain.pixels[0])
    assert patches.pixels.shape == (4, 3, 227, 227)
    for crop, full, (top, left, _) in zip(patches.pixels, plain.pixels, params, strict=True):
        assert torch.equal(crop, full[:, top : top + 227, left : left + 227])
    # NumPy from the worker (pickled by value, no shared-memory block each); tensors again in the main process
    assert isinstance(patches.params, np.ndarray) and isinstance(patches.offsets, np.ndarray)
    as_tensors = patches.tensors()
    assert torch.equal(as_tensors.params, torch.tensor([[0, 0, m] for _, _, m in params]))
    assert as_tensors.offsets is not None and torch.equal(as_tensors.offsets, offsets)
    assert len({(t, left) for t, left, _ in params}) > 1 and {m for *_, m in params} == {0, 1}  # real draws


def test_with_worker_crops_off_the_workers_send_whole_patches_and_the_batches_stay_the_same(
    photo_root, monkeypatch
):
    """ALEXNET_WORKER_CROP=0 (an A/B switch): the patches cross whole, with their crop offsets, as before."""
    from alexnet.data.on_device import EncodedItems, collate_encoded

    monkeypatch.setenv("ALEXNET_WORKER_CROP", "0")
    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    items = EncodedItems(ds)
    seeds = [11, 12, 13, 14]
    patches, *_ = collate_encoded([items[(i, s)] for i, s in enumerate(seeds)], items.plan)
    params, _ = _Plan.of(ds.transform).draw(seeds, patches.pixels[0])
    assert patches.pixels.shape == (4, 3, 256, 256)
    assert torch.equal(patches.tensors().params, torch.tensor(params))
    assert_same_batches(photo_root, train_transform(Preprocessing()), False, workers=2)


def test_evaluation_patches_cross_as_their_central_crops(photo_root):
    from alexnet.data.on_device import EncodedItems, collate_encoded

    ds = ImageFolder(photo_root, "train", eval_transform(Preprocessing()))
    items = EncodedItems(ds)
    patches, *_ = collate_encoded([items[(i, i)] for i in range(3)], items.plan)
    plain, *_ = collate_encoded([items[(i, i)] for i in range(3)])
    assert patches.params is None and patches.pixels.shape == (3, 3, 227, 227)
    assert torch.equal(
        patches.pixels, plain.pixels[:, :, 14:241, 14:241]
    )  # torchvision's centre: round(29 / 2)


def test_centre_patch_of_a_packed_image_is_the_image_itself():
    """`alexnet data-pack`'s 256×256 pixels skip the resize and the central crop, which would return them
    unchanged; other sizes still go through both."""
    plan = _Plan.of(train_transform(Preprocessing()))
    image = torch.randint(0, 256, (3, 256, 256), dtype=torch.uint8)
    assert plan.head(image) is image
    assert torch.equal(plan.patch(plan.resize(image)), image)
    wide = torch.randint(0, 256, (3, 256, 300), dtype=torch.uint8)
    assert plan.head(wide).shape == (3, 256, 256) and torch.equal(plan.head(wide), wide[:, :, 22:278])


def test_batch_decode_failure_falls_back_file_by_file(photo_root, monkeypatch):
    """One file the batched device decoder refuses (nvJPEG: CMYK) fails the whole call; each file is then
    decoded alone, the refused one by the CPU decoder, and the batch is the same."""
    real = on_device.decode_jpeg
    refused = []

    def picky(data, **kwargs):
        if isinstance(data, list):
            raise RuntimeError("nvjpeg: unsupported")
        if len(refused) == 0:
            refused.append(data)
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kwargs)

    monkeypatch.setattr(on_device, "decode_jpeg", picky)
    assert_same_batches(photo_root, train_transform(Preprocessing()), decode=True)
    assert refused


@pytest.mark.parametrize("decode", MODES)
def test_corrupt_files_are_skipped_and_reported_like_the_cpu_loader(tmp_path, caplog, decode):
    root = tmp_path / "d"
    folder = root / "train" / "a"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buf, format="JPEG", quality=90)
    good = buf.getvalue()
    for i in range(5):
        (folder / f"good{i}.jpg").write_bytes(good)
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    (folder / "text.jpg").write_bytes(b"hello")
    (folder / "empty.jpg").write_bytes(b"")
    ds = ImageFolder(root, "train", eval_transform(Preprocessing()))
    with caplog.at_level(logging.WARNING, logger="alexnet.data"):
        loader = make_loader(ds, 8, train=False, augment_device="cpu", decode_on_device=decode)
        ((images, targets),) = list(loader)
    assert images.shape == (5, 3, 227, 227) and targets.tolist() == [0] * 5
    assert sorted(Path(p).name for p, _ in loader.bad) == ["empty.jpg", "garbage.jpg", "text.jpg"]
    cpu_loader = make_loader(ds, 8, train=False, pin_memory=False)
    list(cpu_loader)
    assert sorted(loader.bad) == sorted(cpu_loader.bad)  # same files, same reasons
    assert "garbage.jpg" in caplog.text


def test_a_batch_with_no_readable_file_is_skipped(tmp_path):
    folder = tmp_path / "d" / "train" / "a"
    folder.mkdir(parents=True)
    (folder / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    loader = make_loader(
        ImageFolder(tmp_path / "d", "train", eval_transform(Preprocessing())),
        2,
        train=False,
        augment_device="cpu",
        decode_on_device=True,
    )
    assert list(loader) == [] and len(loader.bad) == 1


def test_decoding_on_cuda_without_a_gpu_is_a_clear_error(photo_root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ds = ImageFolder(photo_root, "train", eval_transform(Preprocessing()))
    with pytest.raises(DataError, match="no CUDA GPU"):
        make_loader(ds, 2, train=False, augment_device="cuda")
    with pytest.raises(DataError, match="cpu or cuda"):
        BatchDecoder(ds.transform, "meta")


def test_a_data_set_without_files_cannot_be_decoded_on_the_device():
    data = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4))
    data.transform = None  # type: ignore[attr-defined]
    with pytest.raises(DataError, match="image-folder"):
        make_loader(data, 2, train=False, augment_device="cpu")


@pytest.mark.parametrize("flag", ["gpu_augment", "gpu_decode"])
def test_gpu_flags_need_a_cuda_run(tmp_path, flag):
    from alexnet.errors import TrainingError
    from alexnet.train.config import TrainConfig
    from alexnet.train.loop import train

    cfg = TrainConfig(model="alexnet", out=str(tmp_path / "run"), device="cpu", **{flag: True})
    with pytest.raises(TrainingError, match=f"--{flag.replace('_', '-')} needs a CUDA GPU"):
        train(cfg, progress=False)


def test_decode_on_device_needs_a_device(photo_root):
    ds = ImageFolder(photo_root, "train", eval_transform(Preprocessing()))
    with pytest.raises(ValueError, match="augment_device"):
        make_loader(ds, 2, train=False, decode_on_device=True)


def test_random_parameters_differ_between_samples(photo_root):
    """A batched draw is per sample: not one crop and one coin for the whole batch."""
    plan = _Plan.of(train_transform(Preprocessing()))
    params, offsets = plan.draw(list(range(64)), torch.empty(3, 256, 256, dtype=torch.uint8))
    assert len({tuple(p[:2]) for p in params}) > 50
    assert 10 < sum(p[2] for p in params) < 54
    assert (
        offsets is not None and offsets.shape == (64, 3) and np.unique(offsets.numpy(), axis=0).shape[0] == 64
    )


def test_gpu_augment_is_on_by_default_for_cuda_runs_with_batched_preprocessing(photo_root):
    """Unset, --gpu-augment follows the device: the batches are the same, the workers do a third of the work."""
    from alexnet.train.config import TrainConfig
    from alexnet.train.loop import _finish_on_device

    batched = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    mean_image = torch.zeros(3, 256, 256)
    pre_image = Preprocessing(mean_image=True)
    per_image = ImageFolder(photo_root, "train", train_transform(pre_image, mean_image=mean_image))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    unset = TrainConfig(model="alexnet", out="unused")
    assert unset.gpu_augment is None
    assert _finish_on_device(unset, cuda, batched)
    assert not _finish_on_device(unset, cpu, batched)
    assert not _finish_on_device(unset, cuda, per_image)  # a mean image: the workers' own pipeline
    assert not _finish_on_device(unset.with_overrides(gpu_augment=False), cuda, batched)
    assert _finish_on_device(unset.with_overrides(gpu_augment=True), cuda, per_image)
    assert _finish_on_device(unset.with_overrides(gpu_decode=True), cuda, per_image)
