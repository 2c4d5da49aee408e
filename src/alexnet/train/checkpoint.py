"""Resumable checkpoints: atomic, loadable with ``torch.load(weights_only=True)``, the last few kept.

A checkpoint holds the model, the optimizer, the schedule, every RNG state (torch, CUDA, NumPy, Python) and the
position in the data order (epoch, steps done in that epoch, global step). Everything that is not a tensor is a
plain Python container (dict, list, tuple, int, float, str, None), so no pickled class is ever loaded.
Files are ``checkpoints/step-00001234.pt``, written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from alexnet.errors import AlexnetError, TrainingError, WeightsError
from alexnet.files import atomic_write
from alexnet.weights.io import CHECKPOINT_FORMAT, load_failure

if TYPE_CHECKING:
    from alexnet.weights.io import WeightsMeta

FORMAT = CHECKPOINT_FORMAT
log = logging.getLogger("alexnet.train")
_NAME = re.compile(r"^step-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and plain containers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [
            str(kind),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(gauss),
        ],
        "python": [int(py_version), list(py_state), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, state: dict[str, Any], step: int, keep: int = 3) -> Path:
    """Write ``state`` (plus the format tag) atomically as ``step-<step>.pt``; delete all but the newest ``keep``."""
    path = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    payload = {"format": FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a bad file is a :class:`TrainingError` naming it."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler fails on junk with KeyError, IndexError, … too
        raise TrainingError(f"{path}: not a readable checkpoint ({load_failure(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"{path}: not an alexnet training checkpoint")
    return state


def checkpoint_meta(state: dict[str, Any], path: str | Path) -> WeightsMeta:
    """What the run's final ``model.safetensors`` would record, for the model in a checkpoint: its architecture,
    classes, preprocessing and mean image, so that a checkpoint feeds ``predict``, ``eval`` and the
    visualisations as the run fed it. Checkpoints record them (``architecture``, ``preprocessing``,
    ``mean_image``); for older ones they are rebuilt from the run's configuration, the registered model and the
    run's statistics file. :class:`~alexnet.errors.WeightsError` when the checkpoint lacks what that needs."""
    from alexnet.data.preprocess import Preprocessing
    from alexnet.models import ArchConfig
    from alexnet.train.config import TrainConfig
    from alexnet.weights.io import WeightsMeta

    path = Path(path)
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    built, saved = state.get("architecture"), state.get("preprocessing")
    try:
        cfg = TrainConfig.from_dict(state["config"])
        classes = [str(c) for c in state["classes"]]
        if isinstance(built, dict) and isinstance(saved, dict):
            arch, pre = ArchConfig.from_dict(built), Preprocessing.from_dict(saved)
            mean_image = state.get("mean_image")
        else:
            arch, pre, mean_image = _rebuilt(cfg, len(classes), run_dir)
    except (KeyError, TypeError, ValueError, AlexnetError) as e:
        raise WeightsError(
            f"{path}: a training checkpoint without a usable run configuration ({e})"
        ) from None
    # as a weights file's record reads back: lists, not tuples
    config = json.loads(json.dumps(arch.to_dict()))
    return WeightsMeta(
        model=cfg.model,
        num_classes=len(classes),
        classes=classes,
        preprocessing=pre,
        source=f"alexnet train --recipe {cfg.recipe} ({run_dir}), checkpoint of step {state.get('step')}",
        config=config,
        extra={"recipe": cfg.recipe, "trained_on": str(cfg.data or ""), "step": state.get("step")},
        tensors={"mean_image": mean_image} if isinstance(mean_image, torch.Tensor) else {},
    )


def _rebuilt(cfg: Any, num_classes: int, run_dir: Path) -> tuple[Any, Any, torch.Tensor | None]:
    """An older checkpoint's architecture, preprocessing and mean image, as the training run derived them."""
    from alexnet.models import get_config
    from alexnet.train.data import preprocessing_for, run_stats

    registered = get_config(cfg.model)
    pre, mean_image = preprocessing_for(cfg, registered.input_size, run_stats(cfg, run_dir, compute=False))
    return cfg.architecture().with_overrides(num_classes=num_classes), pre, mean_image


def latest_checkpoint(run_dir: str | Path, notes: list[str] | None = None) -> dict[str, Any]:
    """The newest readable checkpoint of ``run_dir``. A damaged newer file is renamed ``*.pt.damaged`` (kept for a
    look, no longer counted among the checkpoints to keep) and the one before it is used; the warning goes to
    ``notes`` when given (the run logs it once its log is open), else to the log."""
    found = list_checkpoints(run_dir)
    if not found:
        raise TrainingError(f"--resume: no checkpoint in {checkpoint_dir(run_dir)} (nothing to resume)")
    error: TrainingError | None = None
    for path in reversed(found):
        try:
            state = load_checkpoint(path)
        except TrainingError as e:
            error = error or e
            continue
        for bad in found[found.index(path) + 1 :]:
            aside = bad.with_name(bad.name + ".damaged")
            bad.replace(aside)
            note = f"--resume: {bad} is damaged (renamed {aside.name}); resuming from {path.name}"
            if notes is None:
                log.warning("%s", note)
            else:
                notes.append(note)
        return state
    assert error is not None
    raise error
