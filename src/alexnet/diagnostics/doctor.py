"""``alexnet doctor``: read a run's health log and say what is wrong, with the numbers and a remedy.

Inputs, all in the run folder: ``health.csv`` (required; written by
:class:`~alexnet.diagnostics.health.HealthMonitor`), ``health_meta.json`` (model config, optimiser, thresholds),
``config.json`` (the training configuration) and ``metrics.csv`` (per-step or per-epoch losses). The live rules of
:mod:`alexnet.diagnostics.rules` are replayed over every health step; the doctor then attributes causes (init
scale, bias init, learning rate, LRN constants) and attaches a remedy from the literature to each.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alexnet.diagnostics.health import CSV_COLUMNS, HEALTH_CSV, HEALTH_EVENTS, HEALTH_META, METRICS
from alexnet.diagnostics.rules import (
    DEAD,
    EXPLODING,
    NONFINITE,
    REMEDIES,
    STUCK,
    VANISHING,
    Finding,
    HealthRecord,
    LayerHealth,
    Thresholds,
    chance_loss,
    check_record,
    learning_unknown,
    relative_grad,
)
from alexnet.errors import DataError


class RunDirError(DataError):
    """A run folder that cannot be diagnosed (missing or malformed health log)."""


@dataclass
class Diagnosis:
    """One conclusion: ``severity`` is ``problem``, ``note`` or ``ok``."""

    code: str
    severity: str
    title: str
    evidence: list[str] = field(default_factory=list)
    remedy: str = ""
    first_step: int | None = None
    layers: list[str] = field(default_factory=list)


@dataclass
class Run:
    path: Path
    records: list[HealthRecord]
    meta: dict[str, Any]
    config: dict[str, Any]
    metrics: list[dict[str, str]]
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Report:
    run: Run
    diagnoses: list[Diagnosis]

    @property
    def healthy(self) -> bool:
        return not any(d.severity == "problem" for d in self.diagnoses)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become the strings ``"nan"``, ``"inf"``, ``"-inf"``)."""
        last = self.run.records[-1]
        return _json_safe(
            {
                "run_dir": str(self.run.path),
                "summary": summary(self.run),
                "healthy": self.healthy,
                "diagnoses": [asdict(d) for d in self.diagnoses],
                "last_step": {
                    "step": last.step,
                    "loss": last.loss,
                    "layers": [asdict(lh) for lh in last.layers],
                },
            }
        )


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


# --- reading ----------------------------------------------------------------------------------------------
def _num(s: str) -> float | None:
    if s == "":
        return None
    try:
        return float(s)
    except ValueError:
        raise RunDirError(f"health.csv: {s!r} is not a number") from None


def read_health(path: Path) -> list[HealthRecord]:
    """``health.csv`` → one :class:`HealthRecord` per health step, layers in forward order."""
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
            if missing:
                raise RunDirError(f"{path}: not a health log (missing columns: {', '.join(sorted(missing))})")
            # a row cut short (a disk that filled up mid-row) is left out, as the training logs' readers do
            rows = [r for r in reader if None not in r and None not in r.values()]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RunDirError(f"{path}: unreadable health log ({e})") from None
    records: dict[int, HealthRecord] = {}
    for row in rows:
        try:
            step = int(row["step"])
        except (TypeError, ValueError):
            raise RunDirError(f"{path}: bad step {row.get('step')!r}") from None
        rec = records.get(step)
        if rec is None:
            rec = records[step] = HealthRecord(
                step=step,
                epoch=int(_num(row["epoch"]) or 0),
                loss=_num(row["loss"]),
                lr=_num(row["lr"]) or 0.0,
                num_classes=0,
            )
        lh = LayerHealth(row["layer"])
        for m in METRICS:
            v = _num(row[m])
            setattr(lh, m, int(v or 0) if m == "nonfinite" else v)
        rec.layers.append(lh)
    if not records:
        raise RunDirError(f"{path}: the health log has no measurements yet (too few steps?)")
    return [records[s] for s in sorted(records)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: unreadable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_run(run_dir: str | Path) -> Run:
    """Load everything the doctor uses from a run folder; :class:`RunDirError` if there is no health log."""
    path = Path(run_dir)
    if not path.is_dir():
        from alexnet.train.run_folder import not_a_run_folder

        raise RunDirError(not_a_run_folder(path))
    health = path / HEALTH_CSV
    if not health.is_file():
        raise RunDirError(f"{path}: no {HEALTH_CSV} (was the run trained with the HealthMonitor callback?)")
    records = read_health(health)
    meta = _read_json(path / HEALTH_META)
    config = _read_json(path / "config.json")
    num_classes = int(meta.get("num_classes") or config.get("num_classes") or config.get("classes") or 0)
    for rec in records:
        rec.num_classes = num_classes
    return Run(
        path, records, meta, config, _read_metrics(path / "metrics.csv"), _read_events(path / HEALTH_EVENTS)
    )


# --- facts about the run ---------------------------------------------------------------------------------
def summary(run: Run) -> dict[str, Any]:
    opt = run.meta.get("optimizer") or {}
    model = (run.meta.get("model") or {}).get("name") or run.config.get("model")
    first, last = run.records[0], run.records[-1]
    return {
        "model": model,
        "num_classes": last.num_classes or None,
        "optimizer": opt.get("name") or run.config.get("optimizer"),
        "lr": opt.get("lr", run.config.get("lr")),
        "health_every": run.meta.get("every"),
        "weights": run.config.get("weights"),  # fine-tuned (alexnet train --weights, --freeze)
        "freeze": run.config.get("freeze"),
        "first_step": first.step,
        "last_step": last.step,
        "first_loss": first.loss,
        "last_loss": last.loss,
        "chance_loss": chance_loss(last.num_classes) if last.num_classes >= 2 else None,
    }


def _thresholds(run: Run) -> Thresholds:
    known = {
        k: v for k, v in (run.meta.get("thresholds") or {}).items() if k in Thresholds.__dataclass_fields__
    }
    return Thresholds(**known)


def _init_facts(run: Run) -> tuple[float | None, float | None, str | None]:
    """(smallest conv weight std, largest bias, init scheme) from the model config / training config."""
    model = run.meta.get("model") or {}
    if run.config.get("weights"):  # `alexnet train --weights`: the layers began trained, not initialised
        return None, None, "weights"
    init = run.config.get("init") or model.get("init")
    layers = [*(model.get("convs") or []), *(model.get("fcs") or [])]
    if init in ("kaiming", "he", "pytorch") or not layers:
        return None, None, init
    stds = [float(c.get("weight_std", 0)) for c in layers]
    biases = [float(c.get("bias", 0)) for c in layers]
    probe_std = run.config.get("init_std")
    probe_bias = run.config.get("bias")  # `alexnet doctor --bias`
    if probe_bias is None:
        probe_bias = run.config.get("bias_init")  # `alexnet train --bias-init`
    std = float(probe_std) if probe_std is not None else min(stds)
    bias = float(probe_bias) if probe_bias is not None else max(biases)
    return std, bias, init


def _lr(run: Run) -> float | None:
    lr = (run.meta.get("optimizer") or {}).get("lr", run.config.get("lr"))
    return float(lr) if isinstance(lr, int | float) else None


def _metrics_nonfinite(run: Run) -> str | None:
    for row in run.metrics:
        for k, v in row.items():
            if k and "loss" in k and v not in ("", None):
                try:
                    x = float(v)
                except ValueError:
                    continue
                if not math.isfinite(x):
                    return f"metrics.csv: {k} = {v} at step {row.get('step', '?')}"
    return None


def _span(layers: list[str]) -> str:
    return (
        layers[0]
        if len(layers) == 1
        else f"{layers[0]}–{layers[-1]}"
        if len(layers) > 3
        else ", ".join(layers)
    )


# --- diagnosis -------------------------------------------------------------------------------------------
def diagnose(run: Run) -> list[Diagnosis]:
    """Replay the live rules over the whole run, then attribute causes and attach remedies."""
    th = _thresholds(run)
    by_code: dict[str, list[Finding]] = {}
    first_step: dict[str, int] = {}
    steps_with: dict[str, set[int]] = {}
    prev = None
    last = run.records[-1]
    at_last: list[Finding] = []
    peak_lr = 0.0
    for rec in run.records:
        peak_lr = max(peak_lr, rec.lr) if math.isfinite(rec.lr) else peak_lr
        found = check_record(rec, prev, th, peak_lr=peak_lr)
        for f in found:
            by_code.setdefault(f.code, []).append(f)
            first_step.setdefault(f.code, rec.step)
            steps_with.setdefault(f.code, set()).add(rec.step)
        at_last = found
        prev = rec
    events = [e for e in run.events if e.get("code") == NONFINITE]
    if events:
        e = events[0]
        by_code.setdefault(NONFINITE, []).insert(0, Finding(NONFINITE, e.get("layer"), str(e.get("message"))))
        first_step[NONFINITE] = min(first_step.get(NONFINITE, 1 << 62), int(events[0].get("step", 0)))
    lr = _lr(run)
    std, bias, _ = _init_facts(run)
    out: list[Diagnosis] = []

    diverged = NONFINITE in by_code or _metrics_nonfinite(run)
    if diverged:
        ev = [by_code[NONFINITE][0].message] if NONFINITE in by_code else []
        if (m := _metrics_nonfinite(run)) and not ev:
            ev.append(m)
        ev += [f.message for f in by_code.get(EXPLODING, [])[:2]]
        if lr is not None:
            ev.append(f"learning rate {lr:g}")
        out.append(
            Diagnosis(
                NONFINITE,
                "problem",
                "Training diverged: NaN/inf values",
                ev,
                REMEDIES["nonfinite"],
                first_step.get(NONFINITE),
                sorted({f.layer for f in by_code.get(NONFINITE, []) if f.layer}),
            )
        )
    # large updates in one health step can be a tiny-init layer growing; call it divergence only when the
    # loss itself blew up, or when it persists over several health steps
    loss_blowup = any(f.layer is None for f in by_code.get(EXPLODING, []))
    if EXPLODING in by_code and not diverged and (loss_blowup or len(steps_with[EXPLODING]) >= 2):
        fs = sorted(by_code[EXPLODING], key=lambda f: f.layer is not None)
        severity = "problem" if loss_blowup else "note"
        layers = list(dict.fromkeys(f.layer for f in fs if f.layer))
        ev = [f.message for f in fs[:3]]
        if lr is not None:
            ev.append(f"learning rate {lr:g}; healthy SGD changes weights by ~1e-3 of their norm per step")
        out.append(
            Diagnosis(
                EXPLODING,
                severity,
                (
                    f"Learning rate too high: exploding updates in {_span(layers)}"
                    if layers
                    else "Learning rate too high: the loss exploded"
                )
                if loss_blowup
                else f"Large weight updates in {_span(layers)} (the loss did not blow up: weights growing from a "
                "small init, or a learning rate near its limit)",
                ev,
                REMEDIES["lr_high"],
                first_step[EXPLODING],
                layers,
            )
        )

    # vanishing at the last health step (a first-step warning that training cured is not a diagnosis)
    vanish_layers = [f.layer for f in at_last if f.code == VANISHING and f.layer]
    stuck_now = any(f.code == STUCK for f in at_last)
    if STUCK in by_code and not stuck_now:
        # A plateau at ln(C) that training left is the usual start of a network without batch normalisation
        # (docs/training.md): worth knowing, nothing to fix.
        stuck_steps = sorted(steps_with[STUCK])
        out.append(
            Diagnosis(
                STUCK,
                "note",
                "Loss sat at chance level for a while, then training started",
                [
                    f"loss within {th.stuck_tol:.0%} of ln({last.num_classes}) = {chance_loss(last.num_classes):.4f} "
                    f"at health steps {stuck_steps[0]}…{stuck_steps[-1]}",
                    *([f"loss {last.loss:.4f} at step {last.step}"] if last.loss is not None else []),
                ],
                "",
                stuck_steps[0],
            )
        )
    if stuck_now:
        stuck_since = first_step[STUCK]
        chance = chance_loss(last.num_classes)
        ev = [
            f"loss {last.loss:.4f} at step {last.step} vs ln({last.num_classes}) = {chance:.4f} "
            f"(within {th.stuck_tol:.0%} since step {stuck_since})"
            if last.loss is not None
            else by_code[STUCK][0].message
        ]
        causes: list[str] = []
        remedy: list[str] = []
        if vanish_layers:
            ev.append(_gradient_evidence(last, vanish_layers))
            if std is not None:
                ev.append(f"weights initialised N(0, {std:g}) (He et al. 2015 would use ~sqrt(2/fan_in))")
            causes.append("the gradient does not reach the early layers")
            remedy.append(REMEDIES["init_scale"])
        flat = _bias_dominated(last)
        if (bias is not None and bias >= 1.0) or flat:
            if flat:
                ev.append(
                    "units output their bias, not the image: "
                    + "; ".join(f"{lh.layer} mean {lh.act_mean:.3g} ± {lh.act_std:.2g}" for lh in flat[:3])
                )
            if bias is not None and bias >= 1.0:
                ev.append(f"non-zero biases initialised to {bias:g}")
            causes.append("biases swamp the signal")
            remedy.append(REMEDIES["bias_one"])
        if not remedy:
            remedy.append(REMEDIES["lr_low"])
        title = "Loss stuck at chance (ln C)" + (f": {' and '.join(causes)}" if causes else "")
        out.append(Diagnosis(STUCK, "problem", title, ev, "\n".join(remedy), stuck_since, vanish_layers))
    elif vanish_layers and not diverged:
        out.append(
            Diagnosis(
                VANISHING,
                "problem",
                f"Vanishing gradients: {_span(vanish_layers)} receive almost no learning signal",
                [_gradient_evidence(last, vanish_layers)]
                + ([f"weights initialised N(0, {std:g})"] if std is not None else []),
                REMEDIES["init_scale"],
                first_step.get(VANISHING),
                vanish_layers,
            )
        )

    dead_now = [lh for lh in last.layers if lh.dead_frac is not None and lh.dead_frac > th.dead_frac]
    if dead_now and not diverged:
        out.append(
            Diagnosis(
                DEAD,
                "problem",
                f"Dead ReLUs in {_span([lh.layer for lh in dead_now])}",
                [
                    f"{lh.layer}: {lh.dead_frac:.0%} of units are 0 for the whole batch at step {last.step}"
                    for lh in dead_now
                ]
                + ([f"learning rate {lr:g}"] if lr is not None else []),
                REMEDIES["dead_relu"],
                first_step.get(DEAD),
                [lh.layer for lh in dead_now],
            )
        )

    out.extend(_lrn_notes(run, last))
    if not any(d.severity == "problem" for d in out):
        out.insert(0, _healthy(run, th))
    return out


def _gradient_evidence(last: HealthRecord, layers: list[str]) -> str:
    rel = {lh.layer: relative_grad(lh) for lh in last.layers}
    parts = [f"{name} {rel[name]:.2g}" for name in layers if rel.get(name)]
    zero = [name for name in layers if not rel.get(name)]
    top_layer = max((k for k, v in rel.items() if v), key=lambda k: rel[k] or 0.0, default=None)
    text = f"gradient/weight norm ‖g‖/‖w‖ at step {last.step}: " + (", ".join(parts) if parts else "")
    if zero:
        dead = [lh for lh in last.layers if lh.dead_frac is not None and lh.dead_frac >= 0.99]
        text += f"{'; ' if parts else ''}exactly 0 in {_span(zero)}"
        if dead:
            text += f" ({dead[-1].dead_frac:.1%} of {dead[-1].layer}'s ReLU units are dead: no gradient flows below it)"
    if top_layer is not None and parts:
        text += f" vs {top_layer} {rel[top_layer]:.2g}"
    return text


def _bias_dominated(rec: HealthRecord) -> list[LayerHealth]:
    """Layers whose outputs barely vary: std < 1 % of |mean| — every unit sits at its bias."""
    return [
        lh
        for lh in rec.layers
        if lh.act_mean is not None
        and lh.act_std is not None
        and abs(lh.act_mean) > 0.1
        and lh.act_std < 0.01 * abs(lh.act_mean)
    ]


def _lrn_notes(run: Run, last: HealthRecord) -> list[Diagnosis]:
    lrn = (run.meta.get("model") or {}).get("lrn") or {}
    rows = [lh for lh in last.layers if lh.lrn_denom_min is not None and lh.lrn_denom_max is not None]
    lows = [lh.lrn_denom_min for lh in rows if lh.lrn_denom_min is not None]
    highs = [lh.lrn_denom_max for lh in rows if lh.lrn_denom_max is not None]
    if not rows:
        return []
    k = float(lrn.get("k", min(lows)))  # windows of all-zero ReLU outputs sit exactly at k
    ev = [
        f"{lh.layer}'s LRN: k + α·Σa² in [{lh.lrn_denom_min:.5g}, {lh.lrn_denom_max:.5g}] (k = {k:g})"
        for lh in rows
    ]
    top = max(highs)
    if lrn:
        conv = "α/n (Caffe)" if lrn.get("alpha_over_size") else "α·Σ (paper)"
        ev.append(
            f"constants n={lrn.get('size')}, α={lrn.get('alpha')}, β={lrn.get('beta')}, k={k:g}, convention {conv}"
        )
    if top <= k * 1.01:
        return [
            Diagnosis(
                "lrn_inactive",
                "note",
                f"LRN is inactive: its denominator never exceeds k by more than {100 * (top / k - 1):.2g} %",
                ev,
                REMEDIES["lrn_inactive"],
                last.step,
                [lh.layer for lh in rows],
            )
        ]
    if top > 100 * k:
        return [
            Diagnosis(
                "lrn_dominant",
                "note",
                f"LRN dominates: its denominator reaches {top / k:.3g}× k",
                ev,
                REMEDIES["lrn_dominant"],
                last.step,
                [lh.layer for lh in rows],
            )
        ]
    return [
        Diagnosis("lrn_ok", "note", "LRN is normalising (denominator above k where activity is high)", ev)
    ]


def _healthy(run: Run, th: Thresholds) -> Diagnosis:
    first, last = run.records[0], run.records[-1]
    ev = []
    if first is last and last.loss is not None:
        ev.append(f"loss {last.loss:.4f} at step {last.step}")
    elif first.loss is not None and last.loss is not None:
        ev.append(f"loss {first.loss:.4f} at step {first.step} → {last.loss:.4f} at step {last.step}")
    if last.num_classes >= 2:
        ev.append(f"chance level ln({last.num_classes}) = {chance_loss(last.num_classes):.4f}")
    ratios = [lh.update_ratio for lh in last.layers if lh.update_ratio is not None]
    if ratios:
        ev.append(
            f"‖Δw‖/‖w‖ per step {min(ratios):.2g} … {max(ratios):.2g} across layers at lr {last.lr:.3g} "
            "(healthy SGD at its full learning rate: ~1e-3; smaller as a schedule anneals)"
        )
    dead = [lh.dead_frac for lh in last.layers if lh.dead_frac is not None]
    if dead:
        ev.append(f"dead ReLU units at most {max(dead):.0%} per layer (warning above {th.dead_frac:.0%})")
    if last.step < th.stuck_after:
        ev.append(f"only {last.step} steps: the stuck-at-chance rule applies from step {th.stuck_after}")
    why = learning_unknown(run.records)
    if why is not None:  # no rule fired, but nothing shows learning either: do not claim it
        return Diagnosis(
            "undetermined", "note", "No problems found, but no sign yet that the network learns", [why, *ev]
        )
    return Diagnosis("healthy", "ok", "No problems found: the network is learning", ev)


def diagnose_run(run_dir: str | Path) -> Report:
    run = read_run(run_dir)
    return Report(run, diagnose(run))


# --- text ------------------------------------------------------------------------------------------------
def _g(v: float | None, fmt: str = ".3g") -> str:
    return "–" if v is None else format(v, fmt)


def health_table(rec: HealthRecord) -> str:
    head = ["layer", "act mean", "act std", "dead", "‖w‖", "‖g‖", "‖g‖/‖w‖", "‖Δw‖/‖w‖", "LRN k+αΣa²"]
    rows = [head]
    for lh in rec.layers:
        lrn = "–" if lh.lrn_denom_min is None else f"{lh.lrn_denom_min:.4g}…{lh.lrn_denom_max:.4g}"
        rows.append(
            [
                lh.layer,
                _g(lh.act_mean),
                _g(lh.act_std),
                "–" if lh.dead_frac is None else f"{lh.dead_frac:.0%}",
                _g(lh.weight_norm),
                _g(lh.grad_norm, ".2g"),
                _g(relative_grad(lh), ".2g"),
                _g(lh.update_ratio, ".2g"),
                lrn,
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    )


def format_report(report: Report) -> str:
    s = summary(report.run)
    bits = [str(s["model"] or "model ?")]
    if s["num_classes"]:
        bits.append(f"{s['num_classes']} classes")
    if s["optimizer"]:
        bits.append(
            f"{s['optimizer']} lr {s['lr']:g}" if isinstance(s["lr"], int | float) else str(s["optimizer"])
        )
    if s["weights"]:
        bits.append(f"from {s['weights']}" + (f", fixed through {s['freeze']}" if s["freeze"] else ""))
    bits.append(f"health steps {s['first_step']}…{s['last_step']}")
    lines = [f"doctor: {report.run.path} ({', '.join(bits)})", ""]
    for d in report.diagnoses:
        tag = {"problem": "PROBLEM", "note": "NOTE", "ok": "OK"}[d.severity]
        since = f" (from step {d.first_step})" if d.first_step is not None and d.severity == "problem" else ""
        lines.append(f"{tag:8s}{d.title}{since}")
        lines += [f"  evidence: {e}" for e in d.evidence]
        for i, r in enumerate(d.remedy.splitlines()):
            lines.append(f"  {'remedy:  ' if i == 0 else '          '}{r}")
        lines.append("")
    lines.append(f"per-layer health at step {report.run.records[-1].step}:")
    lines.append(health_table(report.run.records[-1]))
    return "\n".join(lines)
