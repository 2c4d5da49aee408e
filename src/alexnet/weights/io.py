"""Weights files: safetensors with metadata (model, classes, preprocessing, source, licence, architecture).

Never unpickles user files: ``.safetensors`` is read with safetensors, legacy ``.pth``/``.pt`` only with
``torch.load(weights_only=True)``. Writes are atomic (temporary file, then rename).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet.data.preprocess import Preprocessing
from alexnet.errors import OutputError, WeightsError, WeightsMismatch

EXTRA_PREFIX = "__extra__."  # tensors that are not parameters (e.g. a per-pixel mean image)


@dataclass
class WeightsMeta:
    """What travels with a weights file."""

    model: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    preprocessing: Preprocessing | None = None
    source: str = ""
    license: str = ""
    config: dict[str, Any] | None = None  # full ArchConfig, for variants that are not registered
    extra: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # non-parameter tensors

    def to_strings(self) -> dict[str, str]:
        out = {"format": "alexnet-weights/1"}
        if self.model:
            out["model"] = self.model
        if self.num_classes is not None:
            out["num_classes"] = str(self.num_classes)
        if self.classes is not None:
            out["classes"] = json.dumps(self.classes)
        if self.preprocessing is not None:
            out["preprocessing"] = json.dumps(self.preprocessing.to_dict())
        if self.source:
            out["source"] = self.source
        if self.license:
            out["license"] = self.license
        if self.config is not None:
            out["config"] = json.dumps(self.config)
        if self.extra:
            out["extra"] = json.dumps(self.extra)
        return out

    @classmethod
    def from_strings(cls, meta: dict[str, str] | None, where: str = "") -> WeightsMeta:
        meta = meta or {}
        try:
            return cls(
                model=meta.get("model"),
                num_classes=int(meta["num_classes"]) if "num_classes" in meta else None,
                classes=json.loads(meta["classes"]) if "classes" in meta else None,
                preprocessing=Preprocessing.from_dict(json.loads(meta["preprocessing"]))
                if "preprocessing" in meta
                else None,
                source=meta.get("source", ""),
                license=meta.get("license", ""),
                config=json.loads(meta["config"]) if "config" in meta else None,
                extra=json.loads(meta["extra"]) if "extra" in meta else {},
            )
        except (ValueError, TypeError, KeyError) as e:
            raise WeightsError(f"{where}: malformed metadata ({e})") from None


def process_umask() -> int:
    """This process's umask (read by setting it and setting it back: there is no getter)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@functools.cache
def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file under this process's umask (``mkstemp`` makes 0600)."""
    return 0o666 & ~process_umask()


def file_in_the_way(path: Path) -> Path | None:
    """The first of ``path``'s parent folders that exists as a file, if any: why the folder cannot be made."""
    return next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)


def atomic_write(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file.

    The file gets the mode of the file it replaces, else what the umask gives a new file. A path that cannot be
    written raises :class:`OutputError` naming it and the reason."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else _new_file_mode()
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, mode)  # after writing: a writer may replace the file (safetensors' save_file does)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = e.strerror or str(e)
        if e.filename and Path(e.filename) in path.parents:  # a folder on the way
            blocking = file_in_the_way(path)
            reason = f"{blocking} is not a folder" if blocking else f"{reason}: {e.filename}"
        raise OutputError(f"cannot write {path}: {reason}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_weights(model: nn.Module, path: str | Path, meta: WeightsMeta | None = None) -> Path:
    """Write ``model``'s state dict and ``meta`` to a ``.safetensors`` file atomically."""
    from safetensors.torch import save_file

    meta = meta or WeightsMeta()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        meta.model = meta.model or cfg.name
        meta.num_classes = cfg.num_classes if meta.num_classes is None else meta.num_classes
        meta.config = meta.config or cfg.to_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update({EXTRA_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in meta.tensors.items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta.to_strings()))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read a weights file (``.safetensors``, or ``.pth``/``.pt`` with ``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{p}: no such weights file" if not p.exists() else f"{p}: not a file")
    try:
        p.open("rb").close()
    except OSError as e:  # safetensors would report a file it may not read as missing
        raise WeightsError(f"{p}: cannot read the weights file ({e.strerror or e})") from None
    if p.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        return _read_torch(p)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = WeightsMeta.from_strings(f.metadata(), str(p))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{p}: not a readable safetensors file ({e})") from None
    meta.tensors = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    return state, meta


def _read_torch(p: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler fails on junk with KeyError, IndexError, …
        raise WeightsError(f"{p}: not a loadable PyTorch weights file ({load_failure(e)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, WeightsMeta()


def load_failure(e: Exception) -> str:
    """torch.load's refusal in a few words: its weights-only message is a paragraph that ends in advice to load
    the file unsafely, which this package never does."""
    import pickle

    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        refused = [line for line in text.splitlines() if "GLOBAL" in line or "Unsupported" in line]
        detail = f": {refused[0].strip()}" if refused else ""
        return f"it holds Python objects other than tensors, which are never unpickled{detail}"
    if isinstance(e, KeyError | IndexError | AttributeError | TypeError):
        return "its bytes are neither a pickle nor a zip archive"
    return text.splitlines()[0] if text.strip() else type(e).__name__


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], where: str = "weights") -> None:
    """``load_state_dict`` with a precise message for the first missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise WeightsMismatch(f"{where}: missing tensor {key} (expected shape {list(tensor.shape)})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsMismatch(
                f"{where}: {key} expects {list(tensor.shape)}, file has {list(state[key].shape)}"
            )
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise WeightsMismatch(f"{where}: unexpected tensor {unexpected[0]} (and {len(unexpected) - 1} more)")
    model.load_state_dict(state)
