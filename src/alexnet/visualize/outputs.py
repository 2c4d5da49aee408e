"""Each ``alexnet visualize <kind>``: compute, draw, and write the PNGs with the numbers behind them.

One function per kind; each returns the paths it wrote (all writes atomic). The CLI only parses arguments.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alexnet.errors import SelectionError
from alexnet.inputs import prepare
from alexnet.models import AlexNetFamily
from alexnet.predict import mean_image_of, preprocessing_of
from alexnet.visualize.plot import (
    projection_to_image,
    save_figure,
    save_image,
    save_json,
    save_npz,
    uint8_to_float,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from alexnet.visualize.integrated import Integrated
    from alexnet.visualize.maximize import Maximized, Regularization
    from alexnet.visualize.perturbation import Perturbation


def _stem(name: str, i: int) -> str:
    return Path(name).stem or f"image{i}"


def _stems(images: Sequence[str | Path]) -> list[str]:
    """One output name per image: its file stem, or, where two images share a stem (``a/cat.jpg`` and
    ``b/cat.png``), the stem plus the image's 1-based position in ``images``, so no output overwrites another."""
    raw = [_stem(str(path), i) for i, path in enumerate(images)]
    counts = Counter(raw)
    used = {stem for stem in raw if counts[stem] == 1}
    out = []
    for i, stem in enumerate(raw):
        if counts[stem] > 1:
            name, n = f"{stem}_{i + 1}", 1
            while name in used:  # an image really called e.g. cat_2.jpg
                n += 1
                name = f"{stem}_{i + 1}_{n}"
            stem = name
        used.add(stem)
        out.append(stem)
    return out


def write_activations(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    layer: str | None = "relu1",
    top: int | None = None,
    all_layers: bool = False,
    stage: str = "relu",
) -> list[Path]:
    """Per image: the grid of ``layer`` (or all five conv stages) as a figure, plus the raw maps (.npz).
    ``stage`` (conv / relu / norm / pool) is used only with ``all_layers``."""
    from alexnet.models.capture import capture, check_layers
    from alexnet.visualize.activations import (
        activation_grid,
        conv_stage_layers,
        plot_activations,
        plot_all_conv_layers,
    )

    out = Path(out)
    written: list[Path] = []
    # Checked once, before any image is read: an unknown layer or a stage the model lacks is the same for all.
    layers = conv_stage_layers(model, stage) if all_layers else check_layers(model, [layer or "relu1"])
    for path, stem in zip(images, _stems(images), strict=True):
        p = prepare(model, path)
        acts = capture(model, p.tensor.unsqueeze(0), layers)
        if all_layers:
            fig = plot_all_conv_layers(model, path, top, stage)
            written.append(save_figure(fig, out / f"{stem}_activations_all_{stage}.png"))
        else:
            fig = plot_activations(model, path, layers[0], top)
            written.append(save_figure(fig, out / f"{stem}_{layers[0]}.png"))
            written.append(
                save_image(activation_grid(acts[layers[0]][0], top), out / f"{stem}_{layers[0]}_grid.png")
            )
        written.append(
            save_npz(out / f"{stem}_activations.npz", **{k: v[0].numpy() for k, v in acts.items()})
        )
    return written


def write_filters(model: AlexNetFamily, out: str | Path, images: Sequence[str | Path] = ()) -> list[Path]:
    """conv1 grid (towers apart), conv2 per input channel, and the dead / high-frequency statistics."""
    from alexnet.visualize.filters import (
        conv1_blocks,
        filter_statistics,
        plot_conv1_filters,
        plot_conv2_filters,
        plot_filter_statistics,
    )

    out = Path(out)
    written = [save_figure(plot_conv1_filters(model), out / "conv1_filters.png")]
    for i, block in enumerate(conv1_blocks(model)):
        written.append(save_image(block, out / f"conv1_filters_block{i + 1}.png"))
    written.append(save_figure(plot_conv2_filters(model), out / "conv2_filters.png"))
    sample = torch.stack([prepare(model, im).tensor for im in images]) if images else None
    stats = [filter_statistics(model, layer, images=sample) for layer in ("conv1", "conv2")]
    written.append(
        save_figure(
            plot_filter_statistics(stats, f"{model.config.name}: ZF Fig. 6 statistics"),
            out / "filter_statistics.png",
        )
    )
    written.append(save_json(out / "filter_statistics.json", [s.summary() for s in stats]))
    written.append(
        save_npz(
            out / "filter_statistics.npz",
            **{f"{s.layer}_{k}": v for s in stats for k, v in s.arrays().items()},
        )
    )
    return written


def write_deconv(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    layer: str,
    channel: int | None = None,
    unit: tuple[int, int] | None = None,
    rule: str = "deconvnet",
) -> list[Path]:
    """Deconvnet projections (ZF §2.1) of one feature map or unit, per image (``rule="gradient"`` or ``"guided"``:
    the saliency map or guided backpropagation, :mod:`alexnet.visualize.deconvnet`).

    Which channel and unit: ``channel`` and ``unit`` as given; ``unit`` alone: the channel strongest at that
    unit (ZF project a single activation); ``channel`` alone: the whole map; neither: each image's strongest
    activation (its channel and unit). Output names carry the channel and, for a unit, ``unitROW-COL``, and end
    in ``_deconv`` (``_gradient``, ``_guided``); the .npz records ``projection``, ``layer``, ``channel``, ``unit``
    (row, col; empty for a whole map), ``image`` and ``rule``.

    A classifier layer (``fc6``, ``relu7``…): ``channel`` is one of its units (default each image's strongest),
    no ``unit``; the pass goes through the classifier's transposes first. The last one (``fc8``, the class scores):
    ``channel`` is a class (default each image's top class), its score's projection
    (:func:`alexnet.visualize.deconvnet.class_projection`; under ``rule="gradient"`` Simonyan et al.'s class
    saliency, whose map, §3.1, is drawn beside it)."""
    from alexnet.models.capture import capture, trunk_layers
    from alexnet.visualize.deconvnet import check_rule, deconvnet, deconvnet_strongest, layer_shape
    from alexnet.visualize.plot import new_figure

    check_rule(rule)  # before any image is read
    if layer == model.layer_names()[-1]:
        return _write_class_projection(model, images, Path(out), layer, channel, unit, rule)
    model.layer(layer)  # LayerNotFound, naming the valid layers
    head = layer not in trunk_layers(model)
    if head and unit is not None:
        raise SelectionError(f"{layer} has no map to take a unit of: its units are its channels (--channel)")
    prep = preprocessing_of(model)
    if unit is not None:  # before any image is read: the map's size does not depend on the image
        _, h, w = layer_shape(model, layer, prep.input_size)
        if not (0 <= unit[0] < h and 0 <= unit[1] < w):
            raise SelectionError(f"unit ({unit[0]}, {unit[1]}) is outside {layer}'s {h}×{w} map")
    out = Path(out)
    written: list[Path] = []
    for path, stem in zip(images, _stems(images), strict=True):
        p = prepare(model, path)
        x = p.tensor.unsqueeze(0)
        if head:  # a classifier unit: ZF's pass through the classifier's transposes first
            ch = channel if channel is not None else int(capture(model, x, [layer])[layer][0].argmax())
            proj, at = deconvnet(model, x, layer, ch, None, rule)[0], None
            what = f"{layer} unit {ch}" + (", the strongest" if channel is None else "")
        else:
            ch, at = channel, unit
            if ch is None:
                acts = capture(model, x, [layer])[layer][0]
                # With a unit, the channel strongest there: the map's strongest elsewhere may be 0 at the unit.
                ch = int(
                    acts[:, at[0], at[1]].argmax() if at is not None else acts.flatten(1).amax(1).argmax()
                )
            if at is None and channel is None:
                res = deconvnet_strongest(model, x, layer, ch, rule)
                proj, at = res.images[0], (int(res.units[0, 0]), int(res.units[0, 1]))
                where = f"strongest unit {at}"
            else:
                proj = deconvnet(model, x, layer, ch, at, rule)[0]
                where = f"unit {at}" if at is not None else "whole map"
            what = f"{layer} feature map {ch}, {where}"
        # The unit is part of the name: a unit's projection and the whole map's must not overwrite each other.
        name = f"{stem}_{layer}_ch{ch}" + (f"_unit{at[0]}-{at[1]}" if at is not None else "")
        picture = projection_to_image(proj, prep)
        fig = new_figure(10, 5)
        ax0, ax1 = fig.subplots(1, 2)
        ax0.imshow(uint8_to_float(p.crop))
        ax0.set_title(Path(str(path)).name)
        ax1.imshow(picture)
        ax1.set_title(what + ("" if rule == "deconvnet" else f" ({rule})"))
        for ax in (ax0, ax1):
            ax.axis("off")
        unit_rc = np.array(at if at is not None else (), dtype=np.int64)
        written += _save_projection(
            out, name, rule, fig, picture, proj, layer=layer, channel=ch, unit=unit_rc, image=str(path)
        )
    return written


def _save_projection(
    out: Path, name: str, rule: str, fig: Figure, picture: np.ndarray, proj: torch.Tensor, **numbers: Any
) -> list[Path]:
    """A projection's three files: the figure ``<name>_<kind>.png`` (``deconv``, or the rule's name), the picture
    alone ``<name>[_<rule>]_projection.png``, and ``<name>_<kind>.npz`` (``projection``, ``rule``, ``numbers``)."""
    kind, own = ("deconv", name) if rule == "deconvnet" else (rule, f"{name}_{rule}")
    return [
        save_figure(fig, out / f"{name}_{kind}.png"),
        save_image(picture, out / f"{own}_projection.png"),
        save_npz(out / f"{name}_{kind}.npz", projection=proj.numpy(), rule=rule, **numbers),
    ]


def write_occlusion(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    size: int = 32,
    stride: int = 8,
    target: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Path]:
    """ZF Fig. 7's five panels per image (the followed map's deconvnet projection as its column (c)), with the
    three maps, the projection and the legend as .npz / .json."""
    from alexnet.visualize.occlusion import followed_map_projection, occlusion, plot_occlusion

    out = Path(out)
    written: list[Path] = []
    for path, stem in zip(images, _stems(images), strict=True):
        p = prepare(model, path)
        r = occlusion(
            model, p.tensor, target=target, size=size, stride=stride, batch_size=batch_size, progress=progress
        )
        projection = followed_map_projection(model, p.tensor, r)
        shown = projection_to_image(projection, preprocessing_of(model))
        written.append(
            save_figure(
                plot_occlusion(r, uint8_to_float(p.crop), Path(str(path)).name, projection=shown),
                out / f"{stem}_occlusion.png",
            )
        )
        written.append(save_npz(out / f"{stem}_occlusion.npz", **r.arrays(), projection=projection.numpy()))
        written.append(
            save_json(
                out / f"{stem}_occlusion.json",
                {
                    "image": str(path),
                    "layer": r.layer,
                    "channel": r.channel,
                    "target": r.target,
                    "size": r.size,
                    "stride": r.stride,
                    "base_activation": r.base_activation,
                    "base_probability": r.base_probability,
                    "labels": {str(k): v for k, v in r.labels.items()},
                },
            )
        )
    return written


def _check_class(model: AlexNetFamily, target: int | None) -> None:
    """:class:`SelectionError` for a class the model does not have (``None``: each image's top class)."""
    if target is not None and not 0 <= target < model.num_classes:
        raise SelectionError(f"class {target} is out of range (0–{model.num_classes - 1})")


def _write_class_projection(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: Path,
    layer: str,
    target: int | None,
    unit: tuple[int, int] | None,
    rule: str,
) -> list[Path]:
    """:func:`write_deconv` for a class score: ``<image>_<layer>_class<C>_<kind>.png`` (the crop, the projection
    and, for the gradient, its saliency map), ``..._projection.png`` and the .npz (as a feature map's, ``channel``
    the class, plus ``score``; ``saliency`` for the gradient)."""
    from alexnet.predict import labels_of
    from alexnet.visualize.deconvnet import class_projection, saliency_map
    from alexnet.visualize.plot import new_figure

    if unit is not None:
        raise SelectionError(f"{layer} has no map to take a unit of: its units are the classes (--channel)")
    _check_class(model, target)  # before any image is read
    labels = labels_of(model)
    prep = preprocessing_of(model)
    written: list[Path] = []
    for path, stem in zip(images, _stems(images), strict=True):
        p = prepare(model, path)
        res = class_projection(model, p.tensor.unsqueeze(0), target, rule)
        proj, c = res.images[0], int(res.targets[0])
        picture = projection_to_image(proj, prep)
        saliency = saliency_map(proj).numpy() if rule == "gradient" else None
        panels = 2 if saliency is None else 3
        fig = new_figure(5 * panels, 5)
        axes = fig.subplots(1, panels)
        axes[0].imshow(uint8_to_float(p.crop))
        axes[0].set_title(Path(str(path)).name)
        axes[1].imshow(picture)
        axes[1].set_title(f"{layer}: {labels[c]} ({c}), score {float(res.scores[0]):.2f} ({rule})")
        if saliency is not None:
            axes[2].imshow(saliency, cmap="gray")
            axes[2].set_title("saliency map: max |gradient| over colours")
        for ax in axes:
            ax.axis("off")
        extra = {} if saliency is None else {"saliency": saliency}
        written += _save_projection(
            out,
            f"{stem}_{layer}_class{c}",
            rule,
            fig,
            picture,
            proj,
            layer=layer,
            channel=c,
            unit=np.array((), dtype=np.int64),
            score=float(res.scores[0]),
            image=str(path),
            **extra,
        )
    return written


def write_gradcam(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    layer: str | None = None,
    target: int | None = None,
    guided: bool = False,
) -> list[Path]:
    """Grad-CAM (Selvaraju et al. 2017, §3; :mod:`alexnet.visualize.gradcam`) per image, for ``target`` (default
    each image's top class): ``<image>_gradcam.png`` (the crop, and the map over it) and ``<image>_gradcam.npz``
    (``map`` at the layer's resolution, ``upsampled`` to the crop, ``weights`` α per feature map, ``target``,
    ``score``, ``probability``, ``layer``, ``image``). With ``guided``, Fig. 1's four panels (the image, guided
    backpropagation, Grad-CAM, Guided Grad-CAM) and ``guided`` and ``guided_gradcam`` (3×H×W, the model's channel
    order and units) in the .npz."""
    from alexnet.models.capture import check_trunk_layer
    from alexnet.visualize.gradcam import default_layer, gradcam_figure

    layer = layer or default_layer(model)
    check_trunk_layer(model, layer)  # before any image is read
    _check_class(model, target)
    out = Path(out)
    written: list[Path] = []
    for path, stem in zip(images, _stems(images), strict=True):
        p = prepare(model, path)
        cam, fig = gradcam_figure(model, p, Path(str(path)).name, layer, target, guided)
        written.append(save_figure(fig, out / f"{stem}_gradcam.png"))
        extra = {}
        if cam.guided is not None:
            extra = {"guided": cam.guided[0].numpy(), "guided_gradcam": cam.guided_gradcam()[0].numpy()}
        written.append(
            save_npz(
                out / f"{stem}_gradcam.npz",
                map=cam.maps[0].numpy(),
                upsampled=cam.upsampled(tuple(p.tensor.shape[-2:]))[0].numpy(),
                weights=cam.weights[0].numpy(),
                target=int(cam.targets[0]),
                score=float(cam.scores[0]),
                probability=float(cam.probabilities[0]),
                layer=layer,
                image=str(path),
                **extra,
            )
        )
    return written


def write_integrated(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    target: int | None = None,
    baseline: str = "black",
    steps: int = 50,
    method: str = "riemann_right",
    output: str = "probability",
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[Path], list[Integrated]]:
    """Integrated gradients (Sundararajan et al. 2017; :mod:`alexnet.visualize.integrated`) per image, for
    ``target`` (default each image's top class): ``<image>_integrated.png`` (the crop, the attributions summed
    over colours, their magnitude over the crop) and ``<image>_integrated.npz`` (``attributions`` 3×H×W in the
    model's channel order, ``target``, ``output`` F(x), ``baseline_output`` F(x'), ``delta`` completeness's error,
    ``method``, ``steps``, ``baseline``, ``of`` (probability or score), ``image``). Returns the paths and the
    results (the caller reports ``delta``)."""
    from tqdm import tqdm

    from alexnet.visualize.integrated import integrated_figure, nodes

    nodes(method, steps)  # bad settings fail before any image is read
    _check_class(model, target)  # before any image is read
    out = Path(out)
    written: list[Path] = []
    results: list[Integrated] = []
    pairs = list(zip(images, _stems(images), strict=True))
    for path, stem in tqdm(pairs, desc="integrated gradients", disable=not progress):
        p = prepare(model, path)
        res, fig = integrated_figure(
            model,
            p,
            Path(str(path)).name,
            target,
            baseline,
            steps,
            method,
            output,  # type: ignore[arg-type]
            batch_size,
        )
        c = int(res.targets[0])
        attributions = res.attributions[0].numpy()
        written.append(save_figure(fig, out / f"{stem}_integrated.png"))
        written.append(
            save_npz(
                out / f"{stem}_integrated.npz",
                attributions=attributions,
                target=c,
                output=float(res.outputs[0]),
                baseline_output=float(res.baseline_outputs[0]),
                delta=float(res.delta[0]),
                method=method,
                steps=steps,
                baseline=baseline,
                of=output,
                image=str(path),
            )
        )
        results.append(res)
    return written, results


def write_smoothgrad(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    target: int | None = None,
    method: str = "gradient",
    samples: int = 50,
    noise: float = 0.15,
    statistic: str = "smoothgrad",
    seed: int = 0,
    batch_size: int = 32,
    steps: int = 20,
    baseline: str = "black",
    output: str = "probability",
    progress: bool = False,
) -> list[Path]:
    """SmoothGrad (Smilkov et al. 2017; :mod:`alexnet.visualize.smoothgrad`) per image, for ``target`` (default
    each image's top class): ``<image>_<statistic>[_<method>].png`` (the crop, the map of one pass without noise, the
    smoothed map; the method's name is left out for the paper's gradient) and the ``.npz`` (``attributions`` and
    ``single`` 3×H×W in the model's channel order, ``target``, ``sigma`` in input units, ``method``, ``statistic``,
    ``samples``, ``noise``, ``seed``, ``image``)."""
    from tqdm import tqdm

    from alexnet.visualize.smoothgrad import check_settings, smoothgrad_figure

    check_settings(method, statistic, samples, noise)  # bad settings fail before any image is read
    _check_class(model, target)
    out = Path(out)
    name = statistic if method == "gradient" else f"{statistic}_{method}"
    extra: dict[str, Any] = {"steps": steps, "baseline": baseline, "output": output}  # integrated's only
    written: list[Path] = []
    pairs = list(zip(images, _stems(images), strict=True))
    for path, stem in tqdm(pairs, desc=name, disable=not progress):
        p = prepare(model, path)
        res, single, fig = smoothgrad_figure(
            model,
            p,
            Path(str(path)).name,
            target,
            method,
            samples,
            noise,
            statistic,  # type: ignore[arg-type]
            seed,
            batch_size,
            **extra,
        )
        c = int(res.targets[0])
        smoothed = res.attributions[0].numpy()
        written.append(save_figure(fig, out / f"{stem}_{name}.png"))
        written.append(
            save_npz(
                out / f"{stem}_{name}.npz",
                attributions=smoothed,
                single=single.numpy(),
                target=c,
                sigma=float(res.sigmas[0]),
                method=method,
                statistic=statistic,
                samples=samples,
                noise=noise,
                seed=seed,
                image=str(path),
                **(extra if method == "integrated" else {}),
            )
        )
    return written


def write_lrp(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    target: int | None = None,
    rule: str = "composite",
    epsilon: float = 0.25,
    gamma: float = 0.25,
    progress: bool = False,
) -> list[Path]:
    """Layer-wise relevance propagation (Bach et al. 2015; :mod:`alexnet.visualize.lrp`) per image, for ``target``
    (default each image's top class): ``<image>_lrp_<rule>.png`` (the crop and the relevance map) and the ``.npz``
    (``attributions`` 3×H×W in the model's channel order, ``target``, ``score``, ``rule``, ``layer_rules`` as
    JSON, ``epsilon``, ``gamma``, ``image``)."""
    from tqdm import tqdm

    from alexnet.visualize.lrp import check_settings, lrp_figure

    check_settings(rule, epsilon, gamma)  # bad settings fail before any image is read
    _check_class(model, target)
    out = Path(out)
    written: list[Path] = []
    pairs = list(zip(images, _stems(images), strict=True))
    for path, stem in tqdm(pairs, desc="lrp", disable=not progress):
        res, fig = lrp_figure(model, prepare(model, path), Path(str(path)).name, target, rule, epsilon, gamma)
        written.append(save_figure(fig, out / f"{stem}_lrp_{rule}.png"))
        written.append(
            save_npz(
                out / f"{stem}_lrp_{rule}.npz",
                attributions=res.attributions[0].float().numpy(),
                target=int(res.targets[0]),
                score=float(res.scores[0]),
                rule=rule,
                layer_rules=json.dumps(res.layer_rules),
                epsilon=epsilon,
                gamma=gamma,
                image=str(path),
            )
        )
    return written


def write_perturbation(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    target: int | None = None,
    methods: Sequence[str] | None = None,
    region: int = 9,
    steps: int = 100,
    output: str = "score",
    seed: int = 0,
    batch_size: int = 64,
    samples: int = 50,
    integration_steps: int = 50,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[Path], Perturbation]:
    """Samek et al.'s region perturbation (:mod:`alexnet.visualize.perturbation`) of all the images together, for
    ``target`` (default each image's top class): ``perturbation.png`` (the mean curves), ``perturbation.json``
    (per method the AOPC, its mean and standard error, the mean curve; the settings) and ``perturbation.npz``
    (``outputs`` images × methods × steps + 1, ``aopc``, ``methods``, ``targets``, ``images``). Returns the paths
    and the result (its :func:`~alexnet.visualize.perturbation.table` for the caller to print); when ``stop``
    (asked after each image) ends the run early, the files hold the images done (``complete`` false in the
    .json)."""
    from alexnet.visualize.perturbation import (
        METHODS,
        check_settings,
        plot_perturbation,
        region_perturbation,
    )

    chosen = check_settings(
        list(methods) if methods is not None else list(METHODS),
        region,
        steps,
        batch_size,
        samples=samples,
        integration_steps=integration_steps,
        output=output,
    )
    _check_class(model, target)
    x = torch.stack([prepare(model, path).tensor for path in images])
    res = region_perturbation(
        model,
        x,
        target,
        chosen,
        region=region,
        steps=steps,
        output=output,  # type: ignore[arg-type]
        seed=seed,
        batch_size=batch_size,
        samples=samples,
        integration_steps=integration_steps,
        progress=progress,
        stop=stop,
    )
    out = Path(out)
    names = [str(p) for p in images][: res.aopc.shape[0]]
    mean, spread = res.mean_aopc()
    fall = (res.outputs[..., :1] - res.outputs).mean(0)
    written = [
        save_figure(
            plot_perturbation(res, f"{len(names)} image(s), {model.config.name}"), out / "perturbation.png"
        )
    ]
    numbers: dict[str, Any] = {
        "region": region,
        "steps": res.steps,
        "output": output,
        "seed": seed,
        "complete": res.complete,
        "images_asked": len(images),
        "images": names,
        "targets": res.targets.tolist(),
        "methods": {
            m: {
                "aopc_mean": round(float(mean[j]), 6),
                "aopc_standard_error": round(float(spread[j]), 6),
                "aopc": [round(float(v), 6) for v in res.aopc[:, j]],
                "mean_fall": [round(float(v), 6) for v in fall[j]],
            }
            for j, m in enumerate(res.methods)
        },
    }
    written.append(save_json(out / "perturbation.json", numbers))
    written.append(
        save_npz(
            out / "perturbation.npz",
            outputs=res.outputs.numpy(),
            aopc=res.aopc.numpy(),
            methods=np.array(res.methods),
            targets=res.targets.numpy(),
            images=np.array(names),
        )
    )
    return written, res


def _by_method(methods: list[str], values: torch.Tensor) -> dict[str, list[float | None]]:
    """A methods × steps table as JSON: one list per method, ``None`` for NaN."""
    return {
        m: [None if np.isnan(v) else round(float(v), 6) for v in values[i].tolist()]
        for i, m in enumerate(methods)
    }


def write_sanity(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    target: int | None = None,
    methods: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    cascading: bool = True,
    against: tuple[str, AlexNetFamily] | None = None,
    seed: int = 0,
    samples: int = 50,
    steps: int = 50,
    progress: bool = False,
) -> tuple[list[Path], list[str]]:
    """Adebayo et al.'s model parameter randomisation test (:mod:`alexnet.visualize.sanity`) per image, or with
    ``against`` (a name and a network: the same architecture trained on random labels) their data randomisation
    test: ``<image>_sanity[_independent|_data].png`` (Fig. 2's grid), ``.json`` (per method and step the Spearman
    rank correlations of the absolute and the signed maps with the original's and SSIM; ``null`` for a constant
    map) and ``.npz`` (``maps`` methods × steps × H × W, the three similarity tables, ``methods``, ``steps``,
    ``target``). Returns the paths and one text table per image (Spearman, absolute values) for the caller to
    print."""
    from tqdm import tqdm

    from alexnet.predict import labels_of
    from alexnet.visualize.sanity import (
        METHODS,
        check_layers,
        check_methods,
        check_same_network,
        data_randomization_test,
        plot_sanity,
        randomization_test,
    )

    chosen = check_methods(
        list(methods) if methods is not None else list(METHODS)
    )  # before any image is read
    _check_class(model, target)
    if against is None:
        check_layers(model, layers)
    if against is not None:
        check_same_network(model, against[1], against[0])
    labels = labels_of(model)
    out = Path(out)
    test = "data" if against is not None else "cascading" if cascading else "independent"
    suffix = {"cascading": "sanity", "independent": "sanity_independent", "data": "sanity_data"}[test]
    how = {
        "cascading": "layers randomised from the top",
        "independent": "layers randomised one at a time",
        "data": f"against {against[0] if against else ''}",
    }[test]
    written: list[Path] = []
    tables: list[str] = []
    pairs = list(zip(images, _stems(images), strict=True))
    for path, stem in tqdm(pairs, desc="sanity", disable=not progress or against is None):
        p = prepare(model, path)
        if against is not None:
            res = data_randomization_test(
                model, against[1], p.tensor, target, chosen, name=against[0], samples=samples, steps=steps
            )
        else:
            res = randomization_test(
                model,
                p.tensor,
                target,
                chosen,
                cascading=cascading,
                layers=layers,
                seed=seed,
                samples=samples,
                steps=steps,
                progress=progress,
            )
        c = int(res.targets[0])
        name = Path(str(path)).name
        fig = plot_sanity(res, 0, uint8_to_float(p.crop), f"{name}: {labels[c]} ({c}); {how}")
        written.append(save_figure(fig, out / f"{stem}_{suffix}.png"))
        numbers: dict[str, Any] = {"image": str(path), "target": c, "test": test}
        numbers.update({"seed": seed} if against is None else {"against": against[0]})
        numbers.update(
            steps=res.steps,
            spearman_abs=_by_method(res.methods, res.spearman_abs[0]),
            spearman=_by_method(res.methods, res.spearman[0]),
            ssim=_by_method(res.methods, res.ssim[0]),
        )
        written.append(save_json(out / f"{stem}_{suffix}.json", numbers))
        written.append(
            save_npz(
                out / f"{stem}_{suffix}.npz",
                maps=res.maps[0].numpy(),
                spearman_abs=res.spearman_abs[0].numpy(),
                spearman=res.spearman[0].numpy(),
                ssim=res.ssim[0].numpy(),
                methods=np.array(res.methods),
                steps=np.array(res.steps),
                target=c,
            )
        )
        width = max(len(m) for m in res.methods)
        head = f"{name}: {labels[c]} ({c}); Spearman rank correlation (absolute values) with the original"
        columns = max(8, *(len(s) for s in res.steps[1:]))
        lines = [head, " " * width + "  " + " ".join(f"{s:>{columns}s}" for s in res.steps[1:])]
        for i, m in enumerate(res.methods):
            row = " ".join(f"{v:{columns}.2f}" for v in res.spearman_abs[0, i, 1:].tolist())
            lines.append(f"{m:<{width}s}  {row}")
        tables.append("\n".join(lines))
    return written, tables


def write_top9(
    model: AlexNetFamily,
    data: str | Path,
    out: str | Path,
    layer: str,
    *,
    split: str = "val",
    channels: Sequence[int] | None = None,
    max_images: int | None = None,
    resume: bool = False,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = False,
    rule: str = "deconvnet",
) -> list[Path]:
    """Stream the data set once (state in ``OUT/top9/<layer>/``; decoded in ``workers`` processes), then
    ``top9.json``/``.npz`` and the grids (another ``rule``'s projections in ``channel_NNN_<rule>.png``; the
    stream does not depend on it, so ``--resume`` reuses a finished pass)."""
    from alexnet.models.capture import check_trunk_layer
    from alexnet.visualize.deconvnet import check_rule, layer_shape
    from alexnet.visualize.topk import folder_items, render_top9, stream_topk, write_topk

    check_rule(rule)
    check_trunk_layer(model, layer)
    n_ch = layer_shape(model, layer)[0]
    bad = [c for c in channels or () if not 0 <= c < n_ch]
    if bad:  # before the (long) pass over the data
        raise SelectionError(f"channel {bad[0]} is out of range for {layer} (0–{n_ch - 1})")
    folder = Path(out) / "top9" / layer
    items = folder_items(data, split, max_images)
    state = stream_topk(
        model,
        items,
        layer,
        k=9,
        batch_size=batch_size,
        state_dir=folder,
        resume=resume,
        progress=progress,
        total=len(items),
        workers=workers,
    )
    grids = render_top9(model, state, folder, channels, progress=progress, rule=rule)
    return write_topk(model, state, folder) + grids


def write_evolution(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    run: str | Path | None,
    checkpoints: Sequence[str | Path] | None,
    layer: str,
    channels: Sequence[int],
    rule: str = "deconvnet",
) -> list[Path]:
    """ZF Fig. 4 from ``RUN/checkpoints/*.pt`` (or the given files) over ``images``: ``evolution_<layer>.png``,
    ``.npz`` and ``.json`` (another ``rule``'s projections in ``evolution_<layer>_<rule>.*``)."""
    from alexnet.errors import WeightsError
    from alexnet.visualize.deconvnet import check_rule
    from alexnet.visualize.evolution import evolution, plot_evolution, read_snapshot, run_snapshots

    check_rule(rule)

    if checkpoints:
        files = [Path(p) for p in checkpoints]
    elif run is not None:
        files = run_snapshots(run)
    else:
        raise WeightsError("evolution needs --run DIR (with checkpoints/) or --checkpoints FILE …")
    snaps = [read_snapshot(f) for f in files]
    x = torch.stack([prepare(model, im).tensor for im in images])
    ev = evolution(model, x, snaps, layer, channels, rule)
    out = Path(out)
    name = f"evolution_{layer}" + ("" if rule == "deconvnet" else f"_{rule}")
    return [
        save_figure(plot_evolution(model, ev), out / f"{name}.png"),
        save_npz(out / f"{name}.npz", **ev.arrays()),
        save_json(
            out / f"{name}.json",
            {
                "layer": layer,
                "rule": rule,
                "channels": list(channels),
                "snapshots": ev.labels,
                "files": [str(f) for f in files],
                "images": [str(p) for p in images],
            },
        ),
    ]


def write_invariance(
    model: AlexNetFamily, images: Sequence[str | Path], out: str | Path, target: int | None = None
) -> list[Path]:
    """ZF Fig. 5: translation, scale and rotation curves for the images."""
    from alexnet.inputs import as_uint8_image
    from alexnet.visualize.invariance import DEFAULT_VALUES, invariance, plot_invariance

    resize = preprocessing_of(model).resize  # the images are resized before they are transformed
    pics = [as_uint8_image(p, min_side=resize)[0] for p in images]
    targets = [target] * len(pics) if target is not None else None
    curves = [invariance(model, pics, kind, targets=targets) for kind in DEFAULT_VALUES]
    names = [Path(str(p)).name for p in images]
    out = Path(out)
    arrays: dict[str, object] = {}
    for c in curves:
        arrays.update(c.arrays())
    return [
        save_figure(plot_invariance(curves, names), out / "invariance.png"),
        save_npz(out / "invariance.npz", **arrays),
        save_json(
            out / "invariance.json",
            {
                "images": [str(p) for p in images],
                "targets": curves[0].targets,
                "layers": list(curves[0].layers),
            },
        ),
    ]


def write_retrieval(
    model: AlexNetFamily,
    queries: Sequence[str | Path],
    data: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    max_images: int | None = None,
    neighbours: int = 6,
    cache: str | Path | None = None,
    batch_size: int = 32,
    workers: int = 0,
) -> list[Path]:
    """AlexNet Fig. 4: each query and its nearest gallery images in fc7 space; features cached (extracted
    ``batch_size`` at a time, decoded in ``workers`` processes)."""
    from alexnet.analysis.features import extract_features
    from alexnet.visualize.retrieval import plot_retrieval, retrieve
    from alexnet.visualize.topk import folder_items

    out = Path(out)
    files = [p for p, _ in folder_items(data, split, max_images)]
    gallery = extract_features(
        model,
        files,
        cache_dir=cache or out / "cache",
        progress=True,
        batch_size=batch_size,
        workers=workers,
        what="gallery images",
    )
    result = retrieve(model, queries, gallery, neighbours)
    return [
        save_figure(plot_retrieval(model, result), out / "retrieval.png"),
        save_npz(out / "retrieval.npz", neighbours=result.neighbours, distances=result.distances),
        save_json(
            out / "retrieval.json",
            [
                {
                    "query": q,
                    "neighbours": [
                        {"image": result.gallery[int(i)], "distance": float(d)}
                        for i, d in zip(result.neighbours[n], result.distances[n], strict=True)
                    ],
                }
                for n, q in enumerate(result.queries)
            ],
        ),
    ]


def read_parts(path: str | Path, images: int) -> dict[str, list[tuple[float, float]]]:
    """A parts file for ``alexnet visualize correspondence``: JSON ``{"right eye": [[x, y], …], …}``, one (x, y)
    pixel per image in the order the images are given, in each image's own pixels (x to the right, y down)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SelectionError(f"{path}: not a readable JSON parts file ({str(e).splitlines()[0]})") from None
    example = '{"right eye": [[x, y], …one per image], "nose": […]}'
    if not isinstance(data, dict) or not data:
        raise SelectionError(f"{path}: expected a JSON object of parts, e.g. {example}")
    parts: dict[str, list[tuple[float, float]]] = {}
    for name, points in data.items():
        ok = isinstance(points, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int | float) for v in p) for p in points
        )
        if not ok:
            raise SelectionError(f"{path}: part {name!r} should be a list of [x, y] pixels, e.g. {example}")
        if len(points) != images:
            raise SelectionError(f"{path}: part {name!r} has {len(points)} positions for {images} images")
        parts[str(name)] = [(float(x), float(y)) for x, y in points]
    return parts


def write_correspondence(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    parts_file: str | Path,
    out: str | Path,
    *,
    size: int = 32,
    draws: int = 10,
) -> tuple[str, list[Path]]:
    """ZF §4.2's correspondence analysis: Table 1 (returned as text, and in the JSON) and Fig. 8's masks."""
    from PIL import Image

    from alexnet.data.images import oriented_size
    from alexnet.visualize.correspondence import correspondence, crop_position, plot_correspondence

    pre = preprocessing_of(model)
    parts = read_parts(parts_file, len(images))
    prepared = [prepare(model, p) for p in images]
    side = pre.input_size
    corners: dict[str, list[tuple[int, int]]] = {name: [] for name in parts}
    for i, path in enumerate(images):
        # the file's size as shown, as the parts file counts: from its header, no second decode
        with Image.open(path) as header:
            width, height = oriented_size(header)
        for name, points in parts.items():
            x, y = points[i]
            row, col = crop_position(pre.resize, side, height, width, x + 0.5, y + 0.5)  # the pixel's centre
            if not (0 <= row < side and 0 <= col < side):
                raise SelectionError(
                    f"{parts_file}: part {name!r} of {path} at ({x:g}, {y:g}) is outside the {side}×{side} centre "
                    "crop the network sees"
                )
            # the square centred on the point, moved inside the crop where the point is near its edge
            top = min(max(round(row - size / 2), 0), side - size)
            left = min(max(round(col - size / 2), 0), side - size)
            corners[name].append((top, left))
    inputs = torch.stack([p.tensor for p in prepared])
    result = correspondence(model, inputs, corners, size=size, draws=draws)
    # the square drawn in the mean pixel the network sees there (RGB 0–1)
    mean_image = mean_image_of(model)
    mean = mean_image.mean(dim=(1, 2)) if mean_image is not None else torch.tensor(pre.mean)
    mean = mean / pre.pixel_scale
    colour = tuple(float(v) for v in (mean.flip(0) if pre.channel_order == "BGR" else mean).clamp(0, 1))
    names = [Path(str(p)).name for p in images]
    out = Path(out)
    written = [
        save_figure(
            plot_correspondence(result, [uint8_to_float(p.crop) for p in prepared], names, colour),  # type: ignore[arg-type]
            out / "correspondence.png",
        ),
        save_json(
            out / "correspondence.json",
            {
                "images": [str(p) for p in images],
                "size": size,
                "draws": draws,
                "layers": result.layers,
                "scores": result.scores(),
                "squares": {part: [list(c) for c in cs] for part, cs in result.boxes.items()},
            },
        ),
    ]
    return result.table(), written


def write_predictions(
    model: AlexNetFamily,
    images: Sequence[str | Path],
    out: str | Path,
    *,
    targets: Sequence[int] | None = None,
    topk: int = 5,
) -> list[Path]:
    """AlexNet Fig. 4 (left): the images with their top-k bars (``predictions.png``) and ``predictions.json``."""
    from alexnet.visualize.predictions import predictions_figure

    if targets is not None and len(targets) != len(images):
        raise SelectionError(f"--targets gives {len(targets)} classes for {len(images)} images")
    results, fig = predictions_figure(model, images, targets, topk)
    out = Path(out)
    return [
        save_figure(fig, out / "predictions.png"),
        save_json(out / "predictions.json", {"topk": topk, "images": [r.to_json() for r in results]}),
    ]


def write_maximize(
    model: AlexNetFamily,
    out: str | Path,
    layer: str,
    channels: Sequence[int] | None = None,
    unit: tuple[int, int] | None = None,
    settings: Regularization | None = None,
    seed: int = 0,
    *,
    batch_size: int | None = 16,
    progress: bool = False,
    stop: Callable[[], bool] | None = None,
) -> tuple[list[Path], Maximized]:
    """Yosinski et al.'s optimised images (§3; :mod:`alexnet.visualize.maximize`) of ``channels`` of ``layer``
    (default its first 8): ``maximize_<layer>.png`` draws them side by side (a feature map's unit cropped to its
    receptive field, as the DeepVis toolbox shows them), one PNG per unit holds the whole image, and
    ``maximize_<layer>.npz`` the numbers (``pixels`` N×S×S×3 RGB 0–255, ``objective`` per step, ``best``,
    ``best_step``, ``first_top``, ``channels``, ``unit``, ``settings`` as JSON, ``seed``). Names of a feature map's
    files carry the unit (``maximize_conv5_unit6-6``). Images are min–max stretched for display, as the toolbox
    saved them. ``stop()``: checked between steps; what was begun is written. Returns the paths and the result."""
    import json

    from tqdm import tqdm

    from alexnet.visualize.maximize import (
        DEFAULT_PRESET,
        PRESETS,
        check_selection,
        check_settings,
        default_channels,
        for_display,
        maximize,
        plot_maximized,
    )

    settings = settings or PRESETS[DEFAULT_PRESET]
    channels = default_channels(model, layer) if channels is None else list(channels)
    unit = check_selection(model, layer, channels, unit)
    check_settings(model, settings)  # before the progress bar starts
    chunks = -(-len(channels) // (batch_size or len(channels)))
    with tqdm(total=settings.steps * chunks, desc=f"maximize {layer}", disable=not progress) as bar:
        res = maximize(
            model,
            layer,
            channels,
            unit,
            settings,
            seed,
            batch_size=batch_size,
            on_step=lambda _: bar.update(),
            stop=stop,
        )
    stem = f"maximize_{layer}" + (f"_unit{unit[0]}-{unit[1]}" if unit is not None else "")
    shown = for_display(model, res, crop=False)
    out = Path(out)
    written = [save_figure(plot_maximized(model, res), out / f"{stem}.png")]
    for ch, image in zip(res.channels, shown, strict=True):
        written.append(save_image(image, out / f"{stem}_ch{ch}.png"))
    written.append(
        save_npz(
            out / f"{stem}.npz",
            pixels=res.pixels.permute(0, 2, 3, 1).numpy(),
            objective=res.objective.numpy(),
            best=res.best.numpy(),
            best_step=res.best_step.numpy(),
            first_top=res.first_top.numpy(),
            stuck=res.stuck.numpy(),
            channels=np.array(res.channels, dtype=np.int64),
            unit=np.array(unit if unit is not None else (), dtype=np.int64),
            layer=layer,
            settings=json.dumps(res.settings.to_dict()),
            seed=seed,
        )
    )
    return written, res
