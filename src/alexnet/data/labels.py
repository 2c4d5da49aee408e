"""Corrupted training labels: Zhang, Bengio, Hardt, Recht & Vinyals, "Understanding deep learning requires
rethinking generalization" (ICLR 2017), §2's randomisation tests.

"Partially corrupted labels: independently with probability p, the label of each image is corrupted as a uniform
random class" (§2; ``fraction=1`` is their "random labels", which the networks they trained, a small AlexNet
among them, still fit, Fig. 1a). The validation split keeps its true labels, so its error shows what was learned rather than
memorised; Adebayo et al.'s data randomisation test (NeurIPS 2018) compares saliency maps of a network trained so with the true one's
(``alexnet visualize sanity --against RUN``).

Each file's draw is a function of the seed and its path under the split folder alone (a BLAKE2 hash), so the
labels are the same on every run, process and resume, whatever files the check drops or the order they are read in.
"""

from __future__ import annotations

import hashlib
from typing import Any

from alexnet.errors import DataError


def _draw(seed: int, name: str) -> tuple[float, int]:
    """(u in [0, 1), 32 more random bits) for the file ``name`` under ``seed``."""
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8, person=b"alexnet-labels").digest()
    bits = int.from_bytes(digest, "little")
    return (bits & 0xFFFFFFFF) / 2**32, bits >> 32


def corrupt_labels(dataset: Any, fraction: float, seed: int) -> int:
    """Replace the label of each of ``dataset``'s samples (an :class:`~alexnet.data.folders.ImageFolder`'s
    ``(path, class)`` list), with probability ``fraction``, by a class drawn uniformly from all of them (possibly
    its own). Returns how many labels changed."""
    if not 0 <= fraction <= 1:
        raise DataError(f"the fraction of random labels must be in [0, 1] (got {fraction})")
    classes = len(dataset.classes)
    split_dir = dataset.root / dataset.split
    changed = 0
    samples = []
    for path, label in dataset.samples:
        u, bits = _draw(seed, path.relative_to(split_dir).as_posix())
        new = bits % classes if u < fraction else label  # 2³² ≫ 1000 classes: the modulo's bias is < 1e-6
        changed += new != label
        samples.append((path, new))
    dataset.samples = samples
    return changed
