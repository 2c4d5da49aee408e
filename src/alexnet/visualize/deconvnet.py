"""Zeiler & Fergus's deconvnet (ECCV 2014, §2.1): project one feature map, or one unit of it, down to pixels.

To probe a layer's activation, every *other* activation of that layer is set to zero and the kept signal goes
back down through the layers below, undoing each one in turn:

* **max-pooling → unpooling with switches.** The forward pass records where each pooling window's maximum came
  from (the "switches"); the signal is put back at exactly those places. AlexNet's pools overlap (3×3 stride 2,
  AlexNet §3.4), so one input location can be the maximum of two windows: its two contributions are *added*
  (this is the transpose of the pooling's selection; ``F.max_unpool2d`` would keep only one of them). Caffe's
  ``ceil_mode`` and the pool's padding are honoured because the switches are flat indices into the real input.
* **ReLU → ReLU.** The reconstruction is rectified ("to obtain valid feature reconstructions at each layer",
  §2.1); the forward pass's on/off pattern is *not* used (that would be the gradient, i.e. a saliency map).
* **convolution → transposed convolution** with the *same* filters ("flipped vertically and horizontally"),
  stride, padding and groups (AlexNet's two towers), with the output padding that gives back the layer's exact
  input size. Biases are not used: the projection maps the signal, not an offset.
* **contrast normalisation → passed through unchanged.** ZF §2.1 lists only unpool, rectify and filter; the
  local response normalisation (AlexNet §3.3) is not inverted (it is close to a per-location scale for the
  small ``α`` of both papers), so the signal goes through it as it is.

The result equals the gradient of (kept activation · its value) with respect to the input in a network whose
ReLU backward is ``relu(grad)`` and whose LRN backward is the identity; ``tests/test_visualize_deconvnet.py``
checks that for every registered model.

Two later readings of the same downward pass differ only in how they cross a ReLU and an LRN (``rule``), for
comparing the deconvnet's pictures with theirs:

* ``"gradient"``: the forward pass's on/off pattern, ``grad · [x > 0]``, and the LRN's true backward: the exact
  gradient of the kept activation with respect to the image, the saliency of Simonyan, Vedaldi & Zisserman
  (ICLR 2014 workshop, §4), who note that the deconvnet is this gradient but for the ReLU.
* ``"guided"``: both, ``relu(grad) · [x > 0]``, and the LRN's true backward: Springenberg et al.'s guided
  backpropagation ("Striving for simplicity", ICLR 2015 workshop), proposed as a sharper deconvnet.

:func:`class_projection` starts the same downward pass from a class's score (before the softmax) instead of a
feature map and carries it through the classifier first (a linear layer's transpose, dropout off, the ReLUs by
the rule): under ``"gradient"`` Simonyan et al.'s image-specific class saliency (§3.1), under ``"guided"`` the
guided backpropagation that Grad-CAM multiplies by its map (Selvaraju et al. 2017, §3, "Guided Grad-CAM").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import SelectionError
from alexnet.models import AlexNetFamily, LocalResponseNorm, fused
from alexnet.models.capture import check_trunk_layer, evaluating, trunk_layers
from alexnet.models.first_conv import strided_transpose


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


RULES = ("deconvnet", "gradient", "guided")


@dataclass
class _Step:
    """One layer of the downward pass with what the forward pass recorded for it: a max-pool's switches; for the
    ``gradient`` and ``guided`` rules where a ReLU was off and an LRN's input."""

    module: nn.Module
    input_size: tuple[int, int]
    switches: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    off: torch.Tensor | None = None  # a ReLU's units that passed nothing (input not > 0, NaN included)
    shape: torch.Size | None = None  # a linear layer's input shape, before the flatten of pool5's maps
    output: torch.Tensor | None = None  # the layer's output, where asked for (``keep``)


def check_rule(rule: str) -> None:
    """:class:`SelectionError` unless ``rule`` is one of :data:`RULES`."""
    if rule not in RULES:
        raise SelectionError(f"unknown rule {rule!r}; choose {', '.join(RULES)}")


def _forward_record(
    model: AlexNetFamily,
    images: torch.Tensor,
    layer: str | None,
    rule: str = "deconvnet",
    keep: str | None = None,
) -> tuple[torch.Tensor, list[_Step]]:
    """Forward up to ``layer`` (``None``: through the classifier to the class scores), recording input sizes and
    the max-pool switches (and what ``rule`` needs besides), one step per layer; layer ``keep``'s output is kept
    in its step (a copy: an in-place ReLU may follow)."""
    steps: list[_Step] = []
    x = images.to(next(model.parameters()).device)
    if rule != "deconvnet":
        # The layout the model's own forward takes (channels-last on CPU where it has an LRN to fuse: oneDNN's
        # convolutions and the max-pools run 2-8× faster there), so the switches are those of autograd through
        # model(x). Where a pooling window ties, the layouts may pick different switches, each a valid gradient;
        # at the common tie, zeros after a ReLU, the ReLU below stops the signal either way. The deconvnet's
        # rule passes it on, so it keeps NCHW, whose first-maximum switches are the same on every device.
        x = fused.kernel_layout(model.features, x)
    for name, module in model.named_layers():
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if isinstance(module, nn.Linear):
            steps.append(_Step(module, size, shape=x.shape))
            x = module(torch.flatten(x, 1))
        elif isinstance(module, nn.MaxPool2d):
            k, s, p, d = (
                _pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation)
            )
            x, idx = F.max_pool2d(x, k, s, p, d, ceil_mode=module.ceil_mode, return_indices=True)
            steps.append(_Step(module, size, idx))
        elif rule != "deconvnet" and isinstance(module, nn.ReLU):
            steps.append(_Step(module, size, off=~(x > 0)))  # before an in-place ReLU overwrites x
            x = module(x)
        elif rule != "deconvnet" and isinstance(module, LocalResponseNorm | nn.LocalResponseNorm):
            steps.append(_Step(module, size, kept=x))
            x = module(x)
        else:
            x = module(x)
            steps.append(_Step(module, size))
        if name == keep:
            steps[-1].output = x.clone()
        if name == layer:
            return x, steps
    if layer is None:
        return x, steps
    raise AssertionError("layer checked by check_trunk_layer")


def _unpool(y: torch.Tensor, switches: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Put each pooled value back at its switch; overlapping windows that share a maximum add up. In the layout
    of ``y`` and the switches when both are channels-last (the switches are flat indices into each map either
    way)."""
    n, c = y.shape[:2]
    last = torch.channels_last
    if y.is_contiguous(memory_format=last) and switches.is_contiguous(memory_format=last):
        out = y.new_zeros(n, size[0] * size[1], c)
        rows = (t.permute(0, 2, 3, 1).reshape(n, -1, c) for t in (switches, y))  # views: N×(h·w)×C
        out.scatter_add_(1, *rows)
        return out.view(n, *size, c).permute(0, 3, 1, 2)
    out = y.new_zeros(n, c, size[0] * size[1])
    out.scatter_add_(2, switches.flatten(2), y.flatten(2))
    return out.view(n, c, *size)


def _transpose_conv(y: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """The conv's transpose with the same weights (bias deliberately not used), exactly the layer's input size."""
    k, s, p, d = (_pair(v) for v in (conv.kernel_size, conv.stride, conv.padding, conv.dilation))
    if s != (1, 1) and conv.groups == 1 and d == (1, 1) and conv.in_channels <= 4:  # conv1, back to pixels
        return strided_transpose(y, conv.weight, s, p, size)
    out_pad = tuple(
        size[i] - ((y.shape[-2 + i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2)
    )
    return F.conv_transpose2d(y, conv.weight, None, s, p, out_pad, conv.groups, d)


def _down(y: torch.Tensor, steps: list[_Step], rule: str = "deconvnet") -> torch.Tensor:
    for step in reversed(steps):
        m = step.module
        if isinstance(m, nn.MaxPool2d):
            assert step.switches is not None
            y = _unpool(y, step.switches, step.input_size)
        elif isinstance(m, nn.ReLU):
            # In place: y is always this pass's own fresh tensor (a product, an unpooling, a transpose).
            y = y if rule == "gradient" else y.clamp_(min=0)
            if step.off is not None:  # the forward on/off pattern (gradient, guided)
                y = y.masked_fill_(step.off, 0.0)
        elif isinstance(m, nn.Conv2d):
            y = _transpose_conv(y, m, step.input_size)
        elif isinstance(m, nn.Linear):
            assert step.shape is not None
            y = (y @ m.weight.to(y.dtype)).view(step.shape)  # the transpose; fc6's back to pool5's maps
        elif step.kept is not None:  # an LRN under the gradient and guided rules: its true backward
            # autograd outside the caller's inference mode, on copies made there (inference tensors have none)
            with torch.inference_mode(False), torch.enable_grad():
                x = step.kept.clone().requires_grad_(True)
                (y,) = torch.autograd.grad(m(x), x, y.clone())
        # deconvnet: the LRN is not inverted, the signal passes through (see the module docstring); dropout is
        # off (eval mode), so it passes through too.
    return y


def _check_channel(acts: torch.Tensor, layer: str, channel: int) -> None:
    n_ch = acts.shape[1]
    if not 0 <= channel < n_ch:
        raise SelectionError(f"channel {channel} is out of range for {layer} (0–{n_ch - 1})")


def _check_unit(acts: torch.Tensor, layer: str, unit: tuple[int, int]) -> None:
    h, w = acts.shape[-2:]
    row, col = unit
    if not (0 <= row < h and 0 <= col < w):
        raise SelectionError(f"unit ({row}, {col}) is outside {layer}'s {h}×{w} map")


def layer_shape(model: AlexNetFamily, layer: str, input_size: int | None = None) -> tuple[int, int, int]:
    """(channels, height, width) of a trunk layer's output for a square input (default: the model's own)."""
    check_trunk_layer(model, layer)
    size = input_size or model.default_input_size
    p = next(model.parameters())
    with torch.inference_mode():
        out, _ = _forward_record(model, torch.zeros(1, 3, size, size, dtype=p.dtype, device=p.device), layer)
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def project(
    model: AlexNetFamily, images: torch.Tensor, layer: str, mask: torch.Tensor, rule: str = "deconvnet"
) -> torch.Tensor:
    """Deconvnet projection of ``mask · activation`` of ``layer`` (mask broadcastable to the layer's output), run
    on the model's device and returned on the CPU; ``rule``: see the module docstring."""
    check_rule(rule)
    check_trunk_layer(model, layer)
    with evaluating(model):
        acts, steps = _forward_record(model, images, layer, rule)
        return _down(acts * mask.to(acts), steps, rule).cpu()


def deconvnet(
    model: AlexNetFamily,
    images: torch.Tensor,
    layer: str,
    channel: int,
    unit: tuple[int, int] | None = None,
    rule: str = "deconvnet",
) -> torch.Tensor:
    """Project feature map ``channel`` of ``layer`` (or only its unit ``(row, col)``) to pixel space (ZF §2.1).

    ``images``: a normalised batch N×3×H×W (or one 3×H×W image). ``layer``: a conv-trunk layer (``conv1`` …
    ``pool5``; ``convN`` is before its ReLU), or a classifier layer (``fc6`` … ``fc8``, ``reluN``, ``dropN``;
    ``channel`` is then one of its units, no ``unit``, and the images are of the size the classifier reads):
    the same downward pass, through the classifier first. Runs on the model's device; returns N×3×H×W on the
    CPU, in the input's units (not rescaled for display; see :func:`alexnet.visualize.plot.projection_to_image`).
    ``rule="gradient"`` or ``"guided"``: the saliency map or guided backpropagation instead (module docstring).
    """
    check_rule(rule)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    head = layer not in trunk_layers(model)
    if head:
        model.layer(layer)  # LayerNotFound, naming the valid layers
        if unit is not None:
            raise SelectionError(f"{layer} has no map to take a unit of: its units are its channels")
    model.check_input(images, classify=head)
    with evaluating(model):
        acts, steps = _forward_record(model, images, layer, rule)
        _check_channel(acts, layer, channel)
        mask = torch.zeros_like(acts)
        if unit is None:
            mask[:, channel] = 1.0
        else:
            _check_unit(acts, layer, unit)
            mask[:, channel, unit[0], unit[1]] = 1.0
        return _down(acts * mask, steps, rule).cpu()


class StrongestProjection(NamedTuple):
    """Per image: the projection of the strongest unit of one feature map, where it is, and its value."""

    images: torch.Tensor  # N×3×H×W
    units: torch.Tensor  # N×2 (row, col) in the layer's map
    values: torch.Tensor  # N activation values


def deconvnet_strongest(
    model: AlexNetFamily, images: torch.Tensor, layer: str, channel: int, rule: str = "deconvnet"
) -> StrongestProjection:
    """For each image, project only the strongest activation of feature map ``channel`` (ZF Fig. 2 and 4); on
    the model's device, returned on the CPU; ``rule`` as :func:`deconvnet`'s."""
    check_rule(rule)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images)
    check_trunk_layer(model, layer)
    with evaluating(model):
        acts, steps = _forward_record(model, images, layer, rule)
        _check_channel(acts, layer, channel)
        fmap = acts[:, channel].flatten(1)
        values, flat = fmap.max(dim=1)
        width = acts.shape[-1]
        units = torch.stack((flat // width, flat % width), dim=1)
        mask = torch.zeros_like(acts).flatten(2)
        mask[torch.arange(len(acts)), channel, flat] = 1.0
        proj = _down(acts * mask.view_as(acts), steps, rule)
        return StrongestProjection(proj.cpu(), units.cpu(), values.cpu())


class ClassProjection(NamedTuple):
    """Per image: a class score's projection to pixels, the class, and its score before the softmax."""

    images: torch.Tensor  # N×3×H×W
    targets: torch.Tensor  # N
    scores: torch.Tensor  # N


def class_targets(target: int | list[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The class per image: ``target`` (one for all, or one per image) checked against ``logits`` (N×classes),
    or each image's top class when ``None``; :class:`SelectionError` for a wrong count or an unknown class."""
    n, classes = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    t = torch.as_tensor(target, device=logits.device).long().flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise SelectionError(f"{t.numel()} targets for {n} images: give one, or one per image")
    bad = t[(t < 0) | (t >= classes)]
    if bad.numel():
        raise SelectionError(f"class {int(bad[0])} is out of range (0–{classes - 1})")
    return t.clone()


def _one_hot(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The signal that starts a pass down from each image's class score: 1 at its target, 0 elsewhere."""
    onehot = torch.zeros_like(logits)
    onehot[torch.arange(len(logits)), targets] = 1.0
    return onehot


def class_projection(
    model: AlexNetFamily,
    images: torch.Tensor,
    target: int | list[int] | torch.Tensor | None = None,
    rule: str = "guided",
) -> ClassProjection:
    """Project the score (before the softmax) of class ``target`` (one for all images, one per image, or by
    default each image's top class) down to pixels through the whole network, by ``rule`` (module docstring):
    ``"gradient"`` is Simonyan, Vedaldi & Zisserman's class saliency (ICLR 2014 workshop, §3.1: the score's
    gradient with respect to the image; their map is its largest magnitude over the colour channels,
    :func:`saliency_map`), ``"guided"`` Springenberg et al.'s guided backpropagation of the class (default),
    ``"deconvnet"`` ZF's rules carried through the classifier.

    ``images``: a normalised batch N×3×H×W (or one 3×H×W image) of the size the classifier reads. Runs on the
    model's device in eval mode; returns on the CPU, in the input's units."""
    check_rule(rule)
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    with evaluating(model):
        logits, steps = _forward_record(model, images, None, rule)
        targets = class_targets(target, logits)
        onehot = _one_hot(logits, targets)
        pixels = _down(onehot, steps, rule)
        scores = logits.gather(1, targets[:, None])[:, 0]
        return ClassProjection(pixels.cpu(), targets.cpu(), scores.cpu())


class GuidedAndGradient(NamedTuple):
    """:func:`guided_and_gradient`'s results, on the CPU."""

    guided: torch.Tensor  # N×3×H×W: the classes' guided backpropagation
    maps: torch.Tensor  # N×C×h×w: the layer's output
    gradient: torch.Tensor  # N×C×h×w: the class score's exact gradient with respect to it
    logits: torch.Tensor  # N×classes
    targets: torch.Tensor  # N


def guided_and_gradient(
    model: AlexNetFamily,
    images: torch.Tensor,
    layer: str,
    target: int | list[int] | torch.Tensor | None = None,
) -> GuidedAndGradient:
    """What Guided Grad-CAM needs (Selvaraju et al. 2017, §3) from one recorded forward pass: a conv-trunk
    ``layer``'s maps, the class score's exact gradient with respect to them (two passes down share the forward
    pass's records: the gradient rule to ``layer``, the guided rule to the pixels) and the guided
    backpropagation. ``images`` and ``target`` as :func:`class_projection`'s."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    model.check_input(images, classify=True)
    check_trunk_layer(model, layer)
    with evaluating(model):
        logits, steps = _forward_record(model, images, None, "guided", keep=layer)
        targets = class_targets(target, logits)
        onehot = _one_hot(logits, targets)
        at = model.layer_names().index(layer)
        maps = steps[at].output
        assert maps is not None
        gradient = _down(onehot.clone(), steps[at + 1 :], "gradient")
        guided = _down(onehot, steps, "guided")
        return GuidedAndGradient(guided.cpu(), maps.cpu(), gradient.cpu(), logits.cpu(), targets.cpu())


def saliency_map(pixels: torch.Tensor) -> torch.Tensor:
    """Simonyan et al. §3.1: a projection's (N×3×H×W, or 3×H×W) largest magnitude over the colour channels,
    N×H×W (or H×W)."""
    return pixels.abs().amax(dim=-3)
