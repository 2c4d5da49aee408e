"""Denormals flushed to zero while a command runs (``alexnet.denormals``): the optimizer's decayed state must not
send every late training step down the CPU's slow path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from alexnet import denormals

TINY = 1e-39  # below float32's smallest normal number (1.18e-38)


def survives(x: torch.Tensor) -> bool:
    return bool((x * 1.0).ne(0).all())


def test_denormals_are_flushed_inside_the_block_and_restored_after(monkeypatch):
    monkeypatch.delenv("ALEXNET_DENORMALS", raising=False)
    x = torch.full((8,), TINY)
    assert survives(x)
    with denormals.flushed() as state:
        if state != "flushed to zero":
            pytest.skip(f"this CPU cannot flush denormals ({state})")
        assert not survives(x)
        assert denormals.state == "flushed to zero"
    assert survives(x) and denormals.state == "kept"


def test_alexnet_denormals_keep_opts_out(monkeypatch):
    monkeypatch.setenv("ALEXNET_DENORMALS", "keep")
    with denormals.flushed() as state:
        assert survives(torch.full((8,), TINY))
    assert state == "kept (ALEXNET_DENORMALS=keep)"


def test_set_before_the_thread_pool_starts_every_thread_flushes():
    # as the CLI does it: first thing in a fresh process, then a multi-threaded op over a large tensor
    code = (
        "import torch; from alexnet import denormals\n"
        "with denormals.flushed() as state:\n"
        "    torch.set_num_threads(2)\n"
        f"    x = torch.full((4_000_000,), {TINY})\n"
        "    print(state, int((x * 1.0).count_nonzero()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    if out[0] != "flushed":
        pytest.skip("this CPU cannot flush denormals")
    assert out[-1] == "0"


def test_the_cli_runs_commands_with_denormals_flushed(monkeypatch):
    from alexnet import cli

    monkeypatch.delenv("ALEXNET_DENORMALS", raising=False)
    with denormals.flushed() as state:
        if state != "flushed to zero":
            pytest.skip(f"this CPU cannot flush denormals ({state})")
    seen = []
    monkeypatch.setattr(cli, "run_safely", lambda fn: seen.append(survives(torch.full((8,), TINY))) or 0)
    assert cli.main(["summary", "alexnet"]) == 0
    assert seen == [False]  # flushed while the command ran
    assert survives(torch.full((8,), TINY))  # and restored for the rest of this process
