"""The DataLoader for training and evaluation: deterministic order and augmentation, bad files skipped and counted.

Determinism (so a resumed run sees exactly what an uninterrupted one would): the sample order of epoch ``e`` is a
permutation seeded by ``(seed, e)`` (:class:`EpochSampler`), and every sample's augmentation (random crop, flip,
PCA lighting) draws from a torch generator seeded by ``(seed, e, position)``, whatever the number of worker
processes. ``loader.set_epoch(e, start_batch=k)`` starts epoch ``e`` at batch ``k`` without loading the first ``k``
batches. Under DDP each rank reads its own shard of the same permutation (train: padded to equal length, as
``DistributedSampler``; eval: not padded, so every image is counted exactly once over the ranks).

Bad files: the loader yields ``(images, targets)``; samples whose file failed to decode are dropped by
:func:`alexnet.data.folders.collate_skip_bad` inside the worker, and the main process logs them and appends them
to ``loader.bad`` (and the dataset's ``.bad``). A batch with no good sample is skipped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from alexnet.data.folders import LOG_LIMIT, collate_skip_bad
from alexnet.stopping import quiet_worker_signals

log = logging.getLogger("alexnet.data")

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the ``position``-th sample of ``epoch`` (deterministic across processes)."""
    return hash((seed, epoch, position)) & _MASK  # tuples of ints hash identically in every process


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, augmentation seed)``: a ``(seed, epoch)``-seeded permutation (or ``range`` when not
    shuffling), this rank's shard of it, from batch ``start_batch`` on."""

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        batch_size: int = 1,
    ) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.batch_size = batch_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start = epoch, start_batch * self.batch_size

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1:
            if self.pad:  # equal shards, as DistributedSampler: repeat the first few
                total = math.ceil(self.n / self.world_size) * self.world_size
                order += order[: total - self.n]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._indices()
        for pos in range(self.start, len(order)):
            # The seed depends on the global position, not on the shard: resume and rank layout agree.
            yield order[pos], sample_seed(self.seed, self.epoch, pos * self.world_size + self.rank)

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Torch's CPU RNG seeded with ``seed`` inside, and the caller's RNG stream untouched after."""
    with torch.random.fork_rng(devices=[]):
        # CPU generator only: torch.manual_seed would also queue lazy CUDA/XPU/MTIA seeding, each with a
        # formatted stack trace — more costly than decoding the image.
        torch.default_generator.manual_seed(seed)
        yield


class _Seeded(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is produced with torch's RNG seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded(seed):
            return self.dataset[index]


class Loader(DataLoader):
    """A DataLoader yielding ``(images, targets)`` that counts and logs the files it had to skip.

    ``augment_device``: the main process finishes each batch there (:mod:`alexnet.data.on_device`), from
    ``uint8`` patches the workers decoded and resized, or with ``decode_on_device`` from the files' bytes; the
    images arrive on that device. ``device``: the batches (images and targets) arrive there, a CUDA device's one
    batch ahead on a side stream (:mod:`alexnet.data.ahead`); with ``augment_device`` it is that device.
    """

    def __init__(
        self,
        dataset: Dataset,
        *args: Any,
        augment_device: str | torch.device | None = None,
        decode_on_device: bool = False,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("worker_init_fn", quiet_worker_signals)
        if augment_device is not None:
            device = augment_device
        self.device = torch.device(device) if device is not None else None
        if augment_device is None:
            if decode_on_device:
                raise ValueError("decode_on_device needs an augment_device")
            super().__init__(_Seeded(dataset), *args, collate_fn=collate_skip_bad, **kwargs)
            self.decoder = None
        else:
            from alexnet.data.on_device import BatchDecoder, EncodedItems, collate_encoded
            from alexnet.data.shm_pool import BatchPool

            decoder = BatchDecoder(dataset.transform, augment_device)  # type: ignore[attr-defined]
            items = EncodedItems(dataset, decode=not decode_on_device)
            workers = kwargs.get("num_workers", 0)
            # the workers draw the crops, and reuse their batches' shared memory
            pool = BatchPool(workers, (kwargs.get("prefetch_factor") or 2) + 2) if workers else None
            collate = functools.partial(collate_encoded, plan=items.plan, pool=pool)
            super().__init__(items, *args, collate_fn=collate, **kwargs)
            self.decoder = decoder
        self.source = dataset
        self.bad: list[tuple[str, str]] = []
        self._logged: set[str] = set()  # a file that fails every epoch is logged once

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Order and augmentation of ``epoch``; skip its first ``start_batch`` batches (resume)."""
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        sampler.set_epoch(epoch, start_batch)  # type: ignore[union-attr]

    def _finish(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
        images, targets, bad = batch if self.decoder is None else self.decoder(batch)
        if self.device is not None:
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
        return images, targets, bad

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # type: ignore[override]
        from alexnet.data.ahead import deliver

        unnamed = 0
        for images, targets, bad in deliver(super().__iter__(), self._finish, self.device):
            if bad:
                for path, reason in bad:  # the first LOG_LIMIT files named, once each; the rest counted below
                    if path in self._logged:
                        continue
                    if len(self._logged) < LOG_LIMIT:
                        self._logged.add(path)
                        log.warning("skipped unreadable file %s: %s", path, reason)
                    else:
                        unnamed += 1
                self.bad.extend(bad)
                source_bad = getattr(self.source, "bad", None)
                if isinstance(source_bad, list):
                    source_bad.extend(bad)
            if len(targets):
                yield images, targets
        if unnamed:  # one line a pass, however many: a damaged copy of ImageNet can hold thousands
            log.warning(
                "skipped %d more unreadable files in this pass (the first %d were named)", unnamed, LOG_LIMIT
            )


def _pin(asked: bool | None, augment_device: str | torch.device | None, decode_on_device: bool) -> bool:
    if augment_device is not None:  # pinned patches copy to the GPU asynchronously; bytes are not worth it
        return torch.device(augment_device).type == "cuda" and not decode_on_device
    return torch.cuda.is_available() if asked is None else asked


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    distributed: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    pin_memory: bool | None = None,
    drop_last: bool | None = None,
    prefetch_factor: int | None = None,
    augment_device: str | torch.device | None = None,
    decode_on_device: bool = False,
    device: str | torch.device | None = None,
) -> Loader:
    """A :class:`Loader` over ``dataset`` (items ``(image, target)`` or ``BadSample``).

    Args:
        train: shuffle by ``(seed, epoch)``, pad DDP shards, drop the last incomplete batch (unless
            ``drop_last`` says otherwise); eval keeps file order and counts every sample exactly once.
        workers: worker processes (persistent across epochs when > 0).
        epoch, start_batch: where to start (same as calling ``set_epoch(epoch, start_batch)``; call it at every
            epoch).
        distributed: shard by ``torch.distributed``'s rank/world size (or the given ``rank``/``world_size``).
        pin_memory: default: when CUDA is available (and the batches are not finished on the CPU).
        augment_device: crop, mirror, light and normalise whole batches on this device in the main process,
            the workers decoding and resizing to ``uint8`` patches; see :mod:`alexnet.data.on_device`.
        decode_on_device: with ``augment_device``, decode the JPEGs there too (``"cuda"``: nvJPEG), the workers
            only reading files.
        device: deliver the batches there (a CUDA device's one batch ahead, on a side stream); with
            ``augment_device``, that device.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, not {batch_size}")
    if distributed and (rank is None or world_size is None):
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        world_size = dist.get_world_size() if dist.is_initialized() else 1
    sampler = EpochSampler(
        len(dataset),  # type: ignore[arg-type]
        shuffle=train,
        seed=seed,
        rank=rank or 0,
        world_size=world_size or 1,
        pad=train,
        batch_size=batch_size,
    )
    sampler.set_epoch(epoch, start_batch)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor or 2)
    return Loader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        augment_device=augment_device,
        decode_on_device=decode_on_device,
        device=device,
        pin_memory=_pin(pin_memory, augment_device, decode_on_device),
        drop_last=train if drop_last is None else drop_last,
        # Starting an iterator draws the workers' base seed from this generator; a private one keeps the
        # caller's global RNG stream (dropout masks …) independent of data loading.
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )
