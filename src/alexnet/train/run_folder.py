"""What a finished training run folder holds for the commands that use it (eval, visualize, report, serve)."""

from __future__ import annotations

from pathlib import Path

from alexnet.errors import WeightsError

WEIGHTS = "model.safetensors"  # the final weights, written when the run ends


def not_a_run_folder(path: str | Path) -> str:
    """Why ``path``, which is not a folder, is no run folder: one line (a file given for a folder is named so)."""
    path = Path(path)
    return f"{path}: a file, not a run folder" if path.exists() else f"{path}: no such run folder"


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``checkpoints/step-N.pt`` of a run folder, or ``None``."""
    from alexnet.train.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def run_weights(run_dir: str | Path, *, checkpoint_ok: bool = False) -> Path:
    """A run folder's final weights; :class:`WeightsError` naming what is missing (the folder, or the weights of
    a run that has not finished, with its newest checkpoint and how to finish it). ``checkpoint_ok``: a run that
    has not finished (stopped, crashed, or still running) gives its newest checkpoint instead, which loads as
    weights (:func:`alexnet.train.checkpoint.checkpoint_meta`)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise WeightsError(not_a_run_folder(run))
    weights = run / WEIGHTS
    if weights.is_file():
        return weights
    newest = newest_checkpoint(run)
    if newest is None:
        raise WeightsError(f"{run}: no {WEIGHTS} in this run folder (has the run finished?)")
    if checkpoint_ok:
        return newest
    raise WeightsError(
        f"{run}: no {WEIGHTS} in this run folder: the run has not finished; `alexnet train --resume --out {run}` "
        f"finishes it, or give its newest checkpoint as the weights: --weights {newest}"
    )
