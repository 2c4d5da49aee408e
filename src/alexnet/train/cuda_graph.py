"""The training forward and backward as CUDA graphs (``alexnet train --cuda-graph``).

On an H100 a bf16 AlexNet step at batch 256 runs about 8 ms of kernels, and launching them takes the host about as
long: Python, the dispatcher, autograd and some 200 launches (docs/performance.md, Session 18). The GPU then waits
for the host, and the same host also feeds the input pipeline. :class:`GraphedForward` captures the model's forward
pass and its backward pass once, each as one CUDA graph (:func:`torch.cuda.make_graphed_callables`), and replays
them: two launches where there were a few hundred. Everything else stays eager: the loss, the loss reader, the
optimizer step and its learning rate, the callbacks.

A step runs eagerly instead, as the module itself, whenever the captured graph would not do the same:

* a hook is on any module, or a global module hook is registered: the health monitor's steps
  (:mod:`alexnet.diagnostics.health`) must see every layer's output, and a replay calls no module;
* the batch is of another shape, dtype or layout than the captured one (a last, shorter batch);
* the model is not in training mode, or gradients are off (evaluation keeps using the module).

The capture itself runs on the first step that qualifies, under bf16 autocast without its cast cache (which a
graph cannot hold) when the run uses ``--amp``. Its three warm-up passes compute gradients with
:func:`torch.autograd.grad`, so they change no weight and no ``.grad``. The graphs keep their own memory pool:
activations for one batch, beside what the eager steps use.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from alexnet.models import eager
from alexnet.train.runlog import ON_CONSOLE

log = logging.getLogger(__name__)


def _key(x: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(x.shape), x.dtype, x.device, tuple(x.stride()))


def _hooked(model: nn.Module) -> bool:
    return eager.global_hooks() or any(eager.hooked(m) for m in model.modules())


class GraphedForward:
    """``model(images)`` for a training step, replayed from CUDA graphs where that computes the same (module
    docstring); ``amp`` as the run's ``--amp``."""

    def __init__(self, model: nn.Module, amp: bool) -> None:
        self.model = model
        self.amp = amp
        self.key: tuple[Any, ...] | None = None  # the captured batch's shape, dtype, device, strides
        self._replay: Any = None
        self.failed = False  # the capture failed: every step runs eagerly
        self.replays = 0  # steps taken from the graphs (tests, the run's log)

    def graphable(self, images: torch.Tensor) -> bool:
        """Whether this step may replay the graphs (or capture them, on the first such step)."""
        return (
            not self.failed
            and images.is_cuda
            and self.model.training
            and torch.is_grad_enabled()
            and not images.requires_grad
            and (self.key is None or self.key == _key(images))
            and not _hooked(self.model)
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.graphable(images):
            return self.model(images)
        if self._replay is None:
            try:
                self._capture(images)
            except RuntimeError as e:  # an operation a graph cannot hold: the run goes on, eagerly
                self.model.__dict__.pop("forward", None)
                self.failed = True
                log.warning(
                    "--cuda-graph: could not capture the training step (%s); it runs eagerly",
                    e,
                    extra=ON_CONSOLE,
                )
                return self.model(images)
            log.info("--cuda-graph: the training forward and backward captured as CUDA graphs")
        self.replays += 1
        return self._replay(images)

    def _capture(self, images: torch.Tensor) -> None:
        sample = images.detach().clone(memory_format=torch.preserve_format)  # the graphs' input buffer
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False):
            graphed = torch.cuda.make_graphed_callables(self.model, (sample,))
        # make_graphed_callables sets the module's forward to the replay; keep the replay here and give the
        # module its own forward back, so that every step that must not replay (above) runs it as it is
        self._replay = graphed.forward
        self.model.__dict__.pop("forward")
        self.key = _key(images)


__all__ = ["GraphedForward"]
