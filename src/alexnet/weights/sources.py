"""Published weights files: where they are, their published digests, and a local download cache.

Files go to ``$ALEXNET_CACHE/weights`` (default ``~/.cache/alexnet/weights``). A file is used only when its digest matches the
published one: SHA-256 from the ONNX model zoo's Git LFS pointers, SHA-1 from the ``sha1:`` line of BVLC's model
readmes (Caffe publishes no SHA-256). Where no digest is published (``zfnet512-12``) we say so and record the
SHA-256 we computed, instead of inventing one. Offline, the error says where to put the file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alexnet.models.net import AlexNetFamily

from alexnet.errors import WeightsError, WeightsMismatch

_ZOO = "https://github.com/onnx/models/raw/main/validated/vision/classification"
_ZOO_LICENSE = (
    "ONNX model zoo: BSD-3-Clause; weights trained by BVLC on ImageNet-1k (BVLC: 'unrestricted use'; ImageNet's "
    "terms restrict the data to non-commercial research)"
)
_BVLC_LICENSE = (
    "BVLC model zoo: 'released for unrestricted use'; trained on ImageNet-1k (non-commercial research terms)"
)


@dataclass(frozen=True)
class Source:
    name: str
    filename: str
    url: str
    model: str  # the registered model it imports into ("auto": inferred)
    algorithm: str | None  # "sha256", "sha1", or None when nothing is published
    digest: str | None
    license: str
    accuracy: str

    def describe(self) -> str:
        return f"{self.name} ({self.url})"

    def metrics(self) -> dict[str, float] | None:
        """The published ``accuracy`` as torchvision's ``{"acc@1": ..., "acc@5": ...}`` (percent), if it says."""
        found = re.match(r"([\d.]+)% top-1 / ([\d.]+)% top-5", self.accuracy)
        return {"acc@1": float(found[1]), "acc@5": float(found[2])} if found else None


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "bvlcalexnet-6", "bvlcalexnet-6.onnx", f"{_ZOO}/alexnet/model/bvlcalexnet-6.onnx", "bvlc_alexnet",
            "sha256", "f1ae53b93d83dd74731c84337ae64035288ce336794a46e2b17b56e7566feaab", _ZOO_LICENSE,
            "57.1% top-1 / 80.2% top-5, centre crop (BVLC)",
        ),
        Source(
            "bvlcalexnet-8", "bvlcalexnet-8.onnx", f"{_ZOO}/alexnet/model/bvlcalexnet-8.onnx", "bvlc_alexnet",
            "sha256", "9a4dc22fd706a19462aaec3b08e027e0ef89daf63d123824f20b59b6de9a727b", _ZOO_LICENSE,
            "57.1% top-1 / 80.2% top-5, centre crop (BVLC)",
        ),
        Source(
            "caffenet-6", "caffenet-6.onnx", f"{_ZOO}/caffenet/model/caffenet-6.onnx", "caffenet",
            "sha256", "15e568474e1c2af94cc34b812628707fee0130f3a3c8b3329cbc5e4ba9248682", _ZOO_LICENSE,
            "57.4% top-1 / 80.4% top-5, centre crop (BVLC)",
        ),
        Source(
            "caffenet-9", "caffenet-9.onnx", f"{_ZOO}/caffenet/model/caffenet-9.onnx", "caffenet",
            "sha256", "802138332cf3e423c82a9a80c76e4f9227dd4effb3aba55413601fa4345cfd36", _ZOO_LICENSE,
            "57.4% top-1 / 80.4% top-5, centre crop (BVLC)",
        ),
        Source(
            "zfnet512-12", "zfnet512-12.onnx", f"{_ZOO}/zfnet-512/model/zfnet512-12.onnx", "auto",
            None, None, "ONNX model zoo: BSD-3-Clause; Caffe2's ZFNet-512 trained on ImageNet-1k",
            "not published for this file",
        ),
        Source(
            "bvlc_alexnet", "bvlc_alexnet.caffemodel", "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
            "bvlc_alexnet", "sha1", "9116a64c0fbe4459d18f4bb6b56d647b63920377", _BVLC_LICENSE,
            "57.1% top-1 / 80.2% top-5, centre crop",
        ),
        Source(
            "bvlc_reference_caffenet", "bvlc_reference_caffenet.caffemodel",
            "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel", "caffenet",
            "sha1", "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46", _BVLC_LICENSE,
            "57.4% top-1 / 80.4% top-5, centre crop",
        ),
    )
}  # fmt: skip


def cache_dir() -> Path:
    """``$ALEXNET_CACHE/weights``, else ``~/.cache/alexnet/weights``: ``ALEXNET_CACHE`` is the package's cache
    folder, whose ``native/`` holds the compiled CPU kernels (:mod:`alexnet.models.native`)."""
    env = os.environ.get("ALEXNET_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "alexnet") / "weights"


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe_file(sha256: str) -> Source | None:
    """The published source whose SHA-256 this is, if we know it."""
    return next((s for s in SOURCES.values() if s.algorithm == "sha256" and s.digest == sha256), None)


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise WeightsError(f"unknown weights source {name!r}; known: {', '.join(SOURCES)}") from None


def check_digest(source: Source, path: Path) -> None:
    if source.algorithm is None or source.digest is None:
        return
    got = file_digest(path, source.algorithm)
    if got != source.digest:
        raise WeightsError(
            f"{path}: {source.algorithm} is {got}, the published {source.name} has {source.digest}; "
            f"the file is corrupt or a different file: delete it and download again"
        )


def _move_from_old_cache(target: Path) -> None:
    """Until 2026-12 ``$ALEXNET_CACHE`` held the downloads itself: a file there moves to its ``weights/``."""
    env = os.environ.get("ALEXNET_CACHE")
    old = Path(env).expanduser() / target.name if env else None
    if old is None or target.exists() or not old.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    old.replace(target)


def fetch(name: str, progress: bool = True, timeout: float = 30.0) -> Path:
    """The cached file of source ``name``, downloaded first if missing; its published digest is checked."""
    source = get_source(name)
    target = cache_dir() / source.filename
    _move_from_old_cache(target)
    if target.is_file():
        check_digest(source, target)
        return target
    from alexnet.weights.download import download

    return download(
        source.url,
        target,
        timeout=timeout,
        check=lambda path: check_digest(source, path),
        progress=progress,
        what=source.name,
    )


def place(name: str, path: str | Path) -> Path:
    """Copy a file fetched by hand into the cache, after checking its published digest."""
    source = get_source(name)
    check_digest(source, Path(path))
    target = cache_dir() / source.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    from alexnet.files import atomic_write

    return atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))  # never a cut-off copy under its name


FOREIGN_SUFFIXES = (".onnx", ".caffemodel")


def is_foreign(weights: str | Path) -> bool:
    """A published source name (not shadowed by a local file) or an ``.onnx`` / ``.caffemodel`` path."""
    text = str(weights)
    return Path(text).suffix in FOREIGN_SUFFIXES or (text in SOURCES and not Path(text).exists())


def check_fits(source: Source, model: str) -> None:
    """Refuse ``source`` for a registered ``model`` other than the one its file holds, before downloading it."""
    if model not in ("auto", source.model) and source.model != "auto":
        raise WeightsMismatch(
            f"{source.name} holds {source.model}'s weights, not {model}'s (nothing was downloaded): load it "
            f"into {source.model} (--model {source.model}, or create_model({source.model!r}, ...))"
        )


def load_foreign(weights: str | Path, model: str = "auto") -> AlexNetFamily:
    """``create_model(M, weights=...)`` for a published source name or an ONNX / Caffe file: fetched (digest
    checked), imported by structure into ``model`` (or ``"auto"``), ONNX checked against onnxruntime."""
    path = Path(weights)
    if str(weights) in SOURCES and not path.exists():
        source = SOURCES[str(weights)]
        check_fits(source, model)  # before a download of hundreds of megabytes
        path = fetch(source.name)
        if model == "auto" and source.model != "auto":
            model = source.model
    if path.suffix == ".onnx":
        from alexnet.weights.onnx import import_onnx

        return import_onnx(path, model)[0]
    if path.suffix == ".caffemodel":
        from alexnet.weights.caffe import import_caffemodel

        return import_caffemodel(path, model)
    raise WeightsMismatch(f"{weights}: not an .onnx or .caffemodel file")
