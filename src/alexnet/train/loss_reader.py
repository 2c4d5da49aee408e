"""Each training step's loss, read without making the host wait for the device.

A CUDA step is queued, not run: ``float(loss)`` or ``bool(torch.isfinite(loss))`` makes the host wait until the
device has finished everything queued so far, so the next batch's copy, its augmentation and the next kernel
launches start only once the device is already idle. The loop hands each step's loss to a :class:`LossReader`
instead, which

* computes on the device the flag "the loss of this step or of an earlier one was not finite" (over all ranks, so
  that they stop together) and hands it to the fused optimizer as ``found_inf``, the flag
  ``torch.amp.GradScaler`` uses: every update from the first non-finite loss on is skipped on the device, so the
  weights stay those the bad step saw, for the loop's diagnosis and for the last checkpoint;
* starts a non-blocking copy of (the loss averaged over the ranks, the flag) to host memory, and reads it ``lag``
  steps later, when the device has long finished it.

With ``lag`` 0 it reads at once, before the backward pass, as a plain loop does: on the CPU (where nothing is
queued, so nothing is gained), with an optimizer that is not fused (it cannot skip an update on the device), or
with ``ALEXNET_LOSS_LAG=0`` (for an A/B).
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any

import torch

from alexnet.errors import TrainingError
from alexnet.train import distributed as dist_utils

LAG_ENV = "ALEXNET_LOSS_LAG"


@dataclass
class StepRecord:
    """One optimizer step as the loop logs it; ``loss`` and ``finite`` are filled in when the reader reads."""

    step: int  # optimizer steps completed before this one
    epoch: int
    lr: float
    images: torch.Tensor  # the step's batch (this rank's), kept for the diagnosis of a non-finite loss
    loss: float = float("nan")  # averaged over the ranks
    finite: bool = True  # on every rank


def can_skip_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` skips its update when its ``found_inf`` is 1: PyTorch's fused SGD/Adam/AdamW."""
    return bool(optimizer.param_groups) and all(g.get("fused") for g in optimizer.param_groups)


def default_lag(device: torch.device, optimizer: torch.optim.Optimizer) -> int:
    """1 on CUDA with a fused optimizer, else 0; ``ALEXNET_LOSS_LAG`` overrides (a lag needs a fused one)."""
    text = os.environ.get(LAG_ENV, "").strip()
    if text:
        try:
            lag = int(text)
        except ValueError:
            raise TrainingError(f"{LAG_ENV} must be a whole number of steps, not {text!r}") from None
        if lag < 0:
            raise TrainingError(f"{LAG_ENV} must be ≥ 0, not {lag}")
    else:
        lag = 1 if device.type == "cuda" else 0
    return lag if can_skip_on_device(optimizer) else 0


class LossReader:
    """See the module docstring. ``push`` after each forward pass returns the records now read (oldest first);
    ``flush`` reads the rest (before a checkpoint, an evaluation, the end)."""

    def __init__(self, optimizer: torch.optim.Optimizer, info: dist_utils.DistInfo, lag: int = 0) -> None:
        if lag > 0 and not can_skip_on_device(optimizer):
            raise ValueError(
                "reading the loss late needs a fused optimizer (it skips bad updates on the device)"
            )
        self.optimizer = optimizer
        self.info = info
        self.lag = lag
        self._pending: deque[tuple[StepRecord, torch.Tensor, Any]] = deque()
        # 1.0 from the first non-finite loss on (float32, as found_inf expects)
        self._flag: torch.Tensor | None = None

    def push(self, loss: torch.Tensor, record: StepRecord) -> list[StepRecord]:
        # [mean loss, 1 if the loss is not finite on any rank]: one small all-reduce, queued like the step
        loss = loss.detach().float().reshape(())
        both = torch.stack([loss, (~torch.isfinite(loss)).float()])
        if self.info.distributed:
            both = dist_utils.sum_over_ranks(both)
            both = torch.stack([both[0] / self.info.world_size, both[1].clamp(max=1.0)])
        if self.lag == 0:
            value, bad = both.tolist()
            record.loss, record.finite = value, bad == 0
            return [record]
        self._flag = both[1] if self._flag is None else torch.maximum(self._flag, both[1])
        self.optimizer.found_inf = self._flag  # type: ignore[attr-defined]  # read by the fused step
        host = torch.empty(2, dtype=torch.float32, pin_memory=both.is_cuda)
        host.copy_(both, non_blocking=True)
        event = None
        if both.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._pending.append((record, host, event))
        return self._read(keep=self.lag)

    def flush(self) -> list[StepRecord]:
        return self._read(keep=0)

    def _read(self, keep: int) -> list[StepRecord]:
        out = []
        while len(self._pending) > keep:
            record, host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()  # long done, normally: it was queued `lag` steps ago
            value, bad = host.tolist()
            record.loss, record.finite = value, bad == 0
            out.append(record)
        return out


__all__ = ["LAG_ENV", "LossReader", "StepRecord", "can_skip_on_device", "default_lag"]
