"""``alexnet report``: one self-contained HTML page about a training run (issue 4, item 9).

Everything is inline — CSS in a ``<style>`` element, every picture a base64 PNG ``data:`` URI — so the file opens
from disk, can be mailed or archived, and makes no network request. The page gathers the other modules' work:

* the run: ``config.json`` and the final numbers of ``results.json`` when present;
* the per-layer parameters and computation table (:func:`alexnet.analysis.summarize`);
* learning curves drawn from ``metrics.csv`` (loss and top-1 / top-5 error per evaluation);
* the conv1 filters (AlexNet Fig. 3, :func:`alexnet.visualize.filters.plot_conv1_filters`);
* activation maps of all conv stages for a few images (:func:`~alexnet.visualize.activations.plot_all_conv_layers`);
* deconvnet top-9 grids (ZF Fig. 2): from ``RUN/top9/<layer>/`` if ``alexnet visualize top9`` wrote one, else a
  small top-9 streamed now over a few validation images (:mod:`alexnet.visualize.topk`) — the page says which;
* occlusion maps (ZF Fig. 7, :func:`alexnet.visualize.occlusion.occlusion`);
* Grad-CAM and Guided Grad-CAM of the same images (Selvaraju et al. 2017, :mod:`alexnet.visualize.gradcam`);
* their integrated gradients, SmoothGrad and LRP (Sundararajan et al. 2017, Smilkov et al. 2017, Bach et al.
  2015; :mod:`alexnet.visualize.integrated`, :mod:`alexnet.visualize.smoothgrad`, :mod:`alexnet.visualize.lrp`);
* the image each of the first classes wants most (Yosinski et al. 2015, §3, :mod:`alexnet.visualize.maximize`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from alexnet.data.images import read_image
from alexnet.errors import DataError
from alexnet.files import atomic_write
from alexnet.models import AlexNetFamily

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT = "report.html"
log = logging.getLogger("alexnet.report")


@dataclass
class ReportOptions:
    """How much the report computes. The defaults keep ``make demo``'s report to well under a minute on a CPU."""

    images: list[Path] = field(default_factory=list)  # empty: a few validation images of the run's data
    max_images: int = 2  # images for activation maps and occlusion when none are given
    top9_layer: str | None = None  # default: the last conv layer (conv5 in the papers' models)
    top9_images: int = 60  # validation images streamed when the run has no top9/ folder
    top9_channels: int = 6  # feature maps shown (the strongest ones)
    prediction_images: int = 8  # validation images with their top-5 (AlexNet Fig. 4, left); 0: no section
    occlusion_size: int = 48
    occlusion_stride: int = 16
    maximize_classes: int = 10  # the first classes' optimised images (Yosinski et al. 2015); 0: no section
    maximize_steps: int = 200  # preset 3's regularisers, fewer steps than its 1000
    progress: bool = True
    device: str = "cpu"  # where the model runs (the figures are drawn from CPU copies)


# --- small helpers ---------------------------------------------------------------------------------------
def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(fig: Figure, dpi: int = 80) -> str:
    """A matplotlib figure as an inline PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return png_uri(buf.getvalue())


def array_uri(array: np.ndarray) -> str:
    """An H×W(×3) array (float 0–1 or uint8) as an inline PNG."""
    from PIL import Image

    a = array if array.dtype == np.uint8 else (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return png_uri(buf.getvalue())


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{esc(alt)}">'


# --- the run folder ---------------------------------------------------------------------------------------
def read_metrics(path: Path) -> list[dict[str, float]]:
    """``metrics.csv`` rows as numbers (empty cells dropped); :class:`DataError` if it is not a CSV with a header."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: not a readable metrics file ({e})") from None
    out = []
    for row in rows:
        parsed: dict[str, float] = {}
        for key, value in row.items():
            if key is None or value in (None, ""):
                continue
            try:
                parsed[key] = float(value)
            except ValueError:
                continue
        out.append(parsed)
    return out


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def load_run_model(run_dir: Path) -> tuple[AlexNetFamily, Path]:
    """The run's final model, or the newest checkpoint's when the run has not finished (a report of a run that
    stopped, crashed or is still training: its curves and its model so far), and the file it came from."""
    from alexnet.train.run_folder import run_weights
    from alexnet.weights import load_pretrained

    weights = run_weights(run_dir, checkpoint_ok=True)
    return load_pretrained(None, weights).eval(), weights


def data_root(config: dict[str, Any]) -> Path | None:
    """The run's data set (``config.json``'s ``data``, else the built-in set) if it is on disk; never generated."""
    if config.get("data"):
        root = Path(str(config["data"])).expanduser()
    else:
        from alexnet.data.synthetic import dataset_dir

        root = dataset_dir()
    return root if (root / "val").is_dir() else None


def validation_images(root: Path | None, count: int) -> list[Path]:
    """``count`` validation images spread over the classes (the first of each class in turn)."""
    if root is None or count < 1:
        return []
    from alexnet.data.folders import class_folders, files_under

    files = [files_under(root / "val" / c) for c in class_folders(root / "val")]
    picked: list[Path] = []
    for i in range(max((len(f) for f in files), default=0)):
        for per_class in files:
            if i < len(per_class):
                picked.append(per_class[i])
                if len(picked) == count:
                    return picked
    return picked


@contextmanager
def fallback_images(count: int) -> Iterator[list[Path]]:
    """Images of the built-in data set rendered to a temporary folder (when the run's data is not on disk)."""
    from alexnet.data.synthetic import SHAPES, SPLITS, encode_jpeg, render_image

    with tempfile.TemporaryDirectory(prefix="alexnet-report-") as tmp:
        paths = []
        shapes = list(SHAPES)
        for i in range(count):
            class_id = i % len(shapes)
            rng = np.random.default_rng(np.random.SeedSequence((0, SPLITS.index("val"), class_id, i)))
            path = Path(tmp) / f"{shapes[class_id]}_{i:03d}.jpg"
            path.write_bytes(encode_jpeg(render_image(shapes[class_id], rng)))
            paths.append(path)
        yield paths


# --- sections ---------------------------------------------------------------------------------------------
def learning_curves(rows: list[dict[str, float]]) -> Figure | None:
    """Loss and top-1 / top-5 error against the optimizer step (ZF / AlexNet report errors, not accuracies)."""
    from alexnet.visualize.plot import new_figure

    rows = [r for r in rows if "step" in r]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig = new_figure(11, 4)
    ax0, ax1 = fig.subplots(1, 2)
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax0.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax0.set_xlabel("step")
    ax0.set_ylabel("cross-entropy")
    ax0.legend()
    ax0.set_title("loss")
    for key, label in (("val_top1_err", "top-1 error"), ("val_top5_err", "top-5 error")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax1.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("validation error")
    ax1.set_ylim(bottom=0)
    ax1.legend()
    ax1.set_title("validation error")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
        ax.set_xlim(min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1)
    return fig


def summary_html(model: AlexNetFamily) -> str:
    from alexnet.analysis import summarize
    from alexnet.predict import preprocessing_of

    s = summarize(model, preprocessing_of(model).input_size)  # the input size the run trained on
    head = ["layer", "type", "output", "params", "MACs", "FLOPs", "activations", "RF", "stride"]
    rows = [
        "<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>",
        *(
            "<tr>"
            + "".join(
                f"<td>{esc(v)}</td>"
                for v in (
                    r.name,
                    r.type,
                    "×".join(str(d) for d in r.output_shape),
                    _human(r.params),
                    _human(r.macs),
                    _human(r.flops),
                    _human(r.activation_bytes, "B"),
                    r.receptive_field,
                    r.stride,
                )
            )
            + "</tr>"
            for r in s.layers
        ),
    ]
    t = s.totals
    rows.append(
        "<tr class='total'><th>total</th><th></th><th></th>"
        + "".join(
            f"<th>{esc(v)}</th>"
            for v in (
                _human(t["params"]),
                _human(t["macs"]),
                _human(t["flops"]),
                _human(t["activation_bytes"], "B"),
            )
        )
        + "<th></th><th></th></tr>"
    )
    split = s.split()
    note = (
        f"conv layers: {split['conv']['params_pct']:.1f}% of the parameters, {split['conv']['macs_pct']:.1f}% of "
        f"the multiply-adds; fully connected: {split['fc']['params_pct']:.1f}% and {split['fc']['macs_pct']:.1f}%."
    )
    size = f"For a {s.input_size}×{s.input_size} input (the run's crop size)."
    return f"<p>{esc(size)}</p><table class='summary'>{''.join(rows)}</table><p>{esc(note)}</p>"


def top9_section(
    model: AlexNetFamily, run_dir: Path, root: Path | None, opts: ReportOptions, fallback: list[Path]
) -> str:
    from alexnet.visualize.topk import STATE, TopK, folder_items, render_channel, stream_topk

    layer = opts.top9_layer or f"conv{model.config.conv_numbers()[-1]}"
    folder = run_dir / "top9" / layer
    if (folder / STATE).is_file():  # written by `alexnet visualize top9` (its streaming state)
        state = TopK.load(folder)
        origin = f"from {esc(folder.relative_to(run_dir))}/ ({state.seen} images streamed)"
    else:
        if root is not None:
            items = folder_items(root, "val", None)
            step = max(1, len(items) // max(1, opts.top9_images))  # spread over all classes
            items = items[::step][: opts.top9_images]
            where = "validation images of the run's data set"
        else:
            items = [(p, str(p)) for p in fallback]
            where = "images of the built-in data set (the run's data is not on disk)"
        state = stream_topk(model, items, layer, k=9, batch_size=20, progress=opts.progress)
        origin = f"computed for this report over {state.seen} {where} — run `alexnet visualize top9` for the full set"
    strongest = np.argsort(-state.values[:, 0], kind="stable")[: opts.top9_channels]
    cards = []
    for c in tqdm(strongest.tolist(), desc="top-9", disable=not opts.progress):
        patches, projections = render_channel(model, state, c)
        cards.append(
            f"<figure class='top9'><div>{_img(array_uri(projections), f'deconv {c}')}"
            f"{_img(array_uri(patches), f'patches {c}')}</div>"
            f"<figcaption>{esc(state.layer)} feature map {c}: strongest {state.values[c, 0]:.3g}"
            "</figcaption></figure>"
        )
    return (
        f"<p>Per feature map, the deconvnet projections (left, ZF §2.1) of its 9 strongest activations and the "
        f"input patches under their receptive fields (right); {origin}. The {len(cards)} feature maps with the "
        f"strongest activations are shown.</p><div class='cards'>{''.join(cards)}</div>"
    )


def predictions_html(model: AlexNetFamily, images: list[Path]) -> str:
    """Validation images with the five labels the model finds most probable, the correct one's bar red."""
    from alexnet.visualize.predictions import predictions_figure

    _, fig = predictions_figure(model, images, topk=min(5, model.num_classes))
    return (
        "<p>Validation images, the correct label under each, and the five labels the model considers most "
        "probable; the correct label's bar is red when it is among them.</p>"
        + _img(figure_uri(fig, dpi=70), "validation images and their top-5")
    )


def _metrics_table(results: dict[str, Any]) -> str:
    rows = []
    for name, block in results.items():
        if isinstance(block, dict):
            cells = ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in block.items()
            )
            rows.append(f"<tr><th>{esc(name)}</th><td>{esc(cells)}</td></tr>")
        else:
            rows.append(f"<tr><th>{esc(name)}</th><td>{esc(block)}</td></tr>")
    return f"<table>{''.join(rows)}</table>" if rows else ""


CSS = """
body { font: 15px/1.45 system-ui, sans-serif; color: #1d232a; max-width: 1200px; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
  border-bottom: 2px solid #0b63c5; } .muted { color: #5d6b78; }
table { border-collapse: collapse; font-size: .85rem; } td, th { padding: .15rem .5rem;
  border-bottom: 1px solid #d8dee4; text-align: left; }
table.summary td:nth-child(n+4), table.summary th:nth-child(n+4) { text-align: right; }
img { max-width: 100%; display: block; image-rendering: auto; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; } figure { margin: 0; }
figure.top9 div { display: flex; gap: 4px; } figure.top9 img { width: 180px; image-rendering: pixelated; }
figcaption { font-size: .8rem; color: #5d6b78; }
nav a { margin-right: .8rem; }
"""


def gradcam_html(model: AlexNetFamily, images: list[Path]) -> str:
    """The occlusion images' Grad-CAM of their top class at the last conv stage, with guided backpropagation and
    Guided Grad-CAM (Selvaraju et al. 2017, §3, Fig. 1 (a)–(d))."""
    from alexnet.inputs import prepare
    from alexnet.visualize.gradcam import gradcam_figure

    figures = "".join(
        _img(
            figure_uri(
                gradcam_figure(model, prepare(model, image), Path(image).name, guided=True)[1], dpi=60
            ),
            f"Grad-CAM of {Path(image).name}",
        )
        for image in images
    )
    return (
        "<p>The same images: where the evidence for the top class lies, from one backward pass (Selvaraju et al. "
        "2017, §3): the class score's gradient averaged over each last-conv-stage map weighs the maps, their "
        "rectified sum is upsampled over the image (third panel). The second panel is the class's guided "
        "backpropagation (Springenberg et al. 2015), the fourth their product, Guided Grad-CAM. Compare the "
        "occlusion maps' (d) above, made from hundreds of forward passes.</p>" + figures
    )


def attributions_html(model: AlexNetFamily, images: list[Path]) -> str:
    """The occlusion images' integrated gradients of their top class's probability from the black image (50
    points; each with completeness's error), the SmoothGrad of its score (50 noisy copies, 15 % noise) and the
    score's layer-wise relevance propagation (the composite)."""
    from alexnet.inputs import prepare
    from alexnet.visualize.integrated import integrated_figure
    from alexnet.visualize.lrp import lrp_figure
    from alexnet.visualize.smoothgrad import smoothgrad_figure

    parts = []
    for image in images:
        prepared, name = prepare(model, image), Path(image).name
        res, fig = integrated_figure(model, prepared, name)
        change = float(res.outputs[0] - res.baseline_outputs[0])
        off = abs(float(res.delta[0])) / max(abs(change), 1e-12)
        parts.append(_img(figure_uri(fig, dpi=60), f"integrated gradients of {name}"))
        parts.append(
            f"<p class='muted'>{esc(name)}: p {float(res.outputs[0]):.3g}, {change:+.3g} from the black image; "
            f"the attributions sum to {change + float(res.delta[0]):+.3g}, {100 * off:.1f} % off</p>"
        )
        parts.append(
            _img(figure_uri(smoothgrad_figure(model, prepared, name)[2], dpi=60), f"SmoothGrad of {name}")
        )
        parts.append(_img(figure_uri(lrp_figure(model, prepared, name)[1], dpi=60), f"LRP of {name}"))
    return (
        "<p>The same images' top class once more, pixel by pixel. Integrated gradients (Sundararajan et al. "
        "2017, §3): each pixel's difference from a black image times the probability's gradient averaged along "
        "the straight path between them (50 points), so that the attributions add up to the probability's "
        "change (completeness; how far the sum is, below each figure). SmoothGrad (Smilkov et al. 2017, §3): "
        "the class score's gradient averaged over 50 copies of the image with noise of 15 % of its range, "
        "beside the gradient of one pass. Layer-wise relevance propagation (Bach et al. 2015): the score handed "
        "down layer by layer to the pixels, each unit's relevance shared among its inputs by their contributions "
        "(Montavon et al. 2019's composite of rules; the LRN passes it unchanged), red for the class, blue "
        "against it.</p>" + "".join(parts)
    )


def maximize_html(model: AlexNetFamily, opts: ReportOptions) -> str:
    """The first ``opts.maximize_classes`` classes' optimised images: gradient ascent on each class score from the
    mean image, regularised as Table 1's preset 3 (the DeepVis toolbox's images; docs/visualize.md)."""
    from alexnet.visualize.maximize import maximize, plot_maximized, preset

    classes = list(range(min(opts.maximize_classes, model.num_classes)))
    res = maximize(model, model.layer_names()[-1], classes, settings=preset(3, steps=opts.maximize_steps))
    return (
        f"<p>For each class, the image that drives its score (before the softmax) highest: {opts.maximize_steps} "
        "gradient steps from the mean image, with L2 decay and a Gaussian blur every 4 steps (Yosinski et al. "
        "2015, §3, Table 1's third setting; <code>alexnet visualize maximize</code> runs all of them). Under each, "
        "the score it reached.</p>"
        + _img(figure_uri(plot_maximized(model, res), dpi=70), "optimised class images")
    )


def build_report(
    run_dir: str | Path, out: str | Path | None = None, options: ReportOptions | None = None
) -> Path:
    """Write the run's report (default ``RUN_DIR/report.html``) and return its path."""
    from alexnet.inputs import prepare
    from alexnet.predict import preprocessing_of
    from alexnet.visualize.activations import plot_all_conv_layers
    from alexnet.visualize.filters import plot_conv1_filters
    from alexnet.visualize.occlusion import followed_map_projection, occlusion, plot_occlusion
    from alexnet.visualize.plot import projection_to_image, uint8_to_float

    opts = options or ReportOptions()
    run = Path(run_dir)
    if not run.is_dir():
        from alexnet.train.run_folder import not_a_run_folder

        raise DataError(not_a_run_folder(run))
    model, weights = load_run_model(run)
    model = model.to(opts.device)
    unfinished = weights.suffix == ".pt"
    if unfinished:
        log.warning(
            "%s has not finished: the report shows the model of its newest checkpoint, %s", run, weights
        )
    if opts.top9_layer is not None:  # a bad layer fails now, not after a minute of work
        from alexnet.models.capture import check_trunk_layer

        check_trunk_layer(model, opts.top9_layer)
    config = read_json(run / "config.json")
    results = read_json(run / "results.json")
    metrics = read_metrics(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
    root = data_root(config)
    for image in opts.images:
        if not Path(image).is_file():
            raise DataError(f"{image}: no such image file")
        read_image(image)  # a corrupt one stops the report here, before any work (ImageError names it)

    sections: list[tuple[str, str, str]] = []  # (id, title, html)
    with fallback_images(max(opts.max_images, 10) if root is None else 0) as fallback:
        images = list(opts.images) or validation_images(root, opts.max_images) or fallback[: opts.max_images]
        steps = [
            "summary",
            "curves",
            "predictions",
            "filters",
            "activations",
            "top9",
            "occlusion",
            "gradcam",
            "attributions",
            "maximize",
        ]
        bar = tqdm(total=len(steps), desc="report", disable=not opts.progress)

        sections.append(("summary", "Parameters and computation per layer", summary_html(model)))
        bar.update()

        fig = learning_curves(metrics)
        curves = (
            _img(figure_uri(fig), "learning curves")
            if fig is not None
            else "<p class='muted'>No metrics.csv rows in this run folder.</p>"
        )
        sections.append(("curves", "Learning curves", curves + _metrics_table(results)))
        bar.update()

        shown_images = validation_images(root, opts.prediction_images) or fallback[: opts.prediction_images]
        if shown_images:
            sections.append(
                ("predictions", "Predictions (AlexNet Fig. 4, left)", predictions_html(model, shown_images))
            )
        bar.update()

        sections.append(
            (
                "filters",
                "conv1 filters",
                "<p>The first layer's kernels as RGB images (AlexNet Fig. 3; the two GPU towers apart for the "
                "two-group models), each tower titled with its kernels' mean colour fraction: the share of their "
                "energy in colour rather than brightness, 0 for kernels that see grey only (§6.1 found one "
                "tower largely colour-agnostic, the other colour-specific).</p>"
                + _img(figure_uri(plot_conv1_filters(model)), "conv1 filters"),
            )
        )
        bar.update()

        maps = "".join(
            _img(figure_uri(plot_all_conv_layers(model, image), dpi=60), f"activations of {Path(image).name}")
            for image in images
        )
        sections.append(
            (
                "activations",
                "Activation maps",
                "<p>Every channel of each conv stage after its ReLU, each scaled to its own range.</p>"
                + maps,
            )
        )
        bar.update()

        sections.append(
            ("top9", "Deconvnet top-9 (ZF Fig. 2)", top9_section(model, run, root, opts, fallback))
        )
        bar.update()

        occ = []
        for image in images:
            prepared = prepare(model, image)
            side = prepared.tensor.shape[-1]
            result = occlusion(
                model, prepared.tensor, size=min(opts.occlusion_size, side), stride=opts.occlusion_stride
            )
            shown = projection_to_image(
                followed_map_projection(model, prepared.tensor, result), preprocessing_of(model)
            )
            fig = plot_occlusion(result, uint8_to_float(prepared.crop), Path(image).name, projection=shown)
            occ.append(_img(figure_uri(fig, dpi=60), f"occlusion of {Path(image).name}"))
        sections.append(
            (
                "occlusion",
                "Occlusion (ZF Fig. 7)",
                f"<p>A grey {opts.occlusion_size}-pixel square (the mean pixel) slid with stride "
                f"{opts.occlusion_stride}, the panels lettered as Fig. 7's columns: (b) total activation of the "
                "strongest layer-5 feature map, (c) that map projected to the pixels by the deconvnet, (d) the "
                "probability of the top class of the unoccluded image, (e) the most probable class.</p>"
                + "".join(occ),
            )
        )
        bar.update()

        sections.append(("gradcam", "Grad-CAM (Selvaraju et al. 2017)", gradcam_html(model, images)))
        bar.update()

        sections.append(
            ("attributions", "Integrated gradients, SmoothGrad and LRP", attributions_html(model, images))
        )
        bar.update()

        if opts.maximize_classes > 0:
            sections.append(
                ("maximize", "Optimised class images (Yosinski et al. 2015)", maximize_html(model, opts))
            )
        bar.update()
        bar.close()

    ablation = f" ({model.config.ablation})" if model.config.ablation else ""  # `alexnet train --remove …`
    title = f"{model.config.name}{ablation} — run {run.resolve().name}"
    if unfinished:
        title += f" (not finished: the model of {weights.name})"
    shown = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in config.items()}  # conv3,conv4
    cfg_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in shown.items())
    nav = "".join(f"<a href='#{sid}'>{esc(t)}</a>" for sid, t, _ in sections)
    body = "".join(
        f"<section id='{sid}'><h2>{esc(t)}</h2>{content}</section>" for sid, t, content in sections
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class='muted'>alexnet report · {esc(run.resolve())} · {stamp} · "
        f"{model.num_classes} classes{esc(origin(config))} · images: "
        f"{esc(', '.join(Path(i).name for i in images))}</p>"
        f"<nav>{nav}</nav>{body}"
        f"<section id='config'><h2>Configuration</h2><details><summary>config.json</summary>"
        f"<table>{cfg_rows}</table></details></section></body></html>\n"
    )
    target = Path(out) if out is not None else run / REPORT
    return atomic_write(target, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def origin(config: dict[str, Any]) -> str:
    """Where a run's weights began and what stayed fixed (`alexnet train --weights`, `--freeze`), for the page's
    subtitle; empty for a run trained from its init."""
    parts = []
    if config.get("weights"):
        parts.append(f"fine-tuned from {config['weights']}")
    if config.get("freeze"):
        parts.append(f"layers up to {config['freeze']} fixed")
    return "".join(f" · {p}" for p in parts)


__all__ = ["ReportOptions", "build_report", "origin", "read_metrics"]
