"""The Python API's weights: torchvision's download gives up on a stalled network; torchvision-style ``weights=``
values; the weights metadata as torchvision's ``weights.transforms()`` / ``weights.meta``. No network is used:
downloads come from file:// URLs or a local socket that never answers."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import alexnet
import alexnet.weights.torchvision as tvw
from alexnet.errors import WeightsError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache in tmp_path (TORCH_HOME, and no set_dir() from elsewhere): its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _stalled_server(answer: bytes) -> Iterator[str]:
    """A local server that accepts, sends ``answer`` (maybe nothing) and then never another byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/alexnet-owt-7be5be79.pth"
    finally:
        srv.close()
        for conn in held:
            conn.close()


@pytest.fixture(params=["no answer", "stalls mid-file"])
def stalled_url(request):
    answer = (
        b""
        if request.param == "no answer"
        else b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 5000
    )
    yield from _stalled_server(answer)


def test_torchvision_weights_url_is_torchvisions():
    from torchvision.models import AlexNet_Weights

    assert AlexNet_Weights.IMAGENET1K_V1.url == tvw.URL


def test_torchvision_download_gives_up_on_a_stalled_network_and_leaves_no_partial_file(
    hub, stalled_url, monkeypatch
):
    monkeypatch.setattr(tvw, "URL", stalled_url)
    monkeypatch.setattr(tvw, "TIMEOUT", 0.5)  # 30 s in real use
    start = time.monotonic()
    with pytest.raises(WeightsError) as e:
        alexnet.create_model("alexnet_owt", weights="torchvision")
    assert time.monotonic() - start < 10
    assert "no answer for 0.5 s" in str(e.value)
    assert f"offline, fetch it elsewhere and put it at {hub / 'alexnet-owt-7be5be79.pth'}" in str(e.value)
    assert list(hub.iterdir()) == []  # no .partial file, no truncated .pth


def _published(tmp_path, state: dict[str, torch.Tensor], digest: str | None = None) -> str:
    """``state`` saved as a file named like torchvision's (``alexnet-owt-<sha256 prefix>.pth``), as a file:// URL."""
    src = tmp_path / "srv" / "x.pth"
    src.parent.mkdir()
    torch.save(state, src)
    prefix = digest or hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    named = src.rename(src.with_name(f"alexnet-owt-{prefix}.pth"))
    return named.as_uri()


def test_torchvision_download_lands_in_torch_hubs_cache_and_is_read_from_there_next_time(
    hub, tmp_path, monkeypatch
):
    state = {"features.0.bias": torch.arange(4.0)}
    url = _published(tmp_path, state)
    monkeypatch.setattr(tvw, "URL", url)
    got = tvw.fetch_torchvision_state_dict(progress=False)
    assert torch.equal(got["features.0.bias"], state["features.0.bias"])
    assert [p.name for p in hub.iterdir()] == [url.rsplit("/", 1)[1]]
    (tmp_path / "srv" / url.rsplit("/", 1)[1]).unlink()  # the second call cannot download
    assert torch.equal(tvw.fetch_torchvision_state_dict(progress=False)["features.0.bias"], torch.arange(4.0))


def test_torchvision_download_with_a_hash_other_than_its_name_says_is_refused_and_not_kept(
    hub, tmp_path, monkeypatch
):
    monkeypatch.setattr(tvw, "URL", _published(tmp_path, {"w": torch.ones(2)}, digest="00000000"))
    with pytest.raises(WeightsError, match="does not start with 00000000 as its name says"):
        tvw.fetch_torchvision_state_dict(progress=False)
    assert list(hub.iterdir()) == []


def test_a_corrupt_cached_torchvision_file_is_named_in_the_error(hub):
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match=r"alexnet-owt-7be5be79\.pth: not torchvision's AlexNet weights"):
        alexnet.create_model("alexnet_owt", weights="torchvision")


# --- torchvision's spellings of weights= (AlexNet_Weights members, "DEFAULT", "IMAGENET1K_V1") ---------------


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.alexnet().state_dict()


@pytest.fixture
def offline_torchvision(tv_state, monkeypatch):
    """weights="torchvision" with torchvision's state dict made locally instead of downloaded."""
    monkeypatch.setattr(tvw, "fetch_torchvision_state_dict", lambda progress=True: tv_state)
    return tv_state


def _tv_spellings() -> list[object]:
    from torchvision.models import AlexNet_Weights

    return [
        AlexNet_Weights.IMAGENET1K_V1,  # AlexNet_Weights.DEFAULT is the same member
        "DEFAULT",
        "IMAGENET1K_V1",
        "AlexNet_Weights.IMAGENET1K_V1",
    ]


@pytest.mark.parametrize("weights", _tv_spellings(), ids=str)
def test_torchvisions_spellings_of_its_alexnet_weights_load_them_into_alexnet_owt(
    weights, offline_torchvision
):
    model = alexnet.create_model("alexnet_owt", weights=weights)
    assert torch.equal(model.state_dict()["features.0.weight"], offline_torchvision["features.0.weight"])
    assert "AlexNet_Weights.IMAGENET1K_V1" in model.weights_meta.source
    assert alexnet.weights.load_pretrained(None, weights).config.name == "alexnet_owt"


@pytest.mark.parametrize(
    ("name", "weights", "hint"),
    [
        (
            "bvlc_alexnet",
            "DEFAULT",
            "published weights for bvlc_alexnet: bvlcalexnet-6, bvlcalexnet-8, bvlc_alexnet",
        ),
        ("caffenet", "IMAGENET1K_V1", "published weights for caffenet: caffenet-6, caffenet-9"),
        ("zfnet", "enum", "no published weights are zfnet's"),
    ],
)
def test_torchvisions_alexnet_weights_for_another_model_name_the_weights_it_has(name, weights, hint):
    from torchvision.models import AlexNet_Weights

    from alexnet.errors import WeightsMismatch

    w = AlexNet_Weights.IMAGENET1K_V1 if weights == "enum" else weights
    with pytest.raises(
        WeightsMismatch, match=f"torchvision's AlexNet weights fit alexnet_owt, not {name}; {hint}"
    ):
        alexnet.create_model(name, weights=w)


def test_torchvision_weights_of_another_network_are_refused():
    from torchvision.models import ResNet18_Weights

    from alexnet.errors import WeightsMismatch

    with pytest.raises(
        WeightsMismatch, match=r"ResNet18_Weights\.IMAGENET1K_V1 are torchvision's weights for another"
    ):
        alexnet.create_model("alexnet_owt", weights=ResNet18_Weights.IMAGENET1K_V1)


@pytest.mark.parametrize("weights", [True, 1, 0.5, b"model.safetensors", ["model.safetensors"]], ids=repr)
def test_weights_of_another_type_is_a_type_error_naming_the_accepted_forms(weights):
    with pytest.raises(
        TypeError, match=r"weights must be a weights file path, 'torchvision' \(also torchvision's "
    ):
        alexnet.create_model("alexnet_owt", weights=weights)


def test_a_local_file_named_like_torchvisions_weights_is_read_as_a_file(tmp_path, monkeypatch):
    from alexnet.weights import save_weights

    save_weights(alexnet.create_model("zfnet", num_classes=10), tmp_path / "DEFAULT")
    monkeypatch.chdir(tmp_path)
    assert alexnet.create_model("zfnet", weights="DEFAULT").num_classes == 10


def test_a_published_source_for_another_model_is_refused_before_downloading(monkeypatch):
    from alexnet.errors import WeightsMismatch
    from alexnet.weights import sources

    def no_download(name, *args, **kwargs):
        raise AssertionError(f"downloaded {name}")

    monkeypatch.setattr(sources, "fetch", no_download)
    with pytest.raises(WeightsMismatch, match="bvlcalexnet-8 holds bvlc_alexnet's weights, not zfnet's"):
        alexnet.create_model("zfnet", weights="bvlcalexnet-8")
    for name in ("bvlc_alexnet", None):  # the right model, or inferred: downloads as before
        with pytest.raises(AssertionError, match="downloaded bvlcalexnet-8"):
            alexnet.weights.load_pretrained(name, "bvlcalexnet-8")


# --- the weights metadata as torchvision's weights.transforms() / weights.meta ---------------------------------


def _mean_image_weights(tmp_path) -> Path:
    from alexnet.weights import WeightsMeta, save_weights
    from test_api_transforms import CAFFE_MEAN_IMAGE as pre  # Caffe's 0–255 BGR input, minus a mean image

    ramp = torch.linspace(60.0, 150.0, 256)
    meta = WeightsMeta(preprocessing=pre, tensors={"mean_image": torch.stack([ramp[:, None] + ramp] * 3)})
    return save_weights(alexnet.create_model("caffenet", num_classes=10), tmp_path / "m.safetensors", meta)


def _pth_weights(tmp_path, tv_state) -> Path:
    torch.save(tv_state, tmp_path / "tv.pth")  # no metadata at all: predict assumes ImageNet's at 224
    return tmp_path / "tv.pth"


@pytest.mark.parametrize("kind", ["mean image", "pth", "torchvision"])
def test_weights_meta_transforms_feed_what_alexnet_predict_feeds(kind, tmp_path, offline_torchvision):
    from PIL import Image

    from alexnet.predict import input_transform

    if kind == "mean image":
        model = alexnet.create_model("caffenet", weights=_mean_image_weights(tmp_path))
    elif kind == "pth":
        model = alexnet.create_model("alexnet_owt", weights=_pth_weights(tmp_path, offline_torchvision))
    else:
        model = alexnet.create_model("alexnet_owt", weights="torchvision")
    image = torch.randint(
        0, 256, (3, 300, 401), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    preprocess = model.weights_meta.transforms()
    expected = input_transform(model)(image)
    assert torch.equal(preprocess(image), expected)
    assert torch.equal(preprocess(Image.fromarray(image.permute(1, 2, 0).numpy())), expected)
    assert torch.equal(preprocess(torch.stack([image, image]))[1], expected)  # a batch
    ten = model.weights_meta.transforms(ten_crop=True)(image)
    assert torch.equal(ten, input_transform(model, ten_crop=True)(image))


def test_weights_meta_transforms_refuse_a_missing_mean_image(tmp_path):
    from dataclasses import replace

    from alexnet.weights import read_weights

    meta = read_weights(_mean_image_weights(tmp_path))[1]
    with pytest.raises(WeightsError, match="subtracts a per-pixel mean image, but the file carries none"):
        replace(meta, tensors={}).transforms()


def test_weights_meta_mapping_of_torchvisions_weights_is_torchvisions(offline_torchvision):
    from torchvision.models import AlexNet_Weights

    theirs = AlexNet_Weights.IMAGENET1K_V1.meta
    ours = alexnet.create_model("alexnet_owt", weights="torchvision").weights_meta.meta
    for key in ("categories", "num_params", "min_size", "_metrics", "recipe"):
        assert ours[key] == theirs[key], key


def test_weights_meta_mapping_of_a_pth_file_comes_from_the_model_it_was_loaded_into(
    tmp_path, offline_torchvision
):
    model = alexnet.create_model("alexnet_owt", weights=_pth_weights(tmp_path, offline_torchvision))
    meta = model.weights_meta.meta
    assert meta["num_params"] == sum(p.numel() for p in model.parameters()) == 61_100_840
    assert meta["min_size"] == (63, 63) and len(meta["categories"]) == 1000 and meta["_metrics"] == {}


@pytest.mark.parametrize(
    ("source", "metrics"),
    [
        ("bvlcalexnet-8", {"ImageNet-1K": {"acc@1": 57.1, "acc@5": 80.2}}),
        ("bvlc_reference_caffenet", {"ImageNet-1K": {"acc@1": 57.4, "acc@5": 80.4}}),
        ("zfnet512-12", {}),  # no accuracy published for this file: none made up
    ],
)
def test_weights_meta_metrics_of_a_published_source_are_its_published_figures(source, metrics):
    from alexnet.weights import WeightsMeta
    from alexnet.weights.sources import SOURCES

    known = SOURCES[source]
    meta = WeightsMeta(model="bvlc_alexnet", source=f"{known.describe()} (sha256 0000, opset 8, producer x)")
    assert meta.meta["_metrics"] == metrics


def test_weights_meta_of_a_training_run_has_its_validation_accuracy_and_recipe(tmp_path):
    from alexnet.weights import WeightsMeta, save_weights

    extra = {"recipe": "demo", "val_top1_err": 0.25, "val_top5_err": 0.0625, "val_images": 64}
    classes = [f"c{i}" for i in range(10)]
    path = save_weights(
        alexnet.create_model("zfnet", num_classes=10),
        tmp_path / "r.safetensors",
        WeightsMeta(classes=classes, extra=extra),
    )
    meta = alexnet.create_model("zfnet", weights=path).weights_meta.meta
    assert meta["_metrics"] == {"val": {"acc@1": 75.0, "acc@5": 93.75}} and meta["recipe"] == "demo"
    assert meta["categories"] == classes and meta["min_size"] == (207, 207)


@pytest.mark.parametrize("name", alexnet.list_models())
def test_weights_meta_min_size_is_the_smallest_input_the_model_takes(name):
    from alexnet.errors import InputSizeError
    from alexnet.weights import WeightsMeta

    size = WeightsMeta(model=name).meta["min_size"][0]
    model = alexnet.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, size, size)).shape == (1, 10)
        with pytest.raises(InputSizeError):
            model(torch.zeros(1, 3, size - 1, size - 1))
