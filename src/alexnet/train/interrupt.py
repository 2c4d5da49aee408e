"""Stopping a training run on request without losing what it trained.

Ctrl-C (SIGINT) or a scheduler's SIGTERM (a preempted job; torchrun passes its own on as SIGTERM) lets the step
under way finish; the loop then writes a checkpoint and stops with exit code 128 + the signal's number, and
``alexnet train --resume --out DIR`` goes on from that step as if the run had never stopped. A second Ctrl-C stops
at once (the last checkpoint written is kept).

Under torchrun every rank must stop after the same step (a checkpoint is a collective), but a signal reaches the
ranks at different moments. The ranks agree through a one-integer all-reduce on a gloo group of its own, started
every ``AGREE_EVERY`` steps and read ``AGREE_EVERY`` steps later: no step waits for it, its host time averages
under 30 µs a step (measured with two gloo ranks on a 2-core VM, ~140 µs a call), and the run stops within
2 × ``AGREE_EVERY`` steps of the signal.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch

from alexnet.stopping import StopSignals
from alexnet.train.distributed import DistInfo

AGREE_EVERY = 10  # steps between the ranks' agreements under torchrun


class StopRequest:
    """Catches SIGINT and SIGTERM while a run trains (:class:`alexnet.stopping.StopSignals`); :meth:`should_stop`,
    called once per step on every rank, says when all ranks are to stop."""

    def __init__(self, info: DistInfo, announce: bool = True) -> None:
        self.info = info
        when = f"within {2 * AGREE_EVERY} steps" if info.distributed else "after this step"
        self._signals = StopSignals(
            f"stopping {when}, with a checkpoint" if announce and info.is_main else None
        )
        self.agreed: int | None = None  # the signal all ranks stop for (under torchrun: the largest received)
        self._group: Any = None
        self._flag: torch.Tensor | None = None
        self._work: Any = None

    @property
    def signum(self) -> int | None:
        """The signal this process received."""
        return self._signals.signum

    def __enter__(self) -> StopRequest:
        if self.info.distributed:
            import torch.distributed as dist

            # its own group: an outstanding agreement never pairs with another collective of the default one
            self._group = dist.new_group(backend="gloo")
        self._signals.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None and self._work is not None:
                self._work.wait()  # every rank started it; after an error, another rank may not have
        finally:
            self._work = None
            self._signals.__exit__(kind, exc, tb)

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop after ``step`` (the steps done), called after every step on every rank.
        The same answer on every rank at the same step."""
        if not self.info.distributed:
            self.agreed = self.signum
            return self.signum is not None
        if step % AGREE_EVERY:
            return False
        import torch.distributed as dist

        if self._work is not None:
            self._work.wait()  # started AGREE_EVERY steps ago: long done
            assert self._flag is not None
            agreed = int(self._flag.item())
            if agreed:
                self.agreed, self._work = agreed, None
                return True
        self._flag = torch.tensor([self.signum or 0], dtype=torch.int64)
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return False
