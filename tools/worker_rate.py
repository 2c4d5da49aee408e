"""Times what one loader worker does per image for `alexnet train --gpu-augment` (read or decode, resize to the
256×256 patch, collate the uint8 batch and draw its random crops, mirrors and lighting), from the files and
from `alexnet data-pack`'s store, on one CPU core: the images/s each worker process can feed a GPU. Runs
without a GPU. ``--loader`` times the same through a real DataLoader with one worker process instead, the
batches' way to the main process included (shared memory, the queue), the main process only receiving them;
with ``--pin`` (on a CUDA machine) the DataLoader's pin thread copies each batch to pinned memory first, as
`alexnet train` has it, so the rate is that thread's ceiling when the workers are faster.

    python tools/make_jpegs.py /tmp/jpegs --images 400 && alexnet data-pack /tmp/jpegs
    python tools/worker_rate.py /tmp/jpegs [--images 320] [--batch-size 64] [--loader [--workers N] [--pin]]
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from torch.utils.data import DataLoader

from alexnet import malloc
from alexnet.data.folders import ImageFolder
from alexnet.data.on_device import EncodedItems, collate_encoded
from alexnet.data.packed import attach
from alexnet.data.preprocess import Preprocessing
from alexnet.data.shm_pool import BatchPool
from alexnet.data.transforms import train_transform


def rate(dataset: ImageFolder, images: int, batch_size: int) -> float:
    """Images/s of the worker's part (item loading and collation), after one untimed batch."""
    items = EncodedItems(dataset)
    keys = [(i % len(dataset), i) for i in range(images + batch_size)]
    collate_encoded([items[k] for k in keys[:batch_size]], items.plan)
    start = time.perf_counter()
    for b in range(batch_size, len(keys), batch_size):
        collate_encoded([items[k] for k in keys[b : b + batch_size]], items.plan)
    return images / (time.perf_counter() - start)


def loader_rate(
    dataset: ImageFolder,
    images: int,
    batch_size: int,
    use_pool: bool = True,
    workers: int = 1,
    pin: bool = False,
) -> float:
    """Images/s per worker that the main process receives from ``workers`` worker processes, after one untimed
    batch per worker; the main thread's CPU time per batch is printed too."""
    items = EncodedItems(dataset)
    keys = [(i % len(dataset), i) for i in range(images + batch_size * workers)]
    pool = BatchPool(workers, 4) if use_pool else None  # as alexnet.data.loader.Loader sets it up
    collate = functools.partial(collate_encoded, plan=items.plan, pool=pool)
    loader = DataLoader(
        items, batch_size=batch_size, sampler=keys, num_workers=workers, collate_fn=collate, pin_memory=pin
    )
    batches = iter(loader)
    for _ in range(workers):
        next(batches)
    start, cpu, n = time.perf_counter(), time.thread_time(), 0
    for items_, *_ in batches:
        items_.release()  # as the loader's pin thread or the batch decoder does
        n += 1
    elapsed = time.perf_counter() - start
    print(
        f"        main thread: {1e3 * (time.thread_time() - cpu) / max(n, 1):.2f} ms CPU per batch received"
    )
    return images / elapsed / workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data folder with train/ (and, for the second row, its packed store)")
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--loader", action="store_true", help="through a DataLoader with one worker process")
    parser.add_argument("--no-pool", action="store_true", help="with --loader: fresh shared memory per batch")
    parser.add_argument(
        "--workers", type=int, default=1, help="with --loader: worker processes (the rate is per worker)"
    )
    parser.add_argument(
        "--pin", action="store_true", help="with --loader: the DataLoader pins each batch (needs CUDA)"
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be >= 1 (got {args.workers})")
    if args.pin and not (args.loader and torch.cuda.is_available()):
        parser.error("--pin needs --loader and a CUDA GPU (pinned memory is the GPU driver's)")
    measure = (
        functools.partial(loader_rate, use_pool=not args.no_pool, workers=args.workers, pin=args.pin)
        if args.loader
        else rate
    )
    malloc.tune()
    torch.set_num_threads(1)
    pre = Preprocessing(input_size=227)
    files = ImageFolder(args.root, "train", train_transform(pre))
    print(f"files : {measure(files, args.images, args.batch_size):8.0f} images/s per worker core")
    packed = ImageFolder(args.root, "train", train_transform(pre))
    if attach(packed, pre.resize) is None:
        print(f"packed: no store (run `alexnet data-pack {args.root}`)")
        return
    print(f"packed: {measure(packed, args.images, args.batch_size):8.0f} images/s per worker core")


if __name__ == "__main__":
    main()
