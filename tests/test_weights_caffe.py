""".caffemodel import: nets serialized here by a small protobuf wire-format *writer* (independent of the reader),
in the current (``layer``, string types, BlobShape) and the V1 (``layers``, enum types, num/channels/height/width)
forms, including Caffe's train-time layers; the import must reproduce every blob and the source's logits."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.errors import WeightsError, WeightsMismatch
from alexnet.models import Fc
from alexnet.weights.caffe import import_caffemodel, read_chain

# --- a minimal protobuf writer (wire format: varint keys, length-delimited messages, packed floats) --------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_varint(number: int, value: int) -> bytes:
    return varint(number << 3) + varint(value)


def field_bytes(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def field_str(number: int, text: str) -> bytes:
    return field_bytes(number, text.encode())


def field_float(number: int, value: float) -> bytes:
    return varint(number << 3 | 5) + struct.pack("<f", value)


def blob(array: np.ndarray, legacy: bool) -> bytes:
    data = field_bytes(5, np.ascontiguousarray(array, dtype="<f4").tobytes())  # packed float
    if legacy:  # V1: num, channels, height, width; fc weights as 1×1×out×in, biases as 1×1×1×out
        dims = [1] * (4 - array.ndim) + list(array.shape)
        return b"".join(field_varint(i, d) for i, d in enumerate(dims, start=1)) + data
    shape = field_bytes(1, b"".join(varint(d) for d in array.shape))  # packed int64
    return field_bytes(7, shape) + data


V1_CODES = {"Data": 5, "Convolution": 4, "ReLU": 18, "LRN": 15, "Pooling": 17, "InnerProduct": 14,
            "Dropout": 6, "SoftmaxWithLoss": 21, "Accuracy": 1}  # fmt: skip


def layer(kind, name, bottom, top, *, params=b"", blobs=(), v1=False, param_field=None):
    """One LayerParameter (V2) or V1LayerParameter with the given type-specific parameter message."""
    fields = (
        {"name": 4, "type": 5, "bottom": 2, "top": 3, "blobs": 6}
        if v1
        else {"name": 1, "type": 2, "bottom": 3, "top": 4, "blobs": 7}
    )
    out = field_str(fields["name"], name)
    out += field_varint(fields["type"], V1_CODES[kind]) if v1 else field_str(fields["type"], kind)
    for b in bottom:
        out += field_str(fields["bottom"], b)
    for t in top:
        out += field_str(fields["top"], t)
    for arr in blobs:
        out += field_bytes(fields["blobs"], blob(arr, legacy=v1))
    if params:
        out += field_bytes(param_field, params)
    return out


def caffemodel_of(
    model, v1: bool = False, crop: int = 227, leaky: bool = False, avg_pool: bool = False
) -> bytes:
    """Serialize ``model`` as Caffe's train_val net: Data (crop), conv/relu(in place)/norm/pool …, fc/relu/drop …,
    SoftmaxWithLoss and Accuracy, with the weights as blobs."""
    P = (
        {"conv": 10, "ip": 17, "lrn": 18, "pool": 19, "transform": 36, "relu": 30}
        if v1
        else {"conv": 106, "ip": 117, "lrn": 118, "pool": 121, "transform": 100, "relu": 123}
    )
    cfg = model.config
    net = b""
    net_layers = [
        layer(
            "Data",
            "data",
            [],
            ["data", "label"],
            params=field_varint(3, crop),
            v1=v1,
            param_field=P["transform"],
        )
    ]
    top = "data"
    for name, module in model.named_layers():
        if name.startswith("conv"):
            c = cfg.convs[int(name[4:]) - 1]
            p = (
                field_varint(1, c.out)
                + field_varint(4, c.kernel)
                + field_varint(6, c.stride)
                + field_varint(5, c.groups)
            )
            if c.padding:
                p += field_varint(3, c.padding)
            net_layers.append(
                layer("Convolution", name, [top], [name], params=p, v1=v1, param_field=P["conv"],
                      blobs=[module.weight.detach().numpy(), module.bias.detach().numpy()])
            )  # fmt: skip
            top = name
        elif name.startswith("relu"):
            p = field_float(1, 0.1) if leaky else b""
            net_layers.append(
                layer("ReLU", name, [top], [top], params=p, v1=v1, param_field=P["relu"])
            )  # in place
        elif name.startswith("norm"):
            lrn = cfg.lrn
            p = (
                field_varint(1, lrn.size)
                + field_float(2, lrn.alpha)
                + field_float(3, lrn.beta)
                + field_float(5, lrn.k)
            )
            net_layers.append(layer("LRN", name, [top], [name], params=p, v1=v1, param_field=P["lrn"]))
            top = name
        elif name.startswith("pool"):
            p = (
                field_varint(1, 1 if avg_pool else 0)
                + field_varint(2, cfg.pool_kernel)
                + field_varint(3, cfg.pool_stride)
            )
            net_layers.append(layer("Pooling", name, [top], [name], params=p, v1=v1, param_field=P["pool"]))
            top = name
        elif name.startswith("fc"):
            p = field_varint(1, module.out_features)
            net_layers.append(
                layer("InnerProduct", name, [top], [name], params=p, v1=v1, param_field=P["ip"],
                      blobs=[module.weight.detach().numpy(), module.bias.detach().numpy()])
            )  # fmt: skip
            top = name
        elif name.startswith("drop"):
            net_layers.append(
                layer(
                    "Dropout",
                    name,
                    [top],
                    [top],
                    params=field_float(1, 0.5),
                    v1=v1,
                    param_field=12 if v1 else 108,
                )
            )
    net_layers.append(layer("SoftmaxWithLoss", "loss", [top, "label"], ["loss"], v1=v1))
    net_layers.append(layer("Accuracy", "accuracy", [top, "label"], ["accuracy"], v1=v1))
    net += field_str(1, "CaffeNet")
    for raw in net_layers:
        net += field_bytes(2 if v1 else 100, raw)
    return net


def small(name: str, seed: int = 0):
    """The registered conv trunk with narrow fc layers (fc6/fc7 of 32), randomly initialised."""
    torch.manual_seed(seed)
    return alexnet.create_model(name, num_classes=10, fcs=(Fc(32), Fc(32), Fc(None))).eval()


def same_logits(a, b, size=227) -> None:
    x = torch.randn(2, 3, size, size) * 64
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("v1", [False, True], ids=["V2-layer", "V1-layers"])
@pytest.mark.parametrize("name", ["caffenet", "bvlc_alexnet"])
def test_caffemodel_import_reproduces_every_blob_and_the_logits(tmp_path, name, v1):
    source = small(name)
    path = tmp_path / "net.caffemodel"
    path.write_bytes(caffemodel_of(source, v1=v1))
    model = import_caffemodel(path, "auto")
    cfg, want = model.config, source.config
    assert (cfg.convs, cfg.lrn, cfg.pool_before_norm, cfg.pool_kernel, cfg.pool_stride, cfg.ceil_mode) == (
        tuple(
            c.__class__(c.out, c.kernel, c.stride, c.padding, c.groups, c.norm, c.pool) for c in want.convs
        ),
        want.lrn,
        want.pool_before_norm,
        want.pool_kernel,
        want.pool_stride,
        True,
    )
    assert cfg.input_size == 227  # from the Data layer's crop_size
    for key, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    same_logits(model, source)


def test_caffemodel_loads_into_a_registered_model_by_name(tmp_path, capsys, monkeypatch):
    """The registered-model path (``--model NAME``), with a registered narrow-fc variant of bvlc_alexnet so the
    file stays small; the full-size path is exercised by the ONNX zoo test."""
    from alexnet.models import CONFIGS, get_config

    narrow = get_config("bvlc_alexnet").with_overrides(name="bvlc_narrow", fcs=(Fc(32), Fc(32), Fc(None)))
    monkeypatch.setitem(CONFIGS, "bvlc_narrow", narrow)
    torch.manual_seed(0)
    source = alexnet.create_model("bvlc_narrow").eval()
    path = tmp_path / "bvlc_narrow.caffemodel"
    path.write_bytes(caffemodel_of(source, v1=True))
    out = tmp_path / "bvlc.safetensors"
    assert main(["weights", "import", str(path), "--model", "bvlc_narrow", "--out", str(out)]) == 0
    assert "bvlc_narrow.caffemodel → bvlc_narrow" in capsys.readouterr().out
    model = alexnet.create_model("bvlc_narrow", weights=out).eval()
    assert model.config == narrow.with_overrides(num_classes=1000)
    same_logits(model, source)
    pre = model.weights_meta.preprocessing
    assert (pre.channel_order, pre.pixel_scale, pre.mean, pre.input_size) == (
        "BGR",
        255.0,
        (104.0, 117.0, 123.0),
        227,
    )


def test_caffe_preprocessing_feeds_bgr_0_255_minus_the_mean_pixel(tmp_path, chelsea):
    source = small("caffenet")
    path = tmp_path / "c.caffemodel"
    path.write_bytes(caffemodel_of(source))
    pre = import_caffemodel(path).weights_meta.preprocessing
    rgb01 = torch.from_numpy(chelsea).permute(2, 0, 1).float() / 255
    c = chelsea.astype(np.float32)
    expected = np.stack(
        [c[..., 2] - 104.0, c[..., 1] - 117.0, c[..., 0] - 123.0]
    )  # B, G, R minus Caffe's mean
    torch.testing.assert_close(pre.normalize(rgb01), torch.from_numpy(expected), atol=1e-3, rtol=0)


def test_registered_model_mismatch_names_the_layer(tmp_path):
    path = tmp_path / "c.caffemodel"
    path.write_bytes(caffemodel_of(small("caffenet")))
    with pytest.raises(
        WeightsMismatch, match="pooling comes before LRN in the file; bvlc_alexnet pools after it"
    ):
        import_caffemodel(path, "bvlc_alexnet")
    with pytest.raises(
        WeightsMismatch,
        match=r"layer 'conv1' \(Convolution\) → conv1: kernel is 11, zfnet's conv1 has kernel=7",
    ):
        import_caffemodel(path, "zfnet")


def test_layers_outside_the_family_are_refused(tmp_path):
    path = tmp_path / "c.caffemodel"
    path.write_bytes(caffemodel_of(small("caffenet"), leaky=True))
    with pytest.raises(WeightsMismatch, match="leaky ReLU"):
        read_chain(path)
    path.write_bytes(caffemodel_of(small("caffenet"), avg_pool=True))
    with pytest.raises(WeightsMismatch, match="average/stochastic pooling"):
        read_chain(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not-a-net"])
def test_cli_bad_caffemodel_gives_one_line_exit_2_and_no_output(tmp_path, capsys, damage):
    good = caffemodel_of(small("caffenet"))
    bad = tmp_path / "bad.caffemodel"
    if damage == "truncated":
        bad.write_bytes(good[: len(good) - 1000])
    elif damage == "garbage":
        bad.write_bytes(bytes([0xFF]) * 64)
    else:
        bad.write_bytes(field_str(1, "just a name"))
    out = tmp_path / "out.safetensors"
    assert main(["weights", "import", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error: ") and err.count("\n") == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["bad.caffemodel"]


def test_wire_reader_rejects_a_blob_whose_data_does_not_fill_its_shape(tmp_path):
    from alexnet.weights.caffe import read_blob

    raw = field_bytes(7, field_bytes(1, varint(2) + varint(3))) + field_bytes(5, np.zeros(5, "<f4").tobytes())
    with pytest.raises(WeightsError, match=r"blob shape \[2, 3\] holds 6 values, the data has 5"):
        read_blob(memoryview(raw), "test")


def test_caffe_mean_image_travels_with_the_weights(tmp_path):
    from alexnet.weights import read_weights

    net = tmp_path / "c.caffemodel"
    net.write_bytes(caffemodel_of(small("caffenet")))
    mean = np.random.default_rng(0).uniform(90, 130, (1, 3, 256, 256)).astype(np.float32)
    mean_file = tmp_path / "imagenet_mean.binaryproto"
    mean_file.write_bytes(blob(mean, legacy=True))  # BVLC's file uses num/channels/height/width
    out = tmp_path / "c.safetensors"
    assert main(["weights", "import", str(net), "--mean-file", str(mean_file), "--out", str(out)]) == 0
    _, meta = read_weights(out)
    assert meta.preprocessing.mean_image and meta.preprocessing.channel_order == "BGR"
    assert torch.equal(meta.tensors["mean_image"], torch.from_numpy(mean[0]))
    assert meta.preprocessing.mean == pytest.approx(tuple(mean[0].reshape(3, -1).mean(1)), rel=1e-5)


def test_rgb_option_reverses_conv1_input_channels_and_the_mean(tmp_path):
    source = small("caffenet")
    path = tmp_path / "c.caffemodel"
    path.write_bytes(caffemodel_of(source))
    model = import_caffemodel(path, rgb=True)
    assert torch.equal(model.layer("conv1").weight, source.layer("conv1").weight.flip(1))
    pre = model.weights_meta.preprocessing
    assert pre.channel_order == "RGB" and pre.mean == (123.0, 117.0, 104.0)
