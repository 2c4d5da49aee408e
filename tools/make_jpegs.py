"""An ImageNet-like JPEG folder for input-pipeline benchmarks: ROOT/train/<class>/*.jpg (and a small val/),
crops of scikit-image's photographs at ImageNet's typical sizes (about 500×375, quality 90, ~100 KB).

    python tools/make_jpegs.py ROOT [--images 2000] [--classes 10]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry")


def _one(job: tuple[Path, int]) -> None:
    import skimage.data

    path, seed = job
    rng = np.random.default_rng(seed)
    photo = Image.fromarray(getattr(skimage.data, PHOTOS[seed % len(PHOTOS)])()).convert("RGB")
    w, h = int(rng.integers(400, 501)), int(rng.integers(300, 501))
    scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.4)
    photo = photo.resize((round(photo.width * scale) + 1, round(photo.height * scale) + 1), Image.BICUBIC)
    x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
    crop = photo.crop((x, y, x + w, y + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    # sensor-like noise: smooth upscaled photos would compress to half of ImageNet's typical file size
    noisy = np.asarray(crop, dtype=np.float32) + rng.normal(0.0, 10.0, (h, w, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--images", type=int, default=2000, help="training images (val gets a tenth)")
    p.add_argument("--classes", type=int, default=10)
    args = p.parse_args()
    jobs = []
    for split, n in (("train", args.images), ("val", max(args.classes, args.images // 10))):
        for i in range(n):
            folder = args.root / split / f"class{i % args.classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:06d}.jpg", i + (0 if split == "train" else 10**6)))
    with ProcessPoolExecutor() as pool:
        list(pool.map(_one, jobs, chunksize=32))
    sizes = [j[0].stat().st_size for j in jobs]
    print(f"{len(jobs)} JPEGs in {args.root}, mean {np.mean(sizes) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
