"""Import Caffe ``.caffemodel`` files (BVLC's bvlc_alexnet, bvlc_reference_caffenet) without Caffe or protoc.

A ``.caffemodel`` is a serialized ``caffe.NetParameter`` (``src/caffe/proto/caffe.proto``). We read the protobuf
wire format directly — varints, length-delimited fields, packed floats — and only the fields we need:

* ``NetParameter``: ``layer`` = 100 (``LayerParameter``, current), ``layers`` = 2 (``V1LayerParameter``, before
  2015), ``input_dim`` = 4, ``input_shape`` = 8.
* ``LayerParameter``: name 1, type 2 (string), bottom 3, top 4, blobs 7, transform_param 100, convolution_param
  106, inner_product_param 117, lrn_param 118, pooling_param 121, input_param 143.
* ``V1LayerParameter``: bottom 2, top 3, name 4, type 5 (enum), blobs 6, convolution_param 10,
  inner_product_param 17, lrn_param 18, pooling_param 19, transform_param 36.
* ``BlobProto``: num/channels/height/width 1–4 (legacy), data 5 (packed float), shape 7 (``BlobShape.dim`` 1),
  double_data 8.

The layers become a :class:`~alexnet.weights.auto.Chain` that :mod:`alexnet.weights.auto` matches by structure.
Channel order: we keep Caffe's BGR conv1 filters byte-for-byte and record ``channel_order="BGR"``,
``pixel_scale=255`` and Caffe's mean pixel in the weights' preprocessing, so ``Preprocessing.normalize`` feeds the
network exactly what Caffe did (``alexnet predict`` uses it). Caffe's pooling always rounds up (ceil).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from alexnet.errors import WeightsError, WeightsMismatch
from alexnet.models.net import AlexNetFamily
from alexnet.weights.auto import (
    Chain,
    ConvSpec,
    FcSpec,
    Layer,
    LrnSpec,
    PoolSpec,
    file_model_name,
    flip_input_channels,
    load_chain,
)
from alexnet.weights.auto import resolve_config as _resolve
from alexnet.weights.io import WeightsMeta


class CaffeFormatError(WeightsError):
    """A file that is not a well-formed serialized ``NetParameter``."""


# --- protobuf wire format -------------------------------------------------------------------------------

Fields = dict[int, list[int | memoryview]]


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CaffeFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeFormatError("varint longer than 10 bytes")


def parse_message(buf: bytes | memoryview) -> Fields:
    """Field number → values: ints for varint fields, ``memoryview`` for length-delimited and fixed-width ones."""
    view = memoryview(buf)
    fields: Fields = {}
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffeFormatError(f"field number 0 at byte {pos}")
        value: int | memoryview
        if wire == 0:
            value, pos = _varint(view, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(view):
                raise CaffeFormatError(f"truncated fixed-width field {number}")
            value, pos = view[pos : pos + width], pos + width
        elif wire == 2:
            length, pos = _varint(view, pos)
            if pos + length > len(view):
                raise CaffeFormatError(
                    f"field {number} claims {length} bytes, {len(view) - pos} remain (truncated?)"
                )
            value, pos = view[pos : pos + length], pos + length
        else:
            raise CaffeFormatError(f"unsupported wire type {wire} (field {number})")
        fields.setdefault(number, []).append(value)
    return fields


def _ints(fields: Fields, number: int) -> list[int]:
    """A repeated integer field, packed or not."""
    out: list[int] = []
    for v in fields.get(number, []):
        if isinstance(v, int):
            out.append(v)
        else:
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                out.append(x)
    return out


def _int(fields: Fields, number: int, default: int) -> int:
    values = _ints(fields, number)
    return values[-1] if values else default


def _float(fields: Fields, number: int, default: float) -> float:
    values = fields.get(number)
    if not values:
        return default
    raw = values[-1]
    if isinstance(raw, int) or len(raw) != 4:
        raise CaffeFormatError(f"field {number} is not a float")
    return float(struct.unpack("<f", raw)[0])


def _str(fields: Fields, number: int) -> str:
    values = fields.get(number)
    if not values or isinstance(values[-1], int):
        return ""
    return bytes(values[-1]).decode("utf-8", errors="replace")


def _strs(fields: Fields, number: int) -> list[str]:
    return [
        bytes(v).decode("utf-8", errors="replace") for v in fields.get(number, []) if not isinstance(v, int)
    ]


def _sub(fields: Fields, number: int) -> Fields:
    values = fields.get(number)
    if not values:
        return {}
    if isinstance(values[-1], int):
        raise CaffeFormatError(f"field {number} is not a message")
    return parse_message(values[-1])


def _floats(values: list[int | memoryview], dtype: str) -> np.ndarray:
    """A repeated float/double field: packed chunks (the norm) or one fixed-width value per entry."""
    chunks = [np.frombuffer(v, dtype=dtype) for v in values if not isinstance(v, int)]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)


def read_blob(buf: memoryview, where: str) -> np.ndarray:
    """A ``BlobProto`` as a float32 array of its declared shape (``shape.dim``, else num/channels/height/width)."""
    f = parse_message(buf)
    shape = _ints(_sub(f, 7), 1) if 7 in f else [_int(f, i, 0) for i in (1, 2, 3, 4)]
    data = _floats(f.get(5, []), "<f4")
    if data.size == 0 and 8 in f:
        data = _floats(f[8], "<f8").astype(np.float32)
    if 7 not in f:
        shape = [d for d in shape if d] or [0]
    if int(np.prod(shape)) != data.size:
        raise CaffeFormatError(
            f"{where}: blob shape {shape} holds {int(np.prod(shape))} values, the data has {data.size}"
        )
    return data.reshape(shape)


# --- NetParameter → Chain ------------------------------------------------------------------------------

# V1LayerParameter.LayerType values (caffe.proto) for the layers we meet.
_V1_TYPES = {
    1: "Accuracy", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 8: "Flatten", 12: "ImageData",
    14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split",
    24: "WindowData", 29: "MemoryData", 32: "DummyData", 36: "Silence",
}  # fmt: skip
_SKIPPED = {"Data", "ImageData", "WindowData", "MemoryData", "DummyData", "Input", "HDF5Data", "Accuracy",
            "SoftmaxWithLoss", "Silence", "Split"}  # fmt: skip


def _hw(f: Fields, one: int, h: int, w: int, default: int) -> tuple[int, int]:
    """Caffe's ``kernel_size``/``pad``/``stride`` (repeated, or one value) or its ``*_h``/``*_w`` pair."""
    if h in f or w in f:
        return _int(f, h, default), _int(f, w, default)
    values = _ints(f, one)
    if len(values) > 2:
        raise WeightsMismatch(f"{len(values)}-D spatial parameter; only 2-D layers are supported")
    return (values[0], values[-1]) if values else (default, default)


def read_chain(path: str | Path) -> Chain:
    """Read a ``.caffemodel`` (V1 ``layers`` or V2 ``layer``) as a chain of layers with their blobs."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such Caffe model file")
    try:
        net = parse_message(p.read_bytes())
    except CaffeFormatError as e:
        raise CaffeFormatError(f"{p}: not a readable .caffemodel ({e})") from None
    v2, v1 = net.get(100, []), net.get(2, [])
    if not v2 and not v1:
        raise CaffeFormatError(f"{p}: not a .caffemodel (no layer or layers field)")
    input_size: int | None = None
    dims = _ints(net, 4) or (_ints(parse_message(net[8][0]), 1) if 8 in net else [])  # type: ignore[arg-type]
    if len(dims) == 4 and dims[2] == dims[3]:
        input_size = dims[2]
    layers: list[Layer] = []
    current: str | None = None
    try:
        for raw in v2 or v1:
            assert not isinstance(raw, int)
            f = parse_message(raw)
            if v2:
                name, kind = _str(f, 1), _str(f, 2)
                bottoms, tops, blobs = _strs(f, 3), _strs(f, 4), f.get(7, [])
                params = {
                    "conv": 106,
                    "ip": 117,
                    "lrn": 118,
                    "pool": 121,
                    "relu": 123,
                    "transform": 100,
                    "input": 143,
                }
            else:
                name, code = _str(f, 4), _int(f, 5, 0)
                kind = _V1_TYPES.get(code, f"type #{code}")
                bottoms, tops, blobs = _strs(f, 2), _strs(f, 3), f.get(6, [])
                params = {
                    "conv": 10,
                    "ip": 17,
                    "lrn": 18,
                    "pool": 19,
                    "relu": 30,
                    "transform": 36,
                    "input": -1,
                }
            where = f"layer {name!r} ({kind})"
            if kind in _SKIPPED:
                crop = _int(_sub(f, params["transform"]), 3, 0) if params["transform"] in f else 0
                if crop and input_size is None:
                    input_size = crop
                if kind == "Input" and params["input"] in f:
                    shape = _ints(_sub(_sub(f, params["input"]), 1), 1)
                    input_size = shape[2] if len(shape) == 4 and shape[2] == shape[3] else input_size
                if kind in ("Data", "ImageData", "WindowData", "MemoryData", "DummyData", "Input") and tops:
                    current = current or tops[0]
                continue
            if current is not None and bottoms and bottoms[0] != current:
                raise WeightsError(f"{p}: {where} reads {bottoms[0]!r}, not {current!r}: not a single chain")
            current = tops[0] if tops else current
            arrays = [read_blob(b, where) for b in blobs if not isinstance(b, int)]
            layers.append(_layer(kind, where, f, params, arrays))
    except CaffeFormatError as e:
        raise CaffeFormatError(f"{p}: {e}") from None
    if not layers:
        raise WeightsError(f"{p}: the net has no layers with parameters")
    first = next((x.spec for x in layers if isinstance(x.spec, ConvSpec)), None)
    in_channels = int(first.weight.shape[1] * first.groups) if first is not None else None
    return Chain(
        layers, input_size=input_size, in_channels=in_channels, facts={"format": "V2" if v2 else "V1"}
    )


def _layer(kind: str, where: str, f: Fields, params: dict[str, int], blobs: list[np.ndarray]) -> Layer:
    if kind == "Convolution":
        c = _sub(f, params["conv"])
        if len(blobs) not in (1, 2) or blobs[0].ndim != 4:
            raise WeightsError(
                f"{where}: expected a 4-D weight blob and a bias blob, got {[b.shape for b in blobs]}"
            )
        kh, kw = _hw(c, 4, 11, 12, 0)
        if (kh, kw) != blobs[0].shape[2:]:
            raise WeightsError(
                f"{where}: kernel {kh}×{kw} does not match its weight blob {list(blobs[0].shape)}"
            )
        ph, pw = _hw(c, 3, 9, 10, 0)
        dil = _ints(c, 18)
        return Layer(
            "conv",
            where,
            ConvSpec(
                weight=blobs[0],
                bias=blobs[1].reshape(-1) if len(blobs) > 1 else None,
                stride=_hw(c, 6, 13, 14, 1),
                pads=(ph, pw, ph, pw),
                groups=_int(c, 5, 1),
                dilation=(dil[0], dil[-1]) if dil else (1, 1),
            ),
        )
    if kind == "ReLU":
        if _float(_sub(f, params["relu"]), 1, 0.0) != 0.0:  # ReLUParameter.negative_slope
            raise WeightsMismatch(f"{where}: a leaky ReLU (negative_slope) is not part of the AlexNet family")
        return Layer("relu", where)
    if kind == "LRN":
        lp = _sub(f, params["lrn"])
        if _int(lp, 4, 0) != 0:
            raise WeightsMismatch(
                f"{where}: WITHIN_CHANNEL normalisation; AlexNet's LRN is across channels (§3.3)"
            )
        spec = LrnSpec(
            size=_int(lp, 1, 5), alpha=_float(lp, 2, 1.0), beta=_float(lp, 3, 0.75), k=_float(lp, 5, 1.0)
        )
        return Layer("lrn", where, spec)
    if kind == "Pooling":
        pp = _sub(f, params["pool"])
        if _int(pp, 1, 0) != 0:
            raise WeightsMismatch(f"{where}: average/stochastic pooling; the AlexNet family max-pools (§3.4)")
        if _int(pp, 12, 0):
            raise WeightsMismatch(f"{where}: global pooling is not part of the AlexNet family")
        ph, pw = (_int(pp, 9, 0), _int(pp, 10, 0)) if 9 in pp or 10 in pp else (_int(pp, 4, 0),) * 2
        kh, kw = (_int(pp, 5, 0), _int(pp, 6, 0)) if 5 in pp else (_int(pp, 2, 0),) * 2
        sh, sw = (_int(pp, 7, 1), _int(pp, 8, 1)) if 7 in pp else (_int(pp, 3, 1),) * 2
        return Layer(
            "pool", where, PoolSpec(kernel=(kh, kw), stride=(sh, sw), pads=(ph, pw, ph, pw), ceil=True)
        )
    if kind == "InnerProduct":
        if len(blobs) not in (1, 2):
            raise WeightsError(f"{where}: expected a weight blob and a bias blob, got {len(blobs)} blobs")
        ip = _sub(f, params["ip"])
        out = _int(ip, 1, 0)
        w = blobs[0].reshape(-1)
        n_in = w.size // out if out else 0
        if not out or n_in * out != w.size:
            raise WeightsError(f"{where}: num_output {out} does not divide its {w.size}-value weight blob")
        w = (
            w.reshape(n_in, out).T if _int(ip, 6, 0) else w.reshape(out, n_in)
        )  # transpose=true stores [in, out]
        return Layer("fc", where, FcSpec(weight=w, bias=blobs[1].reshape(-1) if len(blobs) > 1 else None))
    if kind == "Dropout":
        return Layer("dropout", where)
    if kind == "Flatten":
        return Layer("flatten", where)
    if kind == "Softmax":
        return Layer("softmax", where)
    raise WeightsError(f"{where}: layer type {kind} is not part of an AlexNet-family network")


def read_mean_file(path: str | Path) -> np.ndarray:
    """Caffe's mean image (``imagenet_mean.binaryproto``: a ``BlobProto`` of 1×3×256×256, BGR, 0–255)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such mean file")
    try:
        mean = read_blob(memoryview(p.read_bytes()), str(p))
    except CaffeFormatError as e:
        raise CaffeFormatError(f"{p}: not a readable .binaryproto mean file ({e})") from None
    mean = mean.reshape(mean.shape[-3:]) if mean.ndim >= 3 and int(np.prod(mean.shape[:-3])) == 1 else mean
    if mean.ndim != 3 or mean.shape[0] != 3:
        raise WeightsError(f"{p}: a mean image must be 3×H×W, this blob is {list(mean.shape)}")
    return mean


def import_caffemodel(
    path: str | Path,
    model: str = "auto",
    name: str | None = None,
    mean_file: str | Path | None = None,
    rgb: bool = False,
) -> AlexNetFamily:
    """Read a ``.caffemodel`` into ``model`` (registered name or ``"auto"``); the result carries
    ``weights_meta`` with Caffe's input convention: BGR, 0–255, minus the mean pixel, or minus the per-pixel
    mean image of ``mean_file`` (BVLC's ``imagenet_mean.binaryproto``) when given. ``rgb`` converts the
    weights to take RGB input instead (conv1's input channels and the mean reversed)."""
    from alexnet.weights.onnx import caffe_preprocessing, ilsvrc_classes
    from alexnet.weights.sources import SOURCES, file_digest

    p = Path(path)
    chain = read_chain(p)
    config = _resolve(chain, model, auto_name=name or file_model_name(p.stem))
    net = load_chain(chain, config)
    sha1 = file_digest(p, "sha1")
    known = next((s for s in SOURCES.values() if s.algorithm == "sha1" and s.digest == sha1), None)
    net.weights_meta = WeightsMeta(
        model=config.name,
        num_classes=config.num_classes,
        classes=ilsvrc_classes(config.num_classes),
        preprocessing=caffe_preprocessing(chain.input_size or config.input_size),
        source=(known.describe() if known else f"Caffe model {p.name}")
        + f" (sha1 {sha1}, {chain.facts['format']})",
        license=known.license if known else "unknown: check the terms of the file's publisher",
        config=config.to_dict(),
        extra={
            "caffemodel_sha1": sha1,
            "input_convention": "BGR, 0–255, minus Caffe's mean pixel (104, 117, 123); BVLC trained with the "
            "per-pixel mean image, whose channel means these are",
        },
    )
    if mean_file is not None:
        import dataclasses

        import torch

        image = read_mean_file(mean_file)
        pre = net.weights_meta.preprocessing
        assert pre is not None
        net.weights_meta.tensors["mean_image"] = torch.from_numpy(image.astype(np.float32).copy())
        channel_means = tuple(float(m) for m in image.reshape(3, -1).mean(axis=1))
        net.weights_meta.preprocessing = dataclasses.replace(
            pre,
            mean_image=True,
            mean=channel_means,
            resize=int(image.shape[-1]),  # type: ignore[arg-type]
        )
        net.weights_meta.extra["input_convention"] = (
            f"BGR, 0–255, minus the per-pixel mean image of {Path(mean_file).name} (AlexNet §2)"
        )
    if rgb:
        flip_input_channels(net)
    return net
