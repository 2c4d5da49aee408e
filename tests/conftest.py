"""Shared fixtures: real photographs from scikit-image, small temporary files."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# The speed paths' A/B switches (`alexnet bench --help`) left set in a shell from benchmarking would change what
# the suite runs: it tests the defaults, and the tests that want a switch set it themselves (monkeypatch).
for _switch in (
    "NATIVE", "FUSE", "TRITON", "S2D", "FIRST_CONV", "FIRST_STAGE", "CONV_STAGE", "AVX512", "POSTOPS", "LINEAR",
    "CUDNN_BENCHMARK", "MALLOC", "DENORMALS",
):  # fmt: skip
    os.environ.pop(f"ALEXNET_{_switch}", None)
if not torch.cuda.is_available():
    # Triton reads this when its kernels are defined: without a GPU they run in its interpreter on CPU tensors
    # (tests/test_lrn_triton.py); nothing else in the suite runs Triton on a CPU machine.
    os.environ.setdefault("TRITON_INTERPRET", "1")
# `make test` runs two pytest workers on CI's two cores: each worker, and each command a test starts, gets its share
# of the cores. Two threads per worker oversubscribed them (OpenMP's idle threads spin), and the compute-heavy
# tests took 28 % longer (Session 27). The kernels' tests choose their own thread counts (1-3).
_THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
torch.set_num_threads(_THREADS)


@pytest.fixture
def ctrl_c_reaches_us():
    """For a test that sends this process SIGINT or SIGTERM: skipped outside the main thread (the signal would end
    the test process), and run with Python's Ctrl-C handler whatever the suite was started with. A shell starts
    a script's background jobs ignoring SIGINT, and alexnet.stopping leaves an ignored signal ignored."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture
def weight_grad_kernels() -> None:
    """Skips a test that needs CPU training to take the C++ weight-gradient kernels (models/first_conv.py,
    first_stage.py, conv_stage.py): they are taken only from a library built for AVX-512 or AVX2 with FMA
    (:func:`alexnet.models.native.weight_grad_kernel`); elsewhere the weight gradients stay oneDNN's."""
    from alexnet.models import native

    if native.weight_grad_kernel() is None:
        pytest.skip(
            "the C++ library is built for neither AVX-512 nor AVX2 here: the weight gradients stay oneDNN's"
        )


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    """A real photograph (a cat), 300×451 RGB uint8."""
    import skimage.data

    return skimage.data.chelsea()


@pytest.fixture
def chelsea_jpeg(tmp_path: Path, chelsea: np.ndarray) -> Path:
    from PIL import Image

    path = tmp_path / "chelsea.jpg"
    Image.fromarray(chelsea).save(path, quality=92)
    return path


@pytest.fixture(scope="session")
def photo_root(tmp_path_factory) -> Path:
    """Two classes of real photographs (scikit-image's) as JPEGs of several sizes, and a grayscale PNG each: the
    CUDA input pipelines' and training runs' data."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for split in ("train", "val"):
        for c, names in enumerate((("chelsea", "coffee"), ("astronaut", "rocket"))):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(6):
                im = Image.fromarray(getattr(skimage.data, names[i % 2])()).convert("RGB")
                im.resize((320 + 17 * i, 300 + 9 * c)).save(folder / f"{i}.jpg", quality=90)
            Image.fromarray(skimage.data.camera()).save(folder / "gray.png")
    return root


@pytest.fixture
def run_alexnet():
    """``run_alexnet(*args, timeout=300, **env)``: the ``alexnet`` command in a subprocess that imports what this
    test run imports (its ``sys.path``), with ``env`` added to the environment; the ``CompletedProcess``."""
    import subprocess
    import sys

    def run(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        full = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
        return subprocess.run(
            [sys.executable, "-m", "alexnet.cli", *args],
            capture_output=True, text=True, env=full, timeout=timeout, check=False,
        )  # fmt: skip

    return run


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory) -> Path:
    """Four scikit-image photographs and their mirror images as PNGs, a class folder each under train/: the
    retrieval gallery and feature-cache tests' images."""
    import skimage.data
    from PIL import Image

    root = tmp_path_factory.mktemp("gallery")
    for i, name in enumerate(("chelsea", "coffee", "astronaut", "rocket")):
        pic = np.ascontiguousarray(getattr(skimage.data, name)())
        for j, view in enumerate((pic, pic[:, ::-1])):
            folder = root / "train" / f"class{i}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(view)).save(folder / f"img{j}.png")
    return root
