"""DDP under torchrun (2 processes, gloo, this CPU) equals one process on the combined batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.weights import read_weights
from test_train_support import TINY, cli_script, run_cli, tiny_data

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


def torchrun(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # TMPDIR: torchrun's per-run log folder (torchelastic_*) goes in the test's folder, not /tmp
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(cli_script(tmp)), json.dumps(TINY.to_dict()), *args]  # fmt: skip
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
