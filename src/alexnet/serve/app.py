"""The web app: a FastAPI application over :class:`~alexnet.serve.state.ServerState`.

Every endpoint calls the visualisation library (:mod:`alexnet.visualize`) — capture, activation grids, the
deconvnet, occlusion, top-9, Grad-CAM, optimised images — and the analysis table
(:func:`alexnet.analysis.summarize`); nothing is computed twice in a different way here. Errors a person can fix come back as ``4xx`` JSON ``{"error": "..."}`` (the page
shows the message), and no request can take the server down.

Safety: the client never names a file-system path (samples by id, images by content hash, top-9 patches by
layer / channel / rank); uploads are size-, type- and pixel-count-checked before decoding
(:mod:`alexnet.serve.uploads`); the request body is read in chunks and refused as soon as it passes the limit.
Bound to this machine (the default), it answers only requests addressed to this machine (``Host``), so a web
page cannot reach it through a DNS name rebound to 127.0.0.1, and takes uploads and jobs (``POST``) only from its
own page or from clients that send no ``Origin`` (curl, scripts), not from another site's page.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn

from alexnet.errors import AlexnetError, LayerNotFound, SelectionError
from alexnet.models import AlexNetFamily
from alexnet.serve import render
from alexnet.serve.jobs import Job, JobRunner, Progress, TooManyJobs, UnknownJob
from alexnet.serve.samples import SampleNotFound, list_samples, load_sample
from alexnet.serve.state import Analysis, ServerState, Slot, UnknownImage
from alexnet.serve.top9 import Top9Missing, Top9Store
from alexnet.serve.uploads import MAX_BYTES, MAX_PIXELS, UploadError, decode_upload

log = logging.getLogger("alexnet.serve")
PNG = "image/png"
NO_STORE = {"Cache-Control": "no-store"}
CACHE = {"Cache-Control": "private, max-age=3600"}  # URLs name content (image hash), so caching is safe


def _status(e: AlexnetError) -> int:
    if isinstance(e, UploadError):
        return e.status
    if isinstance(e, UnknownImage | UnknownJob | SampleNotFound | Top9Missing):
        return 404
    if isinstance(e, LayerNotFound):
        return 404
    if isinstance(e, TooManyJobs):
        return 429
    return 400


def _png(data: bytes) -> Response:
    return Response(data, media_type=PNG, headers=CACHE)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes (never buffered beyond it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadError(f"file too large: {int(declared) / 1e6:.1f} MB (limit {limit / 1e6:.0f} MB)", 413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise UploadError(f"file too large: more than {limit / 1e6:.0f} MB", 413)
        chunks.append(chunk)
    return b"".join(chunks)


MAXIMIZE_STEPS = 200  # a unit's optimised image on the page: ~8 s for AlexNet on 2 CPU cores
# the Grad-CAM figure's menu: Selvaraju et al. 2017, Fig. 1 (c), (b), (d); Sundararajan et al. 2017
GRADCAM_VIEWS = (
    "gradcam",
    "guided",
    "guided-gradcam",
    "saliency",
    "deconvnet",
    "integrated",
    "smoothgrad",
    "lrp",
)
INTEGRATED_STEPS = 32  # integrated gradients on the page: 0.6 s (alexnet) to 1.1 s (zfnet) on 2 cores
SMOOTHGRAD_SAMPLES = 32  # SmoothGrad on the page: about 0.6 s (alexnet) to 1.1 s (zfnet) on 2 cores
MAXIMIZE_MAX_STEPS = 1000  # the paper's preset 3 runs 1000
OCCLUSION_BATCH = 24  # occluded copies per forward pass: progress every ~24 positions, same throughput


@contextmanager
def count_passes(model: AlexNetFamily, report: Callable[[int], None]) -> Iterator[None]:
    """Report how many images reached the model's last layer *from this thread* while the block runs.

    The occlusion study (a library function) has no progress callback; a forward hook on the classifier's last
    layer sees every batch it runs. Counting only the calling thread's passes keeps concurrent requests (a
    channel click's forward pass) out of the count. The first pass is the unoccluded image.
    """
    me = threading.get_ident()
    seen = 0

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal seen
        if threading.get_ident() == me:
            seen += int(output.shape[0])
            report(seen)

    handle = model.layer(model.layer_names()[-1]).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _hostname(url: str) -> str:
    """The host name, lower case, of a ``Host`` header (``host[:port]``, ``[v6]:port``) or an ``Origin``."""
    try:
        return urlsplit(url if "://" in url else "//" + url.strip()).hostname or ""
    except ValueError:  # "[::1" and the like: no host name at all
        return ""


def create_app(
    slots: list[Slot],
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_images: int = 64,
    allowed_hosts: frozenset[str] | set[str] | None = None,
) -> FastAPI:
    """The app serving ``slots`` (one model, or two side by side). Limits are per upload. ``allowed_hosts``: the
    host names requests may be addressed to (``Host``) and ``POST`` s may come from (``Origin``); ``None``: any
    (``alexnet serve`` passes :data:`LOCAL_HOSTS` when it binds to this machine)."""
    state = ServerState(slots, max_images=max_images)
    jobs = JobRunner()
    top9 = {s.key: Top9Store(s) for s in slots}
    app = FastAPI(title="alexnet serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    app.state.jobs = jobs
    app.router.add_event_handler("shutdown", jobs.shutdown)

    if allowed_hosts is not None:
        allowed = frozenset(h.lower() for h in allowed_hosts)

        @app.middleware("http")
        async def _this_machine_only(request: Request, call_next: Callable[[Request], Any]) -> Response:
            host = _hostname(request.headers.get("host", ""))
            if host not in allowed:  # a rebound DNS name reaches 127.0.0.1 with its own name as Host
                return JSONResponse({"error": f"requests to host {host!r} are not served here"}, 400)
            origin = request.headers.get("origin")
            writes = request.method not in ("GET", "HEAD", "OPTIONS")
            if writes and origin is not None and _hostname(origin) not in allowed:
                # another site's page posting here (a plain form POST needs no CORS preflight)
                return JSONResponse({"error": f"requests from {origin} are not accepted"}, 403)
            return await call_next(request)

    @app.exception_handler(AlexnetError)
    async def _user_error(_: Request, e: AlexnetError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=_status(e))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query", "body"))
        return JSONResponse({"error": f"bad {where or 'request'}: {first.get('msg', 'invalid')}"}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, status_code=500)

    static = resources.files("alexnet.serve") / "static"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(static / "index.html"), headers=NO_STORE)

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    # --- what is loaded ------------------------------------------------------------------------------------
    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "models": [s.describe() | {"top9": top9[s.key].available()} for s in state.slots.values()],
            "samples": [{"id": s.id, "title": s.title, "group": s.group} for s in list_samples()],
            "limits": {"max_bytes": max_bytes, "max_pixels": max_pixels},
        }

    @app.get("/api/models/{key}/summary")
    def summary(key: str) -> dict[str, Any]:
        from alexnet.analysis import summarize

        slot = state.slot(key)
        return summarize(slot.model, slot.preprocessing.input_size).to_dict()

    # --- images in -----------------------------------------------------------------------------------------
    def _describe_image(image_id: str, width: int, height: int, source: str) -> dict[str, Any]:
        return {"image_id": image_id, "width": width, "height": height, "source": source}

    @app.post("/api/images")
    async def upload(request: Request) -> dict[str, Any]:
        data = await _read_body(request, max_bytes)
        # a large JPEG decoded at reduced size, never below a loaded model's resize (as predict and eval)
        up = decode_upload(data, max_bytes=max_bytes, max_pixels=max_pixels, min_side=state.min_side)
        return _describe_image(state.add_image(up.image), up.width, up.height, "upload")

    @app.get("/api/samples/{sample_id}/thumb.png")
    def sample_thumb(sample_id: str) -> Response:
        from torchvision.transforms import v2

        return _png(render.image_png(v2.Resize(96, antialias=True)(load_sample(sample_id))))

    @app.post("/api/samples/{sample_id}")
    def choose_sample(sample_id: str) -> dict[str, Any]:
        image = load_sample(sample_id)
        return _describe_image(state.add_image(image), int(image.shape[2]), int(image.shape[1]), sample_id)

    # --- one image through one model -----------------------------------------------------------------------
    def _analysis(key: str, image_id: str) -> Analysis:
        return state.analysis(key, image_id)

    @app.get("/api/models/{key}/images/{image_id}")
    def analyse(key: str, image_id: str) -> dict[str, Any]:
        a = _analysis(key, image_id)
        slot = state.slot(key)
        base = f"/api/models/{key}/images/{image_id}"
        layers = []
        for layer, acts in a.activations.items():
            c, h, w = acts.shape
            layers.append(
                {
                    "layer": layer,
                    "shape": [c, h, w],
                    "layout": render.grid_layout(c, h),
                    "grid": f"{base}/layers/{layer}/grid.png",
                }
            )
        return {
            "model": slot.describe() | {"top9": top9[key].available()},
            "input": f"{base}/input.png",
            "predictions": [
                {"index": p.index, "label": p.label, "probability": p.probability} for p in a.predictions
            ],
            "layers": layers,
        }

    @app.get("/api/models/{key}/images/{image_id}/input.png")
    def input_png(key: str, image_id: str) -> Response:
        a = _analysis(key, image_id)
        return _png(a.pngs.get_or_create(("input",), lambda: render.image_png(a.crop)))

    @app.get("/api/models/{key}/images/{image_id}/layers/{layer}/grid.png")
    def grid_png(key: str, image_id: str, layer: str) -> Response:
        state.slot(key).check_layer(layer)
        a = _analysis(key, image_id)
        return _png(a.pngs.get_or_create(("grid", layer), lambda: render.grid_png(a.activations[layer])[0]))

    def _channel(key: str, image_id: str, layer: str, channel: int) -> tuple[Slot, Analysis, torch.Tensor]:
        slot = state.slot(key)
        slot.check_layer(layer)
        a = _analysis(key, image_id)
        acts = a.activations[layer]
        if not 0 <= channel < acts.shape[0]:
            raise LayerNotFound(f"channel {channel} is out of range for {layer} (0–{acts.shape[0] - 1})")
        return slot, a, acts[channel]

    @app.get("/api/models/{key}/images/{image_id}/layers/{layer}/channels/{channel}")
    def channel_info(key: str, image_id: str, layer: str, channel: int) -> dict[str, Any]:
        _, _, fmap = _channel(key, image_id, layer, channel)
        base = f"/api/models/{key}/images/{image_id}/layers/{layer}/channels/{channel}"
        flat = int(fmap.flatten().argmax())
        row, col = divmod(flat, fmap.shape[1])
        return {
            "layer": layer,
            "channel": channel,
            "shape": list(fmap.shape),
            "max": float(fmap.max()),
            "mean": float(fmap.mean()),
            "argmax": [row, col],
            "map": f"{base}/map.png",
            "deconv": f"{base}/deconv.png",
            "top9": top9[key].channel(layer, channel) if top9[key].has(layer) else None,
        }

    @app.get("/api/models/{key}/images/{image_id}/layers/{layer}/channels/{channel}/map.png")
    def channel_map(key: str, image_id: str, layer: str, channel: int) -> Response:
        slot, a, fmap = _channel(key, image_id, layer, channel)
        size = slot.preprocessing.input_size
        return _png(a.pngs.get_or_create(("map", layer, channel), lambda: render.map_png(fmap, size)))

    @app.get("/api/models/{key}/images/{image_id}/layers/{layer}/channels/{channel}/deconv.png")
    def channel_deconv(
        key: str, image_id: str, layer: str, channel: int, rule: str = "deconvnet"
    ) -> Response:
        """ZF §2.1's projection; ``?rule=gradient`` or ``guided``: the same pass as a saliency map or guided
        backpropagation (:mod:`alexnet.visualize.deconvnet`)."""
        from alexnet.visualize.deconvnet import check_rule, deconvnet

        check_rule(rule)
        slot, a, _ = _channel(key, image_id, layer, channel)

        def make() -> bytes:
            projection = deconvnet(slot.model, a.x, layer, channel, rule=rule)[0]
            return render.projection_png(projection, slot.preprocessing)

        return _png(a.pngs.get_or_create(("deconv", layer, channel, rule), make))

    # --- Grad-CAM of a class for this image (Selvaraju et al. 2017) ---------------------------------------
    @app.get("/api/models/{key}/images/{image_id}/gradcam.png")
    def gradcam_png(key: str, image_id: str, target: int, view: str = "gradcam") -> Response:
        """Where this image's evidence for class ``target`` lies: Grad-CAM at the last conv stage's ReLU over the
        network's input crop (:mod:`alexnet.visualize.gradcam`); ``?view=guided``: the class's guided
        backpropagation, ``?view=guided-gradcam``: their product, Guided Grad-CAM (§3, Fig. 1 (b), (d));
        ``?view=saliency``: Simonyan et al.'s class saliency map (max |gradient| over the colours, grey);
        ``?view=deconvnet``: the class score's projection by ZF's rules through the classifier;
        ``?view=integrated``: the magnitude of its probability's integrated gradients from the black image
        (Sundararajan et al. 2017; :mod:`alexnet.visualize.integrated`) over the crop; ``?view=smoothgrad``: its
        score's gradient averaged over noisy copies (Smilkov et al. 2017; :mod:`alexnet.visualize.smoothgrad`),
        grey as the paper draws it; ``?view=lrp``: its score's layer-wise relevance propagation, the composite
        (Bach et al. 2015; :mod:`alexnet.visualize.lrp`), red for the class, blue against it."""
        from alexnet.visualize.deconvnet import class_projection, saliency_map
        from alexnet.visualize.gradcam import gradcam, overlay
        from alexnet.visualize.integrated import integrated_gradients, magnitude_overlay
        from alexnet.visualize.lrp import heatmap_rgb, lrp
        from alexnet.visualize.plot import uint8_to_float
        from alexnet.visualize.smoothgrad import magnitude, smoothgrad

        if view not in GRADCAM_VIEWS:
            raise SelectionError(f"unknown view {view!r}; choose {', '.join(GRADCAM_VIEWS)}")
        slot = state.slot(key)
        a = _analysis(key, image_id)

        def make() -> bytes:
            if view == "integrated":
                res = integrated_gradients(slot.model, a.x, target, steps=INTEGRATED_STEPS)
                return render.png(magnitude_overlay(uint8_to_float(a.crop), res.attributions[0].numpy()))
            if view == "smoothgrad":
                smoothed = smoothgrad(slot.model, a.x, target, samples=SMOOTHGRAD_SAMPLES).attributions[0]
                return render.png(magnitude(smoothed.numpy()))
            if view == "lrp":
                return render.png(heatmap_rgb(lrp(slot.model, a.x, target).attributions[0]))
            if view == "saliency":  # §3.1: the largest magnitude over the colours, 0 black, its maximum white
                pixels = class_projection(slot.model, a.x, target, "gradient").images[0]
                return render.map_png(saliency_map(pixels), size=pixels.shape[-1])
            if view in ("guided", "deconvnet"):  # the class's pass down alone, without the map
                pixels = class_projection(slot.model, a.x, target, view).images[0]
                return render.projection_png(pixels, slot.preprocessing)
            cam = gradcam(slot.model, a.x, target=target, guided=view == "guided-gradcam")
            if view == "guided-gradcam":
                return render.projection_png(cam.guided_gradcam()[0], slot.preprocessing)
            heat = cam.upsampled(tuple(a.x.shape[-2:]))[0].numpy()
            return render.png(overlay(uint8_to_float(a.crop), heat))

        return _png(a.pngs.get_or_create(("gradcam", target, view), make))

    # --- optimised images (Yosinski et al. 2015, §3), as a polled job -------------------------------------
    @app.post("/api/models/{key}/layers/{layer}/channels/{channel}/maximize")
    def start_maximize(key: str, layer: str, channel: int, steps: int = MAXIMIZE_STEPS) -> dict[str, Any]:
        """The image the unit wants most: a page layer's map (its centre unit, climbed before the ReLU, where a
        unit at zero still has a gradient) or a class of the last layer; preset 3 of Table 1 for ``steps``."""
        from alexnet.visualize.maximize import check_selection

        slot = state.slot(key)
        last = slot.model.layer_names()[-1]
        if layer != last:
            slot.check_layer(layer)
        climbed = "conv" + layer[len("relu") :] if layer.startswith("relu") else layer
        if not 10 <= steps <= MAXIMIZE_MAX_STEPS:
            raise UploadError(f"steps must be 10–{MAXIMIZE_MAX_STEPS}, got {steps}")
        unit = check_selection(slot.model, climbed, [channel])

        def work(job: Job, progress: Progress) -> None:
            from alexnet.visualize.maximize import for_display, maximize, preset

            progress(0, steps)
            res = maximize(
                slot.model,
                climbed,
                [channel],
                unit,
                preset(3, steps=steps),
                on_step=lambda i: progress(i + 1, steps),
            )
            job.files["image.png"] = render.png(for_display(slot.model, res)[0])
            job.result = {
                "layer": layer,
                "climbed": climbed,
                "channel": channel,
                "unit": list(unit) if unit is not None else None,
                "label": slot.labels[channel] if climbed == last else None,
                "start": float(res.objective[0, 0]),
                "best": float(res.best[0]),
                "best_step": int(res.best_step[0]),
                "first_top": int(res.first_top[0]),
                "stuck": bool(res.stuck[0]),
                "steps": steps,
            }

        job = jobs.submit("maximize", work, key=f"max-{key}-{climbed}-{channel}-{steps}")
        job.total = job.total or steps
        return job.describe()

    # --- top-9 of the data set (computed offline by `alexnet visualize top9`) -----------------------------
    @app.get("/api/models/{key}/top9/{layer}/{channel}/{kind}.png")
    def top9_png(key: str, layer: str, channel: int, kind: str) -> Response:
        state.slot(key)
        return _png(top9[key].png(layer, channel, kind))

    # --- occlusion, as a polled job ------------------------------------------------------------------------
    @app.post("/api/models/{key}/images/{image_id}/occlusion")
    def start_occlusion(key: str, image_id: str, size: int = 32, stride: int = 8) -> dict[str, Any]:
        slot = state.slot(key)
        a = _analysis(key, image_id)
        side = slot.preprocessing.input_size
        if not 4 <= size <= side // 2:
            raise UploadError(f"occluder size must be 4–{side // 2} pixels, got {size}")
        if not 2 <= stride <= size:
            raise UploadError(f"stride must be 2–{size} pixels, got {stride}")
        positions = ((side - size) // stride + 1) ** 2

        def work(job: Job, progress: Progress) -> None:
            from alexnet.visualize.occlusion import followed_map_projection, occlusion

            progress(0, positions)
            with count_passes(slot.model, lambda n: progress(min(max(n - 1, 0), positions), positions)):
                r = occlusion(slot.model, a.x[0], size=size, stride=stride, batch_size=OCCLUSION_BATCH)
            progress(positions, positions)
            job.files["activation.png"] = render.heatmap_png(r.activation)
            # ZF Fig. 7 (c): the followed map projected to the pixels
            projection = followed_map_projection(slot.model, a.x[0], r)
            job.files["projection.png"] = render.projection_png(projection, slot.preprocessing)
            job.files["probability.png"] = render.heatmap_png(r.probability)
            job.files["labels.png"], legend = render.label_map_png(r.label_map)
            job.result = {
                "layer": r.layer,
                "channel": r.channel,
                "target": r.target,
                "target_label": r.labels.get(r.target, str(r.target)),
                "base_activation": r.base_activation,
                "base_probability": r.base_probability,
                "probability_range": [float(r.probability.min()), float(r.probability.max())],
                "legend": [{"index": c, "label": r.labels.get(c, str(c)), "color": col} for c, col in legend],
                "size": size,
                "stride": stride,
                "positions": positions,
            }

        job = jobs.submit("occlusion", work, key=f"occ-{key}-{image_id}-{size}-{stride}")
        job.total = job.total or positions
        return job.describe()

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        return jobs.get(job_id).describe()

    @app.get("/api/jobs/{job_id}/{name}")
    def job_file(job_id: str, name: str) -> Response:
        job = jobs.get(job_id)
        if name not in job.files:
            raise UnknownJob(f"job {job_id} has no file {name!r} (state: {job.state})")
        return _png(job.files[name])

    return app
