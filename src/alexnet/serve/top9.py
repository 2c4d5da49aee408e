"""Top-9 data-set patches (ZF Fig. 2) written by ``alexnet visualize top9``, found beside the weights or run."""

from __future__ import annotations

from typing import Any

from alexnet.errors import AlexnetError
from alexnet.serve.state import Slot


class Top9Missing(AlexnetError):
    """No top-9 output for this model / layer / channel."""


class Top9Store:
    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.root = slot.top9_dir

    def available(self) -> list[str]:
        return []

    def has(self, layer: str) -> bool:
        return False

    def channel(self, layer: str, channel: int) -> dict[str, Any]:
        raise Top9Missing(f"no top-9 for {layer}")

    def png(self, layer: str, channel: int, rank: int, kind: str) -> bytes:
        raise Top9Missing(f"no top-9 for {layer}")
