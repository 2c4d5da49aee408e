"""Shared helpers for the fast-path tests (no tests here): a dispatch mode that records which operators ran, and
the operators of dynamo's graph, so a test can tell the fused kernels or oneDNN post-ops from the modules they
replace."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def compiled_targets(model: torch.nn.Module, x: torch.Tensor) -> set[str]:
    """The operators in dynamo's graph of ``model(x)`` (recorded by a backend that runs the graph as is)."""
    graphs: list[torch.fx.GraphModule] = []
    with torch.no_grad():
        torch.compile(model, backend=lambda gm, _: graphs.append(gm) or gm.forward, fullgraph=True)(x)
    return {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}


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
