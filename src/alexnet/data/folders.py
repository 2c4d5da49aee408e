"""ImageNet-layout folders: ``ROOT/<split>/<class>/<image files>``, with deterministic subsets and bad-file policy.

Class index = position in the sorted list of class-folder names, exactly as ``torchvision.datasets.ImageFolder``,
so torchvision-ordered weights line up and ILSVRC's wnid folders (``n01440764`` …) work as they are.

Subsets (ImageNet-100 style studies): ``classes=N`` keeps the first N classes in sorted order; ``images_per_class=K``
keeps the first K files of each class in torchvision's order (sorted file names; files in sub-folders of a class
folder count too, after the folder's own). Both are pure functions of the folder listing.

Bad files (corrupt, truncated, not an image): never fatal for a run, and never silent.

* Up front, :func:`check_split` opens every file's header in parallel threads (Pillow identifies the format and
  size without decoding; PNGs are CRC-verified; a JPEG must end with its EOI marker, which catches truncation),
  drops the bad ones from ``dataset.samples``, records them in ``dataset.bad`` and logs each one. More than
  ``max_bad_fraction`` (1 %) bad → :class:`DataError` before any training step. Results are cached per file
  (size + mtime) under ``$ALEXNET_DATA`` or ``~/.cache/alexnet/checks`` so a second run re-checks nothing.
* At load time, a file that still fails to decode makes ``__getitem__`` return a :class:`BadSample` marker
  instead of raising; :func:`collate_skip_bad` (used by :func:`alexnet.data.loader.make_loader`) drops markers and
  hands their paths to the main process with the batch, because a DataLoader worker cannot update the parent's
  counters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from alexnet.data.images import elongation_problem, read_image
from alexnet.errors import DataError, ImageError

if TYPE_CHECKING:
    from alexnet.data.packed import PackedPixels

log = logging.getLogger("alexnet.data")

MAX_BAD_FRACTION = 0.01


@dataclass(frozen=True)
class BadSample:
    """What ``ImageFolder.__getitem__`` returns for a file that cannot be decoded (dropped by the collate)."""

    path: str
    reason: str


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of a split, sorted (torchvision's ImageFolder order); hidden ones (``.packed``) skipped."""
    if not split_dir.is_dir():
        return []
    return sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def files_under(folder: Path) -> list[Path]:
    """The files of a class folder and of its sub-folders, in ``torchvision.datasets.ImageFolder``'s order (the
    folders' paths sorted as strings, then the file names within each), so ``train/dog/2019/x.jpg`` counts as a
    dog as torchvision counts it. Names starting with ``.`` are skipped; symbolic links are followed, and a folder
    reached twice (a link loop) is listed once."""
    listed: list[tuple[str, list[str]]] = []
    seen: set[tuple[int, int]] = set()
    todo = [str(folder)]
    while todo:
        path = todo.pop()
        try:
            st = os.stat(path)
        except OSError:
            continue  # a dangling link to a folder
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        names: list[str] = []
        # os.scandir knows file types from the directory listing: no stat() per file (1.28 M on ImageNet).
        with os.scandir(path) as entries:
            for e in entries:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    todo.append(e.path)
                elif e.is_file():
                    names.append(e.name)
        listed.append((path, sorted(names)))
    listed.sort()
    return [Path(path, name) for path, names in listed for name in names]


class ImageFolder(torch.utils.data.Dataset):
    """``ROOT/<split>/<class>/<files>`` as (image, class index) pairs.

    Args:
        root: the data-set folder (it holds ``train/`` and ``val/``).
        split: the sub-folder to read.
        transform: applied to the decoded ``uint8`` RGB 3×H×W tensor (see :mod:`alexnet.data.transforms`).
        classes: keep the first N classes (sorted folder names).
        images_per_class: keep the first K files of each class (:func:`files_under`'s order).
        class_names: the class list that defines the index (e.g. the train split's ``.found`` for val); a
            class missing from this split is fine, a folder not in the list is an error unless
            ``other_classes="ignore"`` (a model trained on a subset of the classes, evaluated on their images).
        min_side: decode JPEGs at reduced size as long as the shorter side stays ≥ this (AlexNet §2's 256).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[torch.Tensor], Any] | None = None,
        *,
        classes: int | None = None,
        images_per_class: int | None = None,
        class_names: Sequence[str] | None = None,
        min_side: int | None = 256,
        other_classes: Literal["error", "ignore"] = "error",
    ) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.min_side = min_side
        self.pixels: PackedPixels | None = None  # pre-resized pixels (alexnet.data.packed.attach)
        self.bad: list[tuple[str, str]] = []
        for name, value in (("classes", classes), ("images_per_class", images_per_class)):
            if value is not None and value < 1:
                raise DataError(f"{name} must be ≥ 1, not {value}")
        expected = f"{self.root}/{split}/<class>/<image files> (e.g. {self.root}/{split}/n01440764/x.JPEG)"
        if not self.root.is_dir():
            raise DataError(f"no data folder {self.root}: expected the layout {expected}")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"{self.root} has no '{split}' folder: expected the layout {expected}")
        found = class_folders(split_dir)
        if not found:
            raise DataError(f"{split_dir} has no class folders: expected the layout {expected}")
        self.found = found  # every class folder of the split, before any subset
        if class_names is None:
            self.classes = found[:classes] if classes is not None else found
        else:
            unknown = sorted(set(found) - set(class_names))
            if unknown and other_classes == "error":
                raise DataError(
                    f"{split_dir} has class folders that are not in the class list: "
                    f"{', '.join(unknown[:5])}{' …' if len(unknown) > 5 else ''}"
                )
            self.classes = list(class_names)[:classes] if classes is not None else list(class_names)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        # class folders holding no files (torchvision's ImageFolder refuses them; training warns)
        self.empty_classes: list[str] = []
        for cls in self.classes:
            folder = split_dir / cls
            if not folder.is_dir():
                continue  # e.g. a class with no val images
            files = files_under(folder)
            if images_per_class is not None:
                files = files[:images_per_class]
            if not files:
                self.empty_classes.append(cls)
            self.samples.extend((f, self.class_to_idx[cls]) for f in files)
        if not self.samples:
            raise DataError(
                f"{split_dir} has class folders but no files in them: expected the layout {expected}"
            )

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[torch.Tensor | BadSample, int]:
        """The decoded ``uint8`` image (no transform), or a :class:`BadSample`, and its class index. With a packed
        store attached (:func:`alexnet.data.packed.attach`), its pre-resized pixels where it holds the file."""
        path, target = self.samples[index]
        if self.pixels is not None:
            packed = self.pixels.image(path)
            if packed is not None:
                return packed, target
        try:
            return read_image(path, min_side=self.min_side), target
        except ImageError as e:
            return BadSample(str(path), _reason(e, path)), target

    def __getitem__(self, index: int) -> tuple[Any, int] | BadSample:
        image, target = self.load(index)
        if isinstance(image, BadSample):
            return image
        if self.transform is not None:
            image = self.transform(image)
        return image, target

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, split={self.split!r}, classes={len(self.classes)}, "
            f"images={len(self.samples)}, bad={len(self.bad)})"
        )


def _reason(e: Exception, path: Path | str) -> str:
    """The error message without the path prefix (the path is reported next to it)."""
    msg = str(e)
    prefix = f"{path}: "
    return msg[len(prefix) :] if msg.startswith(prefix) else msg


# --- the up-front check --------------------------------------------------------------------------------------


def check_file(path: str | Path) -> str | None:
    """``None`` if ``path`` looks like a complete, readable image; else the reason it is not. Cheap: no decode."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            fmt = im.format
            if im.width < 1 or im.height < 1:
                return "image has no pixels"
            if problem := elongation_problem(im.width, im.height):
                return problem
            if fmt == "PNG":
                im.verify()  # chunk CRCs up to IEND: catches truncation and corruption
        if fmt == "JPEG":
            with p.open("rb") as f:
                f.seek(-2, os.SEEK_END)
                tail = f.read(2)
            # JPEGs end with the EOI marker FF D9; a cut-off download does not (some writers pad after it,
            # so look for it in the last few bytes).
            if tail != b"\xff\xd9":
                with p.open("rb") as f:
                    f.seek(max(0, p.stat().st_size - 64))
                    if b"\xff\xd9" not in f.read():
                        return "truncated JPEG (no end-of-image marker)"
    except UnidentifiedImageError:
        return "not an image (unknown or unsupported format)" if p.stat().st_size else "empty file"
    except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError) as e:
        return f"not a readable image ({type(e).__name__}: {e})"
    return None


def _cache_file(dataset: ImageFolder) -> Path:
    base = Path(os.environ.get("ALEXNET_DATA") or "~/.cache/alexnet").expanduser()
    key = hashlib.sha1(str(dataset.root.resolve() / dataset.split).encode()).hexdigest()[:16]
    return base / "checks" / f"{dataset.split}-{key}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(path: Path, cache: dict[str, list]) -> None:
    from alexnet.files import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(cache)))
    except OSError as e:  # a read-only home must not stop training
        log.debug("cannot write the file-check cache %s: %s", path, e)


def check_split(
    dataset: ImageFolder,
    max_bad_fraction: float = MAX_BAD_FRACTION,
    progress: bool = True,
    *,
    workers: int = 8,
    cache: bool = True,
) -> list[tuple[str, str]]:
    """Check every file of ``dataset`` up front; drop and report the bad ones; fail if too many are bad.

    Returns the ``(path, reason)`` list (also stored in ``dataset.bad``). Raises :class:`DataError` when more
    than ``max_bad_fraction`` of the split is bad, naming the first few files, so a broken copy of a data set
    is caught before the first training step rather than hours into a run.
    """
    from tqdm import tqdm

    cache_path = _cache_file(dataset)
    cached = _load_cache(cache_path) if cache else {}
    keys, stats, todo = [], [], []
    for i, (path, _) in enumerate(dataset.samples):
        try:
            st = path.stat()
            stat = [st.st_size, st.st_mtime_ns]
        except OSError:
            stat = [-1, -1]
        key = str(path)
        keys.append(key)
        stats.append(stat)
        hit = cached.get(key)
        if not (hit and hit[:2] == stat):
            todo.append(i)
    results: dict[int, str | None] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(lambda i: check_file(dataset.samples[i][0]), todo)
        bar = tqdm(
            it, total=len(todo), desc=f"checking {dataset.split} files", unit="file", disable=not progress
        )
        for i, reason in zip(todo, bar, strict=True):
            results[i] = reason
    bad: list[tuple[str, str]] = []
    keep: list[tuple[Path, int]] = []
    new_cache: dict[str, list] = {}
    for i, sample in enumerate(dataset.samples):
        reason = results[i] if i in results else cached[keys[i]][2]
        new_cache[keys[i]] = [*stats[i], reason]
        if reason is None:
            keep.append(sample)
        else:
            bad.append((keys[i], reason))
    if cache and todo:
        _save_cache(cache_path, new_cache)
    total = len(dataset.samples)
    dataset.samples = keep
    dataset.bad.extend(bad)
    # Too many bad files is one error naming a few (a broken copy can hold thousands); else each one is logged.
    if bad and len(bad) > max_bad_fraction * total:
        names = "; ".join(f"{p}: {r}" for p, r in bad[:3])
        raise DataError(
            f"{len(bad)} of {total} files in {dataset.root / dataset.split} are unreadable "
            f"({100 * len(bad) / total:.1f}% > {100 * max_bad_fraction:g}% allowed), e.g. {names}; fix or remove "
            f"them (`alexnet data-pack {dataset.root} --split {dataset.split} --json` lists every one)"
        )
    if not keep:
        raise DataError(f"no readable image in {dataset.root / dataset.split}")
    log_unreadable(bad)
    return bad


LOG_LIMIT = 10  # unreadable files named one by one in a report; the rest are counted in one line


def log_unreadable(bad: Sequence[tuple[str, str]], verb: str = "skipping") -> None:
    """A warning naming each unreadable file, for the first :data:`LOG_LIMIT` of ``bad``, then one counting the
    rest: up to 1 % of ImageNet's training set (12,800 files) may be unreadable, and a line for each would bury
    the log."""
    for path, reason in bad[:LOG_LIMIT]:
        log.warning("%s unreadable file %s: %s", verb, path, reason)
    if len(bad) > LOG_LIMIT:
        log.warning("%s %d more unreadable files (%d in all)", verb, len(bad) - LOG_LIMIT, len(bad))


# --- load time: drop markers in the collate, count them in the main process ----------------------------------


def collate_skip_bad(batch: list[Any]) -> tuple[Any, Any, list[tuple[str, str]]]:
    """``default_collate`` over the good samples; returns ``(images, targets, bad)`` with ``bad`` the
    ``(path, reason)`` pairs of the dropped :class:`BadSample` markers (reported to the main process)."""
    good = [b for b in batch if not isinstance(b, BadSample)]
    bad = [(b.path, b.reason) for b in batch if isinstance(b, BadSample)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images, targets = torch.utils.data.default_collate(good)
    return images, targets, bad
