"""``alexnet serve``'s JSON/PNG API through Starlette's TestClient: real models, real photographs, bad input."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import create_model
from alexnet.cli import main
from alexnet.inputs import prepare
from alexnet.models.capture import capture
from alexnet.predict import labels_of
from alexnet.serve import load_slot
from alexnet.serve.render import grid_layout
from alexnet.serve.state import Slot
from alexnet.serve.uploads import MAX_BYTES
from alexnet.weights import WeightsMeta, save_weights

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from alexnet.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"a": create_model("alexnet").eval(), "b": create_model("zfnet").eval()}


@pytest.fixture(scope="module")
def client(models) -> TestClient:
    slots = [Slot(k, m, "random initialisation", trained=False) for k, m in models.items()]
    with TestClient(create_app(slots)) as c:
        yield c


@pytest.fixture(scope="module")
def chelsea_id(client) -> str:
    r = client.post("/api/samples/chelsea")
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


def decode_png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)))


def jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width``×``height`` pixels (a decompression bomb's signature)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def assert_still_serving(client: TestClient) -> None:
    r = client.post("/api/samples/coffee")
    assert r.status_code == 200
    assert client.get(f"/api/models/a/images/{r.json()['image_id']}").status_code == 200


# --- what the page is told ---------------------------------------------------------------------------------
def test_info_lists_both_models_random_init_and_samples_by_id_only(client):
    info = client.get("/api/info").json()
    assert [(m["key"], m["name"], m["trained"]) for m in info["models"]] == [
        ("a", "alexnet", False),
        ("b", "zfnet", False),
    ]
    assert info["models"][0]["layers"] == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    ids = [s["id"] for s in info["samples"]]
    assert {"chelsea", "coffee", "astronaut", "rocket"} <= set(ids)
    assert any(i.startswith("shape-") for i in ids), "images of the built-in data set"
    assert not any("/" in i or "\\" in i for i in ids)
    assert info["limits"]["max_bytes"] == MAX_BYTES


def test_index_page_and_static_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "alexnet serve" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200


def test_sample_thumbnails_are_png(client):
    assert decode_png(client.get("/api/samples/rocket/thumb.png").content).shape[0] == 96


# --- one image through the models --------------------------------------------------------------------------
def test_predictions_are_the_models_top5_with_class_names(client, models, chelsea_id, chelsea):
    data = client.get(f"/api/models/a/images/{chelsea_id}").json()
    preds = data["predictions"]
    prepared = prepare(models["a"], torch.from_numpy(chelsea).permute(2, 0, 1).contiguous())
    with torch.inference_mode():
        probs = models["a"](prepared.tensor.unsqueeze(0)).softmax(1)[0]
    top = probs.topk(5)
    assert [p["index"] for p in preds] == top.indices.tolist()
    np.testing.assert_allclose([p["probability"] for p in preds], top.values.numpy(), rtol=1e-5)
    assert [p["label"] for p in preds] == [labels_of(models["a"])[i] for i in top.indices.tolist()]


def test_every_conv_layer_has_a_grid_whose_size_matches_its_layout(client, models, chelsea_id):
    data = client.get(f"/api/models/b/images/{chelsea_id}").json()
    shapes = {layer["layer"]: layer["shape"] for layer in data["layers"]}
    # ZFNet (ZF Fig. 3): 96 maps of 110×110 after conv1, 256 of 26×26 after conv2, 13×13 for conv3–5.
    assert shapes == {
        "relu1": [96, 110, 110],
        "relu2": [256, 26, 26],
        "relu3": [384, 13, 13],
        "relu4": [384, 13, 13],
        "relu5": [256, 13, 13],
    }
    for layer in data["layers"]:
        lay = layer["layout"]
        assert lay == grid_layout(layer["shape"][0], layer["shape"][1])
        assert lay["cols"] * lay["rows"] >= lay["channels"]
        grid = decode_png(client.get(layer["grid"]).content)
        step = lay["tile"] + lay["pad"]
        assert grid.shape[:2] == (lay["rows"] * step - lay["pad"], lay["cols"] * step - lay["pad"])


def test_channel_statistics_equal_an_independent_capture(client, models, chelsea_id, chelsea):
    info = client.get(f"/api/models/a/images/{chelsea_id}/layers/relu5/channels/7").json()
    prepared = prepare(models["a"], torch.from_numpy(chelsea).permute(2, 0, 1).contiguous())
    fmap = capture(models["a"], prepared.tensor.unsqueeze(0), ["relu5"])["relu5"][0, 7]
    assert info["shape"] == [13, 13]
    assert info["max"] == pytest.approx(float(fmap.max()), rel=1e-5)
    assert info["mean"] == pytest.approx(float(fmap.mean()), rel=1e-5)
    row, col = info["argmax"]
    assert float(fmap[row, col]) == pytest.approx(float(fmap.max()), rel=1e-6)
    enlarged = decode_png(client.get(info["map"]).content)
    assert enlarged.shape == (13 * 17, 13 * 17)  # nearest-neighbour ×17 ≈ the 227-px input
    deconv = decode_png(client.get(info["deconv"]).content)
    assert deconv.shape == (227, 227, 3), "the projection is in pixel space"
    assert deconv.std() > 0


def test_the_channel_projection_takes_the_gradient_and_guided_rules_too(client, models, chelsea_id, chelsea):
    from alexnet.serve.render import projection_png
    from alexnet.visualize.deconvnet import deconvnet

    info = client.get(f"/api/models/a/images/{chelsea_id}/layers/relu5/channels/7").json()
    x = prepare(models["a"], torch.from_numpy(chelsea).permute(2, 0, 1).contiguous()).tensor.unsqueeze(0)
    pre = client.app.state.server.slot("a").preprocessing
    pictures = {}
    for rule in ("deconvnet", "gradient", "guided"):
        r = client.get(info["deconv"], params={"rule": rule})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == projection_png(deconvnet(models["a"], x, "relu5", 7, rule=rule)[0], pre)
        pictures[rule] = r.content
    assert pictures["deconvnet"] == client.get(info["deconv"]).content  # the default: ZF §2.1's
    assert len(set(pictures.values())) == 3
    r = client.get(info["deconv"], params={"rule": "saliency"})
    assert r.status_code == 400 and "unknown rule 'saliency'" in r.json()["error"]


def test_activations_are_computed_once_per_image_and_model(client, chelsea_id):
    analyses = client.app.state.server.analyses
    client.get(f"/api/models/a/images/{chelsea_id}")
    hits = analyses.hits
    for channel in (0, 1, 2):
        client.get(f"/api/models/a/images/{chelsea_id}/layers/relu3/channels/{channel}/map.png")
    assert analyses.hits == hits + 3
    assert ("a", chelsea_id) in analyses


def test_same_upload_twice_gets_the_same_image_id(client, chelsea_jpeg: Path):
    data = chelsea_jpeg.read_bytes()
    first = client.post("/api/images", content=data, headers={"content-type": "application/octet-stream"})
    second = client.post("/api/images", content=data)
    assert first.status_code == 200, first.text
    assert first.json()["image_id"] == second.json()["image_id"]
    assert (first.json()["width"], first.json()["height"]) == (451, 300)


def test_occlusion_job_reports_progress_the_three_maps_and_the_followed_maps_projection(client, chelsea_id):
    started = client.post(f"/api/models/a/images/{chelsea_id}/occlusion?size=64&stride=32")
    assert started.status_code == 200, started.text
    job = started.json()
    positions = ((227 - 64) // 32 + 1) ** 2
    assert job["total"] == positions
    deadline = time.monotonic() + 120
    seen = [job["done"]]
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
        seen.append(job["done"])
    assert job["state"] == "done", job
    assert job["done"] == job["total"] and job["progress"] == 1.0
    assert seen == sorted(seen) and all(0 <= d <= positions for d in seen), "progress only goes up"
    model = client.app.state.server.slot("a").model
    assert all(not m._forward_hooks for m in model.modules()), "the progress hook is removed"
    for name in ("activation.png", "probability.png", "labels.png"):
        assert decode_png(client.get(f"/api/jobs/{job['id']}/{name}").content).shape[:2] == (6, 6)
    r = job["result"]
    assert r["layer"] == "relu5" and 0 <= r["channel"] < 256
    # ZF Fig. 7 (c): the same map's deconvnet projection, as the channel view draws it
    projection = client.get(f"/api/jobs/{job['id']}/projection.png").content
    channel_view = client.get(
        f"/api/models/a/images/{chelsea_id}/layers/relu5/channels/{r['channel']}/deconv.png"
    )
    assert projection == channel_view.content and decode_png(projection).shape[:2] == (227, 227)
    first_prediction = client.get(f"/api/models/a/images/{chelsea_id}").json()["predictions"][0]
    assert r["target"] == first_prediction["index"], "default target: the unoccluded image's top class"
    assert r["base_probability"] == pytest.approx(first_prediction["probability"], rel=1e-4)


def test_summary_table_counts_every_parameter(client, models):
    s = client.get("/api/models/a/summary").json()
    assert s["totals"]["params"] == sum(p.numel() for p in models["a"].parameters())
    assert [row["name"] for row in s["layers"]][:4] == ["conv1", "relu1", "norm1", "pool1"]


# --- bad requests: 4xx JSON with a message, and the server keeps working -------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"", 400, "empty"),
        (b"#!/bin/sh\nrm -rf /\n", 415, "not an image"),
        (b"%PDF-1.7\n" + b"0" * 100, 415, "not an image"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 50, 415, "not"),  # JPEG magic, garbage after it
        (png_bomb(30_000, 30_000), 413, "900 megapixels (limit 40)"),
        (b"\xff\xd8\xff" + b"\0" * MAX_BYTES, 413, "too large"),
        (png_bomb(1_000_000, 1), 422, "more than 100 times longer than wide"),
    ],
    ids=["empty", "script", "pdf", "truncated-jpeg", "decompression-bomb", "oversized", "a-line-of-pixels"],
)
def test_bad_uploads_are_refused_with_a_message_and_the_server_still_works(client, body, status, words):
    r = client.post("/api/images", content=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert_still_serving(client)


def test_bomb_is_refused_before_decoding(monkeypatch):
    import alexnet.serve.uploads as uploads

    def fail(*_a, **_k):
        raise AssertionError("decoded a bomb")

    monkeypatch.setattr(uploads, "decode_rgb", fail)
    with pytest.raises(uploads.UploadError, match="before decoding"):
        uploads.decode_upload(png_bomb(7_000, 7_000))  # 49 megapixels: over our limit, under Pillow's


def test_a_phone_photo_stored_sideways_is_analysed_upright_with_its_size_as_shown(client, chelsea):
    """EXIF orientation 6 (a portrait photo stored landscape): the browser shows it upright, and so does the page."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(chelsea).save(buf, format="JPEG", exif=exif)  # stored 451×300
    r = client.post("/api/images", content=buf.getvalue(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200
    assert (r.json()["width"], r.json()["height"]) == (300, 451)


def test_a_real_image_with_a_lying_name_is_judged_by_its_bytes(client, chelsea):
    r = client.post("/api/images", content=jpeg_bytes(chelsea), headers={"content-type": "text/plain"})
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("url", "status", "words"),
    [
        ("/api/models/a/images/0123456789abcdef01234567", 404, "unknown image"),
        ("/api/models/z/images/{id}", 404, "no model"),
        ("/api/models/a/images/{id}/layers/fc7/grid.png", 404, "relu1"),
        ("/api/models/a/images/{id}/layers/relu5/channels/256", 404, "out of range"),
        ("/api/models/a/images/{id}/layers/relu5/channels/-1/map.png", 404, "out of range"),
        ("/api/models/a/images/{id}/layers/relu5/channels/x", 422, "channel"),
        ("/api/jobs/nope", 404, "no job"),
        ("/api/models/a/top9/relu5/0/patches.png", 404, "top-9"),
        # percent-encoded, so that the client sends the dots as they are (it would resolve a plain "../")
        ("/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd", 404, "Not Found"),
        ("/static/..%2f..%2f..%2f..%2fetc%2fpasswd", 404, "Not Found"),
    ],
)
def test_bad_requests_get_json_errors(client, chelsea_id, url, status, words):
    r = client.get(url.format(id=chelsea_id))
    assert r.status_code == status, r.text
    assert words in r.json()["error"] and "root:" not in r.text
    assert_still_serving(client)


@pytest.mark.parametrize(
    ("sample", "says"),
    [
        ("%2e%2e", "no sample '..'"),  # reaches the handler, which looks the name up among the samples' ids
        ("..%2F..%2Fetc%2Fpasswd", "Not Found"),  # the slashes make it no sample route at all
        ("%2e%2e%2f%2e%2e%2fetc%2fpasswd", "Not Found"),
        ("nope", "no sample 'nope'"),
    ],
)
def test_samples_are_chosen_by_id_never_by_path(client, sample, says):
    r = client.post(f"/api/samples/{sample}")
    assert r.status_code == 404 and says in r.json()["error"], r.text
    assert_still_serving(client)


def _finish(client: TestClient, job: dict, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while job["state"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job


def test_a_maps_optimised_image_climbs_its_centre_unit_before_the_relu(client):
    """Yosinski et al. §3 for a page layer (relu3): the job climbs conv3's centre unit and gives the library's
    image, cut to the unit's receptive field, as a PNG."""
    from alexnet.analysis.summary import receptive_fields
    from alexnet.visualize.maximize import for_display, maximize, preset

    started = client.post("/api/models/a/layers/relu3/channels/7/maximize?steps=12")
    assert started.status_code == 200, started.text
    job = _finish(client, started.json())
    assert job["state"] == "done", job
    assert job["done"] == job["total"] == 12
    r = job["result"]
    assert (r["layer"], r["climbed"], r["channel"], r["unit"], r["label"]) == (
        "relu3",
        "conv3",
        7,
        [6, 6],
        None,
    )
    assert r["best"] >= r["start"] and r["steps"] == 12
    model = client.app.state.server.slot("a").model
    side = receptive_fields(model)["conv3"].size
    png = decode_png(client.get(f"/api/jobs/{job['id']}/image.png").content)
    assert png.shape == (side, side, 3)
    res = maximize(model, "conv3", [7], settings=preset(3, steps=12))
    expected = (np.clip(for_display(model, res)[0], 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(png.astype(int) - expected.astype(int)).max() <= 1
    again = client.post("/api/models/a/layers/relu3/channels/7/maximize?steps=12").json()
    assert again["id"] == job["id"], "the same request is the same job"


def test_a_class_optimised_image_names_its_class(client):
    classifier = client.get("/api/info").json()["models"][0]["classifier"]
    assert classifier == "fc8"
    job = _finish(client, client.post("/api/models/a/layers/fc8/channels/3/maximize?steps=10").json())
    assert job["state"] == "done", job
    r = job["result"]
    model = client.app.state.server.slot("a").model
    assert r["unit"] is None and r["label"] == labels_of(model)[3]
    assert decode_png(client.get(f"/api/jobs/{job['id']}/image.png").content).shape == (227, 227, 3)


def test_grad_cam_of_a_class_is_the_librarys_over_the_crop(client, chelsea_id):
    """Selvaraju et al. 2017 for the image on the page: the PNG is the library's map, upsampled and laid over the
    network's input crop; a class the model lacks is a 400 with the library's message."""
    from alexnet.visualize.gradcam import gradcam, overlay
    from alexnet.visualize.plot import uint8_to_float

    r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281")
    assert r.status_code == 200, r.text
    png = decode_png(r.content)
    a = client.app.state.server.analysis("a", chelsea_id)
    model = client.app.state.server.slot("a").model
    heat = gradcam(model, a.x, target=281).upsampled((227, 227))[0].numpy()
    expected = (np.clip(overlay(uint8_to_float(a.crop), heat), 0, 1) * 255).round().astype(np.uint8)
    assert png.shape == (227, 227, 3) and np.abs(png.astype(int) - expected.astype(int)).max() <= 1
    bad = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=1000")
    assert bad.status_code == 400 and "class 1000 is out of range" in bad.json()["error"]


def test_the_grad_cam_views_are_guided_backpropagation_and_guided_grad_cam_as_projections(client, chelsea_id):
    """§3, Fig. 1 (b) and (d): ``?view=guided`` and ``?view=guided-gradcam`` are the library's pictures, drawn as
    the deconvnet's (zero mid-grey); an unknown view is a 400 naming them all."""
    from alexnet.visualize.gradcam import gradcam
    from alexnet.visualize.plot import projection_to_image

    a = client.app.state.server.analysis("a", chelsea_id)
    slot = client.app.state.server.slot("a")
    cam = gradcam(slot.model, a.x, target=281, guided=True)
    for view, pixels in (("guided", cam.guided[0]), ("guided-gradcam", cam.guided_gradcam()[0])):
        r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view={view}")
        assert r.status_code == 200, r.text
        expected = (projection_to_image(pixels, slot.preprocessing) * 255).round().astype(np.uint8)
        assert np.abs(decode_png(r.content).astype(int) - expected.astype(int)).max() <= 1
    bad = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view=lime")
    assert bad.status_code == 400
    assert bad.json()["error"] == (
        "unknown view 'lime'; choose gradcam, guided, guided-gradcam, saliency, deconvnet, integrated, smoothgrad, "
        "lrp"
    )


def test_the_saliency_and_deconvnet_views_are_the_class_scores_projections(client, chelsea_id):
    """Simonyan et al. §3.1's class saliency map (max |∂S_c/∂I| over the colours; 0 black, its maximum white)
    and the class score projected by ZF's rules through the classifier (zero mid-grey), as the library draws them."""
    from alexnet.visualize.deconvnet import class_projection, saliency_map
    from alexnet.visualize.plot import projection_to_image

    a = client.app.state.server.analysis("a", chelsea_id)
    slot = client.app.state.server.slot("a")
    r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view=saliency")
    assert r.status_code == 200, r.text
    saliency = saliency_map(class_projection(slot.model, a.x, 281, "gradient").images[0]).numpy()
    expected = (saliency / saliency.max() * 255).round().astype(np.uint8)
    got = decode_png(r.content)
    assert got.shape == (227, 227) and np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view=deconvnet")
    assert r.status_code == 200, r.text
    pixels = class_projection(slot.model, a.x, 281, "deconvnet").images[0]
    expected = (projection_to_image(pixels, slot.preprocessing) * 255).round().astype(np.uint8)
    assert np.abs(decode_png(r.content).astype(int) - expected.astype(int)).max() <= 1


def test_the_integrated_view_is_the_librarys_magnitude_over_the_crop(client, chelsea_id):
    """Sundararajan et al. 2017 for the image on the page: the class's probability from the black image, 32
    points of §5's sum, the attributions' magnitude over the darkened crop."""
    from alexnet.serve.app import INTEGRATED_STEPS
    from alexnet.visualize.integrated import integrated_gradients, magnitude_overlay
    from alexnet.visualize.plot import uint8_to_float

    a = client.app.state.server.analysis("a", chelsea_id)
    slot = client.app.state.server.slot("a")
    r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view=integrated")
    assert r.status_code == 200, r.text
    res = integrated_gradients(slot.model, a.x, 281, steps=INTEGRATED_STEPS)
    expected = magnitude_overlay(uint8_to_float(a.crop), res.attributions[0].numpy())
    expected = (np.clip(expected, 0, 1) * 255).round().astype(np.uint8)
    assert np.abs(decode_png(r.content).astype(int) - expected.astype(int)).max() <= 1


def test_the_smoothgrad_view_is_the_librarys_map_drawn_as_the_paper_draws_it(client, chelsea_id):
    """Smilkov et al. 2017 for the image on the page: the class score's gradient over 32 noisy copies (seed 0),
    its magnitude summed over the colours and capped at the 99th percentile, grey."""
    from alexnet.serve.app import SMOOTHGRAD_SAMPLES
    from alexnet.visualize.smoothgrad import magnitude, smoothgrad

    a = client.app.state.server.analysis("a", chelsea_id)
    slot = client.app.state.server.slot("a")
    r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view=smoothgrad")
    assert r.status_code == 200, r.text
    res = smoothgrad(slot.model, a.x, 281, samples=SMOOTHGRAD_SAMPLES)
    expected = (magnitude(res.attributions[0].numpy()) * 255).round().astype(np.uint8)
    got = decode_png(r.content)
    assert got.shape == expected.shape == tuple(a.x.shape[-2:])
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_the_lrp_view_is_the_librarys_composite_red_for_the_class(client, chelsea_id):
    """Bach et al. 2015 for the image on the page: the class score's relevance by the composite, summed over the
    colours, in the bwr colour map (white where nothing is relevant), as the command's figure draws it."""
    from alexnet.visualize.lrp import heatmap_rgb, lrp

    a = client.app.state.server.analysis("a", chelsea_id)
    slot = client.app.state.server.slot("a")
    r = client.get(f"/api/models/a/images/{chelsea_id}/gradcam.png?target=281&view=lrp")
    assert r.status_code == 200, r.text
    expected = (heatmap_rgb(lrp(slot.model, a.x, 281).attributions[0]) * 255).round().astype(np.uint8)
    got = decode_png(r.content)
    assert got.shape == (*a.x.shape[-2:], 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("url", "status", "message"),
    [
        ("/api/models/a/layers/relu3/channels/999/maximize", 400, "channel 999 is out of range for conv3"),
        ("/api/models/a/layers/fc7/channels/0/maximize", 404, "no layer 'fc7' on the page"),
        ("/api/models/a/layers/relu3/channels/0/maximize?steps=5000", 400, "steps must be 10–1000"),
        ("/api/models/z/layers/relu3/channels/0/maximize", 404, "z"),
    ],
)
def test_bad_optimisation_requests_are_refused(client, url, status, message):
    r = client.post(url)
    assert r.status_code == status and message in r.json()["error"]


def test_bad_occlusion_parameters_are_refused(client, chelsea_id):
    r = client.post(f"/api/models/a/images/{chelsea_id}/occlusion?size=500&stride=8")
    assert r.status_code == 400 and "occluder size" in r.json()["error"]


# --- loading models ----------------------------------------------------------------------------------------
def test_trained_weights_bring_their_class_names_and_top9_folder(tmp_path):
    model = create_model("alexnet", num_classes=3)
    weights = save_weights(model, tmp_path / "model.safetensors", WeightsMeta(classes=["cat", "dog", "cup"]))
    (tmp_path / "top9").mkdir()
    slot = load_slot("a", weights=str(weights))
    assert slot.trained and slot.labels == ["cat", "dog", "cup"]
    assert slot.top9_dir == tmp_path / "top9"
    with TestClient(create_app([slot])) as c:
        image_id = c.post("/api/samples/chelsea").json()["image_id"]
        preds = c.get(f"/api/models/a/images/{image_id}").json()["predictions"]
    assert len(preds) == 3 and {p["label"] for p in preds} == {"cat", "dog", "cup"}


def test_run_folder_without_weights_is_one_clear_error(tmp_path, capsys):
    assert main(["serve", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and len(err.strip().splitlines()) == 1


def test_serve_without_a_model_is_a_usage_error(capsys):
    assert main(["serve"]) == 2
    assert "--model" in capsys.readouterr().err


def test_serve_refuses_a_taken_port_with_one_line(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", "alexnet", "--port", str(port)]) == 2
    assert "cannot listen" in capsys.readouterr().err


def test_top9_beside_the_weights_is_shown_for_the_clicked_channel(tmp_path, chelsea):
    """A top-9 folder written by the visualisation library (conv5) serves clicks on relu5: same feature maps."""
    import skimage.data

    from alexnet.visualize.topk import stream_topk, write_topk

    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=4).eval()
    weights = save_weights(model, tmp_path / "model.safetensors", WeightsMeta(classes=["a", "b", "c", "d"]))
    items = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        path = tmp_path / "data" / f"{name}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(jpeg_bytes(getattr(skimage.data, name)()))
        items.append((path, str(path)))
    folder = tmp_path / "top9" / "conv5"
    state = stream_topk(model, items, "conv5", k=9, batch_size=4, state_dir=folder)
    write_topk(model, state, folder)

    slot = load_slot("a", weights=str(weights))
    with TestClient(create_app([slot])) as c:
        assert c.get("/api/info").json()["models"][0]["top9"] == ["conv5"]
        image_id = c.post("/api/images", content=jpeg_bytes(chelsea)).json()["image_id"]
        info = c.get(f"/api/models/a/images/{image_id}/layers/relu5/channels/11").json()
        top9 = info["top9"]
        assert top9["layer"] == "conv5"
        assert top9["values"] == pytest.approx([v for v, _, _, _ in state.entries(11)])
        assert sorted(top9["images"]) == sorted(p.name for p, _ in items), "file names only, no server paths"
        patches = decode_png(c.get(top9["patches"]).content)
        deconvs = decode_png(c.get(top9["deconvs"]).content)
        assert patches.shape == deconvs.shape and patches.shape[2] == 3
        assert c.get("/api/models/a/top9/relu5/11/secrets.png").status_code == 404
        assert c.get("/api/models/a/top9/relu5/999/patches.png").status_code == 404
        assert c.get(f"/api/models/a/images/{image_id}/layers/relu1/channels/0").json()["top9"] is None

    # Without the streaming state, the same entries are rebuilt from top9.json alone.
    from alexnet.serve.top9 import load_topk

    (folder / "state.npz").unlink()
    rebuilt = load_topk(folder)
    for channel in (0, 11, 255):
        got, want = rebuilt.entries(channel), state.entries(channel)
        assert [e[1:] for e in got] == [e[1:] for e in want]  # image, row, col
        assert [e[0] for e in got] == pytest.approx([e[0] for e in want])


def test_binding_beyond_localhost_warns_once_bound_and_a_failed_bind_is_one_line(capsys, monkeypatch):
    import socket

    import alexnet.cli.serve as serve_cli

    served = []
    monkeypatch.setattr(
        serve_cli, "serve_socket", lambda slots, sock, open_url=None, local=True: served.append((sock, local))
    )
    assert main(["serve", "--model", "alexnet", "--host", "0.0.0.0", "--port", "0"]) == 0
    served[0][0].close()
    assert served[0][1] is False  # reachable from other machines: any Host is answered
    assert "reachable from other machines" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--model", "alexnet", "--host", "0.0.0.0", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen" in err


def test_more_jobs_than_the_server_takes_are_refused_until_one_finishes():
    from alexnet.serve.jobs import JobRunner, TooManyJobs

    runner = JobRunner(
        keep=2, max_pending=3
    )  # a short job list: refused jobs count even when no longer listed
    release = threading.Event()
    jobs = [runner.submit("wait", lambda job, progress: release.wait(10)) for _ in range(3)]
    with pytest.raises(TooManyJobs, match="3 jobs are queued or running already"):
        runner.submit("one too many", lambda job, progress: None)
    assert runner.submit("again", lambda job, progress: None, key=jobs[2].id) is jobs[2]  # known: no new work
    release.set()
    deadline = time.monotonic() + 10
    while any(j.state != "done" for j in jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [j.state for j in jobs] == ["done"] * 3
    assert runner.submit("after", lambda job, progress: None).state in ("queued", "running", "done")
    runner.shutdown(wait=True)


def test_shutdown_stops_a_running_job_at_its_next_progress_report():
    from alexnet.serve.jobs import JobRunner

    runner = JobRunner()
    started = threading.Event()

    def endless(job, progress) -> None:
        started.set()
        for i in range(100_000):  # ~17 minutes unless stopped
            progress(i, 100_000)
            time.sleep(0.01)

    job = runner.submit("endless", endless)
    assert started.wait(10)
    runner.shutdown(wait=True)  # returns only once the job has stopped
    assert job.state == "failed" and "shutting down" in job.error
    assert job.done < 100_000 - 1  # stopped at a progress report, not run to its end
    late = runner.submit("late", endless)  # nothing new starts once stopping
    assert late.state == "failed" and "shutting down" in late.error


def test_closing_the_app_stops_its_running_occlusion_job(models):
    # what Ctrl-C does to `alexnet serve`: the app's shutdown handler; the job's worker thread must not keep the
    # process alive through hundreds of forward passes
    with TestClient(create_app([Slot("a", models["a"], "random initialisation", trained=False)])) as c:
        image_id = c.post("/api/samples/chelsea").json()["image_id"]
        job = c.post(f"/api/models/a/images/{image_id}/occlusion?size=4&stride=2").json()  # 12,321 positions
        deadline = time.monotonic() + 60
        while job["done"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            job = c.get(f"/api/jobs/{job['id']}").json()
        assert job["state"] == "running", job
        runner = c.app.state.jobs
    deadline = time.monotonic() + 30
    while runner.get(job["id"]).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = runner.get(job["id"])
    assert stopped.state == "failed" and "shutting down" in stopped.error
    assert stopped.done < stopped.total
    assert all(not m._forward_hooks for m in models["a"].modules()), "the progress hook is removed"


def test_serve_accepts_a_published_source_name_like_the_other_commands(capsys, tmp_path, monkeypatch):
    # A cached file under the source's name is used without the network, and its published SHA-256 is checked.
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "bvlcalexnet-8.onnx").write_bytes(b"not the published file")
    assert main(["serve", "--weights", "bvlcalexnet-8", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bvlcalexnet-8" in err and "no such weights file" not in err


@pytest.fixture(scope="module")
def local_client(models) -> TestClient:
    """The app as ``alexnet serve`` runs it bound to this machine."""
    from alexnet.serve.app import LOCAL_HOSTS

    slots = [Slot("a", models["a"], "random initialisation", trained=False)]
    with TestClient(create_app(slots, allowed_hosts=LOCAL_HOSTS), base_url="http://127.0.0.1:8000") as c:
        yield c


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"])
def test_bound_to_this_machine_it_answers_requests_addressed_to_it(local_client, host):
    assert local_client.get("/api/info", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "127.0.0.1.evil.example", ""])
def test_bound_to_this_machine_a_request_under_another_host_name_is_refused(local_client, host):
    """What a web page reaches through a DNS name rebound to 127.0.0.1 carries that name as Host."""
    r = local_client.get("/api/info", headers={"host": host})
    assert r.status_code == 400 and "not served here" in r.json()["error"]
    r = local_client.post("/api/samples/chelsea", headers={"host": host})
    assert r.status_code == 400 and "not served here" in r.json()["error"]


def test_bound_to_this_machine_another_sites_page_cannot_post_but_its_own_page_and_scripts_can(local_client):
    r = local_client.post("/api/samples/chelsea", headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and "not accepted" in r.json()["error"]
    for origin in ("http://127.0.0.1:8000", "http://localhost:8000", None):
        headers = {"origin": origin} if origin else {}
        r = local_client.post("/api/samples/chelsea", headers=headers)
        assert r.status_code == 200 and r.json()["image_id"], (origin, r.text)
    # reading is not refused by Origin (the browser keeps another site's page from reading the answer)
    assert local_client.get("/api/info", headers={"origin": "https://evil.example"}).status_code == 200


def test_the_image_cache_keeps_at_most_its_byte_budget_and_always_the_newest_image():
    from alexnet.serve.state import LRU

    cache: LRU[str, torch.Tensor] = LRU(64, lambda t: t.nbytes, max_size=1000)
    for name in "abc":
        cache.put(name, torch.zeros(400, dtype=torch.uint8))
    assert [k for k in "abc" if cache.get(k) is not None] == ["b", "c"]  # 800 bytes: a went first
    cache.put("big", torch.zeros(5000, dtype=torch.uint8))  # larger than the budget alone: kept, alone
    assert [k for k in ("b", "c", "big") if cache.get(k) is not None] == ["big"]


def test_serve_names_a_device_the_machine_lacks_in_one_line_before_loading(capsys, monkeypatch):
    import alexnet.cli.serve as serve_cli

    served = []
    monkeypatch.setattr(serve_cli, "serve_socket", lambda slots, sock, **kw: served.append((slots, sock)))
    assert main(["serve", "--model", "alexnet", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown device 'gpu'" in err and not served
    assert main(["serve", "--model", "alexnet", "--device", "cpu", "--port", "0"]) == 0
    ((slots, sock),) = served
    sock.close()
    assert next(slots[0].model.parameters()).device.type == "cpu"


def test_a_large_jpeg_upload_is_decoded_as_predict_decodes_the_file(client, models, tmp_path):
    """A 1200×1000 photo: kept at half size (the shorter side still ≥ the resize), reported at its own size, and
    its top-5 is `alexnet predict`'s for the same file."""
    import skimage.data

    from alexnet.predict import predict_files

    path = tmp_path / "big.jpg"
    Image.fromarray(skimage.data.chelsea()).resize((1200, 1000)).save(path, quality=90)
    r = client.post("/api/images", content=path.read_bytes())
    assert r.status_code == 200, r.text
    info = r.json()
    assert (info["width"], info["height"]) == (1200, 1000)
    assert tuple(client.app.state.server.image(info["image_id"]).shape) == (3, 500, 600)
    page = client.get(f"/api/models/a/images/{info['image_id']}").json()["predictions"]
    ((_, expected),) = predict_files(models["a"], [path], topk=5)
    assert [p["index"] for p in page] == [e.index for e in expected]
    assert [p["probability"] for p in page] == pytest.approx([e.probability for e in expected], abs=1e-6)
