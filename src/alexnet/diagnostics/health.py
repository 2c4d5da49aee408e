"""Per-layer training health, measured every N steps by a training-loop callback.

:class:`HealthMonitor` is a :class:`~alexnet.train.callbacks.Callback`. On a *health step* (every ``every``
optimizer steps) it registers forward hooks just before the forward pass, and removes them right after; on all
other steps it only adds the loss to a running sum on the device (no hooks, no host synchronisation). Per conv/fc
layer (paper names, ``model.named_layers()``) it records

* ``act_mean`` / ``act_std`` — the layer's output (pre-activation) over the batch;
* ``dead_frac`` — fraction of the following ReLU's units that are 0 for every example (conv: feature maps, fc:
  neurons), the "dead filters" of Zeiler & Fergus Fig. 6;
* ``weight_norm``, ``grad_norm`` — Frobenius norms of the weight and its gradient;
* ``update_ratio`` — ‖w_after − w_before‖ / ‖w_before‖ over the optimizer step (snapshot after backward);
  neither is recorded for a layer kept fixed (``alexnet train --freeze``);
* ``lrn_denom_min`` / ``lrn_denom_max`` — range of ``k + α·Σ_window a²`` of the LRN after this layer
  (AlexNet §3.3), computed from the LRN's input with its own constants.

Rows go to ``health.csv`` in the run folder (one row per layer per health step) and to TensorBoard under
``health/<metric>/<layer>``. The rules of :mod:`alexnet.diagnostics.rules` turn records into live warnings.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.diagnostics.rules import (
    NONFINITE,
    Finding,
    HealthRecord,
    LayerHealth,
    Thresholds,
    check_record,
)
from alexnet.files import atomic_write
from alexnet.models.layers import LocalResponseNorm, channel_window_sum
from alexnet.train.callbacks import Callback, TrainContext
from alexnet.train.runlog import CsvLog

HEALTH_CSV = "health.csv"
HEALTH_META = "health_meta.json"
HEALTH_EVENTS = "health_events.jsonl"  # every warning emitted, one JSON object per line
METRICS = [f.name for f in fields(LayerHealth) if f.name != "layer"]
CSV_COLUMNS = ["step", "epoch", "loss", "lr", "layer", *METRICS]


def _layer_index(name: str) -> str | None:
    m = re.fullmatch(r"(?:conv|fc)(\d+)", name)
    return m.group(1) if m else None


def watched_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None, nn.Module | None]]:
    """``(name, conv_or_fc, relu_or_None, lrn_or_None)`` for every conv/fc layer, in forward order.

    Uses the papers' names when the model has them (``named_layers()``); any other module falls back to its
    module paths, without ReLU/LRN association.
    """
    named = getattr(model, "named_layers", None)
    if named is None:
        return [
            (path, m, None, None) for path, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
        ]
    table = dict(named())
    out = []
    for name, module in table.items():
        idx = _layer_index(name)
        if idx is None or not isinstance(module, nn.Conv2d | nn.Linear):
            continue
        relu = table.get(f"relu{idx}")
        lrn = table.get(f"norm{idx}")
        out.append(
            (
                name,
                module,
                relu if isinstance(relu, nn.ReLU) else None,
                lrn if isinstance(lrn, LocalResponseNorm | nn.LocalResponseNorm) else None,
            )
        )
    return out


def lrn_denominator(lrn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``k + α'·Σ_window x²`` (AlexNet §3.3) with the module's own constants and convention."""
    if isinstance(lrn, LocalResponseNorm):
        size, alpha, k = lrn.size, lrn.sum_alpha, lrn.k
    else:  # torch.nn.LocalResponseNorm divides alpha by size
        size, alpha, k = lrn.size, lrn.alpha / lrn.size, lrn.k
    return k + alpha * channel_window_sum(x.detach().float() ** 2, size)


class _Stats:
    """Per-layer tensors collected during one health step; moved to the host once, at the end."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, torch.Tensor]] = {}

    def put(self, layer: str, **kv: torch.Tensor) -> None:
        self.values.setdefault(layer, {}).update(kv)


class HealthMonitor(Callback):
    """Measure per-layer health every ``every`` steps; log to ``health.csv``/TensorBoard; return warnings.

    Each warning (rule code and layer) is returned once, the first time it fires, so the progress bar is not
    flooded; the CSV keeps the full history for ``alexnet doctor``.
    """

    def __init__(self, every: int = 50, thresholds: Thresholds | None = None) -> None:
        if every < 1:
            raise ValueError("every must be ≥ 1")
        self.every = every
        self.th = thresholds or Thresholds()
        self.records: list[HealthRecord] = []
        self._peak_lr = 0.0  # the highest learning rate so far (check_vanishing scales with it)
        self.warned: set[tuple[str, str | None]] = set()
        self._layers: list[tuple[str, nn.Module, nn.Module | None, nn.Module | None]] = []
        self._handles: list[Any] = []
        self._stats = _Stats()
        self._snapshot: dict[str, torch.Tensor] = {}
        self._grad_norms: dict[str, torch.Tensor] = {}
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._active = False
        self._csv: Path | None = None
        self._last_ctx: TrainContext | None = None

    # --- callback hooks -------------------------------------------------------------------------------
    def on_train_start(self, ctx: TrainContext) -> list[str] | None:
        self._layers = watched_layers(ctx.model)
        if ctx.run_dir is not None and ctx.is_main:
            run_dir = Path(ctx.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._csv = run_dir / HEALTH_CSV
            fresh = ctx.step == 0  # a new run starts anew; a resumed one drops the steps it does again
            rows = CsvLog(self._csv, CSV_COLUMNS, fresh=fresh)
            if fresh:
                (run_dir / HEALTH_EVENTS).unlink(missing_ok=True)
            else:
                rows.truncate_after(ctx.step)
                _truncate_events(run_dir / HEALTH_EVENTS, ctx.step)
            meta = json.dumps(self._meta(ctx), indent=2) + "\n"
            atomic_write(run_dir / HEALTH_META, lambda tmp: Path(tmp).write_text(meta))
        return None

    def on_step_start(self, ctx: TrainContext) -> list[str] | None:
        self._last_ctx = ctx
        self._active = ctx.is_main and ctx.step % self.every == 0
        if self._active:
            self._stats = _Stats()
            self._attach()
        return None

    def on_after_backward(self, ctx: TrainContext) -> list[str] | None:
        self._detach()
        if ctx.loss is not None:
            loss = ctx.loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_count += 1
            # a loop that does not check its losses itself (ctx.loss_checked) stops here on a NaN
            if ctx.is_main and not ctx.loss_checked and not bool(torch.isfinite(loss)):
                return self._on_nonfinite_loss(ctx, float(loss))
        if not self._active:
            return None
        with torch.no_grad():
            for name, module, _, _ in self._layers:
                w = module.weight
                if not w.requires_grad:  # fixed (`alexnet train --freeze`): no gradient, no update to measure
                    continue
                self._snapshot[name] = w.detach().clone()
                g = w.grad
                self._grad_norms[name] = (
                    g.detach().float().norm() if g is not None else torch.zeros((), device=w.device)
                )
        return None

    def on_step_end(self, ctx: TrainContext) -> list[str] | None:
        if not self._active:
            return None
        self._active = False
        rec = self._measure(ctx)
        prev = self.records[-1] if self.records else None
        self.records.append(rec)
        self._write(rec, ctx)
        if math.isfinite(rec.lr):
            self._peak_lr = max(self._peak_lr, rec.lr)
        findings = check_record(rec, prev, self.th, peak_lr=self._peak_lr)
        if any(f.code == NONFINITE for f in findings) and ctx.inputs is not None:
            layer, where = _locate(ctx.model, ctx.inputs)
            if where:
                findings = [Finding(NONFINITE, layer, f"step {rec.step}: {where}")]
        return self._new_warnings(findings, rec.step)

    def locate_last_batch(self) -> tuple[str | None, str | None]:
        """For a loop that stopped on a NaN loss before calling the callback again: ``(layer, sentence)`` of
        the first non-finite output on the batch of the last step started (see :func:`locate_nonfinite`)."""
        ctx = self._last_ctx
        if ctx is None or ctx.inputs is None:
            return None, None
        return _locate(ctx.model, ctx.inputs)

    def _on_nonfinite_loss(self, ctx: TrainContext, value: float) -> list[str] | None:
        step = ctx.step + 1  # the step being taken
        layer, where = _locate(ctx.model, ctx.inputs) if ctx.inputs is not None else (None, None)
        msg = f"step {step}: loss is {value}" + (f"; {where}" if where else "; the forward pass is finite")
        self._active = False
        return self._new_warnings([Finding(NONFINITE, layer, msg)], step)

    def on_train_end(self, ctx: TrainContext) -> list[str] | None:
        self._detach()
        return None

    # --- measurement ----------------------------------------------------------------------------------
    def _attach(self) -> None:
        stats = self._stats
        for name, module, relu, lrn in self._layers:

            def on_output(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
                o = out.detach().float()
                bad = (~torch.isfinite(o)).sum()
                stats.put(name, act_mean=o.mean(), act_std=o.std(), nonfinite=bad)

            self._handles.append(module.register_forward_hook(on_output))
            if relu is not None:

                def on_relu(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
                    o = out.detach()
                    # a unit is a feature map (conv, N×C×H×W) or a neuron (fc, N×F): dead if 0 everywhere
                    per_unit = o.transpose(0, 1).reshape(o.shape[1], -1).amax(dim=1)
                    stats.put(name, dead_frac=(per_unit <= 0).float().mean())

                self._handles.append(relu.register_forward_hook(on_relu))
            if lrn is not None:

                def on_lrn(m: nn.Module, inputs: tuple[torch.Tensor, ...], name: str = name) -> None:
                    d = lrn_denominator(m, inputs[0])
                    stats.put(name, lrn_denom_min=d.min(), lrn_denom_max=d.max())

                self._handles.append(lrn.register_forward_pre_hook(on_lrn))

    def _detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def _measure(self, ctx: TrainContext) -> HealthRecord:
        names: list[str] = []
        keys: list[str] = []
        tensors: list[torch.Tensor] = []
        for name, module, _, _ in self._layers:
            w = module.weight.detach()
            before = self._snapshot.pop(name, None)
            per = dict(self._stats.values.get(name, {}))
            wn = (before if before is not None else w).float().norm()
            per["weight_norm"] = wn
            if name in self._grad_norms:
                per["grad_norm"] = self._grad_norms.pop(name)
            if before is not None:
                per["update_ratio"] = (w.float() - before.float()).norm() / wn
            for k, v in per.items():
                names.append(name)
                keys.append(k)
                tensors.append(v.detach().float().reshape(()).to("cpu"))
        values = torch.stack(tensors).tolist() if tensors else []
        layers = {name: LayerHealth(name) for name, *_ in self._layers}
        for name, k, v in zip(names, keys, values, strict=True):
            setattr(layers[name], k, int(v) if k == "nonfinite" else float(v))
        loss = None
        if self._loss_sum is not None and self._loss_count:
            loss = float(self._loss_sum) / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        return HealthRecord(
            step=ctx.step,
            epoch=ctx.epoch + 1,  # 1-based, as in metrics.csv and train.log
            loss=loss,
            lr=float(ctx.lr),
            num_classes=ctx.num_classes,
            layers=list(layers.values()),
        )

    def _write(self, rec: HealthRecord, ctx: TrainContext) -> None:
        if self._csv is not None:
            with self._csv.open("a", newline="") as f:
                w = csv.writer(f)
                for lh in rec.layers:
                    d = asdict(lh)
                    w.writerow(
                        [rec.step, rec.epoch, _fmt(rec.loss), _fmt(rec.lr), lh.layer]
                        + [_fmt(d[m]) for m in METRICS]
                    )
        if ctx.writer is not None:
            if rec.loss is not None:
                ctx.writer.add_scalar("health/loss_window", rec.loss, rec.step)
            for lh in rec.layers:
                for m in METRICS:
                    v = getattr(lh, m)
                    if v is not None:
                        ctx.writer.add_scalar(f"health/{m}/{lh.layer}", v, rec.step)

    def _new_warnings(self, findings: list[Finding], step: int) -> list[str] | None:
        out = []
        new = []
        for f in findings:
            key = (f.code, f.layer)
            if key not in self.warned:
                self.warned.add(key)
                new.append(f)
                out.append(f"health: {f.message}")
        if new and self._csv is not None:
            with (self._csv.parent / HEALTH_EVENTS).open("a") as fh:
                for f in new:
                    fh.write(
                        json.dumps({"step": step, "code": f.code, "layer": f.layer, "message": f.message})
                    )
                    fh.write("\n")
        return out or None

    def _meta(self, ctx: TrainContext) -> dict[str, Any]:
        """What the doctor needs to attribute causes: model config, optimiser, classes, interval."""
        cfg = getattr(ctx.model, "config", None)
        group = ctx.optimizer.param_groups[0] if ctx.optimizer.param_groups else {}
        hyper = {
            k: v
            for k, v in group.items()
            if k != "params" and isinstance(v, int | float | str | bool | tuple | list | type(None))
        }
        return {
            "every": self.every,
            "num_classes": ctx.num_classes,
            "model": cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None,
            "optimizer": {"name": type(ctx.optimizer).__name__, **hyper},
            "thresholds": asdict(self.th),
        }


def default_callbacks(every: int = 50, thresholds: Thresholds | None = None) -> list[Callback]:
    """The diagnostics every training run should carry: ``train(cfg, callbacks=default_callbacks())``."""
    return [HealthMonitor(every=every, thresholds=thresholds)]


def _fmt(v: float | int | None) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    return repr(float(v)) if math.isfinite(v) else str(v)


def locate_nonfinite(model: nn.Module, inputs: torch.Tensor) -> str | None:
    """Re-run ``inputs`` through ``model`` and name the first layer (forward order) whose output is NaN/inf.

    Returns a sentence for the training loop's error message (``None`` when the whole forward pass is finite,
    i.e. the problem is in the loss or the backward pass). Parameters that are already non-finite are named
    first, since they poison every later forward.
    """
    return _locate(model, inputs)[1]


@torch.no_grad()
def _locate(model: nn.Module, inputs: torch.Tensor) -> tuple[str | None, str | None]:
    """``(layer name or None, sentence or None)`` for :func:`locate_nonfinite`."""
    if not torch.isfinite(inputs).all():
        n = int((~torch.isfinite(inputs)).sum())
        return None, f"the input batch itself contains {n} NaN/inf values"
    named = getattr(model, "named_layers", None)
    layers = (
        list(named())
        if named is not None
        else [(p, m) for p, m in model.named_modules() if not list(m.children())]
    )
    for name, module in layers:
        for pname, p in module.named_parameters(recurse=False):
            if not torch.isfinite(p).all():
                return (
                    name,
                    f"{name}.{pname} is already non-finite ({int((~torch.isfinite(p)).sum())} values)",
                )
    found: list[tuple[str, str]] = []

    def hook(name: str) -> Any:
        def fn(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if found or not isinstance(out, torch.Tensor):
                return
            bad = ~torch.isfinite(out)
            if bad.any():
                nan = int(torch.isnan(out).sum())
                inf = int(bad.sum()) - nan
                x = args[0] if args and isinstance(args[0], torch.Tensor) else None
                peak = f"; largest |input| {float(x.abs().max()):.3g}" if x is not None else ""
                found.append(
                    (name, f"first non-finite output at {name} ({nan} NaN, {inf} inf of {out.numel()}{peak})")
                )

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else (None, None)


def _truncate_events(path: Path, step: int) -> None:
    """Drop the warnings of steps after ``step`` (a resumed run does them again), and any line cut short."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        at = event.get("step", 0) if isinstance(event, dict) else None
        if isinstance(at, int) and at <= step:
            keep.append(line + "\n")
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(keep)))
