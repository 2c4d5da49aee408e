"""Import ONNX graphs of the AlexNet family (the ONNX model zoo's ``bvlcalexnet``, ``caffenet``, ``zfnet512``, any
opset 3–12 and later, and our own exports) and prove the import exact against onnxruntime.

The graph is *walked* from its image input: each node must consume the tensor the previous one produced, and is
read as Conv / Relu / LRN / MaxPool / Dropout / Flatten|Reshape / Gemm|MatMul(+Add) / Softmax with its
attributes. Attribute styles of all opsets are understood: ``Reshape`` with a ``shape`` attribute (opset < 5) or a
shape input, ``Gemm`` with ``broadcast`` (opset < 7), ``Dropout`` with ``is_test``, MaxPool's Caffe-style ceil
rounding written as extra end padding or as ``ceil_mode``. :mod:`alexnet.weights.auto` then matches the chain
against a registered model (or infers one) by structure, never by tensor names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.data.preprocess import Preprocessing
from alexnet.errors import InputSizeError, WeightsError, WeightsMismatch
from alexnet.models import ArchConfig
from alexnet.models.net import AlexNetFamily
from alexnet.weights.auto import (
    FLIPPED,
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

# Caffe's mean pixel (BGR, 0–255) for ILSVRC-2012; the zoo's Caffe-derived graphs expect Caffe's input convention.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
META_KEY = "alexnet.weights_meta"  # metadata_props entry written by alexnet.weights.export
RELATIVE_TOLERANCE = 1e-4


def ilsvrc_classes(num_classes: int) -> list[str] | None:
    """ILSVRC-2012's 1000 classes in Caffe's order (sorted WordNet IDs, ``synset_words.txt``), which is also
    torchvision's; ``None`` for other class counts (their names are not in the file)."""
    if num_classes != 1000:
        return None
    from alexnet.data.classes import imagenet_classes

    return list(imagenet_classes())


def caffe_preprocessing(input_size: int) -> Preprocessing:
    """BGR pixels in 0–255 minus Caffe's mean pixel, no scaling (Caffe; the zoo's Caffe2 conversions)."""
    return Preprocessing(
        input_size=input_size,
        resize=256,
        mean=CAFFE_MEAN_BGR,
        std=(1.0, 1.0, 1.0),
        channel_order="BGR",
        pixel_scale=255.0,
    )


def _load(path: str | Path) -> tuple[Any, list[str]]:
    """The ONNX model with its weights read, and the external data files they came from (usually none)."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if p.is_dir():
        raise WeightsError(f"{p} is a folder, not an ONNX file")
    if not p.is_file():
        raise WeightsError(f"{p}: no such ONNX file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{p}: not a readable ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not model.graph.node:
        raise WeightsError(f"{p}: not an ONNX model (the graph has no nodes)")
    return model, _load_external_data(model, p)


def _load_external_data(model: Any, path: Path) -> list[str]:
    """Read the weights that a model saved with ONNX's external data keeps in other files beside ``path``
    (``onnx.save(..., save_as_external_data=True)``); one line when they are missing, short, or outside."""
    from onnx.checker import ValidationError
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model, uses_external_data

    tensors = [*model.graph.initializer]
    for node in model.graph.node:  # Constant nodes hold tensors too
        for a in node.attribute:
            tensors += [a.t, *a.tensors] if a.HasField("t") else [*a.tensors]
    locations = sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})
    if not locations:
        return []
    missing = [loc for loc in locations if not (path.parent / loc).is_file()]
    if missing:
        raise WeightsError(
            f"{path}: its weights are stored in {', '.join(missing)} (ONNX external data), which is not a file "
            f"beside it in {path.parent}: keep the files together"
        )
    try:
        load_external_data_for_model(model, str(path.parent))
    except (ValidationError, OSError, ValueError) as e:
        raise WeightsError(
            f"{path}: its weights in {', '.join(locations)} (ONNX external data) cannot be read "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    return locations


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pair(v: Any, default: int) -> tuple[int, int]:
    v = list(v) if v is not None else [default, default]
    if len(v) != 2:
        raise WeightsError(f"expected a 2-D attribute, got {v}")
    return int(v[0]), int(v[1])


def _pads(v: Any) -> tuple[int, int, int, int]:
    """ONNX pads [top, left, bottom, right] (x1_begin, x2_begin, x1_end, x2_end)."""
    v = list(v) if v is not None else [0, 0, 0, 0]
    if len(v) != 4:
        raise WeightsError(f"expected 4 pads, got {v}")
    return int(v[0]), int(v[1]), int(v[2]), int(v[3])


def _no_auto_pad(node: Any, attrs: dict[str, Any], where: str) -> None:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "VALID", ""):
        raise WeightsMismatch(f"{where}: auto_pad={auto}; only explicit pads can be matched to our layers")


def read_chain(path: str | Path) -> Chain:
    """Walk an ONNX graph from its image input and read it as a :class:`~alexnet.weights.auto.Chain`."""
    from onnx import numpy_helper

    model, external = _load(path)
    graph = model.graph
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise WeightsError(f"{path}: expected one image input, the graph has {len(inputs)}")
    image = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image.type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise WeightsError(f"{path}: input {image.name!r} has shape {dims}; expected N×C×H×W")
    size = dims[2] if dims[2] and dims[2] == dims[3] else None
    current = image.name
    layers: list[Layer] = []
    logits = None
    for node in graph.node:
        op, attrs = node.op_type, _attrs(node)
        where = f"node {node.name or node.output[0]!r} ({op})"
        if op == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            continue
        if current not in node.input:
            raise WeightsError(f"{path}: {where} does not take {current!r}: the graph is not a single chain")
        if node.input[0] != current and op not in ("Add",):
            raise WeightsError(f"{path}: {where} takes {current!r} as a parameter, not as its data input")

        def const(i: int, what: str, node: Any = node, where: str = where) -> np.ndarray:
            if len(node.input) <= i or node.input[i] not in consts:
                raise WeightsError(f"{path}: {where}: {what} is not a constant (initializer) tensor")
            return consts[node.input[i]]

        if op == "Conv":
            _no_auto_pad(node, attrs, where)
            w = const(1, "the weight")
            b = const(2, "the bias") if len(node.input) > 2 and node.input[2] else None
            if w.ndim != 4:
                raise WeightsError(f"{path}: {where}: weight of shape {list(w.shape)} is not 4-D")
            if "kernel_shape" in attrs and tuple(attrs["kernel_shape"]) != w.shape[2:]:
                raise WeightsError(
                    f"{path}: {where}: kernel_shape {attrs['kernel_shape']} ≠ weight {list(w.shape)}"
                )
            spec: Any = ConvSpec(
                weight=w,
                bias=b,
                stride=_pair(attrs.get("strides"), 1),
                pads=_pads(attrs.get("pads")),
                groups=int(attrs.get("group", 1)),
                dilation=_pair(attrs.get("dilations"), 1),
            )
            layers.append(Layer("conv", where, spec))
        elif op == "Relu":
            layers.append(Layer("relu", where))
        elif op == "LRN":
            spec = LrnSpec(
                size=int(attrs["size"]),
                alpha=float(attrs.get("alpha", 1e-4)),
                beta=float(attrs.get("beta", 0.75)),
                k=float(attrs.get("bias", 1.0)),
            )
            layers.append(Layer("lrn", where, spec))
        elif op == "MaxPool":
            _no_auto_pad(node, attrs, where)
            if _pair(attrs.get("dilations"), 1) != (1, 1):
                raise WeightsMismatch(f"{where}: dilated pooling is not part of the AlexNet family")
            if len(node.output) > 1 and node.output[1]:
                raise WeightsError(f"{path}: {where}: pooling indices are used; not an AlexNet-family graph")
            spec = PoolSpec(
                kernel=_pair(attrs["kernel_shape"], 1),
                stride=_pair(attrs.get("strides"), 1),
                pads=_pads(attrs.get("pads")),
                ceil=bool(attrs.get("ceil_mode", 0)),
            )
            layers.append(Layer("pool", where, spec))
        elif op in ("Dropout", "Identity"):
            if op == "Dropout":
                layers.append(Layer("dropout", where))
        elif op == "Flatten":
            if int(attrs.get("axis", 1)) != 1:
                raise WeightsMismatch(
                    f"{where}: flattens from axis {attrs['axis']}, not from the channels (1)"
                )
            layers.append(Layer("flatten", where))
        elif op == "Reshape":
            shape = attrs["shape"] if "shape" in attrs else const(1, "the target shape")
            shape = [int(s) for s in np.asarray(shape).reshape(-1)]
            if len(shape) != 2:
                raise WeightsMismatch(f"{where}: reshapes to {shape}, not to N×features")
            layers.append(Layer("flatten", where))
        elif op == "Gemm":
            if int(attrs.get("transA", 0)):
                raise WeightsMismatch(f"{where}: transA=1 is not a fully connected layer on the activations")
            w = const(1, "the weight").astype(np.float32)
            w = w if int(attrs.get("transB", 0)) else w.T
            w = w * np.float32(attrs.get("alpha", 1.0))
            b = None
            if len(node.input) > 2 and node.input[2]:
                b = np.broadcast_to(const(2, "the bias").reshape(-1), (w.shape[0],)) * np.float32(
                    attrs.get("beta", 1.0)
                )
            layers.append(Layer("fc", where, FcSpec(weight=w, bias=b)))
        elif op == "MatMul":
            layers.append(Layer("fc", where, FcSpec(weight=const(1, "the weight").T, bias=None)))
        elif op == "Add":
            other = node.input[1] if node.input[0] == current else node.input[0]
            last = layers[-1] if layers else None
            if other not in consts or last is None or last.kind != "fc" or last.spec.bias is not None:  # type: ignore[union-attr]
                raise WeightsError(f"{path}: {where}: only a bias added to a MatMul is part of the chain")
            fc = last.spec
            assert isinstance(fc, FcSpec)
            fc.bias = np.broadcast_to(consts[other].reshape(-1), (fc.weight.shape[0],)).copy()
        elif op == "Softmax":
            layers.append(Layer("softmax", where))
            logits = current
        else:
            raise WeightsError(f"{path}: {where}: operator {op} is not part of an AlexNet-family network")
        current = node.output[0]
    outputs = [o.name for o in graph.output]
    if current not in outputs:
        raise WeightsError(f"{path}: the chain ends at {current!r}, which is not a graph output ({outputs})")
    if layers and layers[-1].kind == "softmax" and logits is None:
        logits = current
    facts: dict[str, object] = {
        "input": image.name,
        "output": current,
        "logits": logits or current,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "batch": dims[0],
        "meta": {p.key: p.value for p in model.metadata_props},
        "external_data": external,  # file names beside the graph that hold its weights
    }
    return Chain(layers, input_size=size, in_channels=dims[1], facts=facts)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Verification:
    """Our logits vs onnxruntime's on the same random batch."""

    max_abs_diff: float
    max_abs_logit: float
    batch: int
    input_size: int
    compared: str  # which ONNX tensor was compared

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.max_abs_logit, 1e-12)

    @property
    def ok(self) -> bool:
        return self.relative < RELATIVE_TOLERANCE

    def __str__(self) -> str:
        return (
            f"max |Δlogit| = {self.max_abs_diff:.3g} ({self.relative:.2e} of max |logit| {self.max_abs_logit:.3g}) "
            f"on a random {self.batch}×3×{self.input_size}×{self.input_size} batch, vs onnxruntime's "
            f"{self.compared!r}: {'exact to float32 rounding' if self.ok else 'MISMATCH'}"
        )


def onnxruntime_logits(path: str | Path, x: np.ndarray, chain: Chain | None = None) -> tuple[np.ndarray, str]:
    """Run the ONNX file on ``x`` and return the *logits*: for graphs that end in Softmax, the Softmax's input,
    exposed as an extra graph output (so nothing is compared after a saturating softmax)."""
    import onnx
    import onnxruntime as ort

    chain = chain or read_chain(path)
    model, _ = _load(path)
    opset = int(chain.facts.get("opset") or 0)  # type: ignore[call-overload]
    if opset < 7:  # onnxruntime implements opset 7 onwards; the zoo's opset-3 and -6 files need an upgrade
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, 7)
        except (RuntimeError, ValueError, IndexError) as e:
            raise WeightsError(
                f"{path}: onnxruntime runs opset 7 and later, and onnx's version converter cannot upgrade this "
                f"opset-{opset} graph ({str(e).splitlines()[0]}); verify with the same weights in a later opset "
                f"(the zoo publishes opsets 6–12), or import with --no-verify"
            ) from None
    logits = str(chain.facts["logits"])
    if logits not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # run the graph as written
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    (out,) = session.run([logits], {str(chain.facts["input"]): x})
    return np.asarray(out), logits


def verify(
    path: str | Path,
    model: AlexNetFamily,
    chain: Chain | None = None,
    batch: int | None = None,
    seed: int = 0,
) -> Verification:
    """Feed the same random batch to the ONNX file (onnxruntime) and to ``model`` (PyTorch); compare logits.

    The batch is drawn in the model's own input range: 0–255 minus a mean for Caffe-convention weights
    (``pixel_scale`` 255), unit-variance otherwise.
    """
    from alexnet.predict import preprocessing_of

    chain = chain or read_chain(path)
    size = chain.input_size or model.default_input_size
    fixed = chain.facts.get("batch")
    n = int(fixed) if isinstance(fixed, int) and fixed > 0 else (batch or 2)
    gen = torch.Generator().manual_seed(seed)
    spread = 64.0 if preprocessing_of(model).pixel_scale > 1 else 1.0  # ≈ the std of real inputs
    x = torch.randn(n, chain.in_channels or 3, size, size, generator=gen) * spread
    theirs, name = onnxruntime_logits(path, x.numpy(), chain)
    model.eval()
    meta = getattr(model, "weights_meta", None)
    flipped = bool(meta is not None and meta.extra.get(FLIPPED))  # our conv1 was converted to the other order
    with torch.no_grad():
        try:
            ours = model(x.flip(1) if flipped else x).numpy()
        except InputSizeError as e:
            raise WeightsMismatch(f"the graph takes {size}×{size} images, but {e}") from None
    if ours.shape != theirs.shape:
        raise WeightsMismatch(
            f"logits shapes differ: ours {list(ours.shape)}, onnxruntime's {list(theirs.shape)}"
        )
    diff = float(np.abs(ours.astype(np.float64) - theirs).max())
    return Verification(diff, float(np.abs(theirs).max()), n, size, name)


def _recorded_config(chain: Chain) -> ArchConfig | None:
    """The architecture our exporter recorded in the file's metadata, if any (checked against the graph later)."""
    stored = chain.facts.get("meta", {})
    saved = stored.get(META_KEY) if isinstance(stored, dict) else None
    if not saved:
        return None
    try:
        meta = WeightsMeta.from_strings(json.loads(saved))
        return ArchConfig.from_dict(meta.config) if meta.config else None
    except (ValueError, TypeError, KeyError, WeightsError):
        return None  # unreadable metadata: fall back to reading the structure alone


def _meta_for(path: Path, chain: Chain, model: AlexNetFamily, convention: str = "caffe") -> WeightsMeta:
    from alexnet.weights.sources import describe_file

    stored = chain.facts.get("meta", {})
    saved = stored.get(META_KEY) if isinstance(stored, dict) else None
    digest = sha256_of(path)
    known = describe_file(digest)
    # weights kept in ONNX external data: the graph's digest alone would not say which weights they were
    names: list[str] = chain.facts.get("external_data") or []  # type: ignore[assignment]
    external = {"onnx_external_data_sha256": {n: sha256_of(path.parent / n) for n in names}} if names else {}
    if saved:  # our own export: its metadata travels back unchanged
        meta = WeightsMeta.from_strings(json.loads(saved), str(path))
        meta.model, meta.config = model.config.name, model.config.to_dict()
        meta.extra = {**meta.extra, "onnx_sha256": digest, **external}
        return meta
    size = chain.input_size or model.default_input_size
    return WeightsMeta(
        model=model.config.name,
        num_classes=model.num_classes,
        classes=ilsvrc_classes(model.num_classes),
        preprocessing=caffe_preprocessing(size) if convention == "caffe" else Preprocessing(input_size=size),
        source=(known.describe() if known else f"ONNX file {path.name}")
        + f" (sha256 {digest}, opset {chain.facts['opset']}, producer {chain.facts['producer'] or 'unknown'})",
        license=known.license if known else "unknown: check the terms of the file's publisher",
        config=model.config.to_dict(),
        extra={
            "onnx_sha256": digest,
            **external,
            "onnx_graph_ends_in_softmax": chain.ends_in_softmax,
            "note": "the ONNX graph ends in Softmax; this model outputs logits (apply softmax for probabilities)"
            if chain.ends_in_softmax
            else "",
            "input_convention": "BGR, 0–255, minus Caffe's mean pixel (104, 117, 123), as for graphs converted "
            "from Caffe (the ONNX model zoo's AlexNet family)"
            if convention == "caffe"
            else "RGB, 0–1, ImageNet mean/std normalisation (torchvision's convention)",
        },
    )


def import_onnx(
    path: str | Path,
    model: str = "auto",
    name: str | None = None,
    check: bool = True,
    convention: str = "caffe",
    rgb: bool = False,
) -> tuple[AlexNetFamily, Verification | None, Chain]:
    """Read an ONNX file into ``model`` (a registered name, or ``"auto"``); return the model (with
    ``weights_meta``), the onnxruntime verification (``None`` when ``check`` is False), and the chain.
    ``convention`` is the input the graph expects when the file does not record it: ``"caffe"`` (BGR, 0–255,
    minus the mean pixel: the zoo's Caffe-derived graphs) or ``"imagenet"`` (RGB, 0–1, mean/std). ``rgb``
    converts BGR weights to take RGB input (conv1's channels reversed) after the check.
    Raises :class:`WeightsMismatch` if our logits differ from onnxruntime's."""
    p = Path(path)
    chain = read_chain(p)
    config = _resolve(
        chain, model, auto_name=name or file_model_name(p.stem), recorded=_recorded_config(chain)
    )
    net = load_chain(chain, config)
    if convention not in ("caffe", "imagenet"):
        raise WeightsError(f"unknown input convention {convention!r}; choose caffe or imagenet")
    net.weights_meta = _meta_for(p, chain, net, convention)
    report = None
    if check:
        report = verify(p, net, chain)
        net.weights_meta.extra["onnxruntime_check"] = str(report)
        if not report.ok:
            raise WeightsMismatch(f"{p}: imported, but the logits differ from onnxruntime's: {report}")
    pre = net.weights_meta.preprocessing
    if rgb and pre is not None and pre.channel_order == "BGR":
        flip_input_channels(net)
    return net, report, chain
