"""Denormal floats flushed to zero on CPU while an ``alexnet`` command runs.

Late in training, the optimizer state of weights that stopped learning (dead ReLU units, zero gradients) decays
geometrically into fp32's denormal range (below 1.2e-38): momentum and Adam's moments are multiplied by β at
every step. x86 CPUs take a slow path for every arithmetic operation on a denormal. Measured at the end of
``make demo`` (alexnet at 99 px, AdamW, batch 32, this project's 2-core Xeon; docs/performance.md): 4.1 M of the
optimizer's 46.7 M state values were denormal, the fused AdamW step took 102 ms instead of 22 ms, and the
training step 246 ms instead of 160 ms. Training slowed down epoch after epoch for that reason alone.

``torch.set_flush_denormal(True)`` sets the CPU's flush-to-zero and denormals-are-zero modes: a denormal operand
or result becomes 0, a change far below anything these networks resolve. The mode belongs to a thread. Threads
inherit it from the thread that starts them, and threads that already exist keep theirs, so it has to be set
before PyTorch starts its OpenMP threads: the CLI sets it before the command runs. ``ALEXNET_DENORMALS=keep``
opts out. A Python script that trains on CPU gets the same effect with :func:`flushed` (or
``torch.set_flush_denormal(True)``) before its first tensor operation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

state = "kept"  # what the process runs with; bench prints it


@contextlib.contextmanager
def flushed() -> Iterator[str]:
    """Flush denormals to zero inside the block (the calling thread and threads started in it); yields and
    records in :data:`state` what the block runs with, and restores IEEE denormals afterwards."""
    global state
    import torch  # here, not at the top: `alexnet --help` imports this module and needs no torch

    if os.environ.get("ALEXNET_DENORMALS", "").lower() == "keep":
        state = "kept (ALEXNET_DENORMALS=keep)"
        yield state
        return
    if not torch.set_flush_denormal(True):
        state = "kept (the CPU cannot flush them)"
        yield state
        return
    state = "flushed to zero"
    try:
        yield state
    finally:
        torch.set_flush_denormal(False)
        state = "kept"
