"""What a finished training run folder holds for the commands that use it (eval, visualize, report, serve)."""

from __future__ import annotations

from pathlib import Path

from alexnet.errors import WeightsError

WEIGHTS = "model.safetensors"  # the final weights, written when the run ends


def not_a_run_folder(path: str | Path) -> str:
    """Why ``path``, which is not a folder, is no run folder: one line (a file given for a folder is named so)."""
    path = Path(path)
    return f"{path}: a file, not a run folder" if path.exists() else f"{path}: no such run folder"


def run_weights(run_dir: str | Path) -> Path:
    """A run folder's final weights; :class:`WeightsError` naming what is missing (the folder, or the weights of
    a run that has not finished)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise WeightsError(not_a_run_folder(run))
    weights = run / WEIGHTS
    if not weights.is_file():
        raise WeightsError(f"{run}: no {WEIGHTS} in this run folder (has the run finished?)")
    return weights
