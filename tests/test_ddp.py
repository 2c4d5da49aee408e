"""DDP under torchrun (2 processes, gloo, this CPU) equals one process on the combined batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.weights import read_weights
from test_train_support import TINY, cli_script, run_cli, step_losses, tiny_data, wait_for_steps

pytestmark = pytest.mark.slow


# dropout 0: the two runs draw different masks otherwise; everything else (crops, flips, PCA lighting) is seeded
# per sample position and so identical.
COMMON = ["train", "--model", TINY.name, "--recipe", "demo", "--dropout", "0", "--input-size", "63",
          "--optimizer", "sgd", "--lr", "0.01", "--batch-size", "8", "--workers", "0", "-q"]  # fmt: skip


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data, run): one process, 4 steps of batch 8."""
    tmp = tmp_path_factory.mktemp("single")
    data = tiny_data(tmp / "data")
    run = run_cli(tmp, *COMMON, "--data", str(data), "--max-steps", "4", "--out", str(tmp / "single"))
    assert run.returncode == 0, run.stderr
    return data, tmp / "single"


def torchrun_command(tmp: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """``alexnet *args`` with the tiny model under torchrun, 2 processes: the command and its environment."""
    # TMPDIR: torchrun's per-run log folder (torchelastic_*) goes in the test's folder, not /tmp
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(cli_script(tmp)), json.dumps(TINY.to_dict()), *args]  # fmt: skip
    return cmd, env


def torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd, env = torchrun_command(tmp, *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def assert_same_weights(x: Path, y: Path) -> None:
    a, _ = read_weights(x / "model.safetensors")
    b, _ = read_weights(y / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_process_ddp_equals_single_process_on_the_combined_batch(
    tmp_path: Path, single: tuple[Path, Path]
) -> None:
    data, single_run = single
    ddp = torchrun(tmp_path, *COMMON, "--data", str(data), "--max-steps", "4", "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert_same_weights(single_run, tmp_path / "ddp")

    # Every validation image is counted exactly once over the two ranks (12 images, no padding duplicates).
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["center_crop"]["images"] == 12
    single_results = json.loads((single_run / "results.json").read_text())
    assert results["center_crop"]["top1_err"] == pytest.approx(single_results["center_crop"]["top1_err"])
    # Only rank 0 writes: one log, one set of checkpoints, per-step losses equal to the single process's.
    s_losses = (single_run / "steps.csv").read_text().splitlines()
    d_losses = (tmp_path / "ddp" / "steps.csv").read_text().splitlines()
    assert len(s_losses) == len(d_losses) == 5
    for x, y in zip(s_losses[1:], d_losses[1:], strict=True):
        assert float(x.split(",")[3]) == pytest.approx(float(y.split(",")[3]), rel=1e-4)


def test_a_ddp_fine_tuning_run_with_fixed_layers_equals_one_process(
    tmp_path: Path, single: tuple[Path, Path]
) -> None:
    """--weights with --freeze under torchrun: every rank starts from the same weights and the same new
    classifier layer (2 classes instead of 3), the fixed layers stay out of the all-reduce, and the result is
    one process's."""
    data, start = single
    args = [*COMMON, "--data", str(data), "--max-steps", "4", "--weights", str(start), "--freeze", "conv2"]
    one = run_cli(tmp_path, *args, "--classes", "2", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    ddp = torchrun(tmp_path, *args, "--classes", "2", "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert_same_weights(tmp_path / "one", tmp_path / "ddp")
    fixed, _ = read_weights(start / "model.safetensors")
    tuned, _ = read_weights(tmp_path / "ddp" / "model.safetensors")
    assert all(torch.equal(tuned[k], fixed[k]) for k in fixed if k.startswith("features."))
    assert tuned["classifier.3.weight"].shape[0] == 2


def test_a_ddp_run_resumed_from_its_checkpoint_ends_where_the_uninterrupted_run_ends(
    tmp_path: Path, single: tuple[Path, Path]
) -> None:
    data, single_run = single
    run = tmp_path / "ddp"
    first = torchrun(tmp_path, *COMMON, "--data", str(data), "--max-steps", "2", "--checkpoint-every", "2",
                     "--out", str(run))  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(tmp_path, "train", "--resume", "--out", str(run), "--max-steps", "4", "-q")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(single_run, run)  # = 4 uninterrupted steps of one process on the combined batch


def test_a_bad_data_folder_under_torchrun_is_one_line_not_a_broken_connection(tmp_path: Path) -> None:
    """Only rank 0 opens the data first; its failure reaches the other rank, which stops without repeating it
    (torchrun may kill it first: two lines would be a race)."""
    ddp = torchrun(tmp_path, *COMMON, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"))
    assert ddp.returncode != 0
    lines = [line for line in ddp.stderr.splitlines() if line.startswith("alexnet: error:")]
    assert len(lines) == 1 and "no data folder" in lines[0]
    assert "Connection closed by peer" not in ddp.stderr and "[rank1]: Traceback" not in ddp.stderr


def _rank_pids(launcher: int) -> dict[int, int]:
    """torchrun's worker processes by rank (read from their environment)."""
    pids = {}
    for pid in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            env = dict(
                item.split("=", 1)
                for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if "=" in item
            )
        except OSError:
            continue
        if "RANK" in env:
            pids[int(env["RANK"])] = int(pid)
    return pids


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step_with_a_checkpoint(
    tmp_path: Path, single: tuple[Path, Path]
) -> None:
    """A signal reaches the ranks at different moments (here: rank 1 only); they agree on the step to stop
    after, write one checkpoint together, and the run resumes from it under torchrun."""
    from alexnet.train.checkpoint import list_checkpoints, load_checkpoint

    data, _ = single
    run = tmp_path / "ddp"
    cmd, env = torchrun_command(tmp_path, *COMMON, "--data", str(data), "--epochs", "200", "--out", str(run))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(proc, run, 3)
    os.kill(_rank_pids(proc.pid)[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # torchrun reports its workers' exit code 143 as a failure
    step = load_checkpoint(list_checkpoints(run)[-1])["step"]
    assert 3 <= step < 600 and step % 10 == 0  # the ranks agree every 10 steps
    assert f"SIGTERM: stopped after step {step} of 600" in (run / "train.log").read_text()
    assert max(step_losses(run)) == step
    # one line from rank 0, no traceback from the workers (torchrun adds its own report of their exit codes)
    assert [line for line in err.splitlines() if line.startswith("alexnet:")] == [
        f"alexnet: SIGTERM: stopped after step {step} of 600; checkpoint saved: continue with "
        f"`alexnet train --resume --out {run}`"
    ]
    assert (
        "alexnet/train/" not in err and "alexnet/cli/" not in err and "Connection closed by peer" not in err
    )

    resumed = torchrun(tmp_path, "train", "--resume", "--out", str(run), "--max-steps", str(step + 2), "-q")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert max(step_losses(run)) == step + 2
