"""alexnet.data.shm_pool: a worker reuses its batches' shared memory once the main process is done with them, and
never while a batch is still held."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from alexnet.data.shm_pool import BatchPool, Slot


class Images(Dataset):
    """Image ``i`` is 3×8×8 ``uint8`` filled with ``i``: every batch is recognisable."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.full((3, 8, 8), i, dtype=torch.uint8)


def _loader(pool: BatchPool, workers: int = 1) -> DataLoader:
    return DataLoader(Images(), batch_size=2, num_workers=workers, collate_fn=pool.stack)


def _fd_id(t: torch.Tensor) -> tuple[int, int]:
    from torch.multiprocessing.reductions import fd_id

    return fd_id(t.untyped_storage()._share_fd_cpu_()[0])


def _expected(b: int) -> torch.Tensor:
    return torch.stack([torch.full((3, 8, 8), 2 * b + j, dtype=torch.uint8) for j in range(2)])


def test_a_worker_refills_the_same_slot_once_the_main_process_frees_it():
    pool = BatchPool(workers=1, slots=3)
    buffers = set()
    for b, (pixels, slot) in enumerate(_loader(pool)):
        assert isinstance(slot, Slot) and torch.equal(pixels, _expected(b))
        buffers.add(_fd_id(pixels))
        slot.keep_mapping(pixels.untyped_storage())
        slot.free()
    # prefetch 2: at most three batches were ever taken at once, then each buffer came back
    assert 1 <= len(buffers) <= 3 and pool.in_use() == 0


def test_batches_still_held_keep_their_slots_and_their_pixels():
    pool = BatchPool(workers=1, slots=2)
    held = list(_loader(pool))  # nothing freed: the third batch on came in fresh shared memory
    assert [s is not None for _, s in held[:2]] == [True, True] and all(s is None for _, s in held[2:])
    for b, (pixels, _) in enumerate(held):
        assert torch.equal(pixels, _expected(b))  # no slot was refilled under a batch still held
    assert pool.in_use() == 2
    del held
    gc.collect()
    assert pool.in_use() == 0  # a Slot collected unread frees its buffer


def test_each_worker_has_its_own_slots_and_the_order_is_kept():
    pool = BatchPool(workers=2, slots=4)
    for b, (pixels, slot) in enumerate(_loader(pool, workers=2)):
        assert torch.equal(pixels, _expected(b)) and slot.worker == b % 2
        slot.free()
    assert pool.in_use() == 0


def test_in_the_main_process_a_pool_stacks_as_torch_does():
    pool = BatchPool(workers=1, slots=1)
    pixels, slot = pool.stack([Images()[0], Images()[1]])
    assert slot is None and torch.equal(pixels, _expected(0))


def test_a_slot_in_the_worker_that_sent_it_never_frees_it():
    pool = BatchPool(workers=1, slots=1)
    pool.flags[0, 0] = 1
    sent = Slot(pool.id, 0, 0)  # as made in the worker: not the receiver's to free
    sent.free()
    del sent
    assert pool.in_use() == 1


def test_a_pool_needs_workers_and_slots():
    with pytest.raises(ValueError):
        BatchPool(workers=0, slots=2)


@pytest.mark.skipif(not os.path.exists("/dev/shm"), reason="needs POSIX shared memory")
def test_the_gpu_augment_loader_frees_every_slot_it_was_handed(tmp_path: Path):
    """Through the real loader (augment on the CPU, two workers): the decoder frees each slot after finishing its
    batch, so no slot is left taken and the workers keep reusing a few buffers."""
    import skimage.data
    from PIL import Image

    from alexnet.data.folders import ImageFolder
    from alexnet.data.loader import make_loader
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import train_transform

    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for i in range(16):
        Image.fromarray(skimage.data.chelsea()).resize((300 + i, 280)).save(folder / f"{i}.jpg")
    ds = ImageFolder(tmp_path, "train", train_transform(Preprocessing()))
    loader = make_loader(ds, 2, train=True, workers=2, augment_device="cpu")
    pool = loader.collate_fn.keywords["pool"]
    assert sum(1 for _ in loader) == 8
    gc.collect()
    assert pool.in_use() == 0
