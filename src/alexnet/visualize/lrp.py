"""Layer-wise relevance propagation (LRP): a class score decomposed into one relevance per pixel.

Bach, Binder, Montavon, Klauschen, Müller & Samek, "On pixel-wise explanations for non-linear classifier decisions
by layer-wise relevance propagation" (PLoS ONE 2015). The class's score f_c(x) (before the softmax) is the
relevance of its output unit; each layer hands its outputs' relevance R_k down to its inputs a_j in proportion to
their contributions z_jk = a_j w_jk, so that every layer's relevances sum to (nearly) the same total. The rules
differ in what counts as a contribution (Montavon, Binder, Lapuschkin, Samek & Müller, "Layer-wise relevance
propagation: an overview", in *Explainable AI*, LNCS 11700, 2019, whose generic form and four-step computation
are used here: z = ε + ρ(layer)(a); s = R / z; c = ∂(z·s)/∂a; R_in = a ⊙ c):

* **LRP-0**: z_jk = a_j w_jk, the bias in the total; the input × gradient of a linear piece.
* **LRP-ε** (Bach et al.'s ε-rule): ε added to each total's magnitude, ``R_j = Σ_k a_j w_jk / (z_k + ε·sign z_k)
  R_k``; weak and contradictory contributions absorb less of the signal.
* **LRP-γ**: positive weights (and biases) favoured, ρ(w) = w + γ w⁺.
* **LRP-α1β0** (Bach et al.'s αβ-rule with α = 1, β = 0; deep Taylor's z⁺ rule where inputs are ≥ 0): only
  positive contributions, biases dropped; relevance stays positive above the image and a positive score is
  conserved down to the pixels.
* **z^B** for the image's own layer (Montavon, Lapuschkin, Binder, Samek & Müller, "Explaining nonlinear
  classification decisions with deep Taylor decomposition", Pattern Recognition 2017): pixels are bounded, not
  rectified, so the contributions are measured from the box's corners, ``x_i w_ij − l_i w_ij⁺ − h_i w_ij⁻``,
  with l and h the model's inputs for a black and a white picture.

``rule`` picks a preset: ``"epsilon"`` and ``"alpha1beta0"`` apply Bach et al.'s rule to every layer, the image's
included; ``"composite"`` (default) is the overview's recommendation (§10.2.2, §10.3.2) mapped onto the family's
layers: z^B at conv1, LRP-γ at the lower conv layers (conv2, conv3), LRP-ε at the upper ones (conv4, conv5), LRP-0
at the fully connected layers. Max-pooling hands each window's relevance to its maximum (winner takes all, Bach
et al.; overlapping windows add up), ReLU and dropout pass it unchanged, as does the local response
normalisation: Binder, Montavon, Bach, Müller & Samek ("Layer-wise relevance propagation for neural networks with
local renormalization layers", ICANN 2016) compare this identity treatment with a first-order Taylor
redistribution; only the identity is here, as in the authors' LRP toolbox for Caffe (whose LRN passes relevance
unchanged and whose max-pool hands it to the switch, the defaults this module follows). Captum's ``LRP`` refuses the LRN and the grouped convolution's class
until each has a rule, and its ``IdentityRule`` does not hand relevance on to a ReLU right below it (the paper's
conv, ReLU, LRN order); with the same rules per layer and that mended, it gives the same numbers
(``tests/test_visualize_lrp.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import frozen
from alexnet.visualize.deconvnet import class_targets

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from alexnet.inputs import Prepared

RULES: tuple[str, ...] = ("composite", "epsilon", "alpha1beta0")
LAYER_RULES: tuple[str, ...] = ("zero", "epsilon", "gamma", "alpha1beta0", "zb")
TINY = 1e-9  # LRP-0's and α1β0's only stabiliser, against 0/0 (Captum's default)


@dataclass
class Relevance:
    """LRP of a batch, on the CPU: ``attributions`` N×3×H×W (relevance per pixel and colour, in the input's channel
    order), ``targets`` and ``scores`` N (the class explained, its score before the softmax), ``layer_rules`` the
    rule each weighted layer took."""

    attributions: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    rule: str
    layer_rules: dict[str, str]
    epsilon: float
    gamma: float

    def conserved(self) -> torch.Tensor:
        """N: the share of each score the pixels' relevances sum to (1 where no bias or ε absorbed any)."""
        return self.attributions.flatten(1).sum(1).double() / self.scores.double()


def check_settings(rule: str, epsilon: float, gamma: float) -> None:
    """:class:`SelectionError` for a preset, ε or γ that :func:`lrp` cannot take."""
    if rule not in RULES:
        raise SelectionError(f"unknown rule {rule!r}; choose {', '.join(RULES)}")
    if not 0 <= epsilon < float("inf"):
        raise SelectionError(f"epsilon must be a finite number ≥ 0, not {epsilon}")
    if not 0 <= gamma < float("inf"):
        raise SelectionError(f"gamma must be a finite number ≥ 0, not {gamma}")


def layer_rules(model: AlexNetFamily, rule: str) -> dict[str, str]:
    """The rule (one of :data:`LAYER_RULES`) for each conv and fc layer under the preset ``rule``."""
    convs = [f"conv{i}" for i in model.config.conv_numbers()]
    fcs = [n for n in model.learnable_layers() if n not in convs]
    if rule != "composite":
        return dict.fromkeys([*convs, *fcs], rule)
    rules = {convs[0]: "zb"}
    rest = convs[1:]
    upper = rest[-2:]  # conv4, conv5 in the papers' five-conv trunks
    rules.update({name: "epsilon" if name in upper else "gamma" for name in rest})
    rules.update(dict.fromkeys(fcs, "zero"))
    return rules


def pixel_bounds(model: AlexNetFamily, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z^B's box: the model's inputs for a black and for a white picture (its own preprocessing: mean, std, channel
    order, scale), per pixel where they are the images' size, else each colour's extremes."""
    from alexnet.predict import input_transform, preprocessing_of

    side = preprocessing_of(model).resize
    convert = input_transform(model)
    ends = [convert(torch.full((3, side, side), v, dtype=torch.uint8)).to(like) for v in (0, 255)]
    low, high = torch.minimum(*ends), torch.maximum(*ends)  # a negative scale would swap them
    if low.shape != like.shape[1:]:
        low = low.amin((1, 2), keepdim=True).expand(like.shape[1:])
        high = high.amax((1, 2), keepdim=True).expand(like.shape[1:])
    return low, high


def _rho(module: nn.Module, rule: str, gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's weight and bias with ρ applied: LRP-γ's w + γw⁺ (and b + γb⁺); α1β0's w⁺ without the bias;
    for z^B ``"plus"`` and ``"minus"``: w⁺ and w⁻ without the bias; else as they are."""
    w, b = module.weight, module.bias
    if rule == "gamma":
        return w + gamma * w.clamp(min=0), None if b is None else b + gamma * b.clamp(min=0)
    if rule in ("alpha1beta0", "plus"):
        return w.clamp(min=0), None
    if rule == "minus":
        return w.clamp(max=0), None
    return w, b


def _forward(module: nn.Module, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(a, w, b)
    return module._conv_forward(a, w, b)


def _transpose(module: nn.Module, shape: torch.Size, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The layer's transpose with weight ``w`` applied to ``s``: ∂(z·s)/∂a of z = layer(a), back to ``shape``."""
    if isinstance(module, nn.Linear):
        return s @ w
    assert isinstance(module, nn.Conv2d) and module.padding_mode == "zeros"
    return torch.nn.grad.conv2d_input(
        shape, w, s, module.stride, module.padding, module.dilation, module.groups
    )


def _stabilise(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + ε·sign(z), sign(0) = 1 (never a division by zero)."""
    return z + torch.where(z >= 0, eps, -eps)


def _weighted(
    module: nn.Module,
    a: torch.Tensor,
    r: torch.Tensor,
    rule: str,
    epsilon: float,
    gamma: float,
    bounds: tuple[torch.Tensor, torch.Tensor] | None = None,
    z: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relevance from a conv or linear layer's outputs (``r``) to its input ``a`` by ``rule``: the overview's four
    steps z = ρ(layer)(a), s = r / (z + ε), c = ∂(z·s)/∂a (the layer's transpose), a ⊙ c. ``z``: the layer's own
    output, when the forward pass kept it (LRP-0 and LRP-ε need no other)."""
    if rule == "zb":  # z_j = Σ_i x_i w_ij − l_i w⁺_ij − h_i w⁻_ij: the biases cancel out
        assert bounds is not None
        low, high = (t.expand_as(a) for t in bounds)
        w = module.weight
        plus, minus = w.clamp(min=0), w.clamp(max=0)
        z = (
            _forward(module, a, w, None)
            - _forward(module, low, plus, None)
            - _forward(module, high, minus, None)
        )
        s = r / _stabilise(z, TINY)
        return (
            a * _transpose(module, a.shape, w, s)
            - low * _transpose(module, a.shape, plus, s)
            - high * _transpose(module, a.shape, minus, s)
        )
    w, b = _rho(module, rule, gamma)
    if z is None or rule not in ("zero", "epsilon"):
        z = _forward(module, a, w, b)
    s = r / _stabilise(z, epsilon if rule == "epsilon" else TINY)
    return a * _transpose(module, a.shape, w, s)


def _passed(module: nn.Module, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Relevance through a pooling layer: a max-pool's to each window's maximum (its gradient's routing; overlapping
    windows add up), an average pool's in proportion to its inputs (LRP-0)."""
    with torch.enable_grad():
        a = a.detach().requires_grad_(True)
        z = module(a)
        if isinstance(module, nn.MaxPool2d):
            (c,) = torch.autograd.grad(z, a, r)
            return c
        (c,) = torch.autograd.grad(z, a, r / _stabilise(z.detach(), TINY))
    return a.detach() * c


def lrp(
    model: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    rule: str = "composite",
    epsilon: float = 0.25,
    gamma: float = 0.25,
    rules: dict[str, str] | None = None,
) -> Relevance:
    """LRP (module docstring) of a normalised batch N×3×H×W (or one 3×H×W image), of the size the classifier reads,
    for class ``target`` (one for all images, one per image, or by default each image's top class). ``rule`` is
    the preset, ``rules`` overrides it layer by layer (``{"conv1": "epsilon"}``; :data:`LAYER_RULES`). Runs on
    the model's device in eval mode; returns on the CPU."""
    check_settings(rule, epsilon, gamma)
    per_layer = layer_rules(model, rule)
    for name, r in (rules or {}).items():
        if name not in per_layer:
            raise SelectionError(f"{name!r} has no weights for a rule; choose from {', '.join(per_layer)}")
        if r not in LAYER_RULES:
            raise SelectionError(f"unknown layer rule {r!r}; choose {', '.join(LAYER_RULES)}")
        per_layer[name] = r
    first = next(iter(per_layer))
    if any(r == "zb" for name, r in per_layer.items() if name != first):
        raise SelectionError(f"the zb rule is for the image's own layer ({first}) only: it bounds pixels")
    if model.num_classes == 0:
        raise SelectionError(
            f"{model.config.name} has no classifier layer (num_classes=0): no class to explain"
        )
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    p = next(model.parameters())
    x = images.to(p.device, p.dtype)
    bounds = pixel_bounds(model, x) if per_layer[first] == "zb" else None
    with frozen(model), torch.no_grad():
        records: list[tuple[str, nn.Module, torch.Tensor]] = []
        outputs: dict[str, torch.Tensor] = {}  # each conv and linear layer's z, for LRP-0 and LRP-ε
        for name, module in model.named_layers():
            records.append((name, module, x))
            if isinstance(module, nn.Linear):
                x = torch.flatten(x, 1)  # fc6 reads pool5's maps flat
            x = torch.relu(x) if isinstance(module, nn.ReLU) else module(x)  # never in place: x is kept
            if isinstance(module, nn.Conv2d | nn.Linear):
                outputs[name] = x
        logits = x
        targets = class_targets(target, logits)
        rows = torch.arange(len(logits), device=logits.device)
        scores = logits[rows, targets]
        r = torch.zeros_like(logits)
        r[rows, targets] = scores  # the output's relevance: the class's score, the others' 0
        for name, module, a in reversed(records):
            if isinstance(module, nn.Linear):  # back to the shape it read (pool5's maps for fc6)
                r = _weighted(module, a.flatten(1), r, per_layer[name], epsilon, gamma, z=outputs[name])
                r = r.view(a.shape)
            elif isinstance(module, nn.Conv2d):
                r = _weighted(module, a, r, per_layer[name], epsilon, gamma, bounds, outputs[name])
            elif isinstance(module, nn.MaxPool2d | nn.AdaptiveAvgPool2d):
                r = _passed(module, a, r)
            # ReLU, dropout (off) and the LRN (Binder et al.'s identity treatment) pass the relevance unchanged
    return Relevance(r.cpu(), targets.cpu(), scores.cpu(), rule, per_layer, epsilon, gamma)


def heatmap(attributions: torch.Tensor) -> np.ndarray:
    """H×W relevance per pixel (the colours' sum, as Bach et al.'s heatmaps), scaled to −1…1 by its 99.5th
    percentile of magnitudes (a few extreme pixels would otherwise wash the picture out)."""
    h = attributions.sum(0).double().numpy()
    top = float(np.percentile(np.abs(h), 99.5)) or float(
        np.abs(h).max()
    )  # a few relevant pixels: their largest
    return np.clip(h / top, -1, 1) if top > 0 else h


def heatmap_rgb(attributions: torch.Tensor) -> np.ndarray:
    """H×W×3 (0–1): :func:`heatmap` in the ``bwr`` colour map, white at 0 (the figure's right panel, the
    browser's picture)."""
    from matplotlib import colormaps

    return colormaps["bwr"]((heatmap(attributions) + 1) / 2)[..., :3].astype(np.float32)


def plot_lrp(image: np.ndarray, attributions: np.ndarray, title: str, label: str) -> Figure:
    """The network's input crop (H×W×3, 0–1) and its relevance map (3×H×W summed over the colours, red for
    evidence for the class, blue against it, on a symmetric scale; :func:`heatmap`)."""
    from alexnet.visualize.plot import new_figure

    fig = new_figure(10, 5.3)
    ax0, ax1 = fig.subplots(1, 2)
    ax0.imshow(image)
    ax0.set_title(title)
    ax1.imshow(heatmap_rgb(torch.from_numpy(attributions)))
    ax1.set_title(label)
    for ax in (ax0, ax1):
        ax.axis("off")
    return fig


def lrp_figure(
    model: AlexNetFamily,
    prepared: Prepared,
    title: str,
    target: int | None = None,
    rule: str = "composite",
    epsilon: float = 0.25,
    gamma: float = 0.25,
) -> tuple[Relevance, Figure]:
    """One prepared image's LRP (:func:`lrp`) and its figure (:func:`plot_lrp`), labelled with the class's name,
    its score and the share of it the pixels' relevances keep."""
    from alexnet.predict import labels_of
    from alexnet.visualize.plot import uint8_to_float

    res = lrp(model, prepared.tensor, target, rule, epsilon, gamma)
    c = int(res.targets[0])
    label = (
        f"LRP ({rule}) of {labels_of(model)[c]} ({c})\nscore {float(res.scores[0]):.3g}, "
        f"the relevances sum to {float(res.conserved()[0]):.0%} of it"
    )
    return res, plot_lrp(uint8_to_float(prepared.crop), res.attributions[0].numpy(), title, label)
