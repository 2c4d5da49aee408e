"""End to end in headless Chromium: the real server (uvicorn), the real page, a sample, a click on a channel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from alexnet import create_model
from alexnet.serve.state import Slot
from browser.chromium import Console, another_browser, launch_or_skip, screenshot, undecoded_images
from browser.live import live_server

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launch_or_skip() as b:
        yield b


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from alexnet.serve.app import LOCAL_HOSTS, create_app

    torch.manual_seed(0)
    slots = [
        Slot("a", create_model("alexnet"), "random initialisation", trained=False),
        Slot("b", create_model("zfnet"), "random initialisation", trained=False),
    ]
    with live_server(create_app(slots, allowed_hosts=LOCAL_HOSTS)) as url:  # as `alexnet serve` runs it
        yield url


def image_ready(selector: str) -> str:
    return f"() => {{ const i = document.querySelector({selector!r}); return !!i && i.complete && i.naturalWidth > 0; }}"


def test_pick_sample_click_channel_shows_its_deconv_without_console_errors(browser, base_url):
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    console = Console()
    console.attach(page)
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert "random initialisation" in page.inner_text("#banner")

    page.click("button.thumb[data-sample='chelsea']")
    grid = "[data-model='a'] img[data-layer='relu5']"
    page.wait_for_function(image_ready(grid), timeout=60_000)
    page.wait_for_load_state("networkidle")  # every grid of both models in place
    assert page.locator("[data-model='a'] .predictions tr").count() == 5
    assert page.locator("[data-model='b'] .layers img").count() == 5, "ZFNet side by side, all conv layers"

    # Channel 0 is the top-left tile of the grid.
    page.locator(grid).click(position={"x": 4, "y": 4})
    page.wait_for_function(image_ready("[data-model='a'] .channel-deconv"), timeout=30_000)
    assert page.inner_text("[data-model='a'] .channel-title") == "relu5, channel 0"
    size = page.evaluate("() => document.querySelector(\"[data-model='a'] .channel-deconv\").naturalWidth")
    assert size == 227
    # the same channel by guided backpropagation, chosen under the picture
    page.select_option("[data-model='a'] .deconv-rule", "guided")
    page.wait_for_function(
        "() => { const i = document.querySelector(\"[data-model='a'] .channel-deconv\");"
        " return i.src.endsWith('?rule=guided') && i.complete && i.naturalWidth === 227; }",
        timeout=30_000,
    )

    # the image this map's centre unit wants most (Yosinski et al. 2015), and the top class's
    page.click("[data-model='a'] .max-run")
    page.wait_for_function(image_ready("[data-model='a'] .channel-maximized"), timeout=120_000)
    assert "conv5 map 0, unit (6, 6)" in page.inner_text("[data-model='a'] .max-status")
    page.locator("[data-model='a'] .predictions .class-run").first.click()
    page.wait_for_function(image_ready("[data-model='a'] .class-image"), timeout=120_000)
    assert page.inner_text("[data-model='a'] .class-status").startswith("class ")
    page.locator("[data-model='a'] .predictions .class-where-run").first.click()  # Grad-CAM of the top class
    page.wait_for_function(image_ready("[data-model='a'] .class-where"), timeout=60_000)
    page.select_option("[data-model='a'] .where-view", "guided-gradcam")  # Guided Grad-CAM, from the menu
    page.wait_for_function(
        "() => { const i = document.querySelector(\"[data-model='a'] .class-where\");"
        " return i.src.endsWith('&view=guided-gradcam') && i.complete && i.naturalWidth === 227; }",
        timeout=60_000,
    )
    page.select_option("[data-model='a'] .where-view", "integrated")  # and integrated gradients
    page.wait_for_function(
        "() => { const i = document.querySelector(\"[data-model='a'] .class-where\");"
        " return i.src.endsWith('&view=integrated') && i.complete && i.naturalWidth === 227; }",
        timeout=60_000,
    )
    page.select_option("[data-model='a'] .where-view", "smoothgrad")  # and SmoothGrad
    page.wait_for_function(
        "() => { const i = document.querySelector(\"[data-model='a'] .class-where\");"
        " return i.src.endsWith('&view=smoothgrad') && i.complete && i.naturalWidth === 227; }",
        timeout=60_000,
    )
    page.select_option("[data-model='a'] .where-view", "lrp")  # and layer-wise relevance propagation
    page.wait_for_function(
        "() => { const i = document.querySelector(\"[data-model='a'] .class-where\");"
        " return i.src.endsWith('&view=lrp') && i.complete && i.naturalWidth === 227; }",
        timeout=60_000,
    )

    page.click("[data-model='a'] .occ-run")
    for panel in ("activation", "projection", "probability", "labels"):
        selector = f"[data-model='a'] .occlusion img[alt='occlusion {panel}']"
        page.wait_for_function(image_ready(selector), timeout=120_000)

    page.wait_for_load_state("networkidle")
    assert undecoded_images(page, with_src_only=True) == []
    screenshot(page, "serve.png")  # test artefact (git-ignored)
    assert console.errors == []


def test_bad_upload_shows_the_servers_message_in_the_page(browser, base_url):
    page = browser.new_page()
    console = Console()
    console.attach(page)
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.set_input_files(
        "#upload", files=[{"name": "cat.jpg", "mimeType": "image/jpeg", "buffer": b"not a cat"}]
    )
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    # …and a good choice afterwards still works.
    page.click("button.thumb[data-sample='shape-star']")
    page.wait_for_function(image_ready("[data-model='a'] img[data-layer='relu1']"), timeout=60_000)
    assert page.is_hidden("#error")
    # The failed upload is a 415 the browser logs as a failed resource; nothing else may be in the console.
    assert [e for e in console.errors if "415" not in e] == []


def test_a_webcam_frame_is_classified_like_an_upload(browser, base_url):
    # Chromium's fake camera (a moving test pattern) stands in for a real webcam; permission is granted up front.
    fake_camera = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
    with another_browser(browser, fake_camera) as camera_browser:
        context = camera_browser.new_context(permissions=["camera"])
        page = context.new_page()
        console = Console()
        console.attach(page)
        page.goto(base_url + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click("#webcam-start")
        page.wait_for_function("() => document.querySelector('#video').videoWidth > 0", timeout=30_000)
        page.click("#webcam-snap")
        page.wait_for_function(image_ready("[data-model='a'] img[data-layer='relu5']"), timeout=60_000)
        assert page.locator("[data-model='a'] .predictions tr").count() == 5
        page.click("#webcam-stop")
        assert page.evaluate("() => document.querySelector('#video').srcObject") is None
        assert console.errors == []
