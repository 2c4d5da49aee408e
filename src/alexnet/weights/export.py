"""Export a model to ONNX: the graph is written node by node from the model's layers, then checked in onnxruntime.

Why not ``torch.onnx.export``: our LRN's forward is an implementation detail (a padded window sum today, possibly
a custom op tomorrow) that tracing would turn into a dozen primitive nodes or fail on. The network is a fixed
chain of standard layers, so we emit exactly one standard ONNX node per layer, named by the papers (``conv1``,
``norm1``, ``pool1`` … ``fc8``), with LRN as ONNX ``LRN``. Conventions (AlexNet §3.3, ONNX ``LRN``):
ONNX computes ``x / (bias + alpha/size · Σ x²)^beta``; the paper's ``k + α·Σ x²`` therefore exports as
``alpha = α·size, bias = k``, Caffe's (already ``α/n``) as ``alpha = α, bias = k``. The batch dimension is
dynamic. Dropout is the identity at inference and is left out; so is the adaptive average pool of
``alexnet_owt`` when it is the identity at the exported input size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.errors import AlexnetError, InputSizeError
from alexnet.files import atomic_write
from alexnet.models.net import AlexNetFamily
from alexnet.weights.io import WeightsMeta
from alexnet.weights.onnx import META_KEY, Verification, read_chain, verify


class ExportError(AlexnetError):
    """A model that cannot be written as the requested format."""


DEFAULT_OPSET = 17
MIN_OPSET = 10  # MaxPool's ceil_mode


def check_input_size(model: AlexNetFamily, size: int) -> None:
    """:class:`ExportError` unless ``model`` runs on size×size images: its fc6 expects a fixed pool5 map (weights
    trained at 99 px take no 227 px input), and a too small image vanishes in the conv trunk. Checked on a zero
    image, since the exported graph would only fail later, in onnxruntime's shape inference."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, model.config.in_channels, size, size))
    except InputSizeError as e:
        raise ExportError(f"input size {size}: {e}") from None
    except RuntimeError as e:  # the feature maps shrink to nothing before pool5
        raise ExportError(
            f"input size {size} is too small for {model.config.name} ({str(e).splitlines()[0]})"
        ) from None


def _spatial_after(model: AlexNetFamily, size: int) -> int:
    with torch.no_grad():
        return int(model.forward_features(torch.zeros(1, model.config.in_channels, size, size)).shape[-1])


def build_onnx(model: AlexNetFamily, input_size: int | None = None, opset: int = DEFAULT_OPSET) -> Any:
    """The ONNX ``ModelProto`` of ``model`` (eval mode), input ``image`` N×C×S×S, output ``logits`` N×classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    newest = onnx.defs.onnx_opset_version()  # the newest opset this onnx (and its checker) knows
    if not MIN_OPSET <= opset <= newest:
        raise ExportError(
            f"opset {opset} is not supported: choose {MIN_OPSET}–{newest} (MaxPool's ceil_mode needs "
            f"{MIN_OPSET}; onnx {onnx.__version__} knows opsets up to {newest})"
        )
    from alexnet.predict import preprocessing_of

    size = input_size or preprocessing_of(model).input_size or model.default_input_size
    check_input_size(model, size)
    cfg = model.config
    nodes: list[Any] = []
    inits: list[Any] = []
    current = "image"

    def tensor(name: str, value: torch.Tensor) -> str:
        inits.append(numpy_helper.from_array(value.detach().cpu().float().numpy(), name))
        return name

    flattened = False
    for name, module in model.named_layers():
        out = name
        if isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros" or isinstance(module.padding, str):
                raise ExportError(f"{name}: padding mode {module.padding_mode!r} has no ONNX Conv equivalent")
            ph, pw = module.padding  # type: ignore[misc]
            inputs = [current, tensor(f"{name}.weight", module.weight)]
            if module.bias is not None:
                inputs.append(tensor(f"{name}.bias", module.bias))
            nodes.append(
                helper.make_node(
                    "Conv", inputs, [out], name=name,
                    kernel_shape=list(module.kernel_size), strides=list(module.stride),
                    pads=[ph, pw, ph, pw], dilations=list(module.dilation), group=module.groups,
                )
            )  # fmt: skip
        elif isinstance(module, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out], name=name))
        elif name.startswith("norm"):
            lrn = cfg.lrn
            assert lrn is not None
            if lrn.size % 2 == 0:
                # ONNX's window for an even size is c-(n-1)//2 … c+n//2; ours is c-n//2 … c+(n-1)//2.
                raise ExportError(
                    f"{name}: LRN size {lrn.size} is even; ONNX's window is centred differently"
                )
            sum_alpha = lrn.alpha / lrn.size if lrn.alpha_over_size else lrn.alpha
            nodes.append(
                helper.make_node(
                    "LRN", [current], [out], name=name,
                    size=lrn.size, alpha=sum_alpha * lrn.size, beta=lrn.beta, bias=lrn.k,
                )
            )  # fmt: skip
        elif isinstance(module, nn.MaxPool2d):
            k, s, p = (module.kernel_size, module.stride, module.padding)
            if any(isinstance(v, tuple) for v in (k, s, p)) or module.dilation != 1:
                raise ExportError(f"{name}: only square, undilated pooling is exported")
            nodes.append(
                helper.make_node(
                    "MaxPool", [current], [out], name=name,
                    kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p], ceil_mode=int(module.ceil_mode),
                )
            )  # fmt: skip
        elif isinstance(module, nn.AdaptiveAvgPool2d):
            have, want = _spatial_after(model, size), cfg.adaptive_pool
            assert want is not None
            if have == want:
                continue  # the identity at this input size
            if have % want:
                raise ExportError(
                    f"{name}: {have}→{want} adaptive pooling has no fixed-window ONNX equivalent"
                )
            nodes.append(
                helper.make_node(
                    "AveragePool", [current], [out], name=name,
                    kernel_shape=[have // want] * 2, strides=[have // want] * 2,
                )
            )  # fmt: skip
        elif isinstance(module, nn.Dropout):
            continue
        elif isinstance(module, nn.Linear):
            if not flattened:
                nodes.append(helper.make_node("Flatten", [current], ["flatten"], name="flatten", axis=1))
                current, flattened = "flatten", True
            inputs = [current, tensor(f"{name}.weight", module.weight)]
            if module.bias is not None:
                inputs.append(tensor(f"{name}.bias", module.bias))
            nodes.append(helper.make_node("Gemm", inputs, [out], name=name, transB=1))
        else:
            raise ExportError(f"{name}: no ONNX export for {type(module).__name__}")
        current = out
    nodes.append(helper.make_node("Identity", [current], ["logits"], name="logits"))
    graph = helper.make_graph(
        nodes,
        model.config.name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", cfg.in_channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", model.num_classes])],
        inits,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="alexnet",
        producer_version="0.1.0",
    )
    proto.ir_version = min(proto.ir_version, 8)  # readable by older runtimes too
    meta = getattr(model, "weights_meta", None) or WeightsMeta()
    meta_out = WeightsMeta(
        model=cfg.name,
        num_classes=model.num_classes,
        classes=meta.classes,
        preprocessing=preprocessing_of(model),
        source=meta.source or "alexnet export",
        license=meta.license,
        config=cfg.to_dict(),
        extra=meta.extra,
    )
    helper.set_model_props(proto, {META_KEY: json.dumps(meta_out.to_strings()), "model": cfg.name})
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    model: AlexNetFamily, out: str | Path, input_size: int | None = None, opset: int = DEFAULT_OPSET
) -> Verification:
    """Write ``model`` as ONNX to ``out`` (atomically) after checking it in onnxruntime against PyTorch.

    The check runs on a batch of 3 (the exported batch dimension is dynamic). Nothing is written when the
    logits differ by more than the tolerance.
    """
    model = model.eval()
    proto = build_onnx(model, input_size, opset)
    report: list[Verification] = []

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(proto.SerializeToString())
        try:
            check = verify(tmp, model, read_chain(tmp), batch=3, seed=1)
        except Exception as e:
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise ExportError(_runtime_refusal(e, opset)) from None
        if not check.ok:
            raise ExportError(f"exported graph disagrees with PyTorch: {check}")
        report.append(check)

    atomic_write(out, write)
    return report[0]


def _runtime_refusal(e: Exception, opset: int) -> str:
    """onnxruntime's refusal of the exported graph, in one line. Its own message is a paragraph (and names the
    newest opset it supports, which may be older than the installed onnx's)."""
    import re

    import onnxruntime

    text = str(e)
    newest = re.search(r"support for domain ai\.onnx is till opset (\d+)", text)
    if newest:
        return (
            f"opset {opset} is not supported by onnxruntime {onnxruntime.__version__}: "
            f"choose {MIN_OPSET}–{newest.group(1)}"
        )
    first = text.splitlines()[0] if text else type(e).__name__
    return f"onnxruntime {onnxruntime.__version__} cannot run the exported opset-{opset} graph: {first}"
