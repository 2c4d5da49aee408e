"""Batches onto the GPU one batch ahead, on a side stream.

Copied on the compute stream, a batch's host-to-device copy (a batch of 256 float crops is 158 MB, of ``uint8``
patches for ``--gpu-augment`` 50 MB: milliseconds over PCIe, against an H100's 10 ms AlexNet step) and its
augmentation kernels run between two training steps, with the GPU's compute units idle. :func:`deliver` finishes
batch *i+1* on a stream of its own while the caller's stream computes on batch *i*, and hands it over with an
event: the compute stream waits for that batch only, and its tensors are recorded on the compute stream, so the
caching allocator does not reuse their memory before the step that reads them is done.

``ALEXNET_PREFETCH=0`` finishes each batch on the compute stream when it is asked for (the A/B of
docs/performance.md). Off CUDA there is nothing to overlap: the batches are finished in turn.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

PREFETCH_ENV = "ALEXNET_PREFETCH"

B = TypeVar("B")
R = TypeVar("R", bound=tuple)


def prefetching(device: torch.device | None) -> bool:
    """Whether :func:`deliver` works ahead for ``device``: CUDA, unless ``ALEXNET_PREFETCH=0``."""
    return device is not None and device.type == "cuda" and os.environ.get(PREFETCH_ENV, "1") != "0"


def deliver(batches: Iterable[B], finish: Callable[[B], R], device: torch.device | None) -> Iterator[R]:
    """``finish(batch)`` for every batch, in order; on CUDA (see :func:`prefetching`) the next batch is finished
    on a side stream before the current one is handed over. ``finish`` returns a tuple; its CUDA tensors are the
    ones handed over."""
    if not prefetching(device):
        for batch in batches:
            yield finish(batch)
        return
    side = torch.cuda.Stream(device=device)
    pending: tuple[R, torch.cuda.Event] | None = None
    for batch in batches:
        with torch.cuda.stream(side):
            out = finish(batch)
            done = side.record_event()
        if pending is not None:
            yield _hand_over(*pending, device)  # type: ignore[arg-type]
        pending = (out, done)
    if pending is not None:
        yield _hand_over(*pending, device)  # type: ignore[arg-type]


def _hand_over(out: R, done: torch.cuda.Event, device: torch.device) -> R:
    stream = torch.cuda.current_stream(device)
    stream.wait_event(done)
    for t in _tensors(out):
        if t.is_cuda:
            t.record_stream(stream)
    return out


def _tensors(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, tuple | list):
        for item in x:
            yield from _tensors(item)


__all__ = ["PREFETCH_ENV", "deliver", "prefetching"]
