"""glibc's allocator set up for a CNN's large, repeated tensor allocations (every ``alexnet`` command does this).

glibc serves each allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``. A training or inference step of these networks at batch 64 allocates and frees activations of 20–300 MB
(AlexNet's conv1 output is 74 MB), so every step page-faults them all in again. On this project's 2-core machine
that was a third of a max-pool and half of a fused LRN forward (docs/performance.md). PyTorch's CPU tuning guide
recommends jemalloc or tcmalloc for this (``torch.backends.xeon.run_cpu`` preloads one). Where only glibc is
available, two ``mallopt`` settings have the same effect: ``M_MMAP_MAX = 0`` serves large blocks from the heap,
and a very high ``M_TRIM_THRESHOLD`` keeps freed memory for the next step instead of returning it to the OS.

The cost: the resident set stays at its peak, because freed memory is kept for reuse. ``ALEXNET_MALLOC=system``
leaves glibc's defaults alone. Python scripts that use the library directly can call :func:`tune` themselves.
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_AT = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB at the heap's top are free

state = "glibc defaults"  # what the process runs with; bench prints it


def tune() -> str:
    """Keep large blocks in glibc's heap and keep freed memory; returns (and records in :data:`state`) what
    the process now runs with. A no-op on non-glibc systems or with ``ALEXNET_MALLOC=system``."""
    global state
    if os.environ.get("ALEXNET_MALLOC", "").lower() == "system":
        state = "glibc defaults (ALEXNET_MALLOC=system)"
        return state
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        state = "system allocator (not glibc: unchanged)"
        return state
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_AT) == 1
    except (OSError, AttributeError):
        ok = False
    state = "glibc heap, freed memory kept (mmap off)" if ok else "glibc defaults (mallopt failed)"
    return state
