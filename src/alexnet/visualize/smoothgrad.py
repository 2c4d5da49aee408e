"""SmoothGrad: a class's sensitivity map averaged over noisy copies of the image.

Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise" (2017). The gradient of a
class score with respect to the image (Simonyan et al.'s map, :func:`~alexnet.visualize.deconvnet.class_projection`)
fluctuates sharply from pixel to pixel; SmoothGrad (§3) averages it over ``n`` copies of the image with Gaussian
noise added,

    M̂_c(x) = 1/n Σ_{k=1}^{n} M_c(x + N(0, σ²))

with the noise level σ / (x_max − x_min) at 10–20 % and n ≈ 50 ("diminishing returns" beyond, §4.2). The same
averaging sharpens the other methods' maps (§4.4): ``method`` is ``"gradient"`` (the paper's own), ``"guided"``
(guided backpropagation), ``"deconvnet"`` (ZF's rules through the classifier) or ``"integrated"`` (integrated
gradients, :mod:`alexnet.visualize.integrated`). Two later statistics of the same noisy maps are here as Captum's
``NoiseTunnel`` has them (``statistic``): ``"smoothgrad_sq"``, the mean of the squared maps (Hooker et al., NeurIPS
2019), and ``"vargrad"``, their variance (Adebayo et al., ICLR 2018 workshop).

σ is relative to each image's own range in the model's input space (its normalised values, whatever the
model's preprocessing). The noise is drawn on the CPU from ``seed``, each image's copies in turn as one call for
all of them would draw them (:func:`_noise`), so a result is the same on every device and for every
``batch_size``; with one image it is also Captum's draw after ``torch.manual_seed(seed)`` (the tests compare with
``NoiseTunnel``).

For display (:func:`magnitude`) the map's absolute values are summed over the colours and capped at their 99th
percentile, as the paper's figures are drawn (§4.1: "absolute value", "capping outlying values").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import evaluating
from alexnet.visualize.deconvnet import RULES, class_projection, class_targets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from alexnet.inputs import Prepared

STATISTICS: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")
METHODS: tuple[str, ...] = (*RULES, "integrated")


@dataclass
class Smoothed:
    """SmoothGrad of a batch, on the CPU: ``attributions`` N×3×H×W (the ``statistic`` of the noisy maps, in the input's
    channel order), ``targets`` N, ``sigmas`` N (each image's noise σ in input units)."""

    attributions: torch.Tensor
    targets: torch.Tensor
    sigmas: torch.Tensor
    method: str
    statistic: str
    samples: int
    noise: float
    seed: int


def check_settings(method: str, statistic: str, samples: int, noise: float) -> None:
    """:class:`SelectionError` for a method, statistic, sample count or noise level :func:`smoothgrad` cannot take."""
    if method not in METHODS:
        raise SelectionError(f"unknown method {method!r}; choose {', '.join(METHODS)}")
    if statistic not in STATISTICS:
        raise SelectionError(f"unknown statistic {statistic!r}; choose {', '.join(STATISTICS)}")
    if samples < 1:
        raise SelectionError(f"samples must be at least 1, not {samples}")
    if not 0 <= noise < float("inf"):  # NaN and infinity too
        raise SelectionError(f"the noise level must be a finite number ≥ 0, not {noise}")


def noise_sigmas(images: torch.Tensor, noise: float) -> torch.Tensor:
    """σ per image (N×3×H×W → N): ``noise`` × the image's range in input units (§4.2's noise level)."""
    flat = images.flatten(1)
    return (flat.amax(1) - flat.amin(1)) * noise


def _noise(
    generator: torch.Generator, samples: int, shape: torch.Size, sigma: torch.Tensor, batch_size: int
) -> Iterator[torch.Tensor]:
    """The copies' noise, ``batch_size`` copies at a time. It is drawn 16 copies at a time: torch fills normal
    samples 16 at a time, so whole 16-copy blocks in turn draw exactly what one call for all the copies would (and
    Captum's one call does), whatever the batch size, while only a batch and a block are held."""
    held = torch.empty((0, *shape))
    drawn = 0
    while drawn < samples or len(held):
        while len(held) < batch_size and drawn < samples:
            block = min(16, samples - drawn)
            held = torch.cat([held, torch.randn((block, *shape), generator=generator) * sigma])
            drawn += block
        yield held[:batch_size]
        held = held[batch_size:]


def smoothgrad(
    model: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    method: str = "gradient",
    samples: int = 50,
    noise: float = 0.15,
    statistic: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = "smoothgrad",
    seed: int = 0,
    batch_size: int = 32,
    *,
    steps: int = 20,
    baseline: str | torch.Tensor = "black",
    output: Literal["probability", "score"] = "probability",
) -> Smoothed:
    """SmoothGrad (module docstring) of a normalised batch N×3×H×W (or one 3×H×W image) for class ``target`` (one
    for all images, one per image, or by default each image's top class on the image without noise): ``samples``
    noisy copies per image with σ = ``noise`` × the image's range, ``batch_size`` copies a pass. ``steps``,
    ``baseline`` and ``output`` are integrated gradients' (``method="integrated"``; its right Riemann sum). Runs
    on the model's device in eval mode."""
    from alexnet.visualize.integrated import integrated_gradients

    check_settings(method, statistic, samples, noise)
    if batch_size < 1:
        raise SelectionError(f"batch size must be at least 1, not {batch_size}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    device = next(model.parameters()).device
    x = images.to(device)
    with evaluating(model), torch.no_grad():
        targets = class_targets(target, model(x))
    generator = torch.Generator().manual_seed(seed)
    sigmas = noise_sigmas(x, noise)
    # per image the maps' mean and sum of squared deviations, merged chunk by chunk (Chan, Golub & LeVeque's
    # pairwise update): the variance never comes out below 0, as E[a²] − E[a]² can in floating point
    mean, deviations = torch.zeros_like(x), torch.zeros_like(x)
    for i in range(len(x)):
        sigma = torch.tensor(float(sigmas[i]), dtype=torch.float32)
        draws = _noise(generator, samples, x.shape[1:], sigma, batch_size)
        for start, chunk in zip(range(0, samples, batch_size), draws, strict=True):
            noisy = x[i] + chunk.to(x)
            if method == "integrated":
                maps = integrated_gradients(
                    model, noisy, int(targets[i]), baseline, steps, "riemann_right", output, batch_size
                ).attributions
            else:
                maps = class_projection(model, noisy, int(targets[i]), method).images
            maps = maps.to(x)
            seen, new = start, len(maps)
            chunk_mean = maps.mean(0)
            delta = chunk_mean - mean[i]
            mean[i] += delta * (new / (seen + new))
            deviations[i] += ((maps - chunk_mean) ** 2).sum(0) + delta * delta * (seen * new / (seen + new))
    variance = deviations / samples
    stat = {"smoothgrad": mean, "smoothgrad_sq": variance + mean * mean, "vargrad": variance}[statistic]
    return Smoothed(stat.cpu(), targets.cpu(), sigmas.cpu(), method, statistic, samples, noise, seed)


def magnitude(attributions: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """A map (3×H×W) for display, H×W in [0, 1]: its absolute values summed over the colours, from their least
    to their ``percentile``-th percentile, above it capped at 1 (§4.1)."""
    summed = np.abs(attributions).sum(0)
    low, high = float(summed.min()), float(np.percentile(summed, percentile))
    return np.clip((summed - low) / ((high - low) or 1.0), 0.0, 1.0)


def plot_smoothgrad(
    image: np.ndarray, single: np.ndarray, smoothed: np.ndarray, title: str, labels: tuple[str, str]
) -> Figure:
    """The network's input crop (H×W×3, 0–1), the map of one pass without noise and the smoothed map (3×H×W
    each), both drawn by :func:`magnitude` in grey: the paper's side-by-side comparison."""
    from alexnet.visualize.plot import new_figure

    fig = new_figure(15, 5.3)
    ax0, ax1, ax2 = fig.subplots(1, 3)
    ax0.imshow(image)
    ax0.set_title(title)
    for ax, values, label in ((ax1, single, labels[0]), (ax2, smoothed, labels[1])):
        ax.imshow(magnitude(values), cmap="gray", vmin=0, vmax=1)
        ax.set_title(label)
    for ax in (ax0, ax1, ax2):
        ax.axis("off")
    return fig


def smoothgrad_figure(
    model: AlexNetFamily,
    prepared: Prepared,
    title: str,
    target: int | None = None,
    method: str = "gradient",
    samples: int = 50,
    noise: float = 0.15,
    statistic: Literal["smoothgrad", "smoothgrad_sq", "vargrad"] = "smoothgrad",
    seed: int = 0,
    batch_size: int = 32,
    **integrated: Any,
) -> tuple[Smoothed, torch.Tensor, Figure]:
    """One prepared image's SmoothGrad (:func:`smoothgrad`), the method's map of one pass without noise (3×H×W)
    and the figure of both (:func:`plot_smoothgrad`), titled with the class's name. ``integrated``: ``steps``,
    ``baseline``, ``output`` for ``method="integrated"``."""
    from alexnet.predict import labels_of
    from alexnet.visualize.plot import uint8_to_float

    x = prepared.tensor
    res = smoothgrad(model, x, target, method, samples, noise, statistic, seed, batch_size, **integrated)
    c = int(res.targets[0])
    single = smoothgrad(model, x, c, method, 1, 0.0, "smoothgrad", batch_size=batch_size, **integrated)
    fig = plot_smoothgrad(
        uint8_to_float(prepared.crop),
        single.attributions[0].numpy(),
        res.attributions[0].numpy(),
        f"{title}: {labels_of(model)[c]} ({c})",
        (f"{method}, one pass", f"{statistic} of {method}, {samples} samples, {noise:.0%} noise"),
    )
    return res, single.attributions[0], fig
