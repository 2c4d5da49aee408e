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


def test_two_process_ddp_equals_single_process_on_the_combined_batch(tmp_path: Path) -> None:
    data = tiny_data(tmp_path / "data")
    # dropout 0: the two runs draw different masks otherwise; everything else (crops, flips, PCA lighting) is
    # seeded per sample position and so identical.
    common = ["train", "--model", TINY.name, "--data", str(data), "--recipe", "demo", "--dropout", "0",
              "--input-size", "63", "--optimizer", "sgd", "--lr", "0.01",
              "--batch-size", "8", "--max-steps", "4", "--workers", "0", "-q"]  # fmt: skip
    single = run_cli(tmp_path, *common, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(cli_script(tmp_path)), json.dumps(TINY.to_dict()), *common, "--out", str(tmp_path / "ddp")]  # fmt: skip
    ddp = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    a, _ = read_weights(tmp_path / "single" / "model.safetensors")
    b, _ = read_weights(tmp_path / "ddp" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)

    # Every validation image is counted exactly once over the two ranks (12 images, no padding duplicates).
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["center_crop"]["images"] == 12
    single_results = json.loads((tmp_path / "single" / "results.json").read_text())
    assert results["center_crop"]["top1_err"] == pytest.approx(single_results["center_crop"]["top1_err"])
    # Only rank 0 writes: one log, one set of checkpoints, per-step losses equal to the single process's.
    s_losses = (tmp_path / "single" / "steps.csv").read_text().splitlines()
    d_losses = (tmp_path / "ddp" / "steps.csv").read_text().splitlines()
    assert len(s_losses) == len(d_losses) == 5
    for x, y in zip(s_losses[1:], d_losses[1:], strict=True):
        assert float(x.split(",")[3]) == pytest.approx(float(y.split(",")[3]), rel=1e-4)
