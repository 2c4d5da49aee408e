"""The run folder's logs (steps.csv, metrics.csv, health.csv, health_events.jsonl): a new run starts them anew, a
resumed one drops the steps it does again, and a row cut short by a full disk is never read as a complete one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from alexnet.diagnostics.doctor import read_health
from alexnet.diagnostics.health import HEALTH_CSV, HEALTH_EVENTS
from alexnet.train.runlog import STEP_FIELDS, CsvLog
from test_train_support import TINY, register_tiny, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny()
    return tiny_data(tmp_path_factory.mktemp("data"))


def _train(data: Path, out: Path, resume: bool = False, **overrides):
    from alexnet.diagnostics.health import HealthMonitor
    from alexnet.train.loop import train
    from alexnet.train.recipes import resolve_recipe

    args = dict(model=TINY.name, data=str(data), out=str(out), input_size=63, batch_size=4, workers=0)
    cfg = resolve_recipe("demo", **{**args, "device": "cpu", **overrides})
    return train(cfg, resume=resume, callbacks=[HealthMonitor(every=1)], progress=False)


def _steps(path: Path) -> list[int]:
    with path.open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_a_new_run_in_the_folder_of_one_killed_before_its_first_checkpoint_starts_its_logs_anew(
    tmp_path, data
):
    run = tmp_path / "run"
    run.mkdir()
    # what a run killed at step 5, before its first checkpoint, leaves behind
    (run / "steps.csv").write_text("step,epoch,lr,loss\n" + "".join(f"{s},1,0.01,2.3\n" for s in range(1, 6)))
    (run / "metrics.csv").write_text("epoch,step\n1,5\n")
    (run / HEALTH_CSV).write_text("step,epoch\n3,1\n")
    (run / HEALTH_EVENTS).write_text('{"step": 4, "code": "old"}\n')
    _train(data, run, max_steps=2, eval_every=2)
    assert _steps(run / "steps.csv") == [1, 2]
    assert _steps(run / "metrics.csv") == [2]
    assert [r.step for r in read_health(run / HEALTH_CSV)] == [1, 2]
    events = (run / HEALTH_EVENTS).read_text() if (run / HEALTH_EVENTS).exists() else ""
    assert '"old"' not in events


def test_a_resumed_run_drops_the_health_rows_and_warnings_of_the_steps_it_does_again(tmp_path, data):
    run = tmp_path / "run"
    _train(data, run, max_steps=2, checkpoint_every=2)
    # steps 3 and 4 were logged, then the process died before the checkpoint of step 4
    with (run / HEALTH_CSV).open() as f:
        rows = list(csv.DictReader(f))
    later = [{**r, "step": str(int(r["step"]) + 2)} for r in rows]
    with (run / HEALTH_CSV).open("a", newline="") as f:
        csv.DictWriter(f, list(rows[0])).writerows(later)
    (run / HEALTH_EVENTS).write_text(
        '{"step": 2, "code": "kept"}\n{"step": 3, "code": "redone"}\n{"step": 4, "co'
    )
    _train(data, run, max_steps=3, resume=True)
    records = read_health(run / HEALTH_CSV)
    assert [r.step for r in records] == [1, 2, 3]
    assert len({len(r.layers) for r in records}) == 1  # no step has its layers twice
    events = [json.loads(line) for line in (run / HEALTH_EVENTS).read_text().splitlines()]
    assert [e["code"] for e in events if e["step"] <= 2] == ["kept"] and "redone" not in str(events)


def test_a_row_cut_short_is_left_out_by_every_reader(tmp_path):
    log = CsvLog(tmp_path / "steps.csv", STEP_FIELDS)
    log.append({"step": 1, "epoch": 1, "lr": 0.01, "loss": 2.3})
    with (tmp_path / "steps.csv").open("a") as f:
        f.write("2,1,0.0")  # the disk filled up mid-row
    assert [r["step"] for r in log.rows()] == ["1"]
    log.truncate_after(5)
    assert (tmp_path / "steps.csv").read_text().splitlines() == ["step,epoch,lr,loss", "1,1,0.01,2.3"]


def test_a_health_log_cut_short_is_read_without_its_last_row(tmp_path, data):
    run = tmp_path / "run"
    _train(data, run, max_steps=2)
    whole = [r.step for r in read_health(run / HEALTH_CSV)]
    with (run / HEALTH_CSV).open("a") as f:
        f.write("3,1,2.2")
    assert [r.step for r in read_health(run / HEALTH_CSV)] == whole


def test_an_empty_log_left_by_a_killed_start_gets_its_header(tmp_path):
    (tmp_path / "steps.csv").write_text("")
    log = CsvLog(tmp_path / "steps.csv", STEP_FIELDS)
    log.append({"step": 1, "epoch": 1, "lr": 0.1, "loss": 1.0})
    assert [r["step"] for r in log.rows()] == ["1"]


def test_a_class_folder_without_images_is_named_in_the_log_and_on_the_console(tmp_path, data, caplog, capsys):
    """torchvision's ImageFolder refuses it; a run goes on (the class has an output and validation images) and
    says so, since it usually means an archive left unextracted."""
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    empty = sorted((copy / "train").iterdir())[-1]
    for f in empty.iterdir():
        f.unlink()
    with caplog.at_level("WARNING", logger="alexnet.train"):
        _train(copy, tmp_path / "run", max_steps=1)
    line = f"1 class folder of {copy / 'train'} holds no images ({empty.name}): the network has an output for each"
    assert line in caplog.text
    assert line in (tmp_path / "run" / "train.log").read_text()
    assert f"alexnet: warning: {line}" in capsys.readouterr().err  # train.log's handler silences Python's own


def test_the_last_line_of_a_one_step_run_counts_one_step(tmp_path, data):
    _train(data, tmp_path / "run", max_steps=1)
    last = (tmp_path / "run" / "train.log").read_text().splitlines()[-1]
    assert "done: 1 step in " in last


def test_resuming_a_run_already_at_its_last_step_says_that_nothing_is_trained(tmp_path, data, capsys):
    _train(data, tmp_path / "run", max_steps=2)
    (tmp_path / "run" / "model.safetensors").unlink()
    capsys.readouterr()
    result = _train(data, tmp_path / "run", max_steps=1, resume=True)
    assert result.steps == 2
    err = capsys.readouterr().err
    assert (
        "alexnet: warning: --resume: the checkpoint is at step 2, at or past this run's last step (1): nothing is "
        "trained; the run ends with the checkpoint's weights\n"
    ) in err


def test_a_failed_run_leaves_no_log_handler_behind_for_the_next_run_in_the_process(tmp_path, data):
    import logging

    from alexnet.errors import TrainingError
    from alexnet.train.callbacks import Callback
    from alexnet.train.loop import train
    from alexnet.train.recipes import resolve_recipe

    class Fails(Callback):
        def on_step_end(self, ctx):
            raise TrainingError("stopped by the test")

    before = list(logging.getLogger("alexnet").handlers)
    args = dict(
        model=TINY.name, data=str(data), out=str(tmp_path / "run"), input_size=63, batch_size=4, workers=0
    )
    with pytest.raises(TrainingError, match="stopped by the test"):
        train(resolve_recipe("demo", device="cpu", **args), callbacks=[Fails()], progress=False)
    assert logging.getLogger("alexnet").handlers == before
    assert "stopped by the test" in (tmp_path / "run" / "train.log").read_text()  # logged before it let go
