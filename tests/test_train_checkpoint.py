"""Checkpoints: plain containers loadable with weights_only=True, RNG states restored exactly, last N kept."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet.errors import TrainingError
from alexnet.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from test_train_support import fake_run_checkpoint


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    save_checkpoint(tmp_path, {"rng": [rng_state()], "step": 5}, step=5)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    state = torch.load(list_checkpoints(tmp_path)[-1], weights_only=True)  # no pickled classes inside
    set_rng_state(state["rng"][0])
    torch.testing.assert_close(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_only_the_newest_checkpoints_are_kept_and_the_newest_readable_one_is_resumed(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, {"step": step}, step=step, keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000004.pt",
        "step-00000006.pt",
        "step-00000008.pt",
    ]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # atomic: no temporary files left
    list_checkpoints(tmp_path)[-1].write_bytes(
        b"junk\n"
    )  # a damaged newest file (torch.load: KeyError) falls back
    notes: list[str] = []
    assert latest_checkpoint(tmp_path, notes)["step"] == 6
    # ...says so, and is set aside (kept, but no longer counted among the checkpoints to keep)
    assert len(notes) == 1 and "step-00000008.pt is damaged" in notes[0]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004.pt", "step-00000006.pt"]
    assert (tmp_path / "checkpoints" / "step-00000008.pt.damaged").read_bytes() == b"junk\n"
    save_checkpoint(tmp_path, {"step": 10}, step=10, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006.pt", "step-00000010.pt"]


def test_unreadable_or_missing_checkpoints_are_training_errors(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no checkpoint"):
        latest_checkpoint(tmp_path)
    bad = tmp_path / "x.pt"
    torch.save({"not": "ours"}, bad)
    with pytest.raises(TrainingError, match="not an alexnet training checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("recorded", [True, False])
def test_a_checkpoint_loads_as_weights_with_its_runs_classes_and_preprocessing(
    tmp_path: Path, recorded
) -> None:
    from alexnet.weights import load_pretrained

    path, model = fake_run_checkpoint(tmp_path / "run", 7, recorded=recorded)
    loaded = load_pretrained(None, path)
    meta = loaded.weights_meta
    assert meta.model == "alexnet" and meta.classes == ["a", "b", "c"] and loaded.num_classes == 3
    assert meta.preprocessing.input_size == 99 and meta.preprocessing.resize == round(99 * 256 / 227)
    assert meta.extra["step"] == 7 and "checkpoint of step 7" in meta.source
    assert loaded.config == model.config
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_an_unfinished_run_names_its_newest_checkpoint_and_gives_it_where_that_is_asked_for(
    tmp_path: Path,
) -> None:
    from alexnet.errors import WeightsError
    from alexnet.train.run_folder import run_weights

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(
        WeightsError, match=r"no model\.safetensors in this run folder \(has the run finished\?\)"
    ):
        run_weights(run, checkpoint_ok=True)  # nothing to fall back on
    for step in (9, 10, 2):
        (run / "checkpoints" / f"step-{step:08d}.pt").write_bytes(b"")
    (run / "checkpoints" / "step-00000099.pt.damaged").write_bytes(b"")
    newest = run / "checkpoints" / "step-00000010.pt"
    with pytest.raises(WeightsError) as refused:
        run_weights(run)
    assert str(refused.value) == (
        f"{run}: no model.safetensors in this run folder: the run has not finished; `alexnet train --resume "
        f"--out {run}` finishes it, or give its newest checkpoint as the weights: --weights {newest}"
    )
    assert run_weights(run, checkpoint_ok=True) == newest
    (run / "model.safetensors").write_bytes(b"")
    assert run_weights(run, checkpoint_ok=True) == run / "model.safetensors"  # the final weights first
