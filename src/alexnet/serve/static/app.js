// alexnet serve: the page. Plain JS, no build step. Every number and picture comes from the JSON API (app.py).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { info: null, imageId: null, panels: {} };

async function api(url, options = {}) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function fmt(n) {
  const units = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, unit] of units) if (Math.abs(n) >= size) return (n / size).toFixed(2) + unit;
  return String(n);
}

// --- choosing an image ---------------------------------------------------------------------------------
function buildGallery(samples) {
  const gallery = $("#gallery");
  let group = null;
  for (const s of samples) {
    if (s.group !== group) {
      group = s.group;
      gallery.append(el("div", { className: "group-title", textContent: group }));
    }
    const button = el("button", { type: "button", className: "thumb", title: s.title });
    button.dataset.sample = s.id;
    button.append(el("img", { src: `/api/samples/${encodeURIComponent(s.id)}/thumb.png`, alt: s.title }));
    button.addEventListener("click", () => chooseSample(s.id, button));
    gallery.append(button);
  }
}

function markSelected(button) {
  for (const b of document.querySelectorAll(".thumb.selected")) b.classList.remove("selected");
  if (button) button.classList.add("selected");
}

async function chooseSample(id, button) {
  markSelected(button);
  await useImage(() => api(`/api/samples/${encodeURIComponent(id)}`, { method: "POST" }));
}

async function upload(blob) {
  markSelected(null);
  if (blob.size > state.info.limits.max_bytes) {
    showError(`file too large: ${(blob.size / 1e6).toFixed(1)} MB (limit ${state.info.limits.max_bytes / 1e6} MB)`);
    return;
  }
  await useImage(() => api("/api/images", { method: "POST", body: blob }));
}

async function useImage(getImage) {
  showError("");
  try {
    const image = await getImage();
    state.imageId = image.image_id;
    await Promise.all(state.info.models.map((m) => showModel(m.key)));
  } catch (e) {
    showError(e.message);
  }
}

async function startWebcam() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("this browser does not offer a webcam here (it needs localhost or https)");
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("#video").srcObject = stream;
    $("#webcam").hidden = false;
  } catch (e) {
    showError(`webcam unavailable: ${e.message}`);
  }
}

function stopWebcam() {
  const video = $("#video");
  if (video.srcObject) for (const track of video.srcObject.getTracks()) track.stop();
  video.srcObject = null;
  $("#webcam").hidden = true;
}

function snapWebcam() {
  const video = $("#video");
  if (!video.videoWidth) return showError("the webcam has no picture yet");
  const canvas = el("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => upload(blob), "image/jpeg", 0.92);
}

// --- one model's panel ---------------------------------------------------------------------------------
function buildPanel(model) {
  const node = $("#model-template").content.firstElementChild.cloneNode(true);
  node.dataset.model = model.key;
  $(".model-title", node).textContent = `${model.name}${model.trained ? "" : " — random initialisation"}`;
  $(".model-source", node).textContent =
    `${model.trained ? "weights: " + model.source : "untrained: no weights loaded, so the maps show random filters"}` +
    ` · ${model.num_classes} classes · ${model.input_size}×${model.input_size} input`;
  $(".occ-run", node).addEventListener("click", () => runOcclusion(model.key));
  $(".deconv-rule", node).addEventListener("change", () => showProjection(node));
  $(".where-view", node).addEventListener("change", () => {
    const img = $(".class-where", node);  // the class shown, for this image (a new image hides the figure)
    if (!$(".class-gradcam", node).hidden) showGradcam(model.key, Number(img.dataset.target), img.dataset.label);
  });
  $(".max-run", node).addEventListener("click", () => maximizeChannel(model.key));
  $(".occ-run", node).disabled = true;
  $("#models").append(node);
  state.panels[model.key] = { node, model, layers: {} };
  loadSummary(model.key);
}

async function loadSummary(key) {
  const { node } = state.panels[key];
  try {
    const s = await api(`/api/models/${key}/summary`);
    const table = $(".summary-table", node);
    const head = ["layer", "type", "output", "params", "MACs", "FLOPs", "RF", "stride"];
    table.append(el("tr", {}, ...head.map((h, i) => el("th", { textContent: h, className: i > 2 ? "num" : "" }))));
    for (const r of s.layers) {
      const cells = [r.name, r.type, r.output_shape.join("×"), fmt(r.params), fmt(r.macs), fmt(r.flops),
        r.receptive_field, r.stride];
      table.append(el("tr", {}, ...cells.map((c, i) => el("td", { textContent: c, className: i > 2 ? "num" : "" }))));
    }
    const t = s.totals;
    table.append(el("tr", {}, ...["total", "", "", fmt(t.params), fmt(t.macs), fmt(t.flops), "", ""].map(
      (c, i) => el("th", { textContent: c, className: i > 2 ? "num" : "" }))));
  } catch (e) {
    showError(e.message);
  }
}

async function showModel(key) {
  const panel = state.panels[key];
  const { node } = panel;
  const data = await api(`/api/models/${key}/images/${state.imageId}`);
  panel.data = data;
  $(".input", node).src = data.input;
  const rows = $(".predictions tbody", node);
  rows.replaceChildren();
  for (const p of data.predictions) {
    const bar = el("div", { className: "bar" });
    bar.style.width = `${Math.max(1, Math.round(p.probability * 120))}px`;
    const want = el("button", { type: "button", className: "class-run", textContent: "image",
      title: `optimise the image ${p.label} wants most (Yosinski et al. 2015, §3)` });
    want.addEventListener("click", () => maximizeClass(key, p.index));
    const where = el("button", { type: "button", className: "class-where-run", textContent: "where",
      title: `Grad-CAM: where this image's evidence for ${p.label} lies (Selvaraju et al. 2017)` });
    where.addEventListener("click", () => showGradcam(key, p.index, p.label));
    rows.append(el("tr", {},
      el("td", { className: "num", textContent: (100 * p.probability).toFixed(1) + "%" }),
      el("td", {}, bar),
      el("td", { textContent: p.label }),
      el("td", {}, where, " ", want)));
  }
  const layers = $(".layers", node);
  layers.replaceChildren();
  for (const layer of data.layers) {
    const img = el("img", { src: layer.grid, alt: `${layer.layer} activation grid` });
    img.dataset.layer = layer.layer;
    // Reserve the grid's box before it loads, so nothing shifts under the pointer while images arrive.
    const lay = layer.layout;
    const step = lay.tile + lay.pad;
    img.style.aspectRatio = `${lay.cols * step - lay.pad} / ${lay.rows * step - lay.pad}`;
    const pick = el("div", { className: "pick", hidden: true });
    const wrap = el("div", { className: "grid-wrap" }, img, pick);
    wrap.addEventListener("click", (ev) => clickGrid(key, layer, img, pick, ev));
    const [c, h, w] = layer.shape;
    layers.append(el("div", { className: "layer" },
      el("h4", { textContent: `${layer.layer}: ${c} maps of ${h}×${w}` }), wrap));
  }
  $(".channel", node).hidden = true;
  $(".class-maximized", node).hidden = true;
  $(".class-gradcam", node).hidden = true;
  $(".occlusion", node).replaceChildren();
  $(".occ-status", node).textContent = "";
  $(".occ-run", node).disabled = false;
}

function channelAt(layout, img, ev) {
  const rect = img.getBoundingClientRect();
  const scale = img.naturalWidth / rect.width;
  const x = (ev.clientX - rect.left) * scale;
  const y = (ev.clientY - rect.top) * scale;
  const step = layout.tile + layout.pad;
  // The thin padding after a tile counts as that tile: a click never falls between two channels.
  const col = Math.floor(x / step);
  const row = Math.floor(y / step);
  const channel = row * layout.cols + col;
  return col >= 0 && row >= 0 && col < layout.cols && channel < layout.channels ? { channel, row, col, scale } : null;
}

function clickGrid(key, layer, img, pick, ev) {
  const hit = channelAt(layer.layout, img, ev);
  if (!hit) return;
  const step = layer.layout.tile + layer.layout.pad;
  Object.assign(pick.style, {
    left: `${(hit.col * step) / hit.scale - 2}px`, top: `${(hit.row * step) / hit.scale - 2}px`,
    width: `${layer.layout.tile / hit.scale + 4}px`, height: `${layer.layout.tile / hit.scale + 4}px`,
  });
  for (const other of document.querySelectorAll(`[data-model="${key}"] .pick`)) other.hidden = true;
  pick.hidden = false;
  showChannel(key, layer.layer, hit.channel);
}

// The channel's projection to the pixels by the chosen rule (the deconvnet's, or the gradient's or guided
// backpropagation's, for comparison).
function showProjection(node) {
  const img = $(".channel-deconv", node);
  if (!img.dataset.base) return;
  const rule = $(".deconv-rule", node).value;
  img.alt = rule === "deconvnet" ? "deconvnet projection" : `${rule} projection`;
  img.src = rule === "deconvnet" ? img.dataset.base : `${img.dataset.base}?rule=${rule}`;
}

async function showChannel(key, layer, channel) {
  const { node } = state.panels[key];
  showError("");
  try {
    const c = await api(`/api/models/${key}/images/${state.imageId}/layers/${layer}/channels/${channel}`);
    const box = $(".channel", node);
    box.hidden = false;
    box.dataset.layer = layer;
    box.dataset.channel = channel;
    $(".channel-title", node).textContent = `${layer}, channel ${channel}`;
    $(".channel-stats", node).textContent =
      `max ${c.max.toFixed(3)} at unit (${c.argmax.join(", ")}) · mean ${c.mean.toFixed(3)} · map ${c.shape.join("×")}`;
    $(".channel-map", node).src = c.map;
    $(".channel-deconv", node).dataset.base = c.deconv;
    showProjection(node);
    $(".channel-maximized", node).hidden = true;
    $(".max-status", node).textContent = "";
    showTop9($(".top9", node), c.top9, layer);
  } catch (e) {
    showError(e.message);
  }
}

function showTop9(box, top9, layer) {
  box.replaceChildren();
  if (!top9) {
    box.append(el("p", { className: "hint", textContent:
      `No top-9 patches for ${layer}: run "alexnet visualize top9" and put its top9/ folder beside the weights.` }));
    return;
  }
  box.append(el("h4", { textContent: `Top-${top9.values.length} data-set activations of ${top9.layer} channel ` +
    `${box.closest(".channel").dataset.channel} (ZF Fig. 2)` }));
  box.append(el("div", { className: "top9-grid" },
    el("figure", {}, el("img", { src: top9.deconvs, alt: "top-9 deconvnet projections" }),
      el("figcaption", { textContent: "deconvnet projections" })),
    el("figure", {}, el("img", { src: top9.patches, alt: "top-9 input patches" }),
      el("figcaption", { textContent: "input patches (receptive field)" }))));
  box.append(el("p", { className: "hint", textContent: "activations: " +
    top9.values.map((v, i) => `${v.toFixed(2)} (${top9.images[i]})`).join(", ") }));
}

// --- background jobs (occlusion, optimised images) -------------------------------------------------------
// POST `url`, then poll the job until it ends, showing its progress; resolves to the finished job.
async function runJob(url, bar, status, what) {
  bar.hidden = false;
  bar.removeAttribute("value"); // indeterminate until the job reports numbers
  const started = performance.now();
  try {
    let job = await api(url, { method: "POST" });
    while (job.state === "queued" || job.state === "running") {
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      status.textContent = `${job.state}: ${job.done} of ${job.total} ${what} … ${seconds} s`;
      if (job.done > 0) { bar.max = job.total; bar.value = job.done; }
      await new Promise((r) => setTimeout(r, 300));
      job = await api(`/api/jobs/${job.id}`);
    }
    if (job.state === "failed") throw new Error(job.error);
    status.textContent = `${job.total} ${what} in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    return job;
  } catch (e) {
    status.textContent = "";
    throw e;
  } finally {
    bar.hidden = true;
  }
}

// --- optimised images (Yosinski et al. 2015, §3) ---------------------------------------------------------
function maximizedCaption(r) {
  const what = r.label !== null ? `class ${r.label}` : `${r.climbed} map ${r.channel}, unit (${r.unit.join(", ")})`;
  if (r.stuck) return `${what}: no gradient at the start, nothing to climb`;
  const lead = r.first_top >= 0 ? `, the largest of ${r.climbed} from step ${r.first_top}` : "";
  return `${what}: ${r.start.toFixed(2)} → ${r.best.toFixed(2)} in ${r.steps} steps${lead}`;
}

// Climb one unit of `layer` (a map's or a class's) as a job and show its image under `img`, unless `current()`
// says the page has moved on meanwhile.
async function runMaximize(key, layer, index, img, bar, status, current = () => true) {
  const job = await runJob(`/api/models/${key}/layers/${layer}/channels/${index}/maximize`, bar, status, "steps");
  if (!current()) return;
  img.src = `/api/jobs/${job.id}/image.png`;
  img.hidden = false;
  status.textContent = maximizedCaption(job.result);
}

async function maximizeChannel(key) {
  const { node } = state.panels[key];
  const box = $(".channel", node);
  const { layer, channel } = box.dataset;
  const button = $(".max-run", node);
  button.disabled = true;
  try {
    await runMaximize(key, layer, channel, $(".channel-maximized", node), $(".max-progress", node),
      $(".max-status", node), () => box.dataset.layer === layer && box.dataset.channel === channel);
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

// Grad-CAM (Selvaraju et al. 2017) of one class for the image shown: one request, a PNG; the menu shows the
// class's guided backpropagation or Guided Grad-CAM instead (Fig. 1 (b), (d)), its saliency map or deconvnet
// projection, integrated gradients, SmoothGrad or layer-wise relevance propagation.
const WHERE_CAPTIONS = {
  "gradcam": (label) => `at the last conv layer: where the evidence for ${label} lies`,
  "guided": (label) => `of ${label}: sharp, but hardly class-specific`,
  "guided-gradcam": (label) => `of ${label}: the guided pixels where Grad-CAM lies`,
  "saliency": (label) => `of ${label}'s score: its gradient's largest magnitude over the colours`,
  "deconvnet": (label) => `of ${label}'s score, projected down by the deconvnet's rules`,
  "integrated": (label) => `of p(${label}) from a black image: each pixel's share, as magnitude`,
  "smoothgrad": (label) => `of ${label}'s score: its gradient averaged over noisy copies of the image`,
  "lrp": (label) => `of ${label}'s score, handed down layer by layer: red for, blue against`,
};

function showGradcam(key, index, label) {
  const { node } = state.panels[key];
  const img = $(".class-where", node);
  const view = $(".where-view", node).value;
  img.dataset.target = index;
  img.dataset.label = label;
  img.onerror = () => showError(`Grad-CAM of ${label} failed`);
  img.alt = `${view} of ${label}`;
  img.src = `/api/models/${key}/images/${state.imageId}/gradcam.png?target=${index}&view=${view}`;
  $(".class-where-caption", node).textContent = WHERE_CAPTIONS[view](label);
  $(".class-gradcam", node).hidden = false;
}

async function maximizeClass(key, index) {
  const { node, data } = state.panels[key];
  const img = $(".class-image", node);
  $(".class-maximized", node).hidden = false;
  img.hidden = true;
  try {
    await runMaximize(key, data.model.classifier, index, img, $(".class-progress", node), $(".class-status", node));
  } catch (e) {
    showError(e.message);
  }
}

// --- occlusion -----------------------------------------------------------------------------------------
async function runOcclusion(key) {
  const { node } = state.panels[key];
  const size = $(".occ-size", node).value;
  const stride = $(".occ-stride", node).value;
  const button = $(".occ-run", node);
  const imageId = state.imageId;
  button.disabled = true;
  try {
    const job = await runJob(`/api/models/${key}/images/${imageId}/occlusion?size=${size}&stride=${stride}`,
      $(".occ-progress", node), $(".occ-status", node), "occluded images");
    if (imageId === state.imageId) showOcclusion(node, job);
  } catch (e) {
    showError(e.message);
  } finally {
    button.disabled = false;
  }
}

function showOcclusion(node, job) {
  const r = job.result;
  const box = $(".occlusion", node);
  const url = (name) => `/api/jobs/${job.id}/${name}`;
  const legend = el("ul", { className: "legend" });
  for (const item of r.legend) {
    const swatch = el("span");
    swatch.style.background = item.color;
    legend.append(el("li", {}, swatch, item.label));
  }
  box.replaceChildren(
    el("figure", {}, el("img", { src: url("activation.png"), alt: "occlusion activation" }),
      el("figcaption", { textContent: `(b) total activation of ${r.layer} map ${r.channel}` })),
    el("figure", {}, el("img", { src: url("projection.png"), alt: "occlusion projection" }),
      el("figcaption", { textContent: `(c) ${r.layer} map ${r.channel} projected to the pixels (deconvnet)` })),
    el("figure", {}, el("img", { src: url("probability.png"), alt: "occlusion probability" }),
      el("figcaption", { textContent: `(d) p(${r.target_label}): ${r.probability_range.map((p) => p.toFixed(3)).join("–")}` })),
    el("figure", {}, el("img", { src: url("labels.png"), alt: "occlusion labels" }),
      el("figcaption", { textContent: "(e) most probable class" }), legend));
}

// --- start ---------------------------------------------------------------------------------------------
async function main() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
    return;
  }
  const models = state.info.models;
  $("#model-names").textContent = models.map((m) => m.name).join(" and ");
  const untrained = models.filter((m) => !m.trained).map((m) => m.name);
  if (untrained.length) {
    const banner = $("#banner");
    banner.hidden = false;
    banner.textContent = `${untrained.join(", ")}: random initialisation (no trained weights loaded). ` +
      "Predictions are meaningless and maps show untrained filters; start with --weights FILE or --run DIR.";
  }
  const l = state.info.limits;
  $("#limits").textContent = `JPEG, PNG, GIF, BMP, WebP or TIFF; at most ${l.max_bytes / 1e6} MB and ${l.max_pixels / 1e6} megapixels`;
  buildGallery(state.info.samples);
  for (const m of models) buildPanel(m);
  $("#upload").addEventListener("change", (ev) => ev.target.files[0] && upload(ev.target.files[0]));
  $("#webcam-start").addEventListener("click", startWebcam);
  $("#webcam-stop").addEventListener("click", stopWebcam);
  $("#webcam-snap").addEventListener("click", snapWebcam);
  document.body.dataset.ready = "1";
}

main();
