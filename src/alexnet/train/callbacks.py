"""The training loop's extension points. Diagnostics, logging and visualisation plug in here, not into the loop.

The loop (:mod:`alexnet.train.loop`) calls, for every registered callback, in this order per step::

    on_train_start(ctx)
    for each step:
        on_step_start(ctx)            # before forward
        on_after_backward(ctx)        # gradients exist, optimizer has not stepped
        on_step_end(ctx)              # after optimizer.step() (and any weight renormalisation)
    on_eval(ctx, metrics)             # after every validation pass
    on_train_end(ctx)

A callback may return a list of warning strings from any hook; the loop logs them to ``train.log`` and shows the
latest one in the progress bar. Raising :class:`alexnet.errors.TrainingError` stops the run cleanly (the last
good checkpoint survives).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class TrainContext:
    """What a callback can see. Only rank 0 gets ``writer`` and ``run_dir`` writes in distributed runs."""

    model: nn.Module  # the bare model (not the DDP wrapper)
    optimizer: torch.optim.Optimizer
    run_dir: Path | None
    num_classes: int
    step: int = 0  # optimizer steps done so far (global)
    epoch: int = 0
    loss: torch.Tensor | None = None  # this step's loss (detached after backward)
    inputs: torch.Tensor | None = None  # this step's input batch
    lr: float = 0.0
    writer: Any = None  # torch.utils.tensorboard.SummaryWriter or None
    is_main: bool = True  # rank 0
    # The loop reads every loss itself and stops at a non-finite one (alexnet.train.loss_reader), one step late on
    # CUDA: a callback need not read the loss each step to catch a NaN (a read would make the host wait).
    loss_checked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class with no-op hooks; override what you need."""

    def on_train_start(self, ctx: TrainContext) -> list[str] | None:
        return None

    def on_step_start(self, ctx: TrainContext) -> list[str] | None:
        return None

    def on_after_backward(self, ctx: TrainContext) -> list[str] | None:
        return None

    def on_step_end(self, ctx: TrainContext) -> list[str] | None:
        return None

    def on_eval(self, ctx: TrainContext, metrics: dict[str, float]) -> list[str] | None:
        return None

    def on_train_end(self, ctx: TrainContext) -> list[str] | None:
        return None
