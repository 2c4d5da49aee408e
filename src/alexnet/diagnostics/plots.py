"""Health curves of a run as one PNG: loss against chance, gradient and update ratios, dead units, LRN."""

from __future__ import annotations

from pathlib import Path

from alexnet.diagnostics.rules import HealthRecord, Thresholds, chance_loss, relative_grad
from alexnet.files import atomic_write

PANELS = (
    ("loss", "training loss (window mean)"),
    ("relative_grad", "gradient ‖g‖/‖w‖"),
    ("update_ratio", "update ‖Δw‖/‖w‖ per step"),
    ("dead_frac", "dead ReLU units (fraction)"),
    ("act_std", "activation std (pre-ReLU)"),
    ("lrn", "LRN denominator k+αΣa² (max)"),
)


def _series(records: list[HealthRecord], layer: str, metric: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in records:
        lh = rec.layer(layer)
        if lh is None:
            continue
        v = relative_grad(lh) if metric == "relative_grad" else getattr(lh, metric)
        if v is not None:
            xs.append(rec.step)
            ys.append(v)
    return xs, ys


def plot_health(
    records: list[HealthRecord], path: str | Path, title: str = "", thresholds: Thresholds | None = None
) -> Path:
    """Six panels over the health steps, one line per conv/fc layer (early layers dark, late layers light)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    th = thresholds or Thresholds()
    layers = [lh.layer for lh in records[0].layers] if records else []
    cmap = plt.get_cmap("viridis")
    colour = {name: cmap(i / max(1, len(layers) - 1)) for i, name in enumerate(layers)}
    fig, axes = plt.subplots(2, 3, figsize=(11, 6), dpi=72, constrained_layout=True)
    steps = [r.step for r in records]
    for ax, (key, label) in zip(axes.flat, PANELS, strict=True):
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("step", fontsize=8)
        if key == "loss":
            ax.plot(steps, [r.loss if r.loss is not None else float("nan") for r in records], color="black")
            if records and records[-1].num_classes >= 2:
                c = chance_loss(records[-1].num_classes)
                ax.axhline(c, color="red", ls="--", lw=1, label=f"chance ln({records[-1].num_classes})")
                ax.legend(fontsize=7)
            continue
        for name in layers:
            metric = "lrn_denom_max" if key == "lrn" else key
            xs, ys = _series(records, name, metric)
            if xs:
                ax.plot(xs, ys, color=colour[name], lw=1.2, label=name)
        if key in ("relative_grad", "update_ratio", "act_std"):
            ax.set_yscale("log")
        if key == "update_ratio":
            ax.axhspan(1e-4, 1e-2, color="green", alpha=0.08)
            ax.axhline(th.explode_update_ratio, color="red", ls="--", lw=0.8)
            ax.axhline(th.vanish_update_ratio, color="red", ls=":", lw=0.8)
        if key == "dead_frac":
            ax.set_ylim(-0.02, 1.02)
            ax.axhline(th.dead_frac, color="red", ls="--", lw=0.8)
    handles, labels = axes.flat[1].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out
