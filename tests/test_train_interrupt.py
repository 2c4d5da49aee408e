"""Ctrl-C and SIGTERM during training: the step under way finishes, a checkpoint is written, the run stops with
128 + the signal's number, and --resume goes on as if it had never stopped (alexnet.train.interrupt)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alexnet.train.checkpoint import list_checkpoints, load_checkpoint
from alexnet.train.distributed import DistInfo
from alexnet.train.interrupt import StopRequest
from test_train_support import (
    TINY,
    assert_same_losses,
    cli_command,
    run_cli,
    step_losses,
    terminal_signals,
    tiny_data,
    wait_for_steps,
)

STEPS = 120  # 24 images / batch 4 × 20 epochs: long enough to be interrupted mid-run
TRAIN = [
    "train", "--model", TINY.name, "--recipe", "demo", "--input-size", "63", "--batch-size", "4",
    "--workers", "1", "--epochs", "20", "-q",
]  # fmt: skip


def _interrupt(tmp: Path, args: list[str], run: Path, send) -> subprocess.CompletedProcess:
    """Start a run in a session of its own, call ``send(proc)`` once it has logged 8 steps, and wait for it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cli_command(tmp, *args, "--out", str(run)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=terminal_signals,  # Ctrl-C as from a terminal, whatever the suite was started with
    )
    wait_for_steps(proc, run, 8)
    send(proc)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_data(tmp_path_factory.mktemp("data"))


@pytest.mark.slow
def test_ctrl_c_mid_run_keeps_every_step_and_resume_reproduces_the_uninterruptedstep_losses(
    tmp_path: Path, data: Path
) -> None:
    """The terminal sends Ctrl-C to the whole process group, data-loading workers included."""
    args = [*TRAIN, "--data", str(data)]
    ref = tmp_path / "ref"
    done = run_cli(tmp_path, *args, "--out", str(ref))
    assert done.returncode == 0, done.stderr
    expected = step_losses(ref)
    assert sorted(expected) == list(range(1, STEPS + 1))

    cut = tmp_path / "cut"
    stopped = _interrupt(tmp_path, args, cut, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr
    ckpt = load_checkpoint(list_checkpoints(cut)[-1])
    step = ckpt["step"]
    assert 8 <= step < STEPS  # the steps done before the signal are all in the checkpoint
    assert sorted(step_losses(cut)) == list(range(1, step + 1))  # and in the log, none beyond it
    last_line = stopped.stderr.strip().splitlines()[-1]
    assert last_line == (
        f"alexnet: SIGINT: stopped after step {step} of {STEPS}; checkpoint saved: continue with "
        f"`alexnet train --resume --out {cut}`"
    )
    assert "Traceback" not in stopped.stderr
    assert f"stopped after step {step}" in (cut / "train.log").read_text()

    resumed = run_cli(tmp_path, "train", "--resume", "--out", str(cut), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_losses(cut, expected)


@pytest.mark.slow
def test_sigterm_from_a_scheduler_stops_with_a_checkpoint_and_exit_code_143(
    tmp_path: Path, data: Path
) -> None:
    """systemd and SLURM send SIGTERM to every process of the job, data-loading workers included."""
    cut = tmp_path / "cut"
    stopped = _interrupt(
        tmp_path, [*TRAIN, "--data", str(data)], cut, lambda proc: os.killpg(proc.pid, signal.SIGTERM)
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    step = load_checkpoint(list_checkpoints(cut)[-1])["step"]
    assert f"alexnet: SIGTERM: stopped after step {step} of {STEPS}" in stopped.stderr
    assert not (cut / "model.safetensors").exists()  # not finished: no final weights
    resumed = run_cli(tmp_path, "train", "--resume", "--out", str(cut), "--max-steps", str(step + 2), "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert max(step_losses(cut)) == step + 2


def test_a_signal_asks_to_stop_a_second_ctrl_c_stops_at_once_and_the_handlers_are_restored(
    ctrl_c_reaches_us,
) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with StopRequest(DistInfo(), announce=False) as stop:
        assert not stop.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes
        assert stop.should_stop(1) and stop.agreed == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's SIGTERM after the terminal's SIGINT: no change
        time.sleep(0.01)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the sender of a signal cannot be told here")
def test_data_loading_workers_outlive_others_ctrl_c_and_sigterm_but_not_their_main_process() -> None:
    """A worker that died of the terminal's SIGINT, or of a scheduler's SIGTERM to the process group, would break
    the batch the main process waits for; one that ignored its own main process's SIGTERM would hang the exit
    (``multiprocessing`` terminates live daemon workers at exit, then waits for them)."""
    script = """
import os, subprocess, sys, time, torch
from alexnet.data.loader import make_loader

class Pid(torch.utils.data.Dataset):
    def __len__(self):
        return 1000
    def __getitem__(self, i):
        return torch.tensor([os.getpid()]), i

batches = iter(make_loader(Pid(), batch_size=1, train=False, workers=1))
pid = int(next(batches)[0])
for sig in ("-INT", "-TERM"):
    subprocess.run(["kill", sig, str(pid)], check=True)  # sent by another process
time.sleep(0.5)
print(int(next(batches)[0]) == pid, flush=True)  # the same worker still serves
KEEP = batches  # alive at exit: multiprocessing's terminate must end it
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=terminal_signals,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
