"""Top-9 data-set patches (ZF Fig. 2) from ``alexnet visualize top9`` output found beside the weights or run.

The folder is ``top9/<layer>/`` holding ``top9.json`` (per channel: value, image path, unit) — and usually the
streaming state ``state.npz``. The page clicks the ReLU output of a conv stage; the top-9 may have been computed
for any layer of that stage (``conv5``, ``relu5``, ``norm5``, ``pool5``: the same feature maps), so a click on
``relu5`` channel 7 shows the top-9 of whichever of those exists. Patches and their deconvnet projections are
drawn by :func:`alexnet.visualize.topk.render_channel` and memoised.

The client names a layer, a channel and which grid; the image paths come only from the server's own files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.errors import AlexnetError, DataError
from alexnet.serve import render
from alexnet.serve.state import LRU, Slot

KINDS = ("patches", "deconvs")


class Top9Missing(AlexnetError):
    """No top-9 output for this model / layer / channel."""


def _stage(layer: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(conv|relu|norm|pool)(\d+)", layer)
    return (m.group(1), int(m.group(2))) if m else None


def load_topk(folder: Path) -> Any:
    """A :class:`~alexnet.visualize.topk.TopK` from ``state.npz``, else rebuilt from ``top9.json``."""
    from alexnet.visualize.topk import STATE, TopK

    if (folder / STATE).is_file():
        return TopK.load(folder)
    try:
        data = json.loads((folder / "top9.json").read_text())
        channels = data["channels"]
        k = int(data["k"])
        state = TopK.empty(data["layer"], len(channels), k)
        numbers: dict[str, int] = {}
        for ch in channels:
            c = int(ch["channel"])
            for j, entry in enumerate(ch["top"][:k]):
                n = numbers.setdefault(entry["image"], len(numbers))
                state.values[c, j] = float(entry["value"])
                state.images[c, j] = n
                state.units[c, j] = [int(v) for v in entry["unit"]]
        state.paths = {n: p for p, n in numbers.items()}
        state.map_size = tuple(int(v) for v in data["map_size"])
        state.seen = int(data.get("images_seen", 0))
        return state
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise DataError(f"{folder / 'top9.json'}: not a readable top-9 file ({e})") from None


class Top9Store:
    """The top-9 folders of one model, loaded lazily; rendered grids kept in an LRU."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.root = slot.top9_dir
        self._states: dict[str, Any] = {}
        self._pngs: LRU[tuple[str, int], tuple[bytes, bytes]] = LRU(64)

    def available(self) -> list[str]:
        """Layers with a top-9 folder (``top9/<layer>/top9.json``)."""
        if self.root is None:
            return []
        names = set(self.slot.model.layer_names())
        return sorted(p.parent.name for p in self.root.glob("*/top9.json") if p.parent.name in names)

    def source_layer(self, layer: str) -> str | None:
        """The layer of ``layer``'s conv stage that has a top-9 (itself first), or ``None``."""
        stage = _stage(layer)
        have = self.available()
        if stage is None or not have:
            return None
        for kind in (stage[0], "conv", "relu", "norm", "pool"):
            if f"{kind}{stage[1]}" in have:
                return f"{kind}{stage[1]}"
        return None

    def has(self, layer: str) -> bool:
        return self.source_layer(layer) is not None

    def _state(self, layer: str) -> Any:
        source = self.source_layer(layer)
        if source is None or self.root is None:
            raise Top9Missing(
                f"no top-9 for {layer}: run `alexnet visualize top9` and put its top9/ beside the weights"
            )
        if source not in self._states:
            self._states[source] = load_topk(self.root / source)
        return self._states[source]

    def channel(self, layer: str, channel: int) -> dict[str, Any]:
        state = self._state(layer)
        if not 0 <= channel < state.values.shape[0]:
            raise Top9Missing(f"the top-9 of {state.layer} has no channel {channel}")
        entries = state.entries(channel)
        base = f"/api/models/{self.slot.key}/top9/{layer}/{channel}"
        return {
            "layer": state.layer,
            "values": [v for v, _, _, _ in entries],
            "images": [Path(p).name for _, p, _, _ in entries],  # names only: no server paths to the client
            "units": [[r, c] for _, _, r, c in entries],
            "patches": f"{base}/patches.png",
            "deconvs": f"{base}/deconvs.png",
        }

    def png(self, layer: str, channel: int, kind: str) -> bytes:
        from alexnet.visualize.topk import render_channel

        if kind not in KINDS:
            raise Top9Missing(f"no top-9 image {kind!r}; choose {' or '.join(KINDS)}")
        state = self._state(layer)
        if not 0 <= channel < state.values.shape[0]:
            raise Top9Missing(f"the top-9 of {state.layer} has no channel {channel}")

        def make() -> tuple[bytes, bytes]:
            patches, projections = render_channel(self.slot.model, state, channel)
            return render.png(np.asarray(patches)), render.png(np.asarray(projections))

        patches, projections = self._pngs.get_or_create((state.layer, channel), make)
        return patches if kind == "patches" else projections
