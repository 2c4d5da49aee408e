"""Shared helper for the fast-path tests (no tests here): a dispatch mode that records which operators ran, so a
test can tell the fused kernels or oneDNN post-ops from the modules they replace."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpLog(TorchDispatchMode):
    """Records the name of every operator dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def count(self, name: str) -> int:
        return sum(n == name for n in self.names)
