"""Warning rules over per-layer health records, shared by the live monitor and ``alexnet doctor``.

A rule looks at one health record (one measured training step) — or, for growth, at two consecutive ones — and
returns :class:`Finding` s: a code, the layer it concerns, and a one-line message with the numbers. The live
monitor (:class:`~alexnet.diagnostics.health.HealthMonitor`) turns them into warnings for the progress bar;
the doctor (:mod:`alexnet.diagnostics.doctor`) gathers them over a whole run and attaches a remedy from the
literature (:data:`REMEDIES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

STUCK = "stuck_at_chance"
DEAD = "dead_relu"
EXPLODING = "exploding_gradients"
VANISHING = "vanishing_gradients"
NONFINITE = "nonfinite"


@dataclass(frozen=True)
class Thresholds:
    """When a measurement becomes a warning. Defaults and their sources are in ``docs/diagnostics.md``.

    * ``stuck_after`` / ``stuck_tol``: after this many steps, a mean loss within ``stuck_tol`` (relative) of
      ln(C) means the classifier still outputs the uniform distribution.
    * ``dead_frac``: fraction of a layer's ReLU units (conv: feature maps, fc: neurons) that are exactly 0 for
      every example of the batch.
    * ``explode_update_ratio``: ‖Δw‖/‖w‖ in one optimizer step; ~1e-3 is typical of healthy SGD, so a step that
      changes a layer's weights by more than 10 % is out of control.
    * ``explode_growth``: growth of a layer's gradient norm between two consecutive health steps.
    * ``explode_loss``: a window-mean loss this many times ln(C) — worse than guessing — means divergence.
    * ``vanish_update_ratio``: ‖Δw‖/‖w‖ below which a layer is effectively frozen (checked after
      ``warmup_steps``, once momentum has built up).
    * ``vanish_grad_gap``: a layer whose ‖g‖/‖w‖ is this many times below the strongest layer's receives no
      learning signal (the gradient died on its way down).
    """

    stuck_after: int = 100
    stuck_tol: float = 0.01
    dead_frac: float = 0.5
    explode_update_ratio: float = 0.1
    explode_growth: float = 100.0
    explode_loss: float = 3.0
    vanish_update_ratio: float = 1e-5
    vanish_grad_gap: float = 1e-4
    warmup_steps: int = 10


@dataclass
class LayerHealth:
    """One conv/fc layer at one health step. ``None`` where a metric does not apply (no ReLU, no LRN)."""

    layer: str
    act_mean: float | None = None  # the layer's output (pre-activation), over the batch
    act_std: float | None = None
    dead_frac: float | None = None  # fraction of units whose ReLU output is 0 for the whole batch
    weight_norm: float | None = None
    grad_norm: float | None = None
    update_ratio: float | None = None  # ‖w_after − w_before‖ / ‖w_before‖ over one optimizer step
    lrn_denom_min: float | None = None  # k + α·Σa² of the LRN that follows this layer
    lrn_denom_max: float | None = None
    nonfinite: int = 0  # non-finite values in the layer's output


@dataclass
class HealthRecord:
    """Everything measured at one health step."""

    step: int
    loss: float | None  # mean training loss since the previous health step
    lr: float
    num_classes: int
    layers: list[LayerHealth] = field(default_factory=list)
    epoch: int = 0  # 1-based: the epoch the step belongs to, as in metrics.csv

    def layer(self, name: str) -> LayerHealth | None:
        return next((lh for lh in self.layers if lh.layer == name), None)


@dataclass(frozen=True)
class Finding:
    code: str
    layer: str | None
    message: str


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def chance_loss(num_classes: int) -> float:
    """Cross-entropy of the uniform prediction over ``num_classes`` classes: ln(C)."""
    return math.log(num_classes)


def relative_grad(lh: LayerHealth) -> float | None:
    """‖∂L/∂w‖ / ‖w‖: the loss's pull on a layer relative to its size, free of the optimiser's lr/momentum."""
    g, w = lh.grad_norm, lh.weight_norm
    if g is None or w is None or not (math.isfinite(g) and math.isfinite(w)) or w == 0:
        return None
    return g / w


def check_stuck(rec: HealthRecord, th: Thresholds) -> list[Finding]:
    if rec.step < th.stuck_after or not _finite(rec.loss) or rec.num_classes < 2:
        return []
    chance = chance_loss(rec.num_classes)
    assert rec.loss is not None
    if abs(rec.loss - chance) <= th.stuck_tol * chance:
        return [
            Finding(
                STUCK,
                None,
                f"step {rec.step}: loss {rec.loss:.4f} is within {th.stuck_tol:.0%} of "
                f"ln({rec.num_classes}) = {chance:.4f}: the network still predicts chance",
            )
        ]
    return []


def check_dead(rec: HealthRecord, th: Thresholds) -> list[Finding]:
    return [
        Finding(DEAD, lh.layer, f"step {rec.step}: {lh.dead_frac:.0%} of {lh.layer}'s ReLU units are dead")
        for lh in rec.layers
        if lh.dead_frac is not None and lh.dead_frac > th.dead_frac
    ]


def check_nonfinite(rec: HealthRecord) -> list[Finding]:
    """The first layer (forward order) whose output, gradient or weights are NaN/inf."""
    for lh in rec.layers:
        what = []
        if lh.nonfinite:
            what.append(f"{lh.nonfinite} non-finite outputs")
        if lh.grad_norm is not None and not math.isfinite(lh.grad_norm):
            what.append("non-finite gradient")
        if lh.weight_norm is not None and not math.isfinite(lh.weight_norm):
            what.append("non-finite weights")
        if what:
            return [Finding(NONFINITE, lh.layer, f"step {rec.step}: {lh.layer} has {', '.join(what)}")]
    if rec.loss is not None and not math.isfinite(rec.loss):
        return [Finding(NONFINITE, None, f"step {rec.step}: loss is {rec.loss}")]
    return []


def check_exploding(rec: HealthRecord, prev: HealthRecord | None, th: Thresholds) -> list[Finding]:
    """The loss far above chance, a step that rewrites a layer's weights, or a gradient norm that jumps.

    The first ``warmup_steps`` are exempt from the update-ratio rule: a layer initialised near zero (std 1e-4)
    legitimately grows by many times its norm in its first steps. A growing gradient only counts where the
    gradient is not negligible to begin with (a vanishing 1e-18 that becomes 1e-15 is not an explosion).
    """
    out: list[Finding] = []
    if rec.loss is not None and rec.num_classes >= 2 and _finite(rec.loss):
        chance = chance_loss(rec.num_classes)
        if rec.loss > th.explode_loss * chance:
            out.append(
                Finding(
                    EXPLODING,
                    None,
                    f"step {rec.step}: loss {rec.loss:.4g} is {rec.loss / chance:.3g}× the chance level "
                    f"ln({rec.num_classes}) = {chance:.4f}",
                )
            )
    top = max((r for lh in rec.layers if (r := relative_grad(lh)) is not None), default=0.0)
    for lh in rec.layers:
        ur = lh.update_ratio
        if rec.step >= th.warmup_steps and ur is not None and _finite(ur) and ur > th.explode_update_ratio:
            out.append(
                Finding(
                    EXPLODING,
                    lh.layer,
                    f"step {rec.step}: one step changed {lh.layer}'s weights by {ur:.3g}× their norm "
                    f"(‖Δw‖/‖w‖ > {th.explode_update_ratio:g})",
                )
            )
            continue
        before = prev.layer(lh.layer) if prev is not None else None
        if before is None or prev is None:
            continue
        g0, g1, r0, r1 = before.grad_norm, lh.grad_norm, relative_grad(before), relative_grad(lh)
        top0 = max((r for b in prev.layers if (r := relative_grad(b)) is not None), default=0.0)
        if (
            r0 is not None
            and r0 >= th.vanish_grad_gap * top0
            and g0 is not None
            and g1 is not None
            and _finite(g0)
            and _finite(g1)
            and g0 > 0
            and g1 / g0 > th.explode_growth
            and r1 is not None
            and r1 >= th.vanish_grad_gap * top
        ):
            out.append(
                Finding(
                    EXPLODING,
                    lh.layer,
                    f"step {rec.step}: {lh.layer}'s gradient norm grew {g1 / g0:.3g}× since step {prev.step} "
                    f"({g0:.3g} → {g1:.3g})",
                )
            )
    return out


def check_vanishing(rec: HealthRecord, th: Thresholds, peak_lr: float | None = None) -> list[Finding]:
    """A layer whose gradient is 0, or ``vanish_grad_gap`` times weaker (relative to its weights) than the
    strongest layer's, or whose weights move by less than ``vanish_update_ratio`` per step while another layer
    moves more (after the momentum warm-up: SGD's first steps are ~1/(1−momentum) times smaller than its steady
    state).

    Updates are proportional to the learning rate (SGD and Adam alike), so when a schedule has lowered it below
    ``peak_lr`` (the highest rate of the run so far) the update threshold is lowered by the same factor: a layer
    whose steps shrank with the rate is annealed, not starved of gradient."""
    rel = {lh.layer: relative_grad(lh) for lh in rec.layers}
    top = max((r for r in rel.values() if r is not None), default=None)
    # When *every* layer moves by less than the threshold, the learning rate is small (a schedule annealed to
    # ~0, as cosine decay ends, or a learning rate set too low), not a gradient that vanishes on its way down:
    # the update criterion only singles out layers that stand still while others move.
    limit = th.vanish_update_ratio
    if peak_lr and peak_lr > 0 and _finite(rec.lr):
        limit *= min(1.0, max(rec.lr, 0.0) / peak_lr)
    updates = [lh.update_ratio for lh in rec.layers if _finite(lh.update_ratio)]
    moving = any(u >= limit for u in updates)  # type: ignore[operator]
    out: list[Finding] = []
    for lh in rec.layers:
        r = rel[lh.layer]
        if lh.grad_norm == 0.0:
            why = "its gradient is exactly 0"
        elif r is not None and top and r < th.vanish_grad_gap * top:
            why = f"‖g‖/‖w‖ = {r:.2g}, {top / r:.2g}× below the strongest layer's {top:.2g}"
        elif (
            rec.step >= th.warmup_steps
            and moving
            and lh.update_ratio is not None
            and _finite(lh.update_ratio)
            and lh.update_ratio < limit
        ):
            why = f"‖Δw‖/‖w‖ = {lh.update_ratio:.2g} per step (< {limit:.2g})"
        else:
            continue
        out.append(Finding(VANISHING, lh.layer, f"step {rec.step}: {lh.layer}'s gradient vanishes: {why}"))
    return out


def learning_unknown(records: list[HealthRecord]) -> str | None:
    """Why ``records`` cannot show that the network learns, or ``None`` when the loss fell between the first
    and the last measurement. Finding no problem is not the same as learning: one measured step (``--steps 1``,
    or ``--every`` longer than the run) compares the loss with itself, and a loss that did not fall shows no
    learning whatever the other rules say."""
    losses = [(r.step, r.loss) for r in records if r.loss is not None and math.isfinite(r.loss)]
    if len(losses) < 2:
        counted = (
            f"one health step (step {records[0].step})"
            if len(records) == 1
            else f"{len(records)} health steps, {len(losses)} with a loss"
        )
        return f"{counted}: a trend needs two; train longer or measure more often (doctor --every, train --health-every)"
    (s0, l0), (s1, l1) = losses[0], losses[-1]
    if l1 >= l0:
        return f"the loss has not fallen between steps {s0} and {s1}"
    return None


def check_record(
    rec: HealthRecord, prev: HealthRecord | None, th: Thresholds, peak_lr: float | None = None
) -> list[Finding]:
    """Every live rule on one health record. Non-finite values short-circuit the rest (they are meaningless).
    ``peak_lr``: the highest learning rate of the run up to this record (see :func:`check_vanishing`)."""
    bad = check_nonfinite(rec)
    if bad:
        return bad
    return [
        *check_stuck(rec, th),
        *check_exploding(rec, prev, th),
        *check_vanishing(rec, th, peak_lr),
        *check_dead(rec, th),
    ]


# The flags named in a remedy are `alexnet train`'s (the doctor's probe takes --lr, --optimizer, --init and --bias).
REMEDIES: dict[str, str] = {
    "init_scale": (
        "Initialise for signal propagation: He et al. 2015 ('Delving Deep into Rectifiers', §2.2) derive "
        "std = sqrt(2 / fan_in) for ReLU networks (torch.nn.init.kaiming_normal_; `alexnet train --init "
        "kaiming`); a fixed N(0, 0.01) shrinks the signal layer after layer and only trains with the paper's "
        "schedule of ~90 epochs over 5–6 days (AlexNet §5) — Simonyan & Zisserman 2015 (VGG, §3.1) and Glorot & "
        "Bengio 2010 report the same stall."
    ),
    "bias_one": (
        "Initialise the non-zero biases to 0.1, not 1 (`alexnet train --bias-init 0.1`): Caffe's bvlc_alexnet "
        "model notes that biases of 1 'gave flat loss' and that 0.1 was 'found necessary for training' "
        "(BVLC/caffe models/bvlc_alexnet). With tiny weights, a bias of 1 makes every unit output ≈1 whatever "
        "the image."
    ),
    "lr_high": (
        "Lower the learning rate (×0.1), and ramp it up over the first epochs: 'gradual warm-up' (Goyal et al. "
        "2017, 'Accurate, Large Minibatch SGD', §2.2); clipping the gradient norm (Pascanu et al. 2013) stops "
        "single bad steps (`alexnet train --lr`, `--warmup-steps`, `--grad-clip`). AlexNet's lr 0.01 (§5) "
        "assumes batch 128 with momentum 0.9."
    ),
    "lr_low": (
        "The updates are too small to learn in this budget: raise the learning rate, or use an adaptive "
        "optimiser (Adam, Kingma & Ba 2015; AdamW, Loshchilov & Hutter 2019) at lr 1e-4–1e-3 (`alexnet train "
        "--lr`, `--optimizer adamw`) — but first fix the initialisation if early layers' gradients are orders "
        "of magnitude below the last layer's."
    ),
    "dead_relu": (
        "Dead ReLUs never recover (their gradient is 0): lower the learning rate (a large step can push a "
        "unit's bias permanently negative), give ReLU layers a small positive bias (AlexNet §5 uses 1 in "
        "conv2/4/5 and fc6/7 'to provide the ReLUs with positive inputs'; 0.1 is safer), or use He "
        "initialisation (He et al. 2015) / leaky ReLUs (Maas et al. 2013; not a model option here) "
        "(`alexnet train --lr`, `--bias-init 0.1`, `--init kaiming`)."
    ),
    "nonfinite": (
        "A NaN/inf appeared: lower the learning rate and add warm-up (Goyal et al. 2017, §2.2), clip the "
        "gradient norm (Pascanu et al. 2013), and check the input batch for NaN/inf pixels (`alexnet train "
        "--lr`, `--warmup-steps`, `--grad-clip`)."
    ),
    "lrn_inactive": (
        "AlexNet §3.3 chose k=2, n=5, α=1e-4, β=0.75 for activations computed from raw 0–255 pixels; "
        "with inputs normalised to unit variance (or α divided by n, Caffe's convention, applied on top of "
        "constants already meant for α·Σ) the sum α·Σa² is negligible and LRN is just a constant scale k^-β. "
        "Harmless for training, but not the paper's normalisation: feed 0–255 inputs (Caffe-style "
        "preprocessing: `alexnet train --normalize mean` or `image`), or check the model's LRN convention "
        "(alpha_over_size)."
    ),
    "lrn_dominant": (
        "The LRN denominator is far above k: α·Σa² dominates and LRN divides every activation by a large "
        "number (typically α not divided by n where constants assume Caffe's α/n, or 0–255 inputs with a "
        "larger α). Check the LRN convention (AlexNet §3.3: α multiplies the sum; Caffe: α/n)."
    ),
}
