"""The allocator set-up of every ``alexnet`` command (alexnet/malloc.py): large tensors come from glibc's heap."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from alexnet import malloc
from alexnet.cli import main

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

# Allocates a 256 MiB tensor and reports whether it lies in its own anonymous mapping (glibc's default for
# blocks above the mmap threshold) or in the [heap] (after malloc.tune()).
PROBE = """
import json, sys
from alexnet import malloc
state = malloc.tune() if sys.argv[1] == "tune" else malloc.state
import torch
x = torch.ones(64 * 2**20)  # 256 MiB, touched
ptr = x.data_ptr()
where = None
for line in open("/proc/self/maps"):
    span, rest = line.split(" ", 1)
    lo, hi = (int(v, 16) for v in span.split("-"))
    if lo <= ptr < hi:
        where = {"size_mib": (hi - lo) / 2**20, "heap": rest.rstrip().endswith("[heap]")}
print(json.dumps({"state": state, **where}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_by_default_glibc_maps_a_large_tensor_outside_its_heap():
    found = _probe("default")  # an anonymous mmap (possibly merged with a neighbouring one), unmapped on free
    assert not found["heap"] and found["size_mib"] >= 256


def test_tuned_large_tensors_come_from_the_heap_where_freed_memory_is_reused():
    found = _probe("tune")
    assert found["state"] == "glibc heap, freed memory kept (mmap off)"
    assert found["heap"]


def test_alexnet_malloc_system_leaves_glibc_alone():
    found = _probe("tune", ALEXNET_MALLOC="system")
    assert found["state"] == "glibc defaults (ALEXNET_MALLOC=system)"
    assert not found["heap"]


def test_every_command_that_computes_tunes_the_allocator_before_running(capsys, monkeypatch):
    monkeypatch.setattr(malloc, "state", "glibc defaults")
    assert main(["models"]) == 0  # a list of names: no torch, nothing to tune
    assert malloc.state == "glibc defaults"
    assert main(["summary", "alexnet", "--json"]) == 0
    assert malloc.state == "glibc heap, freed memory kept (mmap off)"


def test_the_package_exposes_tune_for_scripts():
    import alexnet

    assert alexnet.malloc.tune is malloc.tune
