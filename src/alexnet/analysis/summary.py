"""Per-layer parameters and computation, measured from the model itself by forward hooks.

Counting conventions (documented in docs/architecture.md):

* **MACs**: convolution ``H_out·W_out·C_out·(C_in/groups)·k_h·k_w``; linear ``in·out``. Other layers 0.
* **FLOPs**: 2 per MAC for convolution and linear layers (bias additions are not counted, as in
  ``torch.utils.flop_counter`` and the published 0.714 GMAC / 1.43 GFLOP of torchvision's AlexNet), plus the
  element-wise work of the other layers, one FLOP per elementary operation per output element:
  ReLU 1 (a max); max-pool ``k²−1`` comparisons; average-pool its window size (adds and a divide);
  LRN ``n + 3`` (n multiply-adds for the window sum of squares, then scale-and-add k, power, divide);
  dropout 0 (identity at inference).
* **activation_bytes**: the layer's output for one image in fp32 (4 bytes per element).
* **receptive_field / stride**: see :mod:`alexnet.analysis.receptive`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from alexnet.analysis.receptive import Field
from alexnet.errors import InputSizeError
from alexnet.models import AlexNetFamily, LocalResponseNorm

FP32_BYTES = 4


@dataclass
class LayerRow:
    name: str
    type: str
    output_shape: list[int]
    params: int
    macs: int
    flops: int
    activation_bytes: int
    receptive_field: int
    stride: int


@dataclass
class ModelSummary:
    model: str
    input_size: int
    layers: list[LayerRow] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {
            key: sum(getattr(r, key) for r in self.layers)
            for key in ("params", "macs", "flops", "activation_bytes")
        }

    def split(self) -> dict[str, dict[str, float]]:
        """Parameters and MACs of conv layers vs fully connected layers, with their shares of the total."""
        t = self.totals
        out: dict[str, dict[str, float]] = {}
        for kind, typ in (("conv", "Conv2d"), ("fc", "Linear")):
            rows = [r for r in self.layers if r.type == typ]
            params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
            out[kind] = {
                "params": params,
                "macs": macs,
                "params_pct": 100.0 * params / t["params"] if t["params"] else 0.0,
                "macs_pct": 100.0 * macs / t["macs"] if t["macs"] else 0.0,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_size": self.input_size,
            "layers": [asdict(r) for r in self.layers],
            "totals": self.totals,
            "split": self.split(),
        }


def _count(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> tuple[int, int]:
    """(MACs, FLOPs) of one layer for one image, by the conventions in the module docstring."""
    n_out = out[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = n_out * (module.in_channels // module.groups) * kh * kw
        return macs, 2 * macs
    if isinstance(module, nn.Linear):
        macs = module.in_features * module.out_features
        return macs, 2 * macs
    if isinstance(module, nn.ReLU):
        return 0, n_out
    if isinstance(module, nn.MaxPool2d):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return 0, n_out * (k * k - 1)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        window = max(1, inp[0].numel() // max(1, n_out))
        return 0, n_out * window
    if isinstance(module, LocalResponseNorm | nn.LocalResponseNorm):
        return 0, n_out * (module.size + 3)
    return 0, 0


def _geometry(module: nn.Module, fld: Field, in_shape: torch.Size) -> Field:
    if isinstance(module, nn.Conv2d | nn.MaxPool2d):
        k, s, p = module.kernel_size, module.stride, module.padding
        k, s, p = (v if isinstance(v, int) else v[0] for v in (k, s, p))
        return fld.through(k, s, p)
    if isinstance(module, nn.AdaptiveAvgPool2d):
        size = in_shape[-1]
        out = module.output_size if isinstance(module.output_size, int) else module.output_size[0]
        if out is None or size % out:
            return fld
        return fld.through(size // out, size // out)
    if isinstance(module, nn.Linear) and len(in_shape) >= 3:
        return fld.through(in_shape[-1], 1)
    return fld


@torch.no_grad()
def summarize(model: AlexNetFamily, input_size: int | None = None) -> ModelSummary:
    """Run one image through ``model`` with forward hooks and tabulate every paper-named layer, at the model's
    input size or ``input_size`` pixels."""
    if input_size is not None and (
        isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1
    ):
        raise InputSizeError(f"input size must be a whole number of pixels ≥ 1, not {input_size!r}")
    size = model.default_input_size if input_size is None else input_size
    name = model.config.name + (f" ({model.config.ablation})" if model.config.ablation else "")
    summary = ModelSummary(model=name, input_size=size)
    seen: dict[str, tuple[torch.Size, torch.Tensor, torch.Tensor]] = {}
    modules = dict(model.named_layers())
    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=name: seen.__setitem__(n, (i[0].shape, i[0], o)))
        for name, m in modules.items()
    ]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        model(torch.zeros(1, model.config.in_channels, size, size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()

    fld = Field()
    spatial_shape: torch.Size | None = None
    for name, module in modules.items():
        in_shape, inp, out = seen[name]
        geom_in = spatial_shape if isinstance(module, nn.Linear) and spatial_shape is not None else in_shape
        if isinstance(module, nn.Linear) and spatial_shape is not None:
            fld = _geometry(module, fld, spatial_shape)
            spatial_shape = None  # only fc6 sees a map
        else:
            fld = _geometry(module, fld, geom_in)
        if out.ndim == 4:
            spatial_shape = out.shape
        macs, flops = _count(module, inp, out)
        summary.layers.append(
            LayerRow(
                name=name,
                type="Conv2d" if isinstance(module, nn.Conv2d) else type(module).__name__,  # grouped too
                output_shape=list(out.shape[1:]),
                params=sum(p.numel() for p in module.parameters()),
                macs=macs,
                flops=flops,
                activation_bytes=out[0].numel() * FP32_BYTES,
                receptive_field=fld.size,
                stride=fld.jump,
            )
        )
    return summary


def receptive_fields(model: AlexNetFamily, input_size: int | None = None) -> dict[str, Field]:
    """Receptive-field geometry (:class:`Field`) of every conv-trunk layer, by paper name."""
    out: dict[str, Field] = {}
    fld = Field()
    for name, module in model.named_layers():
        if not isinstance(
            module, nn.Conv2d | nn.MaxPool2d | nn.ReLU | nn.LocalResponseNorm | LocalResponseNorm
        ):
            break
        fld = _geometry(module, fld, torch.Size())
        out[name] = fld
    return out


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def summary_table(s: ModelSummary) -> str:
    """A fixed-width table for people."""
    head = f"{'layer':<8} {'type':<18} {'output':>14} {'params':>12} {'MACs':>10} {'FLOPs':>10} {'act fp32':>10} {'RF':>5} {'stride':>6}"
    lines = [f"{s.model} — input 3×{s.input_size}×{s.input_size}", head, "-" * len(head)]
    for r in s.layers:
        shape = "×".join(map(str, r.output_shape))
        lines.append(
            f"{r.name:<8} {r.type:<18} {shape:>14} {r.params:>12,} {_human(r.macs):>10} {_human(r.flops):>10} "
            f"{_human(r.activation_bytes, 'B'):>10} {r.receptive_field:>5} {r.stride:>6}"
        )
    t = s.totals
    lines.append("-" * len(head))
    lines.append(
        f"{'total':<8} {'':<18} {'':>14} {t['params']:>12,} {_human(t['macs']):>10} {_human(t['flops']):>10} "
        f"{_human(t['activation_bytes'], 'B'):>10}"
    )
    sp = s.split()
    lines.append(
        f"conv layers: {sp['conv']['params_pct']:.1f}% of parameters, {sp['conv']['macs_pct']:.1f}% of MACs;  "
        f"fc layers: {sp['fc']['params_pct']:.1f}% of parameters, {sp['fc']['macs_pct']:.1f}% of MACs"
    )
    return "\n".join(lines)


def compare_table(summaries: list[ModelSummary]) -> str:
    """Side by side, per paper layer (conv and fc only): output shape, parameters and MACs of each model."""
    names: list[str] = []
    for s in summaries:
        for r in s.layers:
            if r.type in ("Conv2d", "Linear") and r.name not in names:
                names.append(r.name)
    col = 34
    head = f"{'layer':<7}" + "".join(
        f" | {s.model + ' (' + str(s.input_size) + ')':<{col}}" for s in summaries
    )
    sub = f"{'':<7}" + "".join(f" | {'output':>11} {'params':>11} {'MACs':>9}" for _ in summaries)
    lines = [head, sub, "-" * len(head)]
    for name in names:
        line = f"{name:<7}"
        for s in summaries:
            row = next((r for r in s.layers if r.name == name), None)
            if row is None:
                line += f" | {'—':>{col}}"
            else:
                shape = "×".join(map(str, row.output_shape))
                line += f" | {shape:>11} {row.params:>11,} {_human(row.macs):>9}"
        lines.append(line)
    lines.append("-" * len(head))
    for label, key in (("params", "params"), ("MACs", "macs"), ("FLOPs", "flops")):
        line = f"{label:<7}"
        for s in summaries:
            v = s.totals[key]
            txt = f"{v:,}" if key == "params" else _human(v)
            line += f" | {txt:>{col}}"
        lines.append(line)
    for kind in ("conv", "fc"):
        line = f"{kind + ' %':<7}"
        for s in summaries:
            sp = s.split()[kind]
            line += f" | {'params ' + format(sp['params_pct'], '.1f') + '%, MACs ' + format(sp['macs_pct'], '.1f') + '%':>{col}}"
        lines.append(line)
    return "\n".join(lines)
