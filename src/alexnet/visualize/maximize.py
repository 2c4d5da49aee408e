"""Images a unit responds to most: regularised gradient ascent in pixel space ("activation maximisation").

Yosinski, Clune, Nguyen, Fuchs & Lipson, "Understanding Neural Networks Through Deep Visualization" (ICML 2015
Deep Learning Workshop), §3, the DeepVis toolbox's optimised images: from the mean image plus a little noise,
repeat

    x ← r_θ(x + η · ∂a_i(x)/∂x)

where ``a_i`` is one unit's activation — a class's score before the softmax in the last layer, or a unit of a
convolutional feature map (by default its centre, away from the padding's edge effects) — and ``r_θ`` is §3's four
regularisers, applied after each step in this order:

* **L2 decay** ``x ← (1 − θ_decay)·x``: the L2 penalty of Simonyan, Vedaldi & Zisserman's class models (ICLR 2014
  workshop, §2), which keeps a few extreme pixels from dominating;
* **Gaussian blur** of width ``θ_b_width`` every ``θ_b_every`` steps: high frequencies die out;
* **clipping pixels with small norm**: pixels whose norm over the three colour channels is below the
  ``θ_n_pct`` percentile (of this image) are set to zero, i.e. to the mean;
* **clipping pixels with small contribution**: ``|Σ_c x·∂a_i/∂x|`` (the first-order change of the activation were
  the pixel set to zero) below the ``θ_c_pct`` percentile → zero.

``x`` is an RGB image in 0–255 pixel units *minus the mean the model's preprocessing subtracts* (its per-pixel
mean image, AlexNet §2, or its per-channel mean), so zero is the mean image, the decay and the clipping pull
towards it, and every step first puts the pixels back into 0–255, as the authors' toolbox does. The model reads
``x`` through its own preprocessing (channel order, scale, mean, std), differentiably.

:data:`PRESETS` are §3 Table 1's four hyperparameter sets (the regularisers' θ) with the step counts the
authors' toolbox runs each for; the third, "used for most of the images in the paper" (the toolbox's
documentation), is the default. Table 1 gives no step size. The toolbox's are absolute (``constant``: η = 100;
``progress``: η chosen so the linearised activation rises by 2.0 per step), so they depend on how large the
network's activations and their gradients are: tuned on CaffeNet, their constant step of 100 barely moves the
demo model's image (its class scores are of order 1). The default rule, ``rms``, is scale-free instead: each
step changes the pixels by ``lr`` values of 0–255 (root mean square), η = ``lr`` / rms(∂a_i/∂x); each preset's
``lr`` gave its images a similar contrast on the demo model (docs/visualize.md). ``--lr-policy constant --lr
100`` (``progress``) runs the toolbox's own steps, for a CaffeNet imported from Caffe.

A batch optimises one image per unit at once: the network sees each image alone (this family has no batch
statistics), so each image gets the gradient it would get by itself: in float64 the images are identical, bit for
bit (tested); in float32 the kernels of two batch sizes round apart, and a near-tie in a max-pool or ReLU can then
send the ascent another way after a few steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from alexnet.data.preprocess import Preprocessing
from alexnet.data.transforms import Normalize
from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily, fused
from alexnet.models.capture import frozen, trunk_layers, walk

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LrPolicy = Literal["rms", "constant", "progress"]


@dataclass(frozen=True)
class Regularization:
    """One run of Yosinski et al.'s regularised optimisation (§3): ``decay`` θ_decay, ``blur_radius`` θ_b_width
    (pixels, the Gaussian's σ), ``blur_every`` θ_b_every (0: never), ``norm_percentile`` θ_n_pct and
    ``contribution_percentile`` θ_c_pct (0: off), then ``steps`` gradient steps: ``lr_policy`` "rms" moves the
    pixels by ``lr`` values of 0–255 (root mean square) per step; "constant" is η = ``lr``; "progress" the step
    that raises the linearised activation by ``desired_progress``, at most ``lr`` (the toolbox's two rules)."""

    decay: float = 0.0001
    blur_radius: float = 1.0
    blur_every: int = 4
    norm_percentile: float = 0.0
    contribution_percentile: float = 0.0
    steps: int = 1000
    lr: float = 2.0
    lr_policy: LrPolicy = "rms"
    desired_progress: float = 2.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.decay < 1:
            problems.append(f"decay must be in [0, 1), not {self.decay}")
        if self.blur_radius < 0 or self.blur_every < 0:
            problems.append("blur radius and blur interval must be ≥ 0")
        for name in ("norm_percentile", "contribution_percentile"):
            if not 0 <= getattr(self, name) < 100:
                problems.append(f"{name.replace('_', ' ')} must be in [0, 100), not {getattr(self, name)}")
        if self.steps < 1:
            problems.append(f"steps must be at least 1, not {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"the step size must be a positive number, not {self.lr}")
        if self.lr_policy not in ("rms", "constant", "progress"):
            problems.append(f"lr policy must be 'rms', 'constant' or 'progress', not {self.lr_policy!r}")
        if self.lr_policy == "progress" and not self.desired_progress > 0:
            problems.append(f"desired progress must be > 0, not {self.desired_progress}")
        if problems:
            raise SelectionError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Yosinski et al. 2015, Table 1, in its order, with the toolbox's step counts; the rms step sizes are ours (the
# module docstring): preset 2's decay of 0.3 a step needs larger steps for the same contrast.
PRESETS: dict[int, Regularization] = {
    1: Regularization(0.0, 0.5, 4, 50, 0, steps=500, lr=2.0),
    2: Regularization(0.3, 0.0, 0, 20, 0, steps=750, lr=16.0),
    3: Regularization(0.0001, 1.0, 4, 0, 0, steps=1000, lr=2.0),
    4: Regularization(0.0, 0.5, 4, 0, 90, steps=1000, lr=4.0),
}
DEFAULT_PRESET = 3  # "used for most of the images in the paper" (the authors' toolbox documentation)
START_STD = 10.0  # the toolbox's start: the mean image plus N(0, 10²) noise per pixel value


def preset(number: int, **overrides: Any) -> Regularization:
    """Table 1's row ``number`` (1–4), with any field replaced (``steps=200``)."""
    if number not in PRESETS:
        raise SelectionError(
            f"preset {number} does not exist; Table 1 has presets {', '.join(map(str, PRESETS))}"
        )
    return replace(PRESETS[number], **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Maximized:
    """What :func:`maximize` found, one row per unit (``channels[i]``), all on the CPU."""

    layer: str
    channels: list[int]
    unit: tuple[int, int] | None  # (row, col) of a feature map; None for a fully connected layer
    pixels: torch.Tensor  # N×3×S×S RGB in 0–255: the best image of each unit (the highest activation reached)
    inputs: torch.Tensor  # N×3×S×S: the same images as the model reads them
    objective: torch.Tensor  # N×T: the unit's activation at each step taken
    best: torch.Tensor  # N: the highest activation reached
    best_step: torch.Tensor  # N: the step it was reached at
    first_top: torch.Tensor  # N: the first step the unit was the largest of its layer (−1: never)
    stuck: torch.Tensor  # N bool: no gradient at the start (a rectified unit at 0): nothing could be done
    settings: Regularization
    seed: int

    @property
    def steps(self) -> int:
        """Steps taken (fewer than ``settings.steps`` when stopped early)."""
        return int(self.objective.shape[1])


# --- the regularisers (§3) ----------------------------------------------------------------------------------
def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian weights of ``scipy.ndimage.gaussian_filter`` (radius ``int(4σ + 0.5)``), summing to 1."""
    radius = int(4.0 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    return w / w.sum()


def _reflect(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad ``r`` values each side of ``dim`` by mirroring *with* the edge value (``d c b a | a b c d``): scipy's
    ``reflect`` mode, which ``F.pad``'s ``reflect`` (without the edge) is not."""
    n = x.shape[dim]
    if r > n:
        raise SelectionError(f"a blur of radius {r} px needs images of at least {r} px")
    return torch.cat((x.narrow(dim, 0, r).flip(dim), x, x.narrow(dim, n - r, r).flip(dim)), dim)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur each channel of an N×C×H×W batch with a Gaussian of width ``sigma`` pixels, as the toolbox's
    ``scipy.ndimage.gaussian_filter`` does (same kernel, same mirrored edges); ``sigma`` 0: unchanged. Separable,
    as weighted sums of shifted views: oneDNN's one-channel convolutions with 9-tap kernels took 58 ms to blur 8
    AlexNet images on the 2-core test machine, these sums 8 ms (docs/performance.md, session 33)."""
    if sigma <= 0:
        return x
    k = gaussian_kernel(sigma).tolist()
    r = (len(k) - 1) // 2
    if r == 0:
        return x
    for dim in (2, 3):
        padded = _reflect(x, r, dim)
        n = x.shape[dim]
        out = padded.narrow(dim, 0, n) * k[0]
        for t in range(1, len(k)):
            out.add_(padded.narrow(dim, t, n), alpha=k[t])
        x = out
    return x


def step_update(grad: torch.Tensor, settings: Regularization) -> torch.Tensor:
    """η·∂a/∂x for a batch of gradients (N×3×S×S), η per image by ``settings.lr_policy``: "rms" moves the pixels
    by ``lr`` (root mean square over the image); "constant" η = ``lr``; "progress" the η whose step raises the
    linearised activation by ``desired_progress`` (η·‖g‖² = progress), at most ``lr``. A zero gradient stays 0."""
    flat = grad.flatten(1)
    tiny = torch.finfo(grad.dtype).tiny
    if settings.lr_policy == "rms":
        lr = settings.lr / flat.pow(2).mean(1).sqrt().clamp_min(tiny)
    elif settings.lr_policy == "progress":
        lr = (settings.desired_progress / flat.pow(2).sum(1).clamp_min(tiny)).clamp(max=settings.lr)
    else:
        return settings.lr * grad
    return lr.view(-1, *([1] * (grad.dim() - 1))) * grad


def _percentile(values: torch.Tensor, pct: float) -> torch.Tensor:
    """Per row of N×… ``values``, numpy's default (linear) ``percentile``, shaped to broadcast back."""
    q = torch.quantile(values.flatten(1).double(), pct / 100.0, dim=1).to(values.dtype)
    return q.view(-1, *([1] * (values.dim() - 1)))


def clip_small_norm(x: torch.Tensor, pct: float) -> torch.Tensor:
    """Zero the pixels (all three channels) whose colour norm is below the image's ``pct`` percentile (θ_n_pct)."""
    if pct <= 0:
        return x
    norms = x.norm(dim=1, keepdim=True)
    return x * (norms >= _percentile(norms, pct))


def clip_small_contribution(x: torch.Tensor, grad: torch.Tensor, pct: float) -> torch.Tensor:
    """Zero the pixels whose contribution ``|Σ_c x·∂a/∂x|`` (what setting the pixel to zero would change, to first
    order) is below the image's ``pct`` percentile (θ_c_pct)."""
    if pct <= 0:
        return x
    contribution = (x * grad).sum(1, keepdim=True).abs()
    return x * (contribution >= _percentile(contribution, pct))


# --- pixels → the model's input -------------------------------------------------------------------------------
class PixelInput:
    """RGB pixels in 0–255 (float, N×3×S×S) → the model's input, differentiably: the same numbers as the model's
    own evaluation transform gives a uint8 crop (tested). ``mean``: the 3×S×S RGB pixels it maps to zero, its
    per-pixel mean image's centre (AlexNet §2) or its per-channel mean everywhere."""

    def __init__(self, pre: Preprocessing, mean_image: torch.Tensor | None, size: int) -> None:
        centre = None
        if pre.mean_image and mean_image is not None:
            from torchvision.transforms.v2 import functional as TF

            centre = TF.center_crop(mean_image.float(), [size, size])
        self.normalize = Normalize(pre, centre)
        m = centre if centre is not None else torch.tensor(pre.mean).view(3, 1, 1).expand(3, size, size)
        if pre.channel_order == "BGR":
            m = m.flip(0)
        self.mean = (m * (255.0 / pre.pixel_scale)).contiguous()

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.normalize(pixels / 255.0)


def _layer_output_shape(model: AlexNetFamily, layer: str, size: int) -> tuple[int, ...]:
    p = next(model.parameters())
    with torch.inference_mode():
        out, _ = walk(model, torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device), layer)
    return tuple(out.shape[1:])


def layer_width(model: AlexNetFamily, layer: str) -> int:
    """Channels of a feature map, or units of a fully connected layer, of ``layer``'s output."""
    model.layer(layer)
    return _layer_output_shape(model, layer, model.default_input_size)[0]


def default_channels(model: AlexNetFamily, layer: str) -> list[int]:
    """The units climbed when none are named: the layer's first 8 (fewer when it has fewer)."""
    return list(range(min(8, layer_width(model, layer))))


def check_selection(
    model: AlexNetFamily, layer: str, channels: Sequence[int], unit: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """:class:`SelectionError` (or ``LayerNotFound``) for a layer, channel or unit the model does not have; returns
    the unit to push: ``unit``, the centre of a feature map when ``None``, or ``None`` for a fully connected layer."""
    model.layer(layer)  # LayerNotFound with the valid names
    if layer.startswith("drop"):
        raise SelectionError(
            f"{layer} is dropout (the identity at test time): choose fc{layer[4:]} or relu{layer[4:]}"
        )
    shape = _layer_output_shape(model, layer, model.default_input_size)
    if not channels:
        raise SelectionError("no channels chosen")
    bad = [c for c in channels if not 0 <= c < shape[0]]
    if bad:
        raise SelectionError(f"channel {bad[0]} is out of range for {layer} (0–{shape[0] - 1})")
    if len(shape) == 1:
        if unit is not None:
            raise SelectionError(f"{layer} is fully connected: it has units, not a map (no --unit)")
        return None
    h, w = shape[1:]
    if unit is None:
        return h // 2, w // 2
    if not (0 <= unit[0] < h and 0 <= unit[1] < w):
        raise SelectionError(f"unit ({unit[0]}, {unit[1]}) is outside {layer}'s {h}×{w} map")
    return unit


def check_settings(model: AlexNetFamily, settings: Regularization) -> None:
    """:class:`SelectionError` for settings the model's images cannot take: a blur wider than the image."""
    size = model.default_input_size
    reach = int(4.0 * settings.blur_radius + 0.5)  # the blur kernel's radius (gaussian_kernel)
    if settings.blur_every and reach > size:
        raise SelectionError(
            f"a blur of width {settings.blur_radius:g} px reaches {reach} px, beyond the {size}-px image"
        )


def _objective(
    acts: torch.Tensor, channels: torch.Tensor, unit: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's own unit's activation, and whether it is the largest of that image's layer output."""
    rows = torch.arange(len(acts), device=acts.device)
    if unit is None:
        values = acts[rows, channels]
        flat_index = channels
    else:
        values = acts[rows, channels, unit[0], unit[1]]
        h, w = acts.shape[-2:]
        flat_index = (channels * h + unit[0]) * w + unit[1]
    top = acts.detach().flatten(1).argmax(1) == flat_index
    return values, top


def maximize(
    model: AlexNetFamily,
    layer: str,
    channels: Sequence[int],
    unit: tuple[int, int] | None = None,
    settings: Regularization | None = None,
    seed: int = 0,
    *,
    batch_size: int | None = None,
    on_step: Callable[[int], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> Maximized:
    """One image per unit of ``layer`` (``channels``; for a feature map its ``unit`` (row, col), default the
    centre) that drives the unit as high as Yosinski et al.'s regularised ascent (§3) takes it: see the module
    docstring. ``settings``: :data:`PRESETS` [3] when ``None``. Every image starts from the same seeded point (the
    mean plus N(0, 10²) noise), so the units' images differ only by what each unit wants.

    Runs on the model's device, ``batch_size`` units at a time (default all at once). ``on_step(i)`` after each
    step; ``stop()`` checked between steps: the result then holds the best images of the steps taken, for the
    units begun (``objective`` is NaN past a unit's last step)."""
    if batch_size is not None and batch_size < 1:
        raise SelectionError(f"batch size must be at least 1, not {batch_size}")
    settings = settings or PRESETS[DEFAULT_PRESET]
    channels = [int(c) for c in channels]
    unit = check_selection(model, layer, channels, unit)
    from alexnet.predict import mean_image_of, preprocessing_of

    check_settings(model, settings)
    size = model.default_input_size
    to_input = PixelInput(preprocessing_of(model), mean_image_of(model), size)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(1, 3, size, size, generator=gen, dtype=torch.float64).mul_(START_STD)
    step = batch_size or len(channels)
    parts: list[dict[str, torch.Tensor]] = []
    for first in range(0, len(channels), step):
        if parts and stop is not None and stop():
            break
        chunk = channels[first : first + step]
        parts.append(_ascend(model, layer, chunk, unit, settings, to_input, start, on_step, stop))
    steps = max(p["objective"].shape[1] for p in parts)
    curves = [F.pad(p["objective"], (0, steps - p["objective"].shape[1]), value=math.nan) for p in parts]
    joined = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "objective"}
    done = sum(len(p["best"]) for p in parts)
    return Maximized(
        layer=layer,
        channels=channels[:done],
        unit=unit,
        objective=torch.cat(curves),
        settings=settings,
        seed=seed,
        **joined,
    )


def _ascend(
    model: AlexNetFamily,
    layer: str,
    channels: list[int],
    unit: tuple[int, int] | None,
    settings: Regularization,
    to_input: PixelInput,
    start: torch.Tensor,
    on_step: Callable[[int], None] | None,
    stop: Callable[[], bool] | None,
) -> dict[str, torch.Tensor]:
    """The ascent for one batch of units, all starting at ``start`` (mean-subtracted pixels): the fields of
    :class:`Maximized` that have one row per unit, on the CPU."""
    # everything made inside: a caller's inference mode would make the state tensors unusable for autograd
    with frozen(model), torch.inference_mode(False), torch.enable_grad():
        param = next(model.parameters())
        device, dtype = param.device, param.dtype
        mean = to_input.mean.to(device, dtype)
        n = len(channels)
        x = start.to(device, dtype).expand(n, -1, -1, -1).clone()
        wanted = torch.tensor(channels, device=device)
        best = torch.full((n,), -math.inf, device=device, dtype=dtype)
        best_step = torch.zeros(n, dtype=torch.long, device=device)
        best_x = x.clone()
        first_top = torch.full((n,), -1, dtype=torch.long, device=device)
        stuck = torch.zeros(n, dtype=torch.bool, device=device)
        curve: list[torch.Tensor] = []
        for step in range(settings.steps):
            # 0. back into 0–255 (the toolbox's crop at the top of each step)
            x = (x + mean).clamp(0.0, 255.0) - mean
            x.requires_grad_(True)
            inp = fused.kernel_layout(model.features, to_input(x + mean))
            acts, _ = walk(model, inp, layer)
            values, top = _objective(acts, wanted, unit)
            (grad,) = torch.autograd.grad(values.sum(), x)
            x = x.detach()
            values = values.detach()
            curve.append(values)
            better = values > best
            best = torch.where(better, values, best)
            best_step = torch.where(better, torch.full_like(best_step, step), best_step)
            best_x[better] = x[better]
            first_top = torch.where(top & (first_top < 0), torch.full_like(first_top, step), first_top)
            if step == 0:
                stuck = grad.flatten(1).abs().amax(1) == 0
            if on_step is not None:
                on_step(step)
            if step == settings.steps - 1 or (stop is not None and stop()):
                break  # no update after the last activation measured: the best image is one the net has seen
            x = (x + step_update(grad, settings)) * (1.0 - settings.decay)
            if settings.blur_every and settings.blur_radius > 0 and step % settings.blur_every == 0:
                x = gaussian_blur(x, settings.blur_radius)
            x = clip_small_norm(x, settings.norm_percentile)
            x = clip_small_contribution(x, grad, settings.contribution_percentile)
    pixels = (best_x + mean).clamp(0, 255)
    return {
        "pixels": pixels.float().cpu(),
        "inputs": to_input(pixels).float().cpu(),
        "objective": torch.stack(curve, 1).float().cpu(),
        "best": best.float().cpu(),
        "best_step": best_step.cpu(),
        "first_top": first_top.cpu(),
        "stuck": stuck.cpu(),
    }


def for_display(model: AlexNetFamily, res: Maximized, crop: bool = True) -> list[np.ndarray]:
    """Each image as the DeepVis toolbox shows it (H×W×3 in 0–1): min–max stretched and, with ``crop``, a
    feature map's unit cut to its receptive field (the rest of the image cannot reach the unit, so the ascent
    never moved it)."""
    from alexnet.analysis.summary import receptive_fields
    from alexnet.visualize.plot import field_crop, normalize01

    pixels = res.pixels.permute(0, 2, 3, 1).numpy()  # N×S×S×3, 0–255
    if crop and res.unit is not None and res.layer in trunk_layers(model):
        field = receptive_fields(model)[res.layer]
        box, side = field.box(*res.unit), min(field.size, pixels.shape[1])
        pixels = np.stack([field_crop(p, box, side, float(p.mean())) for p in pixels])
    return list(normalize01(pixels, axis=(1, 2, 3)))


def plot_maximized(model: AlexNetFamily, res: Maximized, per_row: int = 8) -> Figure:
    """The images side by side (:func:`for_display`), each titled with its unit (and class name in the last
    layer), the activation it reached and "(not top)" when the unit never led its layer."""
    from alexnet.predict import labels_of
    from alexnet.visualize.plot import new_figure

    tiles = for_display(model, res)
    labels = labels_of(model) if res.layer == model.layer_names()[-1] else None
    rows = -(-len(tiles) // per_row)
    cols = -(-len(tiles) // rows)  # rows filled evenly: ten images as two rows of five
    fig = new_figure(2.0 * cols, 2.3 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, (ch, tile) in enumerate(zip(res.channels, tiles, strict=True)):
        ax = axes.flat[i]
        ax.imshow(tile)
        name = f"{ch}" if labels is None else f"{ch} {labels[ch]}"
        lead = "" if res.first_top[i] >= 0 else " (not top)"
        ax.set_title(f"{name}\n{float(res.best[i]):.3g}{lead}", fontsize=8)
    where = "" if res.unit is None else f", unit {res.unit}"
    fig.suptitle(
        f"{res.layer}{where}: images maximising each unit (Yosinski et al. 2015, §3), {res.steps} steps"
    )
    return fig
