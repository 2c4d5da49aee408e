"""Shared-memory batch buffers that each DataLoader worker reuses (``--gpu-augment``'s ``uint8`` batches).

A worker process hands its batch to the main process in shared memory. Allocated anew for every batch, as
``default_collate`` and the queue's pickler do, that memory costs more than reading the pixels from
``alexnet data-pack``'s store: the kernel zero-fills and maps each of its 4 KiB pages, in the worker and again in
the main process (docs/performance.md, Session 11: 10 ms to stack a batch of 64 patches of 256×256 into fresh
shared memory on the 2-core machine, 0.45 ms into a buffer already mapped; a worker delivered 4,300 images/s from
the store, 12,000 without the transfer).

A :class:`BatchPool` keeps each worker's buffers ("slots") for the life of the loader, and one flag per slot in
shared memory. The worker takes a free slot and sets its flag; the main process clears it once nothing reads the
buffer any more: when the DataLoader's pin thread has copied the batch to pinned memory, or when the batch has
been finished on the device (:class:`~alexnet.data.on_device.BatchDecoder`), or, failing both, when the
:class:`Slot` object is collected. The main process keeps each slot's mapping, so a batch that arrives in a slot it
has seen before costs no new mapping either. When every slot is taken, the worker allocates fresh shared memory as
before: slower, never wrong.
"""

from __future__ import annotations

import contextlib
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

# Main process: the pools by id, so that a Slot unpickled there finds its flags.
_POOLS: weakref.WeakValueDictionary[str, BatchPool] = weakref.WeakValueDictionary()


class BatchPool:
    """``slots`` reusable shared-memory buffers per worker of a loader with ``workers`` worker processes."""

    def __init__(self, workers: int, slots: int) -> None:
        if workers < 1 or slots < 1:
            raise ValueError(f"a pool needs workers and slots ≥ 1, not {workers} and {slots}")
        self.id = uuid.uuid4().hex
        self.flags = torch.zeros(workers, slots, dtype=torch.int32).share_memory_()  # 1: in use
        self._init_local()
        _POOLS[self.id] = self

    def _init_local(self) -> None:
        self._flags: np.ndarray = self.flags.numpy()  # element reads and writes without torch's overhead
        self._buffers: dict[int, torch.UntypedStorage] = {}  # worker: its slots' buffers
        self._mapped: dict[tuple[int, int], torch.UntypedStorage] = {}  # main process: the slots' mappings

    def __getstate__(self) -> dict[str, Any]:
        return {"id": self.id, "flags": self.flags}  # the flags travel as shared memory, once per worker

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.id, self.flags = state["id"], state["flags"]
        self._init_local()

    def stack(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, Slot | None]:
        """``torch.stack(tensors)``: in a worker, into a free slot (and the :class:`Slot` to send along with it),
        or into fresh shared memory when all of the worker's slots are in use; in the main process, as is."""
        info = get_worker_info()
        if info is None:
            return torch.stack(list(tensors)), None
        nbytes = len(tensors) * tensors[0].nbytes
        flags = self._flags[info.id]
        for k in range(len(flags)):
            if flags[k]:
                continue
            buf = self._buffers.get(k)
            if buf is None or buf.nbytes() < nbytes:
                buf = self._buffers[k] = torch.UntypedStorage._new_shared(nbytes)
            flags[k] = 1
            return _stack_into(buf, tensors), Slot(self.id, info.id, k)
        fresh = torch.UntypedStorage._new_shared(nbytes)  # as default_collate does in a worker
        return _stack_into(fresh, tensors), None

    def in_use(self) -> int:
        """How many slots are taken now, over all workers."""
        return int(self._flags.sum())


def _stack_into(buf: torch.UntypedStorage, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.stack(tensors)`` written to the start of ``buf``."""
    first = tensors[0]
    out = torch.empty(0, dtype=torch.uint8).set_(buf)[: len(tensors) * first.nbytes]
    return torch.stack(list(tensors), out=out.view(first.dtype).view(len(tensors), *first.shape))


class Slot:
    """The slot a batch travels in. In the main process (where it is unpickled) :meth:`free` hands the buffer
    back to its worker; the worker's own copy of the object never does."""

    def __init__(self, pool_id: str, worker: int, index: int) -> None:
        self.pool_id, self.worker, self.index = pool_id, worker, index
        self._owner = False  # True in the process that received the batch

    def __getstate__(self) -> tuple[str, int, int]:
        return self.pool_id, self.worker, self.index

    def __setstate__(self, state: tuple[str, int, int]) -> None:
        self.pool_id, self.worker, self.index = state
        self._owner = True

    def keep_mapping(self, storage: torch.UntypedStorage) -> None:
        """Keep the buffer mapped in this process: the next batch in this slot arrives in the same mapping
        (torch's shared-storage cache finds it), with its pages already present."""
        pool = _POOLS.get(self.pool_id)
        if pool is not None and self._owner:
            pool._mapped[(self.worker, self.index)] = storage

    def free(self) -> None:
        """Nothing here reads the buffer any more: the worker may fill it again (once; later calls do nothing)."""
        if not self._owner:
            return
        self._owner = False
        pool = _POOLS.get(self.pool_id)
        if pool is not None:
            pool._flags[self.worker, self.index] = 0

    def __del__(self) -> None:  # a batch dropped unread (an iterator closed early) frees its slot too
        with contextlib.suppress(Exception):  # at interpreter exit the pool may be gone: nothing to free
            self.free()

    def __repr__(self) -> str:
        return f"Slot(worker={self.worker}, index={self.index})"


__all__ = ["BatchPool", "Slot"]
