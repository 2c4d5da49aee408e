"""Every registered architecture as data: one :class:`ArchConfig` per paper network.

A paper detail lives here exactly once; :mod:`alexnet.models.net` turns a config into a module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class Conv:
    """One convolutional stage: conv → ReLU → [norm, pool in the config's order]."""

    out: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    norm: bool = False
    pool: bool = False
    weight_std: float = 0.01
    bias: float = 0.0
    # The paper's number of the layer (4 for conv4), set where a layer before it was removed (:mod:`.ablations`);
    # ``None``: one more than the layer before.
    number: int | None = None


@dataclass(frozen=True)
class Fc:
    """One fully connected layer; ``out=None`` means "num_classes" (the last layer)."""

    out: int | None
    weight_std: float = 0.01
    bias: float = 0.0
    number: int | None = None  # as :attr:`Conv.number`: fc8 stays fc8 without fc6 and fc7


@dataclass(frozen=True)
class LRN:
    """Local response normalisation constants (AlexNet §3.3); see :class:`~alexnet.models.layers.LocalResponseNorm`."""

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0
    alpha_over_size: bool = False


PAPER_LRN = LRN(size=5, alpha=1e-4, beta=0.75, k=2.0, alpha_over_size=False)  # AlexNet §3.3
CAFFE_LRN = LRN(size=5, alpha=1e-4, beta=0.75, k=1.0, alpha_over_size=True)  # Caffe's LRN layer


@dataclass(frozen=True)
class ArchConfig:
    """A member of the AlexNet family: conv stages, then fully connected layers.

    ``init="gaussian"`` uses each layer's ``weight_std`` / ``bias``; ``init="pytorch"`` keeps PyTorch's default
    initialisation (torchvision's AlexNet). ``dropout_before_fc`` puts dropout *before* fc6 and fc7
    (torchvision); otherwise dropout acts on the outputs of fc6 and fc7 (AlexNet §4.2, Caffe).
    ``ceil_mode`` rounds pooled sizes up as Caffe does, so a 224 input still reaches 6×6 at pool5.
    """

    name: str
    convs: tuple[Conv, ...]
    fcs: tuple[Fc, ...]
    input_size: int
    lrn: LRN | None = PAPER_LRN
    pool_before_norm: bool = False
    pool_kernel: int = 3
    pool_stride: int = 2
    ceil_mode: bool = True
    adaptive_pool: int | None = None
    dropout: float = 0.5
    dropout_before_fc: bool = False
    init: str = "gaussian"
    num_classes: int = 1000
    in_channels: int = 3
    description: str = ""
    reference: str = ""
    # what :func:`~alexnet.models.ablations.ablate` changed ("without conv3, conv4; no LRN"); "" for none
    ablation: str = ""
    tags: tuple[str, ...] = field(default=())

    def with_overrides(self, **overrides: object) -> ArchConfig:
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides)  # type: ignore[arg-type]

    def conv_numbers(self) -> list[int]:
        """The paper's number of each conv layer (1 … 5; ``[1, 2, 5]`` without conv3 and conv4)."""
        return _numbered(self.convs, 1)

    def fc_numbers(self) -> list[int]:
        """The paper's number of each fully connected layer (6, 7, 8 for the paper models)."""
        return _numbered(self.fcs, self.conv_numbers()[-1] + 1 if self.convs else 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; stored in weights files so an imported variant can be rebuilt exactly. The ablation
        fields appear only when set, so a file of an unablated network reads in versions before them."""
        d = asdict(self)
        for spec in (*d["convs"], *d["fcs"]):
            if spec["number"] is None:
                del spec["number"]
        if not d["ablation"]:
            del d["ablation"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        d = dict(data)
        d["convs"] = tuple(Conv(**c) for c in d["convs"])
        d["fcs"] = tuple(Fc(**f) for f in d["fcs"])
        d["lrn"] = LRN(**d["lrn"]) if d.get("lrn") else None
        d["tags"] = tuple(d.get("tags", ()))
        return cls(**d)


def _numbered(specs: tuple[Conv, ...] | tuple[Fc, ...], first: int) -> list[int]:
    numbers, n = [], first - 1
    for spec in specs:
        n = spec.number if spec.number is not None else n + 1
        numbers.append(n)
    return numbers


def _alexnet_convs(bias: float, fc_std: float) -> tuple[tuple[Conv, ...], tuple[Fc, ...]]:
    """AlexNet §3.5 / Fig. 2 layer table; ``bias`` goes to conv2, conv4, conv5, fc6, fc7 (§5)."""
    convs = (
        Conv(96, 11, stride=4, norm=True, pool=True),
        Conv(256, 5, padding=2, groups=2, norm=True, pool=True, bias=bias),
        Conv(384, 3, padding=1),  # conv3 connects to all kernel maps of layer 2 (§3.5)
        Conv(384, 3, padding=1, groups=2, bias=bias),
        Conv(256, 3, padding=1, groups=2, pool=True, bias=bias),
    )
    fcs = (Fc(4096, fc_std, bias), Fc(4096, fc_std, bias), Fc(None, 0.01, 0.0))
    return convs, fcs


_convs, _fcs = _alexnet_convs(bias=1.0, fc_std=0.01)
ALEXNET = ArchConfig(
    name="alexnet",
    convs=_convs,
    fcs=_fcs,
    input_size=227,
    lrn=PAPER_LRN,
    description="AlexNet as in the paper: two towers (groups=2), LRN (k=2, α·sum), N(0,0.01) init, biases 1",
    reference="Krizhevsky, Sutskever & Hinton, NIPS 2012, §3 and Fig. 2",
)

# Caffe's bvlc_reference_caffenet: pool before norm, Caffe's LRN, fc6/fc7 weight std 0.005, biases 1.
_convs, _fcs = _alexnet_convs(bias=1.0, fc_std=0.005)
CAFFENET = ArchConfig(
    name="caffenet",
    convs=_convs,
    fcs=_fcs,
    input_size=227,
    lrn=CAFFE_LRN,
    pool_before_norm=True,
    description="BVLC reference CaffeNet: pool before LRN, Caffe LRN (k=1, α/n), biases 1",
    reference="Jia et al., Caffe (2014), models/bvlc_reference_caffenet",
)

# Caffe's bvlc_alexnet: the paper's layer order with Caffe's LRN; fc6/fc7 std 0.005, non-zero biases 0.1.
_convs, _fcs = _alexnet_convs(bias=0.1, fc_std=0.005)
BVLC_ALEXNET = ArchConfig(
    name="bvlc_alexnet",
    convs=_convs,
    fcs=_fcs,
    input_size=227,
    lrn=CAFFE_LRN,
    description="Caffe's bvlc_alexnet: paper layer order, Caffe LRN (k=1, α/n), biases 0.1, fc6/fc7 std 0.005",
    reference="Jia et al., Caffe (2014), models/bvlc_alexnet",
)

ALEXNET_OWT = ArchConfig(
    name="alexnet_owt",
    convs=(
        Conv(64, 11, stride=4, padding=2, pool=True),
        Conv(192, 5, padding=2, pool=True),
        Conv(384, 3, padding=1),
        Conv(256, 3, padding=1),
        Conv(256, 3, padding=1, pool=True),
    ),
    fcs=(Fc(4096), Fc(4096), Fc(None)),
    input_size=224,
    lrn=None,
    ceil_mode=False,
    adaptive_pool=6,
    dropout_before_fc=True,
    init="pytorch",
    description="torchvision's single-tower AlexNet ('One weird trick'): no LRN, no groups, torchvision keys",
    reference="Krizhevsky, 'One weird trick for parallelizing CNNs', arXiv:1404.5997; torchvision.models.alexnet",
)


def _zfnet_convs(widths: tuple[int, int, int]) -> tuple[Conv, ...]:
    """Zeiler & Fergus Fig. 3: 7×7/2 first layer, 5×5/2 second, dense 3×3 conv3–5; weights "1e-2" (read as
    N(0, 0.01)), biases 0 (§3)."""
    c3, c4, c5 = widths
    return (
        Conv(96, 7, stride=2, padding=1, norm=True, pool=True),  # padding 1 gives the figure's 110×110
        Conv(256, 5, stride=2, norm=True, pool=True),
        Conv(c3, 3, padding=1),
        Conv(c4, 3, padding=1),
        Conv(c5, 3, padding=1, pool=True),
    )


ZFNET = ArchConfig(
    name="zfnet",
    convs=_zfnet_convs((384, 384, 256)),
    fcs=(Fc(4096), Fc(4096), Fc(None)),
    input_size=224,
    lrn=PAPER_LRN,
    pool_before_norm=True,  # Fig. 3: conv → ReLU → max pool → contrast norm.
    description="ZFNet (Fig. 3): 7×7/2 conv1, 5×5/2 conv2, dense conv3–5, maps 110-55-26-13-13-13-6",
    reference="Zeiler & Fergus, ECCV 2014, Fig. 3 and §3",
)

ZFNET_B = ZFNET.with_overrides(
    name="zfnet_b",
    convs=_zfnet_convs((512, 1024, 512)),
    description="ZFNet Table 2 row (b): conv3/4/5 widened to 512/1024/512",
    reference="Zeiler & Fergus, ECCV 2014, Table 2",
)

CONFIGS: dict[str, ArchConfig] = {
    c.name: c for c in (ALEXNET, CAFFENET, BVLC_ALEXNET, ALEXNET_OWT, ZFNET, ZFNET_B)
}
