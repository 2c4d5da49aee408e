"""Region perturbation: which attribution map finds what the class's score depends on?

Samek, Binder, Montavon, Lapuschkin & Müller, "Evaluating the visualization of what a deep neural network has
learned" (IEEE TNNLS 2017). A map orders the image's regions from most to least relevant ("most relevant first",
MoRF); the regions are destroyed in that order, each replaced by uniform noise, and the class's output is read
after each step: x⁽⁰⁾ = x, x⁽ᵏ⁾ = x⁽ᵏ⁻¹⁾ with region r_k perturbed. A map that points at the evidence makes the
output fall fast, so the paper scores a method by the area over the perturbation curve,

    AOPC = 1/(L+1) ⟨ Σ_{k=0}^{L} f(x⁽⁰⁾) − f(x⁽ᵏ⁾) ⟩

averaged over images (⟨·⟩), and compares it with a random order of the same regions. In their experiments (9×9
regions, uniform noise; ImageNet among the data sets) LRP's maps made the output fall fastest, ahead of the
deconvnet's and of the gradient's (sensitivity analysis).

Here the regions are the tiles of a ``region``×``region`` grid centred on the image (227 px: 25×25 tiles of
9×9, a pixel left at each border), ranked by the sum of the map's pixel scores inside them; the noise is a
uniform random picture (each colour of each pixel 0–255), put through the model's own preprocessing, so every
perturbed image is one a camera could have taken. A pixel's score is, for the decompositions (LRP, integrated
gradients), its colours' sum (evidence for the class ranks first, against it last); for the gradient-like maps,
whose sign says nothing about the class, the largest magnitude over its colours (Simonyan et al.'s saliency
map); Grad-CAM's map as it is. The methods come from :mod:`.attributions`, ``"random"`` is the paper's baseline
(a random order, drawn from ``seed``), and any other map can be scored with :func:`region_perturbation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import evaluating
from alexnet.visualize import attributions

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHODS: tuple[str, ...] = ("random", *attributions.METHODS)


@dataclass
class Perturbation:
    """Region perturbation of a batch, on the CPU: ``outputs`` N × methods × (steps + 1), the class's output
    after each step (step 0 the image itself); ``aopc`` N × methods; ``targets`` N. ``asked``: the images asked
    for; N is fewer when ``stop`` ended the run early (the images done kept)."""

    methods: list[str]
    outputs: torch.Tensor
    aopc: torch.Tensor
    targets: torch.Tensor
    region: int
    steps: int
    output: str
    seed: int
    asked: int = 0

    @property
    def complete(self) -> bool:
        return self.aopc.shape[0] >= self.asked

    def mean_aopc(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per method: the AOPC averaged over the images, and the standard error of that mean (0 for one image)."""
        n = self.aopc.shape[0]
        spread = self.aopc.std(0, unbiased=True) / n**0.5 if n > 1 else torch.zeros(len(self.methods))
        return self.aopc.mean(0), spread


def check_settings(
    methods: Sequence[str],
    region: int,
    steps: int,
    batch_size: int = 1,
    own_maps: bool = False,
    samples: int = 1,
    integration_steps: int = 1,
    output: str = "score",
) -> list[str]:
    """The methods (each once, in order); :class:`SelectionError` for an unknown one, none (unless there are
    ``own_maps``), a region under 1 px, a step count, batch size, SmoothGrad's sample count or integrated
    gradients' point count under 1, or an output other than the score or the probability."""
    chosen = attributions.check_methods(methods, METHODS) if methods or not own_maps else []
    if "smoothgrad" in chosen and samples < 1:
        raise SelectionError(f"SmoothGrad's samples must be at least 1, not {samples}")
    if "integrated" in chosen and integration_steps < 1:
        raise SelectionError(f"integrated gradients' steps must be at least 1, not {integration_steps}")
    if batch_size < 1:
        raise SelectionError(f"the batch size must be at least 1, not {batch_size}")
    if region < 1:
        raise SelectionError(f"the region must be at least 1 pixel, not {region}")
    if steps < 1:
        raise SelectionError(f"steps must be at least 1, not {steps}")
    if output not in ("score", "probability"):
        raise SelectionError(f"unknown output {output!r}; choose score or probability")
    return chosen


def tiles(height: int, width: int, region: int) -> tuple[int, int, int, int]:
    """(rows, columns, top, left) of the region grid centred on an image; :class:`SelectionError` when not even
    one tile fits."""
    rows, cols = height // region, width // region
    if rows < 1 or cols < 1:
        raise SelectionError(f"a {region}×{region} region does not fit a {height}×{width} image")
    return rows, cols, (height - rows * region) // 2, (width - cols * region) // 2


def pixel_scores(maps: torch.Tensor, methods: Sequence[str]) -> torch.Tensor:
    """N × methods × 3 × H × W maps → N × methods × H × W pixel scores (module docstring): the colours' sum for
    the decompositions, the largest magnitude otherwise (Grad-CAM's map is its first colour, the others 0)."""
    scores = maps.abs().amax(2)
    for i, m in enumerate(methods):
        if m in attributions.ADDITIVE:
            scores[:, i] = maps[:, i].sum(1)
        elif m == "gradcam":
            scores[:, i] = maps[:, i, 0]
    return scores


def region_order(scores: torch.Tensor, region: int, shuffle: torch.Tensor | None = None) -> torch.Tensor:
    """H×W pixel scores → the grid's tiles (row-major indices) from the highest summed score to the lowest. Equal
    sums (a coarse map's plateaus: Grad-CAM's upsampled few pixels) come in the order of ``shuffle``, a
    permutation of the tiles (random: a plateau is then not read top-left first), else in the grid's order."""
    h, w = scores.shape[-2:]
    rows, cols, top, left = tiles(h, w, region)
    grid = scores[top : top + rows * region, left : left + cols * region].double()
    sums = grid.unflatten(0, (rows, region)).unflatten(-1, (cols, region)).sum((1, 3)).flatten()
    shuffle = torch.arange(len(sums)) if shuffle is None else shuffle
    return shuffle[torch.sort(sums[shuffle], descending=True, stable=True).indices]


def perturbed(
    x: torch.Tensor, noise: torch.Tensor, order: torch.Tensor, region: int, steps: int
) -> torch.Tensor:
    """The sequence x⁽⁰⁾ … x⁽ˢᵗᵉᵖˢ⁾ ((steps + 1) × 3 × H × W) of one image ``x``: step k has the first k tiles of
    ``order`` replaced by ``noise``'s pixels there."""
    h, w = x.shape[-2:]
    _, cols, top, left = tiles(h, w, region)
    out = x.expand(steps + 1, *x.shape).clone()
    for k, tile in enumerate(order[:steps].tolist(), start=1):
        r, c = divmod(tile, cols)
        ys, xs = (
            slice(top + r * region, top + (r + 1) * region),
            slice(left + c * region, left + (c + 1) * region),
        )
        out[k:, :, ys, xs] = noise[:, ys, xs]
    return out


def noise_images(model: AlexNetFamily, n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """``n`` uniform random pictures (each colour of each pixel 0–255, drawn on the CPU from ``seed``) as the
    model's inputs: its own preprocessing of them."""
    from alexnet.predict import normalize_crop

    g = torch.Generator().manual_seed(seed)
    pictures = torch.randint(0, 256, (n, 3, *size), generator=g, dtype=torch.uint8)
    return torch.stack([normalize_crop(model, p) for p in pictures])


def _outputs(
    model: AlexNetFamily, batch: torch.Tensor, target: int, output: str, batch_size: int
) -> torch.Tensor:
    device = next(model.parameters()).device
    values = []
    for chunk in batch.split(batch_size):
        logits = model(chunk.to(device))
        values.append((logits.softmax(1) if output == "probability" else logits)[:, target].double().cpu())
    return torch.cat(values)


def region_perturbation(
    model: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    methods: Sequence[str] = METHODS,
    maps: dict[str, torch.Tensor] | None = None,
    region: int = 9,
    steps: int = 100,
    output: Literal["score", "probability"] = "score",
    seed: int = 0,
    batch_size: int = 64,
    *,
    samples: int = 50,
    integration_steps: int = 50,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> Perturbation:
    """Samek et al.'s MoRF region perturbation (module docstring) of a normalised batch N×3×H×W (or one 3×H×W
    image) for class ``target`` (default each image's top class): each of ``methods`` (and each of ``maps``, one's
    own N×H×W pixel scores by name) orders the ``region``×``region`` tiles, ``steps`` of them are destroyed in
    turn, the class's ``output`` (its ``"score"`` before the softmax, or its ``"probability"``) is read after
    each. The noise and the random order are drawn from ``seed``: every method destroys the same noise into the
    same image. ``samples`` and ``integration_steps`` are SmoothGrad's and integrated gradients'. ``stop`` is
    asked after each image (Ctrl-C in the command, :class:`alexnet.stopping.StopSignals`): when it says so, the
    run ends with the images done."""
    from tqdm import tqdm

    from alexnet.visualize.deconvnet import class_targets

    own = dict(maps or {})
    chosen = check_settings(methods, region, steps, batch_size, bool(own), samples, integration_steps, output)
    clash = [name for name in own if name in chosen]
    if clash:
        raise SelectionError(f"{clash[0]!r} is both a method and a map of your own; rename the map")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    n, _, h, w = images.shape
    rows, cols, _, _ = tiles(h, w, region)
    steps = min(steps, rows * cols)
    for name, m in own.items():
        if tuple(m.shape) != (n, h, w):
            raise SelectionError(f"map {name!r} is {tuple(m.shape)}; the images need {n}×{h}×{w}")
    device = next(model.parameters()).device
    x = images.to(device)
    with evaluating(model):
        targets = class_targets(target, model(x)).cpu()
    computed = [m for m in chosen if m != "random"]
    names = [*chosen, *own]
    g = torch.Generator().manual_seed(seed)
    randoms = torch.stack([torch.randperm(rows * cols, generator=g) for _ in range(n)])
    # the order of a map's tied tiles, one per image for all its maps
    ties = torch.stack([torch.randperm(rows * cols, generator=g) for _ in range(n)])
    noise = noise_images(model, n, (h, w), seed).to(images.dtype)
    outputs = torch.zeros(n, len(names), steps + 1, dtype=torch.float64)
    done = 0
    with tqdm(total=n, desc="region perturbation", disable=not progress) as bar:
        for i in range(n):
            # One image's maps at a time: memory for one, and each map that image's own (SmoothGrad draws its
            # noise from the seed for the image alone, not after the images before it).
            scores = {name: m[i].detach().float().cpu() for name, m in own.items()}
            if computed:
                maps = attributions.class_maps(
                    model, x[i : i + 1], targets[i : i + 1].to(device), computed, samples, integration_steps
                )
                scores.update(zip(computed, pixel_scores(maps, computed)[0], strict=True))
            with evaluating(model):
                for j, name in enumerate(names):
                    order = randoms[i] if name == "random" else region_order(scores[name], region, ties[i])
                    sequence = perturbed(images[i].cpu(), noise[i], order, region, steps)
                    outputs[i, j] = _outputs(model, sequence, int(targets[i]), output, batch_size)
            done = i + 1
            bar.update()
            if stop is not None and stop():
                break
    outputs, targets = outputs[:done], targets[:done]
    aopc = (outputs[..., :1] - outputs).mean(-1)
    return Perturbation(names, outputs, aopc, targets, region, steps, output, seed, asked=n)


def plot_perturbation(res: Perturbation, title: str) -> Figure:
    """The mean fall of the class's output, f(x⁽⁰⁾) − f(x⁽ᵏ⁾), against the regions destroyed, one line per method
    with its AOPC in the legend (Samek et al.'s perturbation curves); random dashed."""
    from alexnet.visualize.plot import new_figure

    fig = new_figure(8, 5.3)
    ax = fig.subplots()
    fall = (res.outputs[..., :1] - res.outputs).mean(0).numpy()
    mean, _ = res.mean_aopc()
    k = np.arange(res.steps + 1)
    for j, name in enumerate(res.methods):
        style = "--" if name == "random" else "-"
        ax.plot(k, fall[j], style, label=f"{name} (AOPC {float(mean[j]):.3g})")
    what = "score" if res.output == "score" else "probability"
    ax.set_xlabel(f"{res.region}×{res.region} regions replaced by noise, most relevant first")
    ax.set_ylabel(f"fall of the class's {what}")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def table(res: Perturbation) -> str:
    """The methods by AOPC, highest first, with the standard error over the images; with ``random`` among them,
    each method's AOPC minus random's on the same images and that difference's standard error (paired: the images'
    own spread cancels, so this is the column that says whether a map beats chance)."""
    mean, spread = res.mean_aopc()
    ranked = sorted(range(len(res.methods)), key=lambda j: -float(mean[j]))
    width = max(len(m) for m in res.methods)
    n = res.aopc.shape[0]
    paired = "random" in res.methods and n > 1
    done = f"{n} image(s)" if res.complete else f"the first {n} of {res.asked} images (stopped early)"
    lines = [
        f"region perturbation (MoRF): {res.region}×{res.region} regions, {res.steps} steps, "
        f"{done}, the class's {res.output}",
        f"{'method':<{width}}  {'AOPC':>10}  {'± s.e.':>9}"
        + (f"  {'− random':>10}  {'± s.e.':>9}" if paired else ""),
    ]
    for j in ranked:
        line = f"{res.methods[j]:<{width}}  {float(mean[j]):>10.4g}  {float(spread[j]):>9.2g}"
        if paired:
            d = res.aopc[:, j] - res.aopc[:, res.methods.index("random")]
            line += f"  {float(d.mean()):>+10.3g}  {float(d.std(unbiased=True)) / n**0.5:>9.2g}"
        lines.append(line)
    return "\n".join(lines)
