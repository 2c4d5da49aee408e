"""Shared helpers for the training tests (no tests here): a tiny registered AlexNet-family config so that the
whole real pipeline (JPEG decode, crops, PCA lighting, LRN, grouped convs, dropout) runs in seconds, a tiny
built-in data set, and a way to run ``alexnet`` in a subprocess with that model registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from alexnet.models import ArchConfig, Conv, Fc, register

TINY = ArchConfig(
    name="tiny_alexnet_test",
    convs=(
        Conv(8, 5, stride=2, norm=True, pool=True, weight_std=0.1),
        Conv(16, 3, padding=1, groups=2, norm=True, pool=True, weight_std=0.1, bias=0.1),
    ),
    fcs=(Fc(32, 0.05, 0.1), Fc(None, 0.05)),
    input_size=63,
    description="a two-stage AlexNet-shaped network for fast tests",
)

# Run the CLI with the tiny model registered (works under torchrun too: the script is the entry point).
CLI_SCRIPT = """
import sys
from alexnet.models import ArchConfig, register
import json
register(ArchConfig.from_dict(json.loads(sys.argv.pop(1))))
from alexnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def register_tiny() -> str:
    register(TINY)
    return TINY.name


def tiny_data(base: Path, classes: int = 3, train: int = 8, val: int = 4) -> Path:
    from alexnet.data.synthetic import ensure_builtin_dataset

    return ensure_builtin_dataset(
        base, classes=classes, train_per_class=train, val_per_class=val, size=64, progress=False, workers=1
    )


def cli_script(tmp: Path) -> Path:
    path = tmp / "alexnet_tiny_cli.py"
    path.write_text(CLI_SCRIPT)
    return path


def terminal_signals() -> None:
    """``preexec_fn`` for a command that a test stops with SIGINT: Python's default Ctrl-C, as in a terminal,
    not an ignored SIGINT inherited from a suite started as a shell's background job."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_command(tmp: Path, *args: str) -> list[str]:
    import json

    return [sys.executable, str(cli_script(tmp)), json.dumps(TINY.to_dict()), *args]


def run_cli(tmp: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run(cli_command(tmp, *args), capture_output=True, text=True, timeout=timeout, env=env)


def step_losses(run: Path) -> dict[int, float]:
    """``steps.csv``'s loss by step."""
    import csv

    with (run / "steps.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def assert_same_losses(run: Path, expected: dict[int, float]) -> None:
    """The run logged the same steps as ``expected``, with the same losses (float rounding aside)."""
    import torch

    got = step_losses(run)
    assert sorted(got) == sorted(expected)
    torch.testing.assert_close(
        torch.tensor([got[s] for s in sorted(got)]), torch.tensor([expected[s] for s in sorted(expected)])
    )


def wait_for_steps(proc: subprocess.Popen, run: Path, steps: int, timeout: float = 300) -> None:
    """Wait until the running ``proc`` has logged more than ``steps`` steps in ``run``/steps.csv."""
    import time

    log = run / "steps.csv"
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if log.is_file() and log.read_text().count("\n") > steps:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be interrupted"


def fake_run_checkpoint(run: Path, step: int, *, recorded: bool = True) -> tuple[Path, Any]:
    """A checkpoint as `alexnet train` writes it (a 3-class alexnet at 99 px); ``recorded=False``: as written
    before checkpoints recorded the architecture, preprocessing and mean image."""
    import torch

    import alexnet
    from alexnet.train.checkpoint import save_checkpoint
    from alexnet.train.data import preprocessing_for
    from alexnet.train.recipes import resolve_recipe

    cfg = resolve_recipe("demo", model="alexnet", input_size=99)
    torch.manual_seed(step)
    model = alexnet.create_model("alexnet", num_classes=3, input_size=99)
    state: dict = {
        "model": model.state_dict(),
        "step": step,
        "config": cfg.to_dict(),
        "classes": ["a", "b", "c"],
    }
    if recorded:
        pre, _ = preprocessing_for(cfg, 227)
        state.update(architecture=model.config.to_dict(), preprocessing=pre.to_dict(), mean_image=None)
    return save_checkpoint(run, state, step), model
