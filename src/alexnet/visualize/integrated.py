"""Integrated gradients: which pixels a class's output owes to the image, against a baseline image.

Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks" (ICML 2017). For an input ``x``, a baseline
``x'`` and the network's output ``F`` for the class,

    IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂F(x' + α(x − x')) / ∂x_i dα          (§3, Eq. 1)

which satisfies *completeness* (§3, Proposition 1): Σ_i IG_i(x) = F(x) − F(x'). The integral is a weighted sum
of gradients along the straight path (§5: ``Σ_k ∂F(x' + (k/m)(x − x'))/∂x_i · 1/m``, "somewhere between 20 and
300 steps" bring the sum within 5 % of ``F(x) − F(x')``); ``delta`` reports how far each image's sum is from it.
The baseline for images is the black image (§6); ``baseline="mean"`` takes the model's mean instead (its zero
input), or pass a tensor.

``F`` is the class's probability after the softmax (default: §1's Definition 1 takes the network to [0, 1]) or
its score before it (``output="score"``, what the saliency maps and Grad-CAM here explain). The model's input
space is the normalised one, so the black image is the model's own preprocessing of a black picture (for a Caffe
model, BGR ×255 minus its mean image).

Methods: ``riemann_right`` (§5's sum, default), ``riemann_left``, ``riemann_middle``, ``riemann_trapezoid`` and
``gausslegendre`` (Gauss–Legendre nodes on [0, 1]). Captum's ``IntegratedGradients`` computes the same numbers for
the first three and Gauss–Legendre (tested); its trapezoid weighs the ``n`` points by 1/n (ends halved), which
sum to 1 − 1/n, where the trapezoid rule on ``n`` points weighs them by 1/(n − 1): here the latter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import frozen
from alexnet.visualize.deconvnet import class_targets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from alexnet.inputs import Prepared

Method = Literal["riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
METHODS: tuple[str, ...] = (
    "riemann_right",
    "riemann_left",
    "riemann_middle",
    "riemann_trapezoid",
    "gausslegendre",
)
BASELINES = ("black", "mean")


@dataclass
class Integrated:
    """Integrated gradients of a batch, on the CPU: ``attributions`` N×3×H×W (Eq. 1, in the input's channel order),
    ``targets`` N, ``outputs`` F(x) and ``baseline_outputs`` F(x') (N each), ``delta`` N: Σ attributions −
    (F(x) − F(x')), completeness's error (Proposition 1)."""

    attributions: torch.Tensor
    targets: torch.Tensor
    outputs: torch.Tensor
    baseline_outputs: torch.Tensor
    delta: torch.Tensor
    output: str
    method: str
    steps: int


def nodes(method: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, w): the points on [0, 1] and their weights, Σ w = 1, for ``steps`` points by ``method``."""
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
    least = 2 if method == "riemann_trapezoid" else 1
    if steps < least:
        raise SelectionError(f"{method} needs at least {least} steps, not {steps}")
    n = steps
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy((1 + x) / 2), torch.from_numpy(w / 2)
    weights = torch.full((n,), 1.0 / n, dtype=torch.float64)
    if method == "riemann_right":
        alphas = torch.arange(1, n + 1, dtype=torch.float64) / n
    elif method == "riemann_left":
        alphas = torch.arange(0, n, dtype=torch.float64) / n
    elif method == "riemann_middle":
        alphas = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    else:
        alphas = torch.linspace(0, 1, n, dtype=torch.float64)
        weights = torch.full((n,), 1.0 / (n - 1), dtype=torch.float64)
        weights[[0, -1]] /= 2
    return alphas, weights


def black_image(model: AlexNetFamily) -> torch.Tensor:
    """The model's input (3×S×S) for a black picture: its own preprocessing of an all-zero uint8 image (§6's
    baseline)."""
    from alexnet.predict import input_transform, preprocessing_of

    side = preprocessing_of(model).resize
    return input_transform(model)(torch.zeros(3, side, side, dtype=torch.uint8))


def _baseline(model: AlexNetFamily, baseline: str | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        b = baseline
    elif baseline == "black":
        b = black_image(model)
    elif baseline == "mean":
        b = torch.zeros(like.shape[1:])  # the mean (pixel or image) is the normalised input's zero
    else:
        raise SelectionError(f"unknown baseline {baseline!r}; choose {', '.join(BASELINES)} or pass a tensor")
    b = b.to(like)
    if b.shape not in (like.shape, like.shape[1:]):
        raise SelectionError(f"the baseline is {tuple(b.shape)}; the images are {tuple(like.shape)}")
    return b.expand_as(like)


def integrated_gradients(
    model: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    baseline: str | torch.Tensor = "black",
    steps: int = 50,
    method: str = "riemann_right",
    output: Literal["probability", "score"] = "probability",
    batch_size: int = 32,
) -> Integrated:
    """Integrated gradients (module docstring) of a normalised batch N×3×H×W (or one 3×H×W image) for class
    ``target`` (one for all images, one per image, or by default each image's top class), along ``steps`` points
    of the straight path from ``baseline``; the path's images go through the model ``batch_size`` at a time. Runs
    on the model's device in eval mode with its parameters frozen (both restored after)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    if output not in ("probability", "score"):
        raise SelectionError(f"unknown output {output!r}; choose probability or score")
    if batch_size < 1:
        raise SelectionError(f"batch size must be at least 1, not {batch_size}")
    alphas, weights = nodes(method, steps)
    device = next(model.parameters()).device
    x = images.to(device)
    x0 = _baseline(model, baseline, x)

    def f(batch: torch.Tensor) -> torch.Tensor:  # N×classes: F for every class
        logits = model(batch)
        return torch.softmax(logits, 1) if output == "probability" else logits

    with frozen(model), torch.inference_mode(False):
        with torch.no_grad():
            ends = f(torch.cat([x, x0]))
        targets = class_targets(target, ends[: len(x)])
        total = torch.zeros_like(x)
        for i in range(len(x)):
            path = x[i] - x0[i]
            for start in range(0, len(alphas), batch_size):
                a = alphas[start : start + batch_size].to(x)
                w = weights[start : start + batch_size].to(x)
                points = (x0[i] + a[:, None, None, None] * path).requires_grad_(True)
                with torch.enable_grad():
                    chosen = f(points)[:, int(targets[i])]
                    (grads,) = torch.autograd.grad(chosen.sum(), points)
                total[i] += (w[:, None, None, None] * grads).sum(0)
    attributions = (x - x0) * total  # Eq. 1
    rows = torch.arange(len(x))
    outputs, base = ends[: len(x)][rows, targets], ends[len(x) :][rows, targets]
    delta = attributions.flatten(1).sum(1) - (outputs - base)
    return Integrated(
        attributions.cpu(),
        targets.cpu(),
        outputs.cpu(),
        base.cpu(),
        delta.cpu(),
        output,
        method,
        steps,
    )


def magnitude_overlay(image: np.ndarray, attributions: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """The attributions' magnitude (3×H×W, summed over colours, scaled to its maximum) in the inferno colour map
    over the darkened crop (H×W×3, 0–1): one H×W×3 array (the figure's third panel, the browser's picture)."""
    from matplotlib import colormaps

    magnitude = np.abs(attributions).sum(0)
    colours = colormaps["inferno"](magnitude / (float(magnitude.max()) or 1.0))[..., :3]
    return ((1 - alpha) * 0.35 * image + alpha * colours).astype(np.float32)


def plot_integrated(image: np.ndarray, attributions: np.ndarray, title: str, label: str) -> Figure:
    """The network's input crop (H×W×3, 0–1), the attributions (3×H×W, either channel order) summed over the
    colour channels (red where they raise the output, blue where they lower it, symmetric scale) and their
    magnitude laid over the crop."""
    from alexnet.visualize.plot import new_figure

    signed = attributions.sum(0)
    peak = float(np.abs(signed).max()) or 1.0
    fig = new_figure(15, 5.3)
    ax0, ax1, ax2 = fig.subplots(1, 3)
    ax0.imshow(image)
    ax0.set_title(title)
    ax1.imshow(signed, cmap="RdBu_r", vmin=-peak, vmax=peak)
    ax1.set_title(label)
    ax2.imshow(magnitude_overlay(image, attributions))
    ax2.set_title("|attribution| over the image")
    for ax in (ax0, ax1, ax2):
        ax.axis("off")
    return fig


def integrated_figure(
    model: AlexNetFamily,
    prepared: Prepared,
    title: str,
    target: int | None = None,
    baseline: str = "black",
    steps: int = 50,
    method: str = "riemann_right",
    output: Literal["probability", "score"] = "probability",
    batch_size: int = 32,
) -> tuple[Integrated, Figure]:
    """One prepared image's integrated gradients (:func:`integrated_gradients`) and its figure
    (:func:`plot_integrated`), labelled with the class's name and its output at the image and the baseline."""
    from alexnet.predict import labels_of
    from alexnet.visualize.plot import uint8_to_float

    res = integrated_gradients(model, prepared.tensor, target, baseline, steps, method, output, batch_size)
    c = int(res.targets[0])
    of = "p" if output == "probability" else "score"
    label = (
        f"{labels_of(model)[c]} ({c}): {of} {float(res.outputs[0]):.3g} ({baseline} baseline "
        f"{float(res.baseline_outputs[0]):.3g})"
    )
    attributions = res.attributions[0].numpy()
    return res, plot_integrated(uint8_to_float(prepared.crop), attributions, title, label)
