"""The training loop reads each loss late on CUDA (alexnet.train.loss_reader): the same run, the same stop.

On the CPU the loop reads at once (lag 0); ``ALEXNET_LOSS_LAG=1`` makes it read one step late here too, which is
how these tests run the CUDA code path's logic: the losses logged, the weights, and the stop at a non-finite loss
(its step, its layer, the weights it saw) must be those of a loop that reads every loss before its backward.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alexnet.errors import TrainingError
from alexnet.train.distributed import DistInfo
from alexnet.train.loss_reader import LAG_ENV, LossReader, StepRecord, default_lag
from test_train_support import TINY, register_tiny, tiny_data


def _model_and_sgd(fused: bool = True) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, fused=fused)


def _step(model, opt, reader, step: int, x: torch.Tensor, poison: bool = False) -> list[StepRecord]:
    loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
    if poison:
        loss = loss * float("nan")
    records = reader.push(loss, StepRecord(step, 0, 0.1, x))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return records


def test_lag_zero_reads_each_loss_at_once():
    model, opt = _model_and_sgd()
    reader = LossReader(opt, DistInfo(), lag=0)
    x = torch.randn(2, 4)
    expected = float(F.cross_entropy(model(x), torch.tensor([0, 1])).detach())
    (rec,) = _step(model, opt, reader, 0, x)
    assert rec.step == 0 and rec.finite and rec.loss == pytest.approx(expected)
    assert reader.flush() == []


def test_a_lag_of_one_returns_each_step_one_step_later_and_flush_the_rest():
    model, opt = _model_and_sgd()
    reader = LossReader(opt, DistInfo(), lag=1)
    x = torch.randn(2, 4)
    assert _step(model, opt, reader, 0, x) == []
    assert [r.step for r in _step(model, opt, reader, 1, x)] == [0]
    assert [r.step for r in _step(model, opt, reader, 2, x)] == [1]
    assert [r.step for r in reader.flush()] == [2]
    assert reader.flush() == []


def test_a_late_read_logs_the_losses_of_a_loop_that_reads_at_once():
    (m0, o0), (m1, o1) = _model_and_sgd(), _model_and_sgd()
    now, late = LossReader(o0, DistInfo(), lag=0), LossReader(o1, DistInfo(), lag=1)
    xs = [torch.randn(2, 4) for _ in range(5)]
    a = [r for i, x in enumerate(xs) for r in _step(m0, o0, now, i, x)]
    b = [r for i, x in enumerate(xs) for r in _step(m1, o1, late, i, x)] + late.flush()
    assert [(r.step, r.loss) for r in a] == [(r.step, r.loss) for r in b]
    assert torch.equal(m0.weight, m1.weight)


def test_after_a_non_finite_loss_the_fused_optimizer_skips_that_update_and_every_later_one():
    model, opt = _model_and_sgd()
    reader = LossReader(opt, DistInfo(), lag=1)
    x = torch.randn(2, 4)
    _step(model, opt, reader, 0, x)
    seen = model.weight.detach().clone()  # the weights step 1 sees
    (rec0,) = _step(model, opt, reader, 1, x, poison=True)
    assert rec0.finite
    (rec1,) = _step(model, opt, reader, 2, x)  # read one step late: the update of step 2 is skipped too
    assert rec1.step == 1 and not rec1.finite
    assert torch.equal(model.weight, seen) and torch.isfinite(model.weight).all()
    (rec2,) = reader.flush()
    assert rec2.finite  # step 2's own loss was fine; the flag stays set all the same


def test_the_default_lag_is_one_on_cuda_with_a_fused_optimizer_and_zero_otherwise(monkeypatch):
    monkeypatch.delenv(LAG_ENV, raising=False)
    _, fused = _model_and_sgd(fused=True)
    _, plain = _model_and_sgd(fused=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert default_lag(cuda, fused) == 1
    assert default_lag(cpu, fused) == 0
    assert default_lag(cuda, plain) == 0  # it could not skip a bad update on the device
    monkeypatch.setenv(LAG_ENV, "0")
    assert default_lag(cuda, fused) == 0
    monkeypatch.setenv(LAG_ENV, "2")
    assert default_lag(cpu, fused) == 2 and default_lag(cpu, plain) == 0
    for bad in ("one", "-1"):
        monkeypatch.setenv(LAG_ENV, bad)
        with pytest.raises(TrainingError, match=LAG_ENV):
            default_lag(cpu, fused)
    with pytest.raises(ValueError, match="fused"):
        LossReader(plain, DistInfo(), lag=1)


# --- the real loop --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny()
    return tiny_data(tmp_path_factory.mktemp("data"))


def _train(data: Path, out: Path, **overrides):
    from alexnet.train.loop import train
    from alexnet.train.recipes import resolve_recipe

    args = dict(model=TINY.name, data=str(data), out=str(out), input_size=63, batch_size=4, workers=0)
    cfg = resolve_recipe("demo", **{**args, "device": "cpu", **overrides})
    return train(cfg, progress=False)


def _rows(run: Path) -> list[tuple[int, str]]:
    with (run / "steps.csv").open() as f:
        return [(int(r["step"]), r["loss"]) for r in csv.DictReader(f)]


def test_a_run_reading_its_losses_late_logs_and_learns_exactly_as_one_reading_them_at_once(
    tmp_path, data, monkeypatch
):
    runs = {}
    for lag in ("0", "1"):
        monkeypatch.setenv(LAG_ENV, lag)
        out = tmp_path / f"lag{lag}"
        _train(data, out, max_steps=7, checkpoint_every=3, eval_every=4)
        runs[lag] = out
    assert _rows(runs["0"]) == _rows(runs["1"]) and [s for s, _ in _rows(runs["1"])] == list(range(1, 8))
    from safetensors.torch import load_file

    a, b = (load_file(runs[k] / "model.safetensors") for k in ("0", "1"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = []
    for k in ("0", "1"):
        with (runs[k] / "metrics.csv").open() as f:  # the train loss of each evaluation window too
            metrics.append(
                [
                    {c: v for c, v in r.items() if c not in ("images_per_s", "data_wait")}
                    for r in csv.DictReader(f)
                ]
            )
    assert metrics[0] == metrics[1] and len(metrics[0]) == 3


def test_a_non_finite_loss_read_late_stops_at_the_same_step_naming_the_same_layer(
    tmp_path, data, monkeypatch
):
    messages = {}
    for lag in ("0", "1"):
        monkeypatch.setenv(LAG_ENV, lag)
        with pytest.raises(TrainingError, match="loss is") as err:
            _train(data, tmp_path / f"lag{lag}", max_steps=40, lr=1e6, checkpoint_every=1000)
        messages[lag] = str(err.value).replace(f"lag{lag}", "RUN")
    assert messages["0"] == messages["1"], messages
    assert "at step" in messages["1"]
