"""The Python API's preprocessing is the CLI's: ``alexnet.inputs.prepare`` (the README's Python example),
``Preprocessing.eval_transform`` and ``alexnet predict``/``eval`` (``predict.input_transform``) feed the same
tensor, bit for bit, per-pixel mean image included (AlexNet §2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import alexnet
from alexnet.data import transforms
from alexnet.data.images import read_image
from alexnet.data.preprocess import Preprocessing
from alexnet.errors import DataError
from alexnet.inputs import prepare
from alexnet.predict import input_transform
from alexnet.weights import WeightsMeta

CAFFE_MEAN_IMAGE = Preprocessing(
    input_size=227,
    resize=256,
    mean=(104.0, 117.0, 123.0),
    std=(1.0, 1.0, 1.0),
    channel_order="BGR",
    pixel_scale=255.0,
    mean_image=True,
)


def _mean_image(resize: int = 256) -> torch.Tensor:
    """A mean image that varies along both axes, so a crop one pixel off subtracts other numbers."""
    ramp = torch.linspace(60.0, 150.0, resize)
    return torch.stack([ramp[:, None] + ramp[None, :] * k for k in (0.5, 1.0, 1.5)])


@pytest.fixture
def wide_jpeg(tmp_path):
    """300×400: resized to 256×341, whose central 256 patch starts at 42.5 → an odd offset to round."""
    path = tmp_path / "cat.jpg"
    pixels = (np.random.RandomState(0).rand(300, 400, 3) * 255).astype("uint8")
    Image.fromarray(pixels).save(path)
    return path


def _with_mean_image() -> alexnet.AlexNetFamily:
    model = alexnet.create_model("alexnet", num_classes=10)
    model.weights_meta = WeightsMeta(preprocessing=CAFFE_MEAN_IMAGE, tensors={"mean_image": _mean_image()})
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda: alexnet.create_model("alexnet", num_classes=10),  # 256 → 227: odd offsets both ways
        lambda: alexnet.create_model("zfnet", num_classes=10),
        _with_mean_image,
    ],
    ids=["alexnet", "zfnet", "mean-image"],
)
def test_prepare_feeds_exactly_what_predict_feeds_on_a_non_square_image(make, wide_jpeg):
    model = make()
    prepared = prepare(model, wide_jpeg)  # the README's Python way
    fed = input_transform(model)(read_image(wide_jpeg))  # what `alexnet predict` / eval feed
    assert prepared.tensor.dtype == fed.dtype and torch.equal(prepared.tensor, fed)
    pre = model.weights_meta.preprocessing if model.weights_meta is not None else None
    pre = pre or Preprocessing(input_size=model.default_input_size)
    assert torch.equal(prepared.crop, transforms.eval_crop(pre)(read_image(wide_jpeg)))


def test_prepare_takes_the_crop_from_the_central_patch_and_subtracts_that_part_of_the_mean_image(wide_jpeg):
    model = _with_mean_image()
    image = read_image(wide_jpeg)
    patch = transforms.central_patch(256)(image)  # AlexNet §2: shorter side 256, central 256×256
    off = 14  # round((256 - 227) / 2), the offset CenterCrop takes on the patch
    expected = transforms.Normalize(CAFFE_MEAN_IMAGE, _mean_image())(patch.float() / 255)
    expected = expected[:, off : off + 227, off : off + 227]
    got = prepare(model, image)
    assert torch.equal(got.crop, patch[:, off : off + 227, off : off + 227])
    torch.testing.assert_close(got.tensor, expected, rtol=0, atol=1e-4)


def test_preprocessing_eval_transform_is_the_eval_pipeline_with_its_mean_image():
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    mean = _mean_image()
    got = CAFFE_MEAN_IMAGE.eval_transform(mean)(img)
    assert torch.equal(got, transforms.eval_transform(CAFFE_MEAN_IMAGE, mean_image=mean)(img))
    per_channel = Preprocessing(**{**CAFFE_MEAN_IMAGE.to_dict(), "mean_image": False})
    assert not torch.allclose(got, per_channel.eval_transform()(img), atol=1.0)  # the mean image was used
    plain = Preprocessing(input_size=227)
    assert torch.equal(plain.eval_transform()(img), transforms.eval_transform(plain)(img))


def test_preprocessing_eval_transform_refuses_to_drop_or_invent_a_mean_image():
    with pytest.raises(DataError, match="subtracts a per-pixel mean image, but none was given"):
        CAFFE_MEAN_IMAGE.eval_transform()
    with pytest.raises(DataError, match="per-channel mean, not a mean image"):
        Preprocessing().eval_transform(_mean_image())
    with pytest.raises(DataError, match=r"mean image is \(3, 227, 227\), expected \(3, 256, 256\)"):
        CAFFE_MEAN_IMAGE.eval_transform(torch.zeros(3, 227, 227))


@pytest.mark.parametrize(("height", "width"), [(300, 400), (400, 300), (301, 451), (256, 256)])
def test_eval_crop_offsets_locate_the_eval_crop_in_the_resized_image(height, width):
    pre = Preprocessing(input_size=227, resize=256)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    resized = v2.Resize(256, antialias=True)(image)
    top, left = transforms.eval_crop_offsets(pre, *resized.shape[-2:])
    assert torch.equal(resized[:, top : top + 227, left : left + 227], transforms.eval_crop(pre)(image))


@pytest.mark.parametrize("with_mean_image", [False, True])
def test_a_float_image_in_0_1_gives_the_input_of_its_uint8_form(with_mean_image: bool) -> None:
    # torchvision's convention for float images (0–1), as its weights.transforms() takes them
    img = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    if with_mean_image:
        mean_img = torch.stack([torch.linspace(60, 150, 256).expand(256, 256)] * 3)
        pipeline, grey_level = CAFFE_MEAN_IMAGE.eval_transform(mean_image=mean_img), 1.0  # 0–255 input
    else:
        pipeline, grey_level = Preprocessing().eval_transform(), 1 / (0.224 * 255)  # ImageNet mean/std
    # within one grey level: the uint8 image's resize rounds to whole levels, the float image's does not
    torch.testing.assert_close(pipeline(img.float() / 255.0), pipeline(img), rtol=0, atol=grey_level * 1.01)
    with pytest.raises(DataError, match="uint8 image, or a float one"):
        pipeline(img.to(torch.int32))


def test_the_weights_transforms_take_grayscale_rgba_and_numpy_images_as_rgb(wide_jpeg):
    """ImageNet holds grayscale JPEGs: in memory (PIL, NumPy, a 1×H×W tensor) they are fed as read_image feeds
    them, as RGB; an alpha channel is dropped."""
    preprocess = WeightsMeta(preprocessing=Preprocessing()).transforms()
    rgb = Image.open(wide_jpeg).convert("RGB")
    want = preprocess(rgb)
    assert torch.equal(preprocess(read_image(wide_jpeg)), want)
    assert torch.equal(preprocess(np.asarray(rgb)), want) and torch.equal(
        preprocess(rgb.convert("RGBA")), want
    )
    gray = rgb.convert("L")
    as_rgb = preprocess(gray.convert("RGB"))
    assert torch.equal(preprocess(gray), as_rgb)
    assert torch.equal(preprocess(torch.from_numpy(np.array(gray))[None]), as_rgb)
    assert torch.equal(preprocess(np.asarray(gray)), as_rgb)
    with pytest.raises(DataError, match="1, 3 or 4 channels"):
        preprocess(torch.zeros(2, 30, 30, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(channel_order="rgb"), "channel_order must be 'RGB' or 'BGR'"),
        (dict(std=(1.0, 0.0, 1.0)), "std non-zero"),
        (dict(mean=(0.5, 0.5)), "3 values each"),
    ],
)
def test_a_preprocessing_record_that_would_feed_images_wrongly_is_refused(kwargs, says):
    with pytest.raises(DataError, match=says):
        Preprocessing(**kwargs)


def test_a_large_jpeg_is_fed_alike_by_predict_visualize_and_eval_decoded_at_reduced_size(tmp_path):
    """A 1200×1000 photo: `alexnet eval` decodes it at half size (DCT-domain scaling, never below the resize);
    `alexnet predict`, `prepare` (every visualisation) and top-9's decoding workers feed the same tensor."""
    import skimage.data

    from alexnet.data.folders import ImageFolder
    from alexnet.inputs import prepared_batches
    from alexnet.predict import predict, predict_files

    (tmp_path / "val" / "cat").mkdir(parents=True)
    path = tmp_path / "val" / "cat" / "big.jpg"
    Image.fromarray(skimage.data.chelsea()).resize((1200, 1000)).save(path, quality=90)
    torch.manual_seed(0)
    model = alexnet.create_model("alexnet", num_classes=10).eval()
    evaluated = ImageFolder(tmp_path, "val", input_transform(model), min_side=256)[0][
        0
    ]  # as evaluate() opens it
    assert tuple(read_image(path, min_side=256).shape) == (3, 500, 600)  # reduced, shorter side ≥ 256
    assert torch.equal(prepare(model, path).tensor, evaluated)
    ((batch, bad),) = prepared_batches(model, [path], [(0, 1)])
    assert bad == [] and torch.equal(batch[0], evaluated)
    ((_, top),) = predict_files(model, [path], topk=3)
    assert top == predict(model, evaluated[None], topk=3)[0]
    # torchvision's way (the README's): the weights' transforms on the file decoded as predict decodes it; decoded
    # whole, the same steps see other pixels (the reduced-size IDCT is not a resize of the full decode)
    preprocess = WeightsMeta(preprocessing=Preprocessing()).transforms()
    assert torch.equal(preprocess(read_image(path, min_side=Preprocessing().resize)), evaluated)
    assert not torch.equal(preprocess(read_image(path)), evaluated)
