"""A network read from a foreign file (ONNX graph, Caffe net) as a chain of layers → our one architecture.

Importers (:mod:`alexnet.weights.onnx`, :mod:`alexnet.weights.caffe`) turn a file into a :class:`Chain`: the layers
in forward order with their attributes and tensors, whatever the file called them. This module then

* groups the chain into AlexNet-family stages (conv → ReLU → [LRN, max-pool in either order] …, then fully
  connected layers with ReLU and dropout, AlexNet §3.5 / Fig. 2; ZFNet Fig. 3),
* infers the :class:`~alexnet.models.ArchConfig` that the chain is (``--model auto``),
* compares a chain with a registered configuration and names the first layer and attribute that differ,
* maps the chain's tensors onto the state-dict keys of the model built from that configuration.

So weights are matched by *structure* (layer order and shapes), never by the file's tensor names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from alexnet.errors import WeightsError, WeightsMismatch
from alexnet.models import LRN, ArchConfig, Conv, Fc, build_model
from alexnet.models.configs import CONFIGS
from alexnet.models.net import AlexNetFamily

Kind = Literal["conv", "relu", "lrn", "pool", "fc", "dropout", "flatten", "softmax"]


@dataclass
class ConvSpec:
    weight: np.ndarray  # [out, in/groups, kh, kw], as in PyTorch, Caffe and ONNX
    bias: np.ndarray | None
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])


@dataclass
class LrnSpec:
    """ONNX / Caffe convention: ``x / (k + alpha/size · Σ x²)^beta`` over ``size`` neighbouring channels."""

    size: int
    alpha: float
    beta: float
    k: float


@dataclass
class PoolSpec:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    ceil: bool = False  # Caffe always rounds up; ONNX MaxPool only with ceil_mode=1 (opset ≥ 10)


@dataclass
class FcSpec:
    weight: np.ndarray  # [out, in]
    bias: np.ndarray | None


Spec = ConvSpec | LrnSpec | PoolSpec | FcSpec | None


@dataclass
class Layer:
    kind: Kind
    source: str  # how the file names it, for messages: "node 'conv2_1' (Conv)"
    spec: Spec = None


@dataclass
class Chain:
    """A single-path network: input → layers → output (logits, or softmax when ``ends_in_softmax``)."""

    layers: list[Layer]
    input_size: int | None = None  # the file's fixed spatial input size, when it declares one
    in_channels: int | None = None
    facts: dict[str, object] = field(default_factory=dict)  # format-specific notes (opset, logits tensor …)

    @property
    def ends_in_softmax(self) -> bool:
        return bool(self.layers) and self.layers[-1].kind == "softmax"


@dataclass
class _Stage:
    conv: Layer
    relu: Layer
    post: list[Layer]  # lrn / pool in file order

    def find(self, kind: Kind) -> Layer | None:
        return next((x for x in self.post if x.kind == kind), None)


@dataclass
class _FcStage:
    fc: Layer
    relu: Layer | None
    dropout: Layer | None


def _stages(chain: Chain) -> tuple[list[_Stage], list[_FcStage]]:
    """Group the chain: conv stages, an optional flatten, fc stages, an optional final softmax."""
    layers = [x for x in chain.layers if x.kind != "softmax" or x is not chain.layers[-1]]
    convs: list[_Stage] = []
    fcs: list[_FcStage] = []
    i = 0

    def unexpected(x: Layer, wanted: str) -> WeightsError:
        return WeightsError(f"{x.source} is not where an AlexNet-family network has it: expected {wanted}")

    while i < len(layers) and layers[i].kind == "conv":
        conv = layers[i]
        if i + 1 >= len(layers) or layers[i + 1].kind != "relu":
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            raise unexpected(nxt, "ReLU") if nxt else WeightsError(f"{conv.source}: no ReLU after it")
        post: list[Layer] = []
        i += 2
        while (
            i < len(layers)
            and layers[i].kind in ("lrn", "pool")
            and layers[i].kind not in {p.kind for p in post}
        ):
            post.append(layers[i])
            i += 1
        convs.append(_Stage(conv, layers[i - len(post) - 1], post))
    if not convs:
        raise WeightsError("no convolution at the start of the network: not an AlexNet-family network")
    if i < len(layers) and layers[i].kind == "flatten":
        i += 1
    while i < len(layers) and layers[i].kind == "fc":
        fc, relu, drop = layers[i], None, None
        i += 1
        if i < len(layers) and layers[i].kind == "relu":
            relu, i = layers[i], i + 1
        if i < len(layers) and layers[i].kind == "dropout":
            drop, i = layers[i], i + 1
        fcs.append(_FcStage(fc, relu, drop))
    if i < len(layers):
        raise unexpected(layers[i], "conv/ReLU/LRN/max-pool stages, then fully connected layers")
    if not fcs:
        raise WeightsError("no fully connected layer after the conv stages: not an AlexNet-family network")
    for f in fcs[:-1]:
        if f.relu is None:
            raise WeightsError(f"{f.fc.source}: a hidden fully connected layer without ReLU after it")
    if fcs[-1].relu is not None:
        raise WeightsError(f"{fcs[-1].relu.source}: ReLU after the last fully connected layer (the logits)")
    return convs, fcs


def _square(pair: tuple[int, int], what: str, where: str) -> int:
    if pair[0] != pair[1]:
        raise WeightsMismatch(f"{where}: {what} is {pair[0]}×{pair[1]}; our layers are square")
    return int(pair[0])


def _conv_out(n: int, c: Conv) -> int:
    return (n + 2 * c.padding - c.kernel) // c.stride + 1


def _torch_pool_out(n: int, kernel: int, stride: int, ceil: bool) -> int:
    """``nn.MaxPool2d(kernel, stride, padding=0, ceil_mode=ceil)`` output size (incl. its last-window rule)."""
    out = (-(-(n - kernel) // stride) if ceil else (n - kernel) // stride) + 1
    if ceil and (out - 1) * stride >= n:
        out -= 1
    return out


def _source_pool_out(n: int, p: PoolSpec) -> int:
    num = n + p.pads[0] + p.pads[2] - p.kernel[0]
    return (-(-num // p.stride[0]) if p.ceil else num // p.stride[0]) + 1


def _lrn_of(spec: LrnSpec, where: str) -> LRN:
    if spec.size % 2 == 0:
        # ONNX centres an even window at c-(size-1)//2 … c+size//2, torch.nn/ours at c-size//2 … c+(size-1)//2.
        raise WeightsMismatch(f"{where}: LRN size {spec.size} is even; the window conventions differ")
    return LRN(
        size=spec.size, alpha=_f32(spec.alpha), beta=_f32(spec.beta), k=_f32(spec.k), alpha_over_size=True
    )


def _f32(x: float) -> float:
    """The shortest decimal that a float32 attribute stands for (1e-4, not 9.999999747378752e-05)."""
    return float(str(np.float32(x)))


def infer_config(chain: Chain, name: str) -> ArchConfig:
    """The :class:`ArchConfig` of our one architecture that computes what ``chain`` computes (``--model auto``).

    Raises :class:`WeightsMismatch` for what the architecture cannot express (asymmetric padding, dilation,
    different LRN constants per layer, pooling that neither rounding mode reproduces …).
    """
    stages, fc_stages = _stages(chain)
    convs: list[Conv] = []
    lrns: list[tuple[LRN, str]] = []
    pools: list[tuple[PoolSpec, str]] = []
    orders: set[bool] = set()
    for idx, st in enumerate(stages, start=1):
        spec = st.conv.spec
        assert isinstance(spec, ConvSpec)
        where = f"{st.conv.source} (conv{idx})"
        if spec.dilation != (1, 1):
            raise WeightsMismatch(f"{where}: dilation {spec.dilation}; our convolutions are not dilated")
        t, left, b, r = spec.pads
        if not t == left == b == r:
            raise WeightsMismatch(
                f"{where}: pads {list(spec.pads)} are not symmetric; ours pad all sides equally"
            )
        lrn_layer, pool_layer = st.find("lrn"), st.find("pool")
        if lrn_layer is not None:
            assert isinstance(lrn_layer.spec, LrnSpec)
            lrns.append((_lrn_of(lrn_layer.spec, lrn_layer.source), lrn_layer.source))
        if pool_layer is not None:
            assert isinstance(pool_layer.spec, PoolSpec)
            pools.append((pool_layer.spec, pool_layer.source))
        if lrn_layer is not None and pool_layer is not None:
            orders.add(st.post.index(pool_layer) < st.post.index(lrn_layer))
        convs.append(
            Conv(
                out=int(spec.weight.shape[0]),
                kernel=_square(spec.kernel, "kernel", where),
                stride=_square(spec.stride, "stride", where),
                padding=int(t),
                groups=int(spec.groups),
                norm=lrn_layer is not None,
                pool=pool_layer is not None,
            )
        )
    if len({lrn for lrn, _ in lrns}) > 1:
        raise WeightsMismatch(f"{lrns[1][1]}: LRN constants differ from {lrns[0][1]}; ours share one set")
    if len(orders) > 1:
        raise WeightsMismatch("pooling comes before LRN in some stages and after it in others")
    if len({(p.kernel, p.stride) for p, _ in pools}) > 1:
        raise WeightsMismatch(f"{pools[1][1]}: pooling window differs from {pools[0][1]}; ours share one")
    pool_kernel = _square(pools[0][0].kernel, "pooling window", pools[0][1]) if pools else 3
    pool_stride = _square(pools[0][0].stride, "pooling stride", pools[0][1]) if pools else 2
    fc_specs = [f.fc.spec for f in fc_stages]
    assert all(isinstance(f, FcSpec) for f in fc_specs)
    first = stages[0].conv.spec
    assert isinstance(first, ConvSpec)
    config = ArchConfig(
        name=name,
        convs=tuple(convs),
        fcs=(*(Fc(int(f.weight.shape[0])) for f in fc_specs[:-1]), Fc(None)),  # type: ignore[union-attr]
        input_size=0,
        lrn=lrns[0][0] if lrns else None,
        pool_before_norm=orders.pop() if orders else False,
        pool_kernel=pool_kernel,
        pool_stride=pool_stride,
        ceil_mode=True,
        num_classes=int(fc_specs[-1].weight.shape[0]),  # type: ignore[union-attr]
        in_channels=int(first.weight.shape[1]) * int(first.groups),
        description=f"read from an AlexNet-family graph ({len(convs)} conv, {len(fc_specs)} fc layers)",
        reference="inferred by alexnet.weights.auto from the imported file's layer chain",
    )
    fc6_in = int(fc_specs[0].weight.shape[1])  # type: ignore[union-attr]
    size, ceil = _input_size_and_rounding(chain, config, stages, fc6_in)
    return config.with_overrides(input_size=size, ceil_mode=ceil)


def _pool_sizes(config: ArchConfig, size: int, ceil: bool) -> tuple[list[int], int]:
    """Each pool's input size, and the conv trunk's output size, for a ``size`` input."""
    ins = []
    for c in config.convs:
        size = _conv_out(size, c)
        if c.pool:
            ins.append(size)
            size = _torch_pool_out(size, config.pool_kernel, config.pool_stride, ceil)
    return ins, size


def _input_size_and_rounding(
    chain: Chain, config: ArchConfig, stages: list[_Stage], fc6_in: int
) -> tuple[int, bool]:
    """The input size (the file's, else the first that fits fc6) and the pooling rounding that reproduces it."""
    channels = config.convs[-1].out
    candidates = [chain.input_size] if chain.input_size else [227, 224, *range(32, 513)]
    pools = [st.find("pool") for st in stages]
    pools = [p for p in pools if p is not None]
    for size in candidates:
        assert size is not None
        for ceil in (True, False):
            ins, final = _pool_sizes(config, size, ceil)
            if min(ins, default=1) < 1 or final < 1:
                continue
            same = all(
                _source_pool_out(n, p.spec)
                == _torch_pool_out(n, config.pool_kernel, config.pool_stride, ceil)  # type: ignore[arg-type]
                and p.spec.pads[0] == p.spec.pads[1] == 0  # type: ignore[union-attr]
                for n, p in zip(ins, pools, strict=True)
            )
            if same and channels * final * final == fc6_in:
                return size, ceil
    where = f"at its {chain.input_size}×{chain.input_size} input" if chain.input_size else "at any input size"
    raise WeightsMismatch(
        f"the conv trunk does not reach fc6's {fc6_in} inputs {where} with unpadded max-pooling "
        f"(floor or ceil rounding): the pooling pads or sizes are not ones our architecture expresses"
    )


# --- matching a registered configuration ---------------------------------------------------------------


def _differences(found: ArchConfig, want: ArchConfig, chain: Chain) -> str | None:
    """First difference between the chain's config and a registered one, as a message naming the node."""
    stages, fc_stages = _stages(chain)
    if len(found.convs) != len(want.convs):
        return f"the file has {len(found.convs)} conv layers, {want.name} has {len(want.convs)}"
    for i, (a, b, st) in enumerate(zip(found.convs, want.convs, stages, strict=True), start=1):
        node = f"{st.conv.source} → conv{i}"
        for attr, label in (
            ("out", "out_channels"),
            ("kernel", "kernel"),
            ("stride", "stride"),
            ("padding", "pad"),
            ("groups", "group"),
        ):
            if getattr(a, attr) != getattr(b, attr):
                ours = "groups" if attr == "groups" else attr
                return f"{node}: {label} is {getattr(a, attr)}, {want.name}'s conv{i} has {ours}={getattr(b, attr)}"
        has_norm = b.norm and want.lrn is not None
        if a.norm != has_norm:
            return f"{node}: {'an' if a.norm else 'no'} LRN follows it, {want.name}'s conv{i} stage has {'norm' + str(i) if has_norm else 'none'}"
        if a.pool != b.pool:
            return f"{node}: {'a' if a.pool else 'no'} max-pool follows it, {want.name}'s conv{i} stage has {'pool' + str(i) if b.pool else 'none'}"
    if found.lrn is not None and want.lrn is not None:
        lrn_node = next(st.find("lrn") for st in stages if st.find("lrn") is not None)
        fa, fb = found.lrn, want.lrn
        a_sum = fa.alpha / fa.size if fa.alpha_over_size else fa.alpha
        b_sum = fb.alpha / fb.size if fb.alpha_over_size else fb.alpha
        for label, x, y in (("size", fa.size, fb.size), ("beta", fa.beta, fb.beta), ("bias (k)", fa.k, fb.k)):
            if not math.isclose(x, y, rel_tol=1e-6):
                return f"{lrn_node.source}: LRN {label} is {x:g}, {want.name}'s LRN has {y:g}"  # type: ignore[union-attr]
        if not math.isclose(a_sum, b_sum, rel_tol=1e-5):
            return (
                f"{lrn_node.source}: LRN alpha is {fa.alpha:g} (α/size = {a_sum:g}), {want.name}'s LRN "  # type: ignore[union-attr]
                f"multiplies the sum of squares by {b_sum:g}"
            )
    if (
        any(c.norm for c in found.convs)
        and any(c.pool for c in found.convs)
        and found.pool_before_norm != want.pool_before_norm
    ):
        order = "before" if found.pool_before_norm else "after"
        return f"pooling comes {order} LRN in the file; {want.name} pools {'before' if want.pool_before_norm else 'after'} it"
    if (found.pool_kernel, found.pool_stride) != (want.pool_kernel, want.pool_stride):
        return (
            f"max-pool {found.pool_kernel}×{found.pool_kernel}/{found.pool_stride}, "
            f"{want.name} pools {want.pool_kernel}×{want.pool_kernel}/{want.pool_stride}"
        )
    size = found.input_size
    if _pool_sizes(found, size, found.ceil_mode) != _pool_sizes(want, size, want.ceil_mode):
        return f"max-pool rounding: at a {size}px input the file's pooled sizes differ from {want.name}'s"
    if len(found.fcs) != len(want.fcs):
        return f"the file has {len(found.fcs)} fully connected layers, {want.name} has {len(want.fcs)}"
    first_fc = len(found.convs) + 1
    for j, (a, b, st) in enumerate(zip(found.fcs[:-1], want.fcs[:-1], fc_stages, strict=False)):
        if a.out != b.out:
            return f"{st.fc.source} → fc{first_fc + j}: {a.out} outputs, {want.name}'s fc{first_fc + j} has {b.out}"
    if (want.adaptive_pool or 0) not in (0, _pool_sizes(found, size, found.ceil_mode)[1]):
        return (
            f"{want.name} averages to {want.adaptive_pool}×{want.adaptive_pool} before fc6; the file does not"
        )
    return None


def resolve_config(
    chain: Chain, model: str, auto_name: str = "auto", recorded: ArchConfig | None = None
) -> ArchConfig:
    """The configuration to load ``chain`` into: ``model`` checked against the chain, or ``"auto"``.

    ``"auto"`` returns the configuration recorded in the file (our own exports) if the chain matches it, else
    the first registered model the chain matches, else the inferred configuration named ``auto_name``. A named
    model that does not match raises :class:`WeightsMismatch` with the first difference.
    """
    found = infer_config(chain, auto_name)
    if model == "auto":
        if recorded is not None and _differences(found, recorded, chain) is None:
            return recorded
        for registered in CONFIGS.values():
            want = _sized_like(registered.with_overrides(num_classes=found.num_classes), found)
            if _differences(found, want, chain) is None:
                return want
        return found
    from alexnet.models import get_config

    want = _sized_like(get_config(model).with_overrides(num_classes=found.num_classes), found)
    diff = _differences(found, want, chain)
    if diff is not None:
        raise WeightsMismatch(diff)
    return want


def _sized_like(want: ArchConfig, found: ArchConfig) -> ArchConfig:
    """``want`` at the file's input size where its own size would not give fc6 the file's pool5 map (a graph
    exported at another size, e.g. a small model trained on small images)."""
    if want.adaptive_pool:
        return want
    ours = _pool_sizes(want, want.input_size, want.ceil_mode)[1]
    theirs = _pool_sizes(found, found.input_size, found.ceil_mode)[1]
    return want if ours == theirs else want.with_overrides(input_size=found.input_size)


def load_chain(chain: Chain, config: ArchConfig) -> AlexNetFamily:
    """Build ``config`` and copy the chain's tensors in, layer by layer: the i-th conv into the config's i-th conv
    layer, by its paper name (``conv5`` is the third of an ablated network without conv3 and conv4)."""
    model = build_model(config, num_classes=config.num_classes)
    stages, fc_stages = _stages(chain)
    state: dict[str, torch.Tensor] = {}
    names = [f"conv{n}" for n in config.conv_numbers()] + [f"fc{n}" for n in config.fc_numbers()]
    specs = [s.conv.spec for s in stages] + [f.fc.spec for f in fc_stages]
    for name, spec in zip(names, specs, strict=True):
        assert isinstance(spec, ConvSpec | FcSpec)
        path = model.layer_path(name)
        weight = torch.from_numpy(np.array(spec.weight, dtype=np.float32, order="C", copy=True))
        out = weight.shape[0]
        bias = (
            torch.zeros(out)
            if spec.bias is None
            else torch.from_numpy(np.array(spec.bias, dtype=np.float32, copy=True).reshape(-1))
        )
        state[f"{path}.weight"], state[f"{path}.bias"] = weight, bias
    from alexnet.weights.io import load_state_dict_checked

    load_state_dict_checked(model, state, "imported network")
    return model.eval()


def file_model_name(stem: str) -> str:
    """A model name for an inferred configuration: the file's stem without an opset suffix (``zfnet512-12``)."""
    base = stem.rsplit("-", 1)[0] if stem.rsplit("-", 1)[-1].isdigit() else stem
    base = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in base) or "imported"
    return base if base not in CONFIGS else f"{base}_auto"


FLIPPED = "input_channels_flipped"  # WeightsMeta.extra key: conv1 was converted from the source's BGR to RGB


@torch.no_grad()
def flip_input_channels(model: AlexNetFamily) -> None:
    """Convert Caffe-style BGR weights to RGB in place: reverse conv1's input channels and the recorded mean.

    The network then takes RGB (0–255, minus the mean in RGB order); ``extra["input_channels_flipped"]`` records
    it so a later comparison with the BGR source flips its input too.
    """
    import dataclasses

    conv1 = model.layer("conv1")
    assert isinstance(conv1, torch.nn.Conv2d)
    if conv1.groups != 1 or conv1.in_channels != 3:
        raise WeightsMismatch("only a dense 3-channel conv1 can be converted between BGR and RGB")
    conv1.weight.copy_(conv1.weight.flip(1))
    meta = getattr(model, "weights_meta", None)
    if meta is None or meta.preprocessing is None:
        return
    pre = meta.preprocessing
    order = "RGB" if pre.channel_order == "BGR" else "BGR"
    meta.preprocessing = dataclasses.replace(
        pre, channel_order=order, mean=tuple(reversed(pre.mean)), std=tuple(reversed(pre.std))
    )
    if "mean_image" in meta.tensors:
        meta.tensors["mean_image"] = meta.tensors["mean_image"].flip(0).contiguous()
    meta.extra[FLIPPED] = not meta.extra.get(FLIPPED, False)
