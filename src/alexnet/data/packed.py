"""Pre-resized pixels: a split's images decoded once, at AlexNet's fixed 256×256, and read back without decoding.

AlexNet §2: "we down-sampled the images to a fixed resolution of 256 × 256" (shorter side to 256, then the
central 256×256 patch) before training. Decoding a JPEG is most of what the input pipeline does per image
(docs/performance.md): read back from this store, an image costs a copy of 192 KiB, and the random crop, mirror
and PCA lighting of §4.1 run on it as before. ``alexnet data-pack ROOT`` writes the store; training, evaluation
and ``alexnet bench --data`` read it when it is there.

Where: ``ROOT/.packed/<split>-<size>/``, or, with ``ALEXNET_PACKED_DIR`` set (a data set on a read-only mount, as
shared clusters keep ImageNet), ``$ALEXNET_PACKED_DIR/<ROOT's name>-<hash of its absolute path>/<split>-<size>/``;
packing and every reader look in the same place. Layout:

* ``pixels.u8``: ``count × 3 × size × size`` ``uint8`` RGB, row ``i`` the ``i``-th file of ``files.txt``;
* ``files.txt``: each file's path relative to ``ROOT/<split>``, in :class:`~alexnet.data.folders.ImageFolder`'s
  order;
* ``stat.npy``: per row the file's size, its mtime in ns, and 1 when the row holds its pixels (0: not packed yet,
  or the file did not decode);
* ``meta.json``: format, size, ``min_side``, count and ``done``, the rows packed so far, written after each chunk.

The pixels are exactly what the training transform's first two steps make of the file
(:func:`alexnet.data.transforms.central_patch`), so a run reads the same numbers either way
(tests/test_packed.py). Every read checks the file's size and mtime: a file changed since packing, or one that
did not decode, is decoded from the file as before, so a stale store is slower, never wrong. Packing is resumable:
a killed ``alexnet data-pack`` continues after the last chunk it finished, and a later run packs again only the
files changed since.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet.errors import DataError, ImageError
from alexnet.stopping import StopSignals, quiet_worker_signals

log = logging.getLogger("alexnet.data")

FORMAT = 2  # 2: EXIF orientation applied (a store of format 1 is ignored and packed again)
DIR = ".packed"
CHUNK = 512  # images per flush of the store (and per resume point)


def store_dir(root: str | Path, split: str, size: int) -> Path:
    """The store of ``root``'s ``split`` at ``size``: under ``root`` itself, or under ``ALEXNET_PACKED_DIR``."""
    root = Path(root).expanduser()
    elsewhere = os.environ.get("ALEXNET_PACKED_DIR")
    if not elsewhere:
        return root / DIR / f"{split}-{size}"
    absolute = root.resolve()
    key = hashlib.sha256(str(absolute).encode()).hexdigest()[:12]
    return Path(elsewhere).expanduser() / f"{absolute.name}-{key}" / f"{split}-{size}"


def _read_meta(store: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((store / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def _write_meta(store: Path, meta: dict[str, Any]) -> None:
    from alexnet.files import atomic_write

    atomic_write(store / "meta.json", lambda tmp: Path(tmp).write_text(json.dumps(meta)))


def size_text(n: int) -> str:
    """A size for people: GiB from 1 GiB up, else MiB."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


_viewed = False  # this process has made a tensor of a read-only map (torch warns once per process)


def _read_only_view(array: np.ndarray) -> torch.Tensor:
    """A tensor over the mapped store, without a copy; it must only be read (the map is read-only). torch warns
    about a tensor over a read-only array, once per process: the first view is made with that warning caught."""
    global _viewed
    if _viewed:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        view = torch.from_numpy(array)
    _viewed = True
    return view


def _file_stat(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class PackedPixels:
    """The pixels of one packed split, looked up by file path (the paths of an ``ImageFolder``'s ``samples``).

    Pickles without its memory map (DataLoader workers open their own).
    """

    def __init__(self, store: Path, split_dir: Path, meta: dict[str, Any]) -> None:
        self.store = store
        self.size = int(meta["size"])
        self.min_side = meta.get("min_side")
        self.count = int(meta["count"])
        self.done = int(meta["done"])
        names = (store / "files.txt").read_text().splitlines()
        if len(names) != self.count:
            raise DataError(f"{store}: files.txt lists {len(names)} files, meta.json says {self.count}")
        prefix = f"{split_dir}{os.sep}"
        self.rows = {prefix + name: i for i, name in enumerate(names)}
        self._stat: np.ndarray | None = None
        self._pixels: np.ndarray | None = None
        self.unused_rows: list[int] = []  # rows of files deleted since packing (known after `pack`)

    @classmethod
    def open(cls, root: str | Path, split: str, size: int) -> PackedPixels | None:
        """The store of ``root``'s ``split`` at ``size``, or ``None`` when there is none (or not of this format)."""
        store = store_dir(root, split, size)
        meta = _read_meta(store)
        if meta is None or int(meta.get("size", -1)) != size:
            return None
        try:
            pixels = cls(store, Path(root).expanduser() / split, meta)
            complete = (store / "pixels.u8").stat().st_size == pixels.count * 3 * size * size
            complete = complete and np.load(store / "stat.npy", mmap_mode="r").shape == (pixels.count, 3)
        except (OSError, ValueError, DataError) as e:
            log.warning("ignoring the damaged packed store %s (%s); run `alexnet data-pack` again", store, e)
            return None
        if not complete:
            log.warning("ignoring the damaged packed store %s (sizes); run `alexnet data-pack` again", store)
            return None
        return pixels

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stat": None, "_pixels": None}

    def _maps(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pixels is None or self._stat is None:
            shape = (self.count, 3, self.size, self.size)
            # Read-only and shared: a private writable map ("c") of a store larger than RAM + swap would be
            # refused by the kernel's overcommit check. Plain ndarray views of the maps (they keep them open):
            # np.memmap's own indexing costs microseconds per image.
            pixels = np.memmap(self.store / "pixels.u8", dtype=np.uint8, mode="r", shape=shape)
            self._pixels = pixels.view(np.ndarray)
            self._stat = np.load(self.store / "stat.npy", mmap_mode="r").view(np.ndarray)
        return self._pixels, self._stat

    def image(self, path: Path | str, *, copy: bool = True) -> torch.Tensor | None:
        """``path``'s ``uint8`` 3×size×size pixels, or ``None`` when the store does not hold them as the file is
        now (not packed, did not decode, or changed since: size or mtime differ). ``copy=False``: a read-only view
        of the mapped store, for a caller that copies the pixels on at once (a batch's stack)."""
        row = self.rows.get(str(path))
        if row is None or row >= self.done:
            return None
        pixels, stat = self._maps()
        size, mtime_ns, ok = stat[row].tolist()
        if not ok or _file_stat(path) != (size, mtime_ns):
            return None
        if copy:
            return torch.from_numpy(np.array(pixels[row]))
        return _read_only_view(pixels[row])

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"PackedPixels({str(self.store)!r}, size={self.size}, images={self.count}, done={self.done})"


def attach(dataset: Any, size: int) -> PackedPixels | None:
    """Let ``dataset`` (an :class:`~alexnet.data.folders.ImageFolder`) read its images from the store of its split
    at ``size`` when there is one made with the same decoding (``min_side``); return the store or ``None``.
    Only for transforms that start with :func:`~alexnet.data.transforms.central_patch` of ``size`` (the papers'
    resize 256 and central crop). ``ALEXNET_PACKED=0`` turns it off."""
    if os.environ.get("ALEXNET_PACKED", "1") == "0":
        return None
    pixels = PackedPixels.open(dataset.root, dataset.split, size)
    if pixels is None or pixels.min_side != dataset.min_side:
        return None
    dataset.pixels = pixels
    log.info(
        "reading %s's pixels from %s (%d of %d packed)", dataset.split, pixels.store, pixels.done, len(pixels)
    )
    return pixels


class _Decode(torch.utils.data.Dataset):
    """Item ``i`` → ``(row, pixels or None, (size, mtime_ns) or None)`` for the ``i``-th of ``rows`` (the file
    ``paths[row]``), decoded as the loaders decode."""

    def __init__(self, paths: list[Path], rows: list[int], min_side: int) -> None:
        from alexnet.data.transforms import central_patch

        self.paths, self.rows, self.min_side = paths, rows, min_side
        self.patch = central_patch(min_side)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, tuple[int, int] | None]:
        from alexnet.data.images import read_image

        row = self.rows[i]
        path = self.paths[row]
        stat = _file_stat(path)  # before decoding: a file changed meanwhile will not match later
        try:
            image = self.patch(read_image(path, min_side=self.min_side))
        except ImageError:
            return row, None, stat
        return row, image.contiguous(), stat


def _batches(
    paths: list[Path], rows: list[int], min_side: int, workers: int, chunk: int
) -> Iterator[list[Any]]:
    loader = torch.utils.data.DataLoader(
        _Decode(paths, rows, min_side),
        batch_size=chunk,
        num_workers=workers,
        collate_fn=list,
        worker_init_fn=quiet_worker_signals,  # Ctrl-C and SIGTERM are the main process's: it ends the chunk
    )
    yield from loader


def pack(
    root: str | Path,
    split: str = "train",
    size: int = 256,
    *,
    workers: int = 0,
    chunk: int = CHUNK,
    progress: bool = True,
) -> PackedPixels:
    """Decode every image of ``root/split`` once into the store (module docstring); resume a store left by an
    interrupted run when the folder's file list is the same. Files added to the folder since a complete store was
    packed are appended to it; rows of deleted files stay, unused, until they are half the store, when it is
    packed again from scratch. Returns the store."""
    from tqdm import tqdm

    from alexnet.data.folders import ImageFolder

    if size < 1 or chunk < 1 or workers < 0:
        raise DataError(f"size and chunk must be ≥ 1 and workers ≥ 0 (got {size}, {chunk}, {workers})")
    dataset = ImageFolder(root, split, min_side=size)
    split_dir = dataset.root / split
    names = [path.relative_to(split_dir).as_posix() for path, _ in dataset.samples]
    store = store_dir(root, split, size)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        hint = (
            "" if os.environ.get("ALEXNET_PACKED_DIR") else " (set ALEXNET_PACKED_DIR to a writable folder)"
        )
        raise DataError(f"cannot write the packed store {store}: {e.strerror}{hint}") from None
    existing = PackedPixels.open(root, split, size)  # None: no store, another format, or damaged
    old = (store / "files.txt").read_text().splitlines() if existing is not None else []
    usable = existing is not None and existing.min_side == size
    live, packed_before = set(names), set(old)
    added = [n for n in names if n not in packed_before]
    unused = len(old) - (len(names) - len(added))  # rows of files deleted since
    grow = (
        usable
        and old != names
        and existing is not None
        and existing.done == existing.count
        and unused <= len(names) // 2
    )
    if grow:  # the old rows keep their places; the added files follow them
        order, start = old + added, len(old)
        log.info(
            "%s: %d files added since packing (packed now), %d deleted (their rows stay unused)",
            split_dir,
            len(added),
            unused,
        )
    else:
        order = names
        start = existing.done if usable and existing is not None and old == names else 0
    paths = [split_dir / name for name in order]
    count = len(order)
    files_txt = "\n".join(order) + "\n"
    shape = (count, 3, size, size)
    # The pixel file is sparse until written, and a write into a memory map on a full disk kills the process
    # (SIGBUS) instead of raising: check the space up front.
    needed, free = (count - start) * 3 * size * size, shutil.disk_usage(store).free
    if needed > free:
        raise DataError(
            f"packing {split_dir} needs {size_text(needed)} more in {store}, which has {size_text(free)} free"
        )
    meta = {"format": FORMAT, "size": size, "min_side": size, "count": count, "done": start}
    if start == 0:
        for name in ("meta.json", "pixels.u8", "stat.npy"):
            # unlinked, not truncated: a reader that has the old files mapped keeps them
            (store / name).unlink(missing_ok=True)
        (store / "files.txt").write_text(files_txt)
        with open(store / "pixels.u8", "wb") as f:
            f.truncate(count * 3 * size * size)  # sparse until written
        np.lib.format.open_memmap(store / "stat.npy", mode="w+", dtype=np.int64, shape=(count, 3)).flush()
        _write_meta(store, meta)
    elif grow and added:
        _grow(store, count, meta, files_txt)
    elif start < count:
        log.info("resuming the packing of %s at image %d of %d", split_dir, start, count)
    # Rows packed before whose file has changed since (size or mtime) are packed again, first.
    stat = np.load(store / "stat.npy", mmap_mode="r+")
    stale = [
        row
        for row in range(start)
        if order[row] in live and _file_stat(paths[row]) != (int(stat[row, 0]), int(stat[row, 1]))
    ]
    if stale:
        log.info("packing %d changed files of %s again", len(stale), split_dir)
    rows = stale + list(range(start, count))
    if rows:
        pixels = np.memmap(store / "pixels.u8", dtype=np.uint8, mode="r+", shape=shape)
        signals = StopSignals("stopping after this chunk, with it saved" if progress else None)
        with (
            tqdm(total=len(rows), unit="img", desc=f"pack {split}", disable=not progress) as bar,
            signals,
        ):
            written = 0
            for batch in _batches(paths, rows, size, workers, chunk):
                for row, image, st in batch:
                    if image is not None and st is not None:
                        pixels[row] = image.numpy()
                        stat[row] = (st[0], st[1], 1)
                    else:
                        stat[row] = (st or (0, 0))[0], (st or (0, 0))[1], 0
                pixels.flush()
                stat.flush()
                meta["done"] = max(meta["done"], batch[-1][0] + 1)  # stale rows lie below it
                _write_meta(store, meta)  # the resume point
                bar.update(len(batch))
                written += len(batch)
                if signals.signum is not None:  # Ctrl-C or SIGTERM (alexnet.stopping)
                    bar.close()
                    raise signals.interrupted(
                        f"stopped after packing {written} of {len(rows)} images into {store}; run the same "
                        "command to go on from there"
                    )
        del pixels
    del stat
    opened = PackedPixels.open(root, split, size)
    if opened is None:
        raise DataError(f"the packed store {store} could not be read back after packing")
    opened.unused_rows = [row for row, name in enumerate(order) if name not in live]
    return opened


def _grow(store: Path, count: int, meta: dict[str, Any], files_txt: str) -> None:
    """Extend a complete store to ``count`` rows, the new ones not packed yet. A crash midway leaves sizes that do
    not match meta.json: readers then ignore the store and the next ``data-pack`` starts over, never wrong."""
    from alexnet.files import atomic_write

    size = int(meta["size"])
    old = np.load(store / "stat.npy")
    tmp = store / "stat.npy.tmp.npy"
    grown = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(count, 3))
    grown[: len(old)] = old
    grown.flush()
    del grown
    os.truncate(store / "pixels.u8", count * 3 * size * size)  # sparse until written
    os.replace(tmp, store / "stat.npy")
    atomic_write(store / "files.txt", lambda t: Path(t).write_text(files_txt))
    _write_meta(store, meta)


def summary(pixels: PackedPixels) -> dict[str, Any]:
    """What ``alexnet data-pack`` reports: the folder's images, how many hold pixels, the rows of deleted files,
    bytes on disk."""
    _, stat = pixels._maps()
    live = np.ones(pixels.count, dtype=bool)
    live[pixels.unused_rows] = False
    done = live[: pixels.done]
    ok = np.asarray(stat[: pixels.done, 2])
    packed = int(ok[done].sum())
    bad_rows = np.flatnonzero(done & (ok == 0))
    names = {row: name for name, row in pixels.rows.items()} if len(bad_rows) else {}
    bad = [names[int(row)] for row in bad_rows]
    return {
        "store": str(pixels.store),
        "size": pixels.size,
        "images": int(live.sum()),
        "packed": packed,
        "unreadable": int(done.sum()) - packed,
        "unreadable_files": bad,
        "unused": len(pixels.unused_rows),
        "bytes": pixels.count * 3 * pixels.size * pixels.size,
    }
