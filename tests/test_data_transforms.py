"""Paper preprocessing: PCA lighting statistics, ten-crop geometry, crops, mean subtraction, loader determinism."""

from __future__ import annotations

import pytest
import torch

from alexnet.data.loader import EpochSampler, make_loader
from alexnet.data.preprocess import Preprocessing
from alexnet.data.transforms import (
    CORNERS,
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    CornerCrop,
    Normalize,
    PCALighting,
    TenCrop,
    ToModelInput,
    eval_transform,
    ten_crop,
    train_transform,
)
from alexnet.errors import DataError

# Identity normalisation: model input = pixel / 255, so outputs can be compared with the source pixels.
PLAIN = Preprocessing(input_size=227, resize=256, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def positional_image(h: int, w: int) -> torch.Tensor:
    """uint8 3×h×w whose pixels encode their position: R = row, G = column, B = row + column (mod 256)."""
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    return torch.stack([rows, cols, rows + cols]).remainder(256).to(torch.uint8)


def test_pca_offset_covariance_matches_the_paper_formula():
    torch.manual_seed(0)
    lighting = PCALighting()
    offsets = lighting.offsets(200_000).double()
    vec = torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64)
    val = torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64)
    expected = vec @ torch.diag((0.1 * val) ** 2) @ vec.T  # Cov(P·(α∘λ)) with α ~ N(0, 0.1²)
    measured = torch.cov(offsets.T)
    assert torch.allclose(measured, expected, atol=0.02 * expected.abs().max().item())
    assert offsets.mean(0).abs().max() < 0.02 * 0.1 * val[0]


def test_each_pca_component_gets_its_own_independent_alpha_times_its_eigenvalue():
    """AlexNet §4.1: add [p1 p2 p3][α1λ1 α2λ2 α3λ3]ᵀ, αᵢ ~ N(0, 0.1). The covariance test cannot see the two small
    components (λ2, λ3 ≪ λ1); in the eigenbasis each is visible on its own. The published ImageNet values
    (fb.resnet.torch) are written out here, not taken from the code under test."""
    eigval = torch.tensor([0.2175, 0.0188, 0.0045], dtype=torch.float64)
    eigvec = torch.tensor(
        [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]],
        dtype=torch.float64,
    )
    assert torch.allclose(
        eigvec.T @ eigvec, torch.eye(3, dtype=torch.float64), atol=1e-3
    )  # orthonormal columns
    assert torch.allclose(torch.tensor(IMAGENET_EIGVAL, dtype=torch.float64), eigval)
    assert torch.allclose(torch.tensor(IMAGENET_EIGVEC, dtype=torch.float64), eigvec)
    torch.manual_seed(0)
    offsets = PCALighting().offsets(200_000).double()
    scaled_alpha = torch.linalg.solve(eigvec, offsets.T).T  # αᵢλᵢ per draw (p's are only ≈ orthonormal)
    # std of a 200k-sample estimate: ±0.16 %; 1 % is six standard errors
    torch.testing.assert_close(scaled_alpha.std(0), 0.1 * eigval, rtol=0.01, atol=0)
    corr = torch.corrcoef(scaled_alpha.T)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 0.01  # independent αᵢ


def test_pca_offset_is_one_colour_per_image_and_redrawn_each_call():
    torch.manual_seed(1)
    lighting = PCALighting()
    img = torch.rand(3, 8, 9)
    a, b = lighting(img) - img, lighting(img) - img
    for d in (a, b):  # the same offset on every pixel of the image
        assert torch.allclose(d, d[:, :1, :1].expand_as(d), atol=1e-6)
    assert not torch.allclose(a, b)
    batch = torch.rand(4, 3, 5, 5)
    d = lighting(batch) - batch
    per_image = d[:, :, 0, 0]
    assert torch.allclose(d, per_image[:, :, None, None].expand_as(d), atol=1e-6)
    assert len({tuple(r.tolist()) for r in per_image}) == 4  # each image its own draw
    with pytest.raises(DataError):
        lighting(torch.zeros(3, 2, 2, dtype=torch.uint8))


def test_ten_crop_takes_four_corners_centre_and_their_mirrors():
    h, w, s = 40, 50, 24
    img = positional_image(h, w)
    crops = TenCrop(s)(img)
    assert crops.shape == (10, 3, s, s)
    top, left = round((h - s) / 2), round((w - s) / 2)
    origins = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), (top, left)]
    for k, (y, x) in enumerate(origins):
        assert torch.equal(crops[k], img[:, y : y + s, x : x + s]), k
        assert torch.equal(crops[5 + k], img[:, y : y + s, x : x + s].flip(-1)), k
        assert crops[5 + k][1, 0, 0] == x + s - 1  # mirrored: first column is the crop's last


def test_ten_crop_transform_on_a_256_patch_is_exact():
    img = positional_image(256, 256)
    out = ten_crop(PLAIN)(img)
    assert out.shape == (10, 3, 227, 227) and out.dtype == torch.float32
    assert torch.allclose(out[0], img[:, :227, :227].float() / 255)
    assert torch.allclose(out[8], img[:, 29:, 29:].flip(-1).float() / 255)  # bottom-right, mirrored


def test_train_crops_are_windows_of_the_256_patch_flipped_or_not():
    torch.manual_seed(2)
    img = positional_image(256, 256)
    transform = train_transform(PLAIN, pca=None)
    flips = set()
    for _ in range(12):
        out = (transform(img) * 255).round().to(torch.int64)
        assert out.shape == (3, 227, 227)
        flipped = bool(out[1, 0, 0] > out[1, 0, -1])
        flips.add(flipped)
        if flipped:
            out = out.flip(-1)
        y, x = int(out[0, 0, 0]), int(out[1, 0, 0])
        assert 0 <= y <= 29 and 0 <= x <= 29
        assert torch.equal(out, img[:, y : y + 227, x : x + 227].to(torch.int64))
    assert flips == {True, False}


@pytest.mark.parametrize(("h", "w", "s"), [(256, 256, 224), (256, 256, 227), (41, 50, 24)])
def test_corner_crops_are_the_five_crops_ten_crop_tests_on(h, w, s):
    """ZF §3's training sub-crops: CornerCrop draws only the corners and the centre (TenCrop's first five, its
    rounding of an odd centre offset included), each about a fifth of the time."""
    torch.manual_seed(0)
    img = positional_image(h, w)
    five = list(TenCrop(s)(img)[:5])
    crop, counts = CornerCrop(s), [0] * len(CORNERS)
    for _ in range(500):
        out = crop(img)
        matches = [k for k, c in enumerate(five) if torch.equal(out, c)]
        assert len(matches) == 1
        counts[matches[0]] += 1
    assert all(60 <= n <= 140 for n in counts), counts  # binomial(500, 1/5): mean 100, sd 9


def test_ten_sub_crop_training_yields_each_of_the_ten_crops_and_nothing_else():
    torch.manual_seed(1)
    img = positional_image(256, 256)
    ten = (ten_crop(PLAIN)(img) * 255).round()
    transform = train_transform(PLAIN, pca=None, crops="ten")
    seen = set()
    for _ in range(200):
        out = (transform(img) * 255).round()
        (k,) = [k for k in range(10) if torch.equal(out, ten[k])]
        seen.add(k)
    assert seen == set(range(10))
    with pytest.raises(DataError, match="crops must be"):
        train_transform(PLAIN, crops="centre")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [227, 224])
def test_shorter_side_resized_and_centre_crop_of_input_size(size, chelsea):
    pre = Preprocessing(input_size=size)
    img = torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()
    assert train_transform(pre)(img).shape == (3, size, size)
    assert eval_transform(pre)(img).shape == (3, size, size)
    assert ten_crop(pre)(img).shape == (10, 3, size, size)


def test_uniform_image_is_normalised_per_channel():
    colour = torch.tensor([200, 100, 50], dtype=torch.uint8)
    img = colour.view(3, 1, 1).expand(3, 300, 400).contiguous()
    caffe = Preprocessing(
        mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR", pixel_scale=255.0
    )
    out = eval_transform(caffe)(img)
    expected = torch.tensor([50.0 - 104.0, 100.0 - 117.0, 200.0 - 123.0])  # BGR, 0–255, minus mean
    assert torch.allclose(out, expected.view(3, 1, 1).expand_as(out), atol=1e-4)


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(),
        Preprocessing(
            mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), channel_order="BGR", pixel_scale=255.0
        ),
    ],
)
def test_fused_input_conversion_equals_the_step_by_step_reference(pre, chelsea):
    img = torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()
    lighting = PCALighting()
    torch.manual_seed(4)
    fused = ToModelInput(pre, lighting)(img)
    torch.manual_seed(4)  # same α draw
    reference = Normalize(pre)(lighting(img.float() / 255))
    assert torch.allclose(fused, reference, atol=1e-4 * pre.pixel_scale)
    batch = torch.stack([img, img.flip(-1)])
    torch.manual_seed(5)
    fused = ToModelInput(pre, lighting)(batch)
    torch.manual_seed(5)
    assert torch.allclose(fused, Normalize(pre)(lighting(batch.float() / 255)), atol=1e-4 * pre.pixel_scale)


def test_input_constants_are_copied_to_a_device_once_and_stay_out_of_pickles():
    import pickle

    to_input = ToModelInput(Preprocessing())
    meta = torch.device("meta")
    gain, bias = to_input._constants(meta)
    assert gain.device == meta and bias.device == meta and gain.shape == bias.shape == (3,)
    assert to_input._constants(meta)[0] is gain  # the same tensors on every later batch
    assert to_input._constants(torch.device("cpu"))[0] is to_input.gain
    copy = pickle.loads(pickle.dumps(to_input))  # what a spawned worker receives
    assert copy._on_device == {} and torch.equal(copy.gain, to_input.gain)


def test_per_pixel_mean_image_is_subtracted_at_each_crops_own_position(chelsea):
    pre = Preprocessing(mean_image=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    img = torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()
    patch = eval_transform(Preprocessing(input_size=256, resize=256, mean=(0, 0, 0), std=(1, 1, 1)))(img)
    # With the image's own 256×256 patch as the mean image, every crop must come out exactly zero.
    torch.manual_seed(3)
    for transform in (
        train_transform(pre, pca=None, mean_image=patch),
        eval_transform(pre, mean_image=patch),
    ):
        for _ in range(3):
            assert transform(img).abs().max() < 1e-6
    assert ten_crop(pre, mean_image=patch)(img).abs().max() < 1e-6
    with pytest.raises(DataError, match="mean image"):
        eval_transform(pre)
    with pytest.raises(DataError, match="expected"):
        eval_transform(pre, mean_image=torch.zeros(3, 227, 227))
    with pytest.raises(DataError, match="larger than"):
        train_transform(Preprocessing(input_size=227, resize=200))


class Indexed(torch.utils.data.Dataset):
    """Item i: (a random draw made inside __getitem__, i) — exposes the augmentation RNG."""

    def __len__(self) -> int:
        return 23

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.rand(2), i


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_order_and_augmentation_depend_only_on_seed_and_epoch():
    a = make_loader(Indexed(), 4, train=True, seed=5)
    b = make_loader(Indexed(), 4, train=True, seed=5, workers=2)
    for epoch in (0, 1):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        ba, bb = batches(a), batches(b)
        assert len(ba) == 5  # 23 // 4, last incomplete batch dropped
        for (xa, ya), (xb, yb) in zip(ba, bb, strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    a.set_epoch(0)
    first = batches(a)
    a.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in batches(a)]))
    a.set_epoch(0, start_batch=3)  # resume inside epoch 0: the same last two batches
    resumed = batches(a)
    assert all(
        torch.equal(x, fx) and torch.equal(y, fy) for (x, y), (fx, fy) in zip(resumed, first[3:], strict=True)
    )
    assert len(resumed) == 2


def test_ddp_shards_make_up_the_single_process_batches():
    single = list(EpochSampler(23, shuffle=True, seed=9, batch_size=8))
    shards = [
        list(EpochSampler(23, shuffle=True, seed=9, rank=r, world_size=2, batch_size=4)) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 12  # padded to equal length
    for b in range(2):  # global batch b = the union of the ranks' batch b, with the same augmentation seeds
        union = sorted(shards[0][4 * b : 4 * b + 4] + shards[1][4 * b : 4 * b + 4])
        assert union == sorted(single[8 * b : 8 * b + 8])
    evals = [list(EpochSampler(23, shuffle=False, rank=r, world_size=2, pad=False)) for r in (0, 1)]
    assert sorted(i for s in evals for i, _ in s) == list(range(23))  # every val image exactly once
