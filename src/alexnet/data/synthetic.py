"""The built-in data set: procedurally generated shapes in ImageNet layout, so training runs out of the box.

``ensure_builtin_dataset()`` generates, once, ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``: JPEGs of
``size``×``size`` pixels (256, the side AlexNet §2 rescales to), each showing ONE shape whose *form* is the class —
circle, square, triangle, star, cross, ring, ellipse, hexagon, crescent, arrow — with random colour, scale (30–70 %
of the image side), rotation and position, on a textured, cluttered background (colour gradient, pixel noise,
random line segments and irregular blobs of other colours). The clutter never contains a class shape: lines are
thin and blobs are small, many-vertex irregular polygons, so only form tells the classes apart.

Where it lives: ``<base>/shapes-v1-s<seed>-c<classes>-t<train>-v<val>-p<size>`` with ``<base>`` = ``root`` if
given, else ``$ALEXNET_DATA``, else ``~/.cache/alexnet``. Every parameter and the generator version are in the
folder name, so changing any of them generates a new set instead of reusing a stale one. Delete the folder to
regenerate. The set is generated into a temporary sibling folder and renamed into place when complete, so an
interrupted generation never leaves a half set behind (and two processes racing both end with one valid set).

Determinism: image ``i`` of class ``c`` in split ``s`` is drawn from ``numpy.random.SeedSequence((seed, s, c, i))``
only, so the same seed gives byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from alexnet.errors import DataError

VERSION = 1
TRAIN_PER_CLASS = 600
VAL_PER_CLASS = 100
SPLITS = ("train", "val")
MANIFEST = "shapes.json"

Point = tuple[float, float]


# --- shape outlines: polygons in unit coordinates (radius ≈ 1, centred at the origin) -------------------------


def _regular(n: int, phase: float = 0.0) -> list[Point]:
    return [(math.cos(phase + 2 * math.pi * k / n), math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _circle(_: np.random.Generator) -> list[list[Point]]:
    return [_regular(96)]


def _square(_: np.random.Generator) -> list[list[Point]]:
    return [_regular(4, math.pi / 4)]


def _triangle(_: np.random.Generator) -> list[list[Point]]:
    return [_regular(3, -math.pi / 2)]


def _star(_: np.random.Generator) -> list[list[Point]]:
    outer, inner = _regular(5, -math.pi / 2), _regular(5, -math.pi / 2 + math.pi / 5)
    return [
        [
            p
            for pair in zip(outer, inner, strict=True)
            for p in (pair[0], (pair[1][0] * 0.42, pair[1][1] * 0.42))
        ]
    ]


def _cross(_: np.random.Generator) -> list[list[Point]]:
    a, b = 1.0, 0.32
    return [
        [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
    ]


def _ring(_: np.random.Generator) -> list[list[Point]]:
    # Second polygon = hole (drawn in the background by _render): an annulus of width 0.4 radii.
    return [_regular(96), [(0.6 * x, 0.6 * y) for x, y in _regular(96)]]


def _ellipse(rng: np.random.Generator) -> list[list[Point]]:
    ratio = rng.uniform(0.38, 0.58)  # clearly not a circle
    return [[(x, ratio * y) for x, y in _regular(96)]]


def _hexagon(_: np.random.Generator) -> list[list[Point]]:
    return [_regular(6)]


def _crescent(rng: np.random.Generator) -> list[list[Point]]:
    shift = rng.uniform(0.45, 0.6)
    return [_regular(96), [(x * 0.85 + shift, y * 0.85) for x, y in _regular(96)]]


def _arrow(_: np.random.Generator) -> list[list[Point]]:
    return [[(-1.0, -0.22), (0.15, -0.22), (0.15, -0.6), (1.0, 0.0), (0.15, 0.6), (0.15, 0.22), (-1.0, 0.22)]]


SHAPES: dict[str, Callable[[np.random.Generator], list[list[Point]]]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": _cross,
    "ring": _ring,
    "ellipse": _ellipse,
    "hexagon": _hexagon,
    "crescent": _crescent,
    "arrow": _arrow,
}
"""Class name → outline; the first ``classes`` entries of this order are used. Folder names are ``NN_<shape>``
so that sorted folder order (the class index, as torchvision's ImageFolder) equals this order."""


def class_folder_names(classes: int) -> list[str]:
    """The class folders of a set with ``classes`` classes, in class-index order."""
    if not 1 <= classes <= len(SHAPES):
        raise DataError(f"the built-in data set has 1 to {len(SHAPES)} classes, not {classes}")
    return [f"{i:02d}_{name}" for i, name in enumerate(list(SHAPES)[:classes])]


# --- rendering ----------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float32)


def _contrasting(rng: np.random.Generator, against: np.ndarray, min_dist: float = 140.0) -> np.ndarray:
    """A random colour at least ``min_dist`` (RGB Euclidean) from ``against``: the shape must stay visible."""
    for _ in range(64):
        c = _colour(rng)
        if float(np.linalg.norm(c - against)) >= min_dist:
            return c
    return np.where(against > 127, 0.0, 255.0).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear colour gradient in a random direction plus a smooth blotchy texture (float32, size×size×3)."""
    c0, c1 = _colour(rng), _colour(rng)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    t = (math.cos(theta) * ramp[None, :] + math.sin(theta) * ramp[:, None]) * 0.5 + 0.5
    img = c0 + (c1 - c0) * t[..., None]
    # Low-frequency texture: a coarse random grid upsampled bicubically (no edges, so no shape-like contours).
    cells = int(rng.integers(4, 12))
    coarse = rng.normal(0.0, rng.uniform(10.0, 30.0), size=(cells, cells, 3)).astype(np.float32)
    planes = [
        Image.fromarray(coarse[..., c], "F").resize((size, size), Image.Resampling.BICUBIC) for c in range(3)
    ]
    return img + np.stack([np.asarray(p) for p in planes], axis=-1)


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, avoid: np.ndarray) -> None:
    """Thin line segments and small irregular blobs: texture that never looks like a class shape."""
    for _ in range(int(rng.integers(3, 9))):
        (x0, y0), (x1, y1) = rng.uniform(0, size, size=(2, 2))
        width = max(1, round(size * rng.uniform(0.004, 0.015)))
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in _contrasting(rng, avoid, 60)), width=width)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, size, size=2)
        n = int(rng.integers(7, 13))
        angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
        radii = size * rng.uniform(0.015, 0.06, size=n)  # small: ≤ 12 % of the image side across
        pts = [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]
        draw.polygon(pts, fill=tuple(int(v) for v in _contrasting(rng, avoid, 60)))


def render_image(shape: str, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """One RGB image of ``shape`` (a key of :data:`SHAPES`), drawn from ``rng`` alone."""
    base = _background(rng, size)
    bg_mean = base[::8, ::8].reshape(-1, 3).mean(0)
    canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    _clutter(draw, rng, size, bg_mean)

    # The shape: diameter 30–70 % of the side, anywhere it fits whole, any rotation.
    radius = size * rng.uniform(0.15, 0.35)
    cx, cy = rng.uniform(radius, size - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    polygons = SHAPES[shape](rng)
    mask = Image.new("L", (size, size), 0)
    mdraw = ImageDraw.Draw(mask)
    for k, poly in enumerate(polygons):
        pts = [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in poly]
        mdraw.polygon(pts, fill=255 if k == 0 else 0)  # later polygons cut holes (ring, crescent)
    colour = _contrasting(rng, bg_mean)
    fill = Image.new("RGB", (size, size), tuple(int(v) for v in colour))
    canvas.paste(fill, (0, 0), mask)

    # Sensor-like pixel noise over everything: a random window of a fixed bank of Gaussian noise (drawing
    # 200k normals per image would dominate the generation time), scaled by a random strength.
    bank = _noise_bank(size)
    oy, ox = rng.integers(0, bank.shape[0] - size + 1, size=2)
    level = int(rng.integers(1, 4))
    arr = np.asarray(canvas, dtype=np.int16) + bank[oy : oy + size, ox : ox + size] * level
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


@functools.cache
def _noise_bank(size: int) -> np.ndarray:
    """Integer Gaussian noise (σ = 4) of (2·size)² pixels, the same in every process (fixed seed)."""
    noise = np.random.default_rng(20121203).normal(0.0, 4.0, size=(2 * size, 2 * size, 3))
    return noise.round().astype(np.int16)


def encode_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _job(args: tuple[str, int, int, str, int, int, int, int]) -> int:
    """Render and write a run of images of one class (runs in a worker process)."""
    out, seed, split_id, folder, class_id, start, stop, size = args
    shape = folder.split("_", 1)[1]
    for i in range(start, stop):
        rng = np.random.default_rng(np.random.SeedSequence((seed, split_id, class_id, i)))
        path = Path(out) / SPLITS[split_id] / folder / f"{shape}_{i:05d}.jpg"
        path.write_bytes(encode_jpeg(render_image(shape, rng, size)))
    return stop - start


def dataset_dir(
    root: Path | None = None,
    *,
    seed: int = 0,
    classes: int = 10,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    size: int = 256,
) -> Path:
    """Where the set with these parameters lives (see the module docstring)."""
    base = Path(root) if root is not None else Path(os.environ.get("ALEXNET_DATA") or "~/.cache/alexnet")
    name = f"shapes-v{VERSION}-s{seed}-c{classes}-t{train_per_class}-v{val_per_class}-p{size}"
    return base.expanduser() / name


def ensure_builtin_dataset(
    root: Path | None = None,
    *,
    seed: int = 0,
    classes: int = 10,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    size: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate the built-in shapes set once (or find it) and return its folder (``ROOT`` with train/ and val/).

    Defaults: 10 classes × 600 train + 100 val JPEGs of 256×256 (≈ 7000 files, ≈ 100 MB, well under a minute on
    2 cores). ``root`` is the *parent* folder (default ``$ALEXNET_DATA`` or ``~/.cache/alexnet``); the set goes
    into a sub-folder named after all parameters (:func:`dataset_dir`). Small sets for tests:
    ``ensure_builtin_dataset(tmp_path, classes=3, train_per_class=8, val_per_class=4, size=64)``.
    """
    folders = class_folder_names(classes)
    if train_per_class < 1 or val_per_class < 1:
        raise DataError("the built-in data set needs at least 1 train and 1 val image per class")
    if not 32 <= size <= 1024:
        raise DataError(f"built-in image size must be 32–1024 pixels, not {size}")
    final = dataset_dir(
        root,
        seed=seed,
        classes=classes,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        size=size,
    )
    if (final / MANIFEST).is_file():
        return final
    from alexnet.files import make_temp, process_umask

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp(final.parent, final.name, ".tmp", directory=True)
        # mkdtemp's 0700 would hide a shared cache ($ALEXNET_DATA) from other users
        tmp.chmod(0o777 & ~process_umask())
    except OSError as e:
        raise DataError(
            f"cannot create the built-in data set under {final.parent}: {e.strerror or e}"
        ) from None
    try:
        jobs = []
        chunk = 50
        for split_id, (split, count) in enumerate(zip(SPLITS, (train_per_class, val_per_class), strict=True)):
            for class_id, folder in enumerate(folders):
                (tmp / split / folder).mkdir(parents=True)
                for start in range(0, count, chunk):
                    jobs.append(
                        (str(tmp), seed, split_id, folder, class_id, start, min(count, start + chunk), size)
                    )
        total = classes * (train_per_class + val_per_class)
        _run_jobs(jobs, total, workers, progress, final.name)
        manifest = {
            "version": VERSION,
            "seed": seed,
            "classes": folders,
            "train_per_class": train_per_class,
            "val_per_class": val_per_class,
            "size": size,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            tmp.rename(final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a lost race with another process: a real failure
                raise
    except OSError as e:
        raise DataError(f"cannot write the built-in data set to {final}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _run_jobs(jobs: list, total: int, workers: int | None, progress: bool, name: str) -> None:
    from tqdm import tqdm

    workers = workers if workers is not None else min(len(jobs), os.cpu_count() or 1)
    bar = tqdm(total=total, desc=f"generating {name}", unit="img", disable=not progress, leave=False)
    with bar:
        results: Iterable[int]
        if workers <= 1:
            results = map(_job, jobs)
            for n in results:
                bar.update(n)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for n in pool.map(_job, jobs):
                    bar.update(n)
