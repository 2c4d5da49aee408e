"""A folder of class folders without a train/val split (Caltech-101's ``101_ObjectCategories``, a photo
collection) → an ImageNet-layout folder of links: ``DST/train/<class>/…`` and ``DST/val/<class>/…``.

Zeiler & Fergus §5.2 trained on 15 or 30 randomly chosen images per Caltech-101 class and tested on up to 50 of
the others, averaging five random splits (``--train-per-class 30 --val-per-class 50 --seed 0…4``). A class's files
are :func:`alexnet.data.folders.files_under`'s (sub-folders too, as training reads them), shuffled by a generator
seeded with the seed and the class name, so a class's split does not change when other classes are added or
excluded. The files are linked, not copied (``copy=True`` copies); ``split.json`` in the output records how it was
made. The output is built under a temporary name and renamed into place: an interrupted split leaves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alexnet.errors import DataError, OutputError

RECORD = "split.json"


@dataclass
class SplitSummary:
    source: str
    out: str
    seed: int
    classes: int
    train: int
    val: int
    excluded: list[str] = field(default_factory=list)
    loose: list[str] = field(
        default_factory=list
    )  # files directly in the source, in no class folder: left out
    per_class: dict[str, tuple[int, int]] = field(default_factory=dict)  # class → (train, val) images


def _shuffled(files: list[Path], seed: int, name: str) -> list[Path]:
    # seeded by (seed, class name) alone: a class's split is the same whatever other classes there are
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    order = list(files)
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def _counts(
    n: int, name: str, train: int | None, val: int | None, fraction: float | None, held_out: str = "validate"
) -> tuple[int, int]:
    """(train, val) images of a class of ``n`` files; ``held_out`` says what the others are for, in errors."""
    if train is not None:
        if n < train + 1:
            raise DataError(
                f"class {name!r} has {n} image{'s' if n != 1 else ''}: fewer than --train-per-class {train} plus "
                f"one to {held_out} on (a smaller --train-per-class, or --exclude it)"
            )
        rest = n - train
        return train, rest if val is None else min(val, rest)
    if val is not None:
        if n < val + 1:
            raise DataError(
                f"class {name!r} has {n} image{'s' if n != 1 else ''}: fewer than --val-per-class {val} plus one to "
                "train on (a smaller --val-per-class, or --exclude it)"
            )
        return n - val, val
    assert fraction is not None
    if n < 2:
        raise DataError(
            f"class {name!r} has {n} image{'s' if n != 1 else ''}: one to train on and one to {held_out} on "
            "is the least (--exclude it)"
        )
    held = min(n - 1, max(1, round(fraction * n)))
    return n - held, held


def class_split(
    files: list[Path],
    name: str,
    seed: int,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    val_fraction: float | None = None,
    held_out: str = "validate",
) -> tuple[list[Path], list[Path]]:
    """One class's (train, val) files, as :func:`split_folder` chooses them (its arguments, already checked):
    the files shuffled by ``(seed, name)`` alone, the first ones trained on. ``held_out``: what the others are
    for, in the error for a class too small ("validate", "test")."""
    n_train, n_val = _counts(len(files), name, train_per_class, val_per_class, val_fraction, held_out)
    order = _shuffled(files, seed, name)
    return order[:n_train], order[n_train : n_train + n_val]


def split_folder(
    source: str | Path,
    out: str | Path,
    *,
    train_per_class: int | None = None,
    val_per_class: int | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    copy: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SplitSummary:
    """Split the class folders of ``source`` into ``out/train`` and ``out/val`` (module docstring).

    ``train_per_class``: that many training images per class, chosen at random, and up to ``val_per_class``
    (default: all) of the others to validate on; else ``val_per_class`` (or a ``val_fraction``, default 0.1) of
    each class held out and the rest trained on. ``exclude``: class folders left out (Caltech-101's
    ``BACKGROUND_Google``). ``progress(placed, total)`` is called after each class with the files placed so far.
    """
    src, dst = Path(source).expanduser(), Path(out).expanduser()
    if train_per_class is not None and train_per_class < 1:
        raise DataError(f"--train-per-class must be at least 1 (got {train_per_class})")
    if val_per_class is not None and val_per_class < 1:
        raise DataError(f"--val-per-class must be at least 1 (got {val_per_class})")
    if val_fraction is not None and (train_per_class is not None or val_per_class is not None):
        raise DataError(
            "--val-fraction holds out a share of each class; give it alone, without --*-per-class"
        )
    if train_per_class is None and val_per_class is None:
        val_fraction = 0.1 if val_fraction is None else val_fraction
        if not 0 < val_fraction < 1:
            raise DataError(f"--val-fraction must be between 0 and 1 (got {val_fraction})")
    if not src.is_dir():
        raise DataError(f"{src}: no such folder (expected {src}/<class>/<images>)")
    entries = [e for e in src.iterdir() if not e.name.startswith(".")]
    classes = sorted(e.name for e in entries if e.is_dir())
    loose = sorted(e.name for e in entries if not e.is_dir())
    if {"train", "val"} <= set(classes):
        raise DataError(f"{src} already has train/ and val/ splits: every command reads it as it is")
    unknown = sorted(set(exclude) - set(classes))
    if unknown:
        raise DataError(f"--exclude {', '.join(unknown)}: no such class folder in {src}")
    classes = [c for c in classes if c not in set(exclude)]
    if len(classes) < 2:
        raise DataError(
            f"{src} holds {len(classes)} class folder{'s' if len(classes) != 1 else ''}; a classifier needs 2"
        )
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst} already exists and is not empty: choose another output folder (or delete it)")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise DataError(f"{dst} is inside {src}: it would become one of its own classes")

    from alexnet.data.folders import files_under

    plan: dict[str, tuple[list[Path], list[Path]]] = {}
    for name in classes:
        plan[name] = class_split(
            files_under(src / name), name, seed, train_per_class, val_per_class, val_fraction
        )

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    total, placed = sum(len(t) + len(v) for t, v in plan.values()), 0
    try:
        for name, (train, val) in plan.items():
            for split, files in (("train", train), ("val", val)):
                for f in files:
                    target = tmp / split / name / f.relative_to(src / name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if copy:
                        shutil.copy2(f, target)
                    else:
                        os.symlink(f.resolve(), target)
            placed += len(train) + len(val)
            if progress is not None:
                progress(placed, total)
        summary = SplitSummary(
            source=str(src.resolve()),
            out=str(dst),
            seed=seed,
            classes=len(plan),
            train=sum(len(t) for t, _ in plan.values()),
            val=sum(len(v) for _, v in plan.values()),
            excluded=sorted(exclude),
            loose=loose,
            per_class={name: (len(t), len(v)) for name, (t, v) in plan.items()},
        )
        record = {
            **{k: v for k, v in asdict(summary).items() if k not in ("out", "per_class")},
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
            "val_fraction": val_fraction,
            "copied": copy,
            "per_class": {name: {"train": t, "val": v} for name, (t, v) in summary.per_class.items()},
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        tmp.rename(dst)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk, a read-only folder, a file system without links (--copy)
            raise OutputError(
                f"{dst}: cannot write the split ({e.strerror or e}); nothing was left there"
            ) from None
        raise
    return summary


__all__ = ["RECORD", "SplitSummary", "class_split", "split_folder"]
