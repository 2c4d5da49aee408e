"""Models for the server: ``--model`` alone (random init), ``--model --weights FILE``, or ``--run DIR``."""

from __future__ import annotations

from pathlib import Path

from alexnet.errors import WeightsError
from alexnet.serve.state import Slot
from alexnet.train.run_folder import run_weights

TOP9 = "top9"


def load_slot(key: str, model: str | None = None, weights: str | None = None, run: str | None = None) -> Slot:
    """One model for the page. Its top-9 folder is ``top9/`` beside the weights file (or in the run folder)."""
    from alexnet.factory import create_model
    from alexnet.weights import load_pretrained

    if run is not None:
        if weights is not None:
            raise WeightsError("give either --run DIR or --weights FILE, not both")
        weights = str(run_weights(run))
    if weights is None:
        if model is None:
            raise WeightsError("name a model (--model) or its weights (--weights / --run)")
        return Slot(key, create_model(model), "random initialisation", trained=False)
    from alexnet.weights.sources import SOURCES

    # as everywhere else: "torchvision" and published source names (`alexnet weights sources`) are fetched or
    # found in the cache; neither has a folder beside it that could hold top-9 patches
    named = weights == "torchvision" or weights in SOURCES
    if not named and not Path(weights).is_file():
        raise WeightsError(f"{weights}: no such weights file")
    loaded = load_pretrained(model, weights)
    top9 = Path(run) / TOP9 if run is not None else None if named else Path(weights).parent / TOP9
    source = str(run) if run is not None else str(weights)
    return Slot(
        key, loaded, source, trained=True, top9_dir=top9 if top9 is not None and top9.is_dir() else None
    )
