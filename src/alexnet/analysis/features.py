"""A layer's features of many images, extracted once and cached in shards: what retrieval searches (AlexNet
§6.1, Fig. 4) and the linear probe classifies (ZF §5.3, Table 7).

AlexNet's retrieval gallery is ImageNet's training set: 1.28 million images, 21 GB of fp32 features, hours of
extraction on a CPU. So the features are extracted in shards of ``SHARD`` images, each cached as a safetensors
file as soon as it is done, in a folder whose name is a hash of the weights, the layers, the preprocessing and
the listing (paths, sizes, modification times): a second call for the same images reads the cache, an
interrupted extraction (Ctrl-C, SIGTERM: after the shard under way; kill -9: the shards written) goes on from
the shards it finished, and any change to the model or the files makes a new folder. The result holds the
shards, not their tensors: a search streams them, one in memory at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from alexnet.errors import DataError, OutputError
from alexnet.files import atomic_write
from alexnet.inputs import prepared_batches, spans
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture, check_layers
from alexnet.predict import preprocessing_of
from alexnet.stopping import StopSignals


def weights_digest(model: AlexNetFamily) -> str:
    """SHA-256 of the model's state dict (names, shapes, dtypes and bytes), in a fixed order."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _listing_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


# How the images became features, beyond the preprocessing record: "2" = a large JPEG decoded at reduced size,
# as `alexnet eval` decodes it. Earlier versions ("") decoded it whole: their caches must not be mixed with these.
DECODING = "2"


def cache_keys(model: AlexNetFamily, paths: Sequence[Path], layer: str) -> dict[str, str]:
    """The cache key of each way of decoding (:data:`DECODING` and the earlier ``""``): a hash of the weights,
    the layer, the preprocessing and the listing."""
    prep = json.dumps(preprocessing_of(model).to_dict(), sort_keys=True)
    parts = [weights_digest(model), layer, prep, _listing_digest(paths)]
    return {
        decoding: hashlib.sha256("|".join([*parts, decoding] if decoding else parts).encode()).hexdigest()[
            :32
        ]
        for decoding in (DECODING, "")
    }


def cache_key(model: AlexNetFamily, paths: Sequence[Path], layer: str) -> str:
    """The key of ``layer``'s features of the images ``paths`` as this version extracts them."""
    return cache_keys(model, paths, layer)[DECODING]


SHARD = 256  # images per cache file: what an interruption can lose, and a search's step


FEATURES = "features"  # the tensor's name in a shard file of one layer (as earlier versions wrote them)


@dataclass
class Features:
    """Many images' features in row order, in blocks: the cache's shard files (read one at a time) or tensors;
    a block holds one N×D tensor per layer."""

    paths: list[str]  # the readable images: row i of the features
    skipped: list[str]
    blocks: list[Path | dict[str, torch.Tensor]]
    names: list[str] = field(default_factory=lambda: [FEATURES])  # the tensors of each block
    layers: list[str] = field(default_factory=list)  # the layer of each of ``names`` (default: the names)

    def layer_blocks(self) -> Iterator[dict[str, torch.Tensor]]:
        """Each block's tensors by name, in row order, one block in memory at a time."""
        from safetensors.torch import load_file

        for block in self.blocks:
            yield load_file(str(block)) if isinstance(block, Path) else block

    def feature_blocks(self) -> Iterator[torch.Tensor]:
        """Each block's N×D features of the (first) layer, in row order, one in memory at a time."""
        for block in self.layer_blocks():
            yield block[self.names[0]]

    @property
    def features(self) -> torch.Tensor:
        """All N×D features at once (a small set's; retrieval's search never needs them together)."""
        return torch.cat(list(self.feature_blocks()))

    def take_by_layer(self) -> dict[str, torch.Tensor]:
        """Every layer's N×D features at once, by layer name, the blocks moved out one by one (this holds
        none afterwards): the memory peak is the result and one block, not two copies of the features."""
        from safetensors.torch import load_file

        out: dict[str, torch.Tensor] = {}
        row = 0
        while self.blocks:
            entry = self.blocks.pop(0)
            block = load_file(str(entry)) if isinstance(entry, Path) else entry
            for name in self.names:
                if name not in out:
                    out[name] = torch.empty(len(self.paths), block[name].shape[1], dtype=block[name].dtype)
                out[name][row : row + len(block[name])] = block[name]
            row += len(block[self.names[0]])
            del block, entry
        return dict(zip(self.layers or self.names, out.values(), strict=True))


def _read_shard(path: Path, chunk: Sequence[Path], name: str = FEATURES) -> list[int] | None:
    """The unreadable images' places in ``chunk`` recorded by a finished shard of it, or ``None`` when the shard
    is missing, unreadable or not of ``chunk``'s length. Paths are never taken from the file: the cache key
    resolves them, so the same images reached by another relative path share the cache."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            rows = f.get_slice(name).get_shape()[0]
        count, bad = int(meta["count"]), json.loads(meta["skipped"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError):
        return None
    fits = isinstance(bad, list) and all(isinstance(i, int) and 0 <= i < count for i in bad)
    return bad if fits and count == len(chunk) and rows == count - len(set(bad)) else None


def pooled(maps: torch.Tensor, pool_to: int | None = None) -> torch.Tensor:
    """A layer's output as N×D rows: feature maps averaged down to at most ``pool_to``×``pool_to`` (never up)
    first when asked."""
    if pool_to is not None and maps.ndim == 4 and max(maps.shape[2:]) > pool_to:
        maps = F.adaptive_avg_pool2d(maps, (min(pool_to, maps.shape[2]), min(pool_to, maps.shape[3])))
    return maps.flatten(1)


def extract_features(
    model: AlexNetFamily,
    paths: Sequence[str | Path],
    layer: str | Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    shard: int = SHARD,
    workers: int = 0,
    pool_to: int | None = None,
    what: str = "images",
) -> Features:
    """``layer`` features of every readable image in ``paths``, extracted in shards of ``shard`` images on the
    model's device (with ``workers`` > 0 the files are decoded in that many processes, a few batches ahead); with
    ``cache_dir``, each shard is cached there once done and read back by a later call for the same model,
    layer and listing (module docstring), and Ctrl-C or SIGTERM stops after the shard under way with
    :class:`~alexnet.errors.Interrupted`. Several layers (a list) come from one forward pass per batch, each
    block then holding a tensor per layer; ``pool_to``: their maps averaged down (:func:`pooled`). The default
    layer is the last hidden one (``relu7``: :meth:`~alexnet.models.AlexNetFamily.top_hidden`)."""
    from safetensors.torch import save_file

    layer = layer or model.top_hidden()  # relu7: AlexNet §6.1's last hidden layer
    layers = [layer] if isinstance(layer, str) else list(dict.fromkeys(layer))  # each once
    check_layers(model, layers)
    if not layers:
        raise DataError("no layer to extract")
    # one layer's shards hold "features", as earlier versions wrote them, however it was asked for: the same
    # cache folder (named below) then always holds the same tensor names
    names = [FEATURES] if len(layers) == 1 else layers
    label = "+".join(layers) + (f"-p{pool_to}" if pool_to is not None else "")
    files = [Path(p) for p in paths]
    if not files:
        raise DataError(f"no {what}: the list is empty")
    if shard < 1 or batch_size < 1:
        raise DataError(f"shard and batch_size must be at least 1 (got {shard}, {batch_size})")
    folder = None
    if cache_dir is not None:
        keys = cache_keys(model, files, label)
        folder = Path(cache_dir) / f"{label}-{keys[DECODING]}-s{shard}"
        # earlier versions' caches of the same images (one file; shards of whole-decoded JPEGs): no longer read
        (Path(cache_dir) / f"{label}-{keys['']}.safetensors").unlink(missing_ok=True)
        shutil.rmtree(Path(cache_dir) / f"{label}-{keys['']}-s{shard}", ignore_errors=True)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the feature cache {folder}: {e.strerror or e}") from None
    shards = spans(len(files), shard)
    shard_files = [
        folder / f"{n:06d}.safetensors" if folder is not None else None for n in range(len(shards))
    ]
    cached = [
        _read_shard(path, files[start:stop], names[0]) if path is not None else None
        for path, (start, stop) in zip(shard_files, shards, strict=True)
    ]
    # one loader for every batch still to extract, so that its workers run ahead across shards
    todo = [
        span
        for (start, stop), bad in zip(shards, cached, strict=True)
        if bad is None
        for span in spans(stop, batch_size, start)
    ]
    batches = prepared_batches(model, files, todo, workers=workers)
    kept: list[str] = []
    skipped: list[str] = []
    blocks: list[Path | dict[str, torch.Tensor]] = []
    desc = f"{layers[0]} features" if len(layers) == 1 else "features"
    bar = tqdm(total=len(files), desc=desc, unit="img", disable=not progress)
    signals = StopSignals("stopping after this shard, with it saved" if progress else None)
    with signals if folder is not None else contextlib.nullcontext(), contextlib.closing(batches):
        for (start, stop), path, bad in zip(shards, shard_files, cached, strict=True):
            chunk = files[start:stop]
            block: Path | dict[str, torch.Tensor] | None = path  # a cached shard is read when searched
            if bad is None:
                feats, bad = _extract(model, batches, spans(stop, batch_size, start), start, layers, pool_to)
                feats = dict(zip(names, feats.values(), strict=True))
                if path is not None:
                    meta = {"count": str(len(chunk)), "skipped": json.dumps(bad), "layer": label}
                    atomic_write(path, lambda tmp, f=feats, m=meta: save_file(f, tmp, metadata=m))
                else:
                    block = feats
            if block is not None and len(bad) < len(chunk):
                blocks.append(block)
            unreadable = set(bad)
            kept.extend(str(p) for i, p in enumerate(chunk) if i not in unreadable)
            skipped.extend(str(chunk[i]) for i in sorted(unreadable))
            bar.update(len(chunk))
            if signals.signum is not None:
                bar.close()
                raise signals.interrupted(
                    f"stopped after {stop} of {len(files)} {what}; their features are "
                    f"saved in {folder}: run the same command to go on from there"
                )
    bar.close()
    if not kept:
        raise DataError(f"none of the {what} is readable")
    return Features(kept, skipped, blocks, names, layers)


def _extract(
    model: AlexNetFamily,
    batches: Iterator[tuple[torch.Tensor | None, list[int]]],
    chunks: Sequence[tuple[int, int]],
    offset: int,
    layers: list[str],
    pool_to: int | None = None,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """One shard's (each layer's features of its readable images, in order; the places of the unreadable ones
    in the shard), from the next ``len(chunks)`` prepared batches; ``offset`` is the shard's first image."""
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    bad: list[int] = []
    for start, _ in chunks:
        batch, unreadable = next(batches)
        bad.extend(start - offset + i for i in unreadable)
        if batch is not None:
            maps = capture(model, batch, layers)
            for name in layers:
                feats[name].append(pooled(maps[name], pool_to))
    return {name: torch.cat(f).contiguous() if f else torch.empty(0, 0) for name, f in feats.items()}, bad
