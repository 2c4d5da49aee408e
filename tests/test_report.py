"""``alexnet report``: one self-contained HTML file about a run, checked as text, as PNGs and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import create_model
from alexnet.cli import main
from alexnet.data.synthetic import class_folder_names, ensure_builtin_dataset
from alexnet.visualize.report import ReportOptions, build_report, read_metrics
from alexnet.weights import WeightsMeta, save_weights

CLASSES = 3
METRICS = """epoch,step,lr,train_loss,val_loss,val_top1_err,val_top5_err,images_per_s
1,10,0.01,1.10,1.05,0.62,0.0,120.5
2,20,0.01,0.90,0.95,0.41,0.0,118.0
3,30,0.001,0.70,0.80,0.25,0.0,
"""


def make_run(folder: Path, data: Path | None) -> Path:
    """A run folder as `alexnet train` leaves it: weights with metadata, config.json, metrics.csv."""
    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=CLASSES)
    names = [n.split("_", 1)[1] for n in class_folder_names(CLASSES)]
    save_weights(model, folder / "model.safetensors", WeightsMeta(classes=names))
    (folder / "config.json").write_text(json.dumps({"model": "alexnet", "recipe": "demo", "data": str(data)}))
    (folder / "metrics.csv").write_text(METRICS)
    return folder


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return ensure_builtin_dataset(
        tmp_path_factory.mktemp("data"),
        classes=CLASSES,
        train_per_class=1,
        val_per_class=3,
        size=96,
        progress=False,
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_data) -> Path:
    run = make_run(tmp_path_factory.mktemp("run"), tiny_data)
    options = ReportOptions(
        top9_images=6, top9_channels=2, max_images=1, occlusion_stride=48, maximize_steps=4, progress=False
    )
    return build_report(run, options=options)


def img_sources(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)


def test_report_is_one_file_with_every_picture_inline(report):
    page = report.read_text()
    assert report.name == "report.html"
    sources = img_sources(page)
    # summary has none; curves 1, predictions 1, filters 1, activations 1 image, top-9 2 channels × 2 grids,
    # occlusion 1, Grad-CAM 1, integrated gradients, SmoothGrad and LRP 3, optimised class images 1.
    assert len(sources) == 1 + 1 + 1 + 1 + 4 + 1 + 1 + 3 + 1
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", page), "no external requests"
    assert "<link rel='stylesheet'" not in page and "<script" not in page


def test_report_has_the_summary_table_of_the_runs_model(report):
    page = report.read_text()
    for name in ("conv1", "norm1", "pool5", "fc6", "fc8"):
        assert f"<td>{name}</td>" in page
    # fc8 has 4096·3 + 3 parameters for this 3-class run: the model really comes from the run's weights.
    assert "<td>12.29k</td>" in page


def test_the_predictions_section_shows_validation_images_of_every_class_with_their_top_5(report):
    page = report.read_text()
    section = page.split("<section id='predictions'>")[1].split("</section>")[0]
    assert "<h2>Predictions (AlexNet Fig. 4, left)</h2>" in section and len(img_sources(section)) == 1


def test_the_optimised_images_section_climbs_every_class_when_there_are_few(report):
    """Yosinski et al. §3 on the run's model: one image per class (3 here, fewer than the default 10)."""
    section = report.read_text().split("<section id='maximize'>")[1].split("</section>")[0]
    assert "<h2>Optimised class images (Yosinski et al. 2015)</h2>" in section
    assert "4 gradient steps" in section and len(img_sources(section)) == 1


def test_the_grad_cam_section_is_fig_1s_four_panels_for_the_occlusion_images(report, tiny_data):
    """Selvaraju et al. §3, Fig. 1 (a)–(d) for the image the occlusion section shows: the picture is what
    ``gradcam_figure(..., guided=True)`` draws for it."""
    from alexnet.inputs import prepare
    from alexnet.visualize.gradcam import gradcam_figure
    from alexnet.visualize.report import figure_uri, load_run_model

    page = report.read_text()
    section = page.split("<section id='gradcam'>")[1].split("</section>")[0]
    assert "<h2>Grad-CAM (Selvaraju et al. 2017)</h2>" in section
    (src,) = img_sources(section)
    (alt,) = re.findall(r"alt=\"Grad-CAM of ([^\"]+)\"", section)
    occlusion = page.split("<section id='occlusion'>")[1].split("</section>")[0]
    assert f"occlusion of {alt}" in occlusion
    (image,) = (tiny_data / "val").rglob(alt)  # the occlusion images are validation images
    model, _ = load_run_model(report.parent)
    expected = figure_uri(gradcam_figure(model, prepare(model, image), alt, guided=True)[1], dpi=60)

    def pixels(uri: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))

    shown = pixels(src)
    assert shown.shape[1] == 4 * 5 * 60  # four 5-inch panels at 60 dpi
    np.testing.assert_array_equal(shown, pixels(expected))


def test_the_attribution_section_is_the_occlusion_images_integrated_gradients_smoothgrad_and_lrp(
    report, tiny_data
):
    """Sundararajan et al. §3, Smilkov et al. §3 and Bach et al. for the image the occlusion section shows: the
    pictures are what ``integrated_figure``, ``smoothgrad_figure`` and ``lrp_figure`` draw for it, and the line
    under the first states completeness's error (Proposition 1) from the same numbers."""
    from alexnet.inputs import prepare
    from alexnet.visualize.integrated import integrated_figure
    from alexnet.visualize.lrp import lrp_figure
    from alexnet.visualize.report import figure_uri, load_run_model
    from alexnet.visualize.smoothgrad import smoothgrad_figure

    page = report.read_text()
    section = page.split("<section id='attributions'>")[1].split("</section>")[0]
    assert "<h2>Integrated gradients, SmoothGrad and LRP</h2>" in section
    (alt,) = re.findall(r"alt=\"integrated gradients of ([^\"]+)\"", section)
    assert f"occlusion of {alt}" in page.split("<section id='occlusion'>")[1].split("</section>")[0]
    assert f'alt="SmoothGrad of {alt}"' in section and f'alt="LRP of {alt}"' in section
    (image,) = (tiny_data / "val").rglob(alt)
    model, _ = load_run_model(report.parent)
    prepared = prepare(model, image)
    res, fig = integrated_figure(model, prepared, alt)
    expected = [
        figure_uri(fig, dpi=60),
        figure_uri(smoothgrad_figure(model, prepared, alt)[2], dpi=60),
        figure_uri(lrp_figure(model, prepared, alt)[1], dpi=60),
    ]

    def pixels(uri: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))

    shown = img_sources(section)
    assert len(shown) == 3
    for got, want in zip(shown, expected, strict=True):
        np.testing.assert_array_equal(pixels(got), pixels(want))
    change = float(res.outputs[0] - res.baseline_outputs[0])
    off = abs(float(res.delta[0])) / abs(change)
    assert f"the attributions sum to {change + float(res.delta[0]):+.3g}, {100 * off:.1f} % off" in section


def test_top9_is_computed_from_the_runs_validation_images_when_no_top9_folder(report):
    page = report.read_text()
    assert "computed for this report over 6 validation images of the run" in page


def test_a_fine_tuned_run_says_where_its_weights_began_and_what_stayed_fixed():
    from alexnet.visualize.report import origin

    assert (
        origin({"weights": "runs/a", "freeze": "fc7"}) == " · fine-tuned from runs/a · layers up to fc7 fixed"
    )
    assert origin({"weights": None, "freeze": None}) == "" and origin({}) == ""  # an older config.json


def test_metrics_are_read_as_numbers(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS)
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [10.0, 20.0, 30.0]
    assert "images_per_s" not in rows[2], "empty cells are dropped, not zero"
    assert rows[1]["val_top1_err"] == pytest.approx(0.41)


def test_an_existing_top9_folder_is_used_and_the_cli_prints_the_path(
    tmp_path, tiny_data, chelsea_jpeg, capsys
):
    from alexnet.visualize.topk import folder_items, stream_topk, write_topk
    from alexnet.weights import load_pretrained

    run = make_run(tmp_path / "run", tiny_data)
    model = load_pretrained(None, run / "model.safetensors")
    state = stream_topk(model, folder_items(tiny_data, "val"), "conv5", state_dir=run / "top9" / "conv5")
    write_topk(model, state, run / "top9" / "conv5")
    out = tmp_path / "out" / "r.html"
    code = main(
        [
            "report",
            str(run),
            "--images",
            str(chelsea_jpeg),
            "--out",
            str(out),
            "--occlusion-stride",
            "64",
            "--top9-channels",
            "1",
            "--maximize-classes",
            "0",
            "--quiet",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert f"from top9/conv5/ ({CLASSES * 3} images streamed)" in page
    assert "chelsea.jpg" in page
    assert "<section id='maximize'>" not in page  # --maximize-classes 0


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        ("missing", "no such run folder"),
        ("a-file", "run: a file, not a run folder"),
        ("no-weights", "model.safetensors"),
        ("bad-image", "no such image file"),
        ("corrupt-image", "broken.jpg: not an image"),
        ("bad-layer", "not in the convolutional trunk"),
        ("bad-device", "unknown device 'gpu'"),
    ],
)
def test_bad_run_folders_are_one_line_and_exit_2(tmp_path, capsys, setup, words):
    run = tmp_path / "run"
    args = ["report", str(run), "--quiet"]
    if setup == "a-file":
        run.write_bytes(b"")  # e.g. the run's model.safetensors given for the folder
    elif setup != "missing":
        run.mkdir()
    if setup == "bad-image":
        make_run(run, None)
        args += ["--images", str(tmp_path / "nope.jpg")]
    if setup == "corrupt-image":  # found before any section is computed
        make_run(run, None)
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
        args += ["--images", str(tmp_path / "broken.jpg")]
    if setup == "bad-layer":
        make_run(run, None)
        args += ["--top9-layer", "fc7"]
    if setup == "bad-device":
        make_run(run, None)
        args += ["--device", "gpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (run / "report.html").exists()


@pytest.mark.slow
@pytest.mark.browser
def test_report_opens_from_disk_in_chromium_with_every_image_decoded(report):
    from browser.chromium import Console, launch_or_skip, undecoded_images

    with launch_or_skip() as browser:
        page = browser.new_page()
        console = Console()
        console.attach(page)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.evaluate("document.images.length") == len(img_sources(report.read_text())) == 14
        assert undecoded_images(page) == []
        assert console.errors == []
        assert [u for u in requests if not u.startswith("data:")] == [report.resolve().as_uri()]
        widths = page.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert np.all(np.array(widths) > 0)


def test_a_run_that_has_not_finished_is_reported_with_its_newest_checkpoints_model(
    tmp_path, tiny_data, caplog
):
    from test_train_support import fake_run_checkpoint

    run = tmp_path / "run"
    fake_run_checkpoint(run, 4)
    fake_run_checkpoint(run, 8)  # 3 classes, alexnet at 99 px: what the summary table must show
    (run / "config.json").write_text(
        json.dumps({"model": "alexnet", "recipe": "demo", "data": str(tiny_data)})
    )
    (run / "metrics.csv").write_text(METRICS)
    options = ReportOptions(
        top9_images=3, top9_channels=1, max_images=1, occlusion_stride=48, maximize_classes=0, progress=False
    )
    with caplog.at_level("WARNING", logger="alexnet.report"):
        page = build_report(run, options=options).read_text()
    assert "<title>alexnet — run run (not finished: the model of step-00000008.pt)</title>" in page
    assert "<td>12.29k</td>" in page  # fc8: 4096·3 + 3, the checkpoint's network
    assert [r.getMessage() for r in caplog.records] == [
        f"{run} has not finished: the report shows the model of its newest checkpoint, "
        f"{run / 'checkpoints' / 'step-00000008.pt'}"
    ]
