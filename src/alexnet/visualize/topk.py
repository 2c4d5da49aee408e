"""ZF Fig. 2: the 9 strongest activations of each feature map over a data set, streamed once, resumable.

For every feature map (channel) of a layer the stream keeps its ``k`` strongest activations. As in ZF's figure
the ``k`` come from ``k`` different images: each image contributes, per channel, its strongest unit (value, row,
column), and the running top-k merges those. Memory is ``O(channels · k)`` whatever the data-set size: only the
kept entries' image paths are remembered.

Resumable: the state (kept values, units, image paths and how many images were consumed) is written atomically
every ``save_every`` batches, at the end, and after the batch under way when Ctrl-C or SIGTERM stops the pass
(:mod:`alexnet.stopping`); ``resume=True`` reloads it and skips the images already consumed, so
the data must be listed in the same order (an :class:`~alexnet.data.folders.ImageFolder` listing is sorted). The
state also records what it was computed from: the model's name, a SHA-256 of its weights, the layer, ``k``, a
digest of the images consumed (names, sizes, modification times, in order) and how files were decoded. A resume
whose model, weights, layer, ``k``, decoding or first images differ is refused (:class:`DataError` naming what differs) before anything is written: mixing
two passes would give a top-k of neither. The listing may go further than the saved pass (a larger
``max_images``, new files at its end): the result is then that of one pass over the longer listing.

:func:`render_top9` draws, per feature map, the 9 input patches cropped to the unit's receptive field
(:meth:`alexnet.analysis.receptive.Field.box`) beside their deconvnet projections (ZF §2.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from alexnet.analysis.features import DECODING, weights_digest
from alexnet.analysis.summary import receptive_fields
from alexnet.errors import DataError, SelectionError
from alexnet.inputs import prepare, prepared_batches, spans
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture, check_trunk_layer
from alexnet.stopping import StopSignals
from alexnet.visualize.deconvnet import project
from alexnet.visualize.plot import (
    field_crop,
    new_figure,
    projection_to_image,
    save_json,
    save_npz,
    uint8_to_float,
)

Item = tuple[torch.Tensor | str | Path, str]  # (uint8 RGB image or a file path, the name to record)
STATE = "state.npz"
SPLIT_NAMES = ("train", "val", "validation", "test")  # sub-folders that make ROOT a data set with splits


@dataclass
class TopK:
    """Per channel its ``k`` strongest activations, strongest first (value ``-inf`` = not filled yet)."""

    layer: str
    k: int
    values: np.ndarray  # C×k float32
    images: np.ndarray  # C×k int64: global image number (-1 = empty)
    units: np.ndarray  # C×k×2 int64: (row, col) in the layer's map
    paths: dict[int, str]  # image number → path, only for kept entries
    seen: int = 0  # images consumed so far
    skipped: int = 0  # unreadable files
    map_size: tuple[int, int] = (0, 0)
    # What the state was computed from, checked on resume ("" = not recorded, an older state file).
    model: str = ""
    weights: str = ""  # SHA-256 of the state dict (alexnet.analysis.features.weights_digest)
    listing: str = ""  # SHA-256 of the ``seen + skipped`` items consumed so far (see _Listing)
    decoding: str = ""  # how files became pixels (alexnet.analysis.features.DECODING; "" = decoded whole)

    @classmethod
    def empty(cls, layer: str, channels: int, k: int) -> TopK:
        return cls(
            layer=layer,
            k=k,
            values=np.full((channels, k), -np.inf, dtype=np.float32),
            images=np.full((channels, k), -1, dtype=np.int64),
            units=np.zeros((channels, k, 2), dtype=np.int64),
            paths={},
        )

    def update(self, acts: torch.Tensor, names: Sequence[str]) -> None:
        """Merge a batch of activations (B×C×H×W) whose images are ``names``, numbered from ``self.seen``."""
        b, c, h, w = acts.shape
        self.map_size = (h, w)
        best, flat = acts.float().flatten(2).max(dim=2)  # B×C: each image's strongest unit per channel
        numbers = torch.arange(self.seen, self.seen + b).view(b, 1).expand(b, c)
        vals = torch.cat((torch.from_numpy(self.values), best.T), dim=1)  # C×(k+B)
        imgs = torch.cat((torch.from_numpy(self.images), numbers.T), dim=1)
        flat_old = torch.from_numpy(self.units[..., 0] * w + self.units[..., 1])
        units = torch.cat((flat_old, flat.T), dim=1)
        # Stable order: ties keep the earlier image (a sort, not topk, whose tie order is unspecified).
        order = torch.sort(vals, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.values = vals.gather(1, order).numpy().astype(np.float32)
        self.images = imgs.gather(1, order).numpy().astype(np.int64)
        kept_flat = units.gather(1, order)
        self.units = torch.stack((kept_flat // w, kept_flat % w), dim=-1).numpy().astype(np.int64)
        for i, name in enumerate(names):
            self.paths[self.seen + i] = name
        self.seen += b
        live = set(self.images[self.images >= 0].tolist())
        self.paths = {n: p for n, p in self.paths.items() if n in live}

    # --- persistence ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        meta = {
            "layer": self.layer,
            "k": self.k,
            "seen": self.seen,
            "skipped": self.skipped,
            "map_size": list(self.map_size),
            "paths": {str(n): p for n, p in self.paths.items()},
            "model": self.model,
            "weights": self.weights,
            "listing": self.listing,
            "decoding": self.decoding,
        }
        return save_npz(
            Path(folder) / STATE,
            values=self.values,
            images=self.images,
            units=self.units,
            meta=np.array(json.dumps(meta)),
        )

    @classmethod
    def load(cls, folder: str | Path) -> TopK:
        path = Path(folder) / STATE
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                return cls(
                    layer=meta["layer"],
                    k=int(meta["k"]),
                    values=z["values"],
                    images=z["images"],
                    units=z["units"],
                    paths={int(n): p for n, p in meta["paths"].items()},
                    seen=int(meta["seen"]),
                    skipped=int(meta.get("skipped", 0)),
                    map_size=tuple(meta.get("map_size", (0, 0))),  # type: ignore[arg-type]
                    model=str(meta.get("model", "")),
                    weights=str(meta.get("weights", "")),
                    listing=str(meta.get("listing", "")),
                    decoding=str(meta.get("decoding", "")),
                )
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"{path}: not a readable top-k state ({e})") from None

    def entries(self, channel: int) -> list[tuple[float, str, int, int]]:
        """(value, image path, row, col) of ``channel``'s kept activations, strongest first."""
        out = []
        for j in range(self.k):
            n = int(self.images[channel, j])
            if n >= 0:
                row, col = (int(v) for v in self.units[channel, j])
                out.append((float(self.values[channel, j]), self.paths[n], row, col))
        return out


def folder_items(root: str | Path, split: str = "val", max_images: int | None = None) -> list[Item]:
    """The image files of a data set in a stable order: ``ROOT/<split>/<class>/*`` (ImageNet layout) if that
    exists, else, when ``ROOT`` has no split folders (``train``, ``val``, ``validation``, ``test``), every file
    under ``ROOT`` sorted by path (any folder of images). A ``split`` missing from a ``ROOT`` that has split
    folders is a :class:`DataError`: a misspelt split must not silently stream every split at once."""
    root = Path(root)
    files: list[Path]
    if (root / split).is_dir():
        from alexnet.data.folders import ImageFolder

        files = [p for p, _ in ImageFolder(root, split).samples]
    elif root.is_dir():
        splits = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name in SPLIT_NAMES)
        if splits:
            raise DataError(f"no split {split!r} in {root} (found: {', '.join(splits)})")
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    else:
        raise DataError(f"{root}: no such data folder")
    if not files:
        raise DataError(f"{root}: no image files found")
    files = files[:max_images] if max_images is not None else files
    # absolute: a resumed pass (and its digest of the images consumed) must not depend on the working folder
    return [(p, str(p.absolute())) for p in files]


class _Listing:
    """The digest of the items a pass has consumed, in order: each item's name, and a file's size and
    modification time (a file replaced under the same name is a different image)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, items: Iterable[Item]) -> None:
        for image, name in items:
            line = name
            if isinstance(image, str | Path):
                try:
                    st = Path(image).stat()
                    line += f"|{st.st_size}|{st.st_mtime_ns}"
                except OSError:
                    line += "|missing"
            self._hash.update(f"{line}\n".encode())

    def digest(self) -> str:
        return self._hash.hexdigest()


def _check_resumable(
    state: TopK,
    state_dir: str | Path,
    model: AlexNetFamily,
    weights: str,
    layer: str,
    k: int,
    items: Sequence[Item],
    listing: _Listing,
) -> None:
    """:class:`DataError` naming every difference between the saved pass and this one (nothing written yet)."""
    if not state.weights or not state.listing:
        raise DataError(
            f"{state_dir}: the saved state does not record its model, weights and images (an older version "
            "wrote it); start a new pass without --resume"
        )
    diffs = []
    name = model.config.name
    if state.model != name:
        diffs.append(f"model {state.model}, not {name}")
    if state.weights != weights:
        diffs.append(f"weights sha256 {state.weights[:12]}…, not {weights[:12]}…")
    if state.layer != layer:
        diffs.append(f"layer {state.layer}, not {layer}")
    if state.decoding != DECODING:
        diffs.append(
            "its large JPEGs were decoded whole by an earlier version, not at reduced size as eval does"
        )
    if state.k != k:
        diffs.append(f"top-{state.k}, not top-{k}")
    consumed = state.seen + state.skipped
    listing.add(items[:consumed])
    if len(items) < consumed:
        diffs.append(f"images: it consumed {consumed}, this listing has only {len(items)}")
    elif listing.digest() != state.listing:
        diffs.append(f"images: the first {consumed} of this listing are not the ones it consumed")
    if diffs:
        raise DataError(
            f"{state_dir}: cannot resume, the saved state is for another pass ({'; '.join(diffs)}); "
            "start a new pass without --resume"
        )


def stream_topk(
    model: AlexNetFamily,
    items: Iterable[Item],
    layer: str,
    *,
    k: int = 9,
    batch_size: int = 32,
    state_dir: str | Path | None = None,
    save_every: int = 10,
    resume: bool = False,
    progress: bool = False,
    total: int | None = None,
    workers: int = 0,
) -> TopK:
    """One pass over ``items`` keeping, per feature map of ``layer``, its ``k`` strongest activations, on the
    model's device; with ``workers`` > 0 the files are decoded in that many processes, a few batches ahead.

    With ``resume`` and a saved state in ``state_dir``, the pass continues it, after checking that the state
    comes from the same model, weights, layer, ``k`` and first images (:class:`DataError` otherwise)."""
    check_trunk_layer(model, layer)
    if k < 1:
        raise SelectionError(f"k must be at least 1, got {k}")
    if batch_size < 1:
        raise SelectionError(f"batch_size must be at least 1, got {batch_size}")
    weights = weights_digest(model)
    items = list(items)
    listing = _Listing()
    state: TopK | None = None
    if resume and state_dir is not None and (Path(state_dir) / STATE).exists():
        state = TopK.load(state_dir)
        _check_resumable(state, state_dir, model, weights, layer, k, items, listing)
    done = state.seen + state.skipped if state is not None else 0
    total = len(items) if total is None else total
    pbar = tqdm(total=total, initial=done, desc=f"top-{k} {layer}", unit="img", disable=not progress)
    skipped = 0  # unreadable files not yet counted in a state (before the first readable image)
    chunks = spans(len(items), batch_size, done)
    batches = prepared_batches(model, [image for image, _ in items], chunks, workers=workers)
    # With somewhere to save, Ctrl-C or SIGTERM finishes the batch under way, saves and stops (alexnet.stopping).
    signals = StopSignals("stopping after this batch, with the state saved" if progress else None)
    with signals if state_dir is not None else contextlib.nullcontext(), contextlib.closing(batches):
        for n, ((start, stop), (batch, bad)) in enumerate(zip(chunks, batches, strict=True), 1):
            chunk = items[start:stop]
            listing.add(chunk)
            pbar.update(len(chunk))
            if batch is not None:
                acts = capture(model, batch, [layer])[layer]
                if state is None:
                    state = TopK.empty(layer, acts.shape[1], k)
                    state.model, state.weights, state.decoding = model.config.name, weights, DECODING
                unreadable = set(bad)
                state.update(acts, [name for i, (_, name) in enumerate(chunk) if i not in unreadable])
            skipped += len(bad)
            if state is not None:
                state.skipped += skipped
                skipped = 0
                state.listing = listing.digest()  # covers exactly the seen + skipped items consumed so far
                if state_dir is not None and (n % save_every == 0 or signals.signum is not None):
                    state.save(state_dir)
            if signals.signum is not None:
                pbar.close()
                if state is None:
                    raise signals.interrupted("stopped before the first readable image; nothing saved")
                raise signals.interrupted(
                    f"stopped after {state.seen + state.skipped} of {total} images; state saved in {state_dir}: "
                    "run the same command with --resume to continue"
                )
    pbar.close()
    if state is None:
        raise DataError("no readable image in the data set")
    if state_dir is not None:
        state.save(state_dir)
    return state


def topk_json(model: AlexNetFamily, state: TopK, image_size: int) -> dict[str, Any]:
    """Per channel: value, image path, unit (row, col) and the unit's receptive-field box in the input crop."""
    field = receptive_fields(model)[state.layer]
    channels = []
    for c in range(state.values.shape[0]):
        entries = []
        for value, path, row, col in state.entries(c):
            top, left, bottom, right = field.box(row, col, image_size)
            entries.append(
                {"value": value, "image": path, "unit": [row, col], "box": [top, left, bottom, right]}
            )
        channels.append({"channel": c, "top": entries})
    return {
        "model": model.config.name,
        "layer": state.layer,
        "k": state.k,
        "images_seen": state.seen,
        "images_skipped": state.skipped,
        "map_size": list(state.map_size),
        "receptive_field": {"size": field.size, "stride": field.jump},
        "channels": channels,
    }


def write_topk(model: AlexNetFamily, state: TopK, folder: str | Path) -> list[Path]:
    """``top9.json`` and ``top9.npz`` (values, image numbers, units) in ``folder``."""
    from alexnet.predict import preprocessing_of

    size = preprocessing_of(model).input_size
    folder = Path(folder)
    return [
        save_json(folder / "top9.json", topk_json(model, state, size)),
        save_npz(folder / "top9.npz", values=state.values, images=state.images, units=state.units),
    ]


RULE_TITLES = {
    "deconvnet": "deconvnet projections",
    "gradient": "gradient (saliency) projections",
    "guided": "guided backpropagation",
}


def render_channel(
    model: AlexNetFamily, state: TopK, channel: int, rule: str = "deconvnet"
) -> tuple[np.ndarray, np.ndarray]:
    """(patches, projections): two 3×3 grids (H×W×3, 0–1) of receptive-field crops and deconv projections
    (``rule``: :mod:`alexnet.visualize.deconvnet`'s, for comparing ZF Fig. 2 with the gradient or guided pass).

    The kept images are re-read from their recorded names, so the stream's items must have been file paths.
    """
    from alexnet.predict import preprocessing_of
    from alexnet.visualize.plot import tile

    entries = state.entries(channel)
    prep = preprocessing_of(model)
    size = prep.input_size
    field = receptive_fields(model)[state.layer]
    side = min(field.size, size)
    if not entries:
        blank = np.ones((side, side, 3), np.float32)
        return blank, blank
    prepared = [prepare(model, path) for _, path, _, _ in entries]
    images = torch.stack([p.tensor for p in prepared])
    c, h, w = len(state.values), *state.map_size
    mask = torch.zeros(len(entries), c, h, w)
    for i, (_, _, row, col) in enumerate(entries):
        mask[i, channel, row, col] = 1.0
    proj = project(model, images, state.layer, mask, rule)
    patches, projs = [], []
    for i, (_, _, row, col) in enumerate(entries):
        box = field.box(row, col)  # unclipped: tiles keep the field's geometry at the borders
        patches.append(field_crop(uint8_to_float(prepared[i].crop), box, side, 1.0))
        projs.append(field_crop(projection_to_image(proj[i], prep), box, side, 0.5))
    return tile(np.stack(patches), ncols=3, pad=2), tile(np.stack(projs), ncols=3, pad=2)


def render_top9(
    model: AlexNetFamily,
    state: TopK,
    folder: str | Path,
    channels: Sequence[int] | None = None,
    progress: bool = False,
    rule: str = "deconvnet",
) -> list[Path]:
    """One PNG per feature map (``channel_NNN.png``): deconv projections (left) beside the input patches (right),
    the layout of ZF Fig. 2. With another ``rule`` its projections instead, in ``channel_NNN_<rule>.png`` beside
    the deconvnet's."""
    from alexnet.visualize.deconvnet import check_rule
    from alexnet.visualize.plot import save_figure

    check_rule(rule)

    n_ch = state.values.shape[0]
    chosen = list(channels) if channels is not None else list(range(min(16, n_ch)))
    bad = [c for c in chosen if not 0 <= c < n_ch]
    if bad:
        raise SelectionError(f"channel {bad[0]} is out of range for {state.layer} (0–{n_ch - 1})")
    written = []
    for c in tqdm(chosen, desc="render", disable=not progress):
        patches, projs = render_channel(model, state, c, rule)
        fig = new_figure(8, 4.3)
        ax0, ax1 = fig.subplots(1, 2)
        ax0.imshow(projs, interpolation="nearest")
        ax0.set_title(RULE_TITLES[rule])
        ax1.imshow(patches, interpolation="nearest")
        ax1.set_title("input patches (receptive field)")
        for ax in (ax0, ax1):
            ax.axis("off")
        fig.suptitle(f"{model.config.name} {state.layer} feature map {c}: top {len(state.entries(c))}")
        suffix = "" if rule == "deconvnet" else f"_{rule}"
        written.append(save_figure(fig, Path(folder) / f"channel_{c:03d}{suffix}.png"))
    return written
