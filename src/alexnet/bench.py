"""Throughput of the paper models against torchvision's AlexNet and against the machine's own matmul rate.

Conventions (also in docs/performance.md):

* **FLOPs per image** are :func:`alexnet.analysis.summarize`'s forward total (2 per MAC for conv/fc plus the
  element-wise work of ReLU, LRN and pooling) at the model's default input size. torchvision's ``alexnet`` is
  counted as ``alexnet_owt``, the same architecture.
* A **training step** (forward, backward, fused SGD update) counts ``3×`` the forward FLOPs: the backward pass computes
  the gradient with respect to the input and with respect to the weights, each as costly as the forward.
* **images/s** is ``batch_size / median(step time)`` over ``repeats`` timed steps after ``warmup`` untimed ones.
* **% of matmul**: achieved GFLOP/s over the fp32 rate of a square ``torch.mm`` loop measured in the same
  process right before each row (so a busy machine affects both alike); with ``interleave`` the models are timed
  round-robin, one step each per round, and the rate is the median of one measurement per round.
* **CUDA graphs** (``cuda_graph``): every row's step is captured once as a CUDA graph and each timed step replays
  it, so the host's cost of launching the step (Python, dispatcher, autograd, the launches) drops out and the rows
  compare the GPU's work alone; torchvision's row is captured the same way.
* **memory**: a training step at batch 128 in a fresh subprocess per model; the peak resident set
  (``VmHWM`` after resetting it through ``/proc/self/clear_refs``) above the resident set before the first step,
  and the resident set after each step, read after glibc's ``malloc_trim`` (growth = last − second; flagged as
  growing only when it rises at every step after the second, as a leak does).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexnet import denormals, malloc
from alexnet.errors import AlexnetError
from alexnet.models import linear_train, native, postops
from alexnet.models.layers import triton_kernels
from alexnet.train.config import CUDA_GRAPH_WITH_COMPILE
from alexnet.train.optim import fused_supported

REFERENCE = "torchvision_alexnet"
TRAIN_FLOPS_FACTOR = 3
MATMUL_SIZE = 2048
CUDA_MATMUL_SIZE = 8192  # a GPU needs a larger product to reach its rate
MEMORY_BATCH_SIZE = 128
MEMORY_STEPS = 4
MIB = 1024 * 1024


class BenchError(AlexnetError):
    """A benchmark that cannot run as asked (bad device, bad option, failed subprocess)."""


@dataclass
class Row:
    """One (model, mode) measurement."""

    model: str
    mode: str
    batch_size: int
    input_size: int
    images_per_s: float
    step_ms: float
    gflop_per_image: float
    gflops: float
    matmul_gflops: float
    pct_of_matmul: float
    vs_torchvision: float | None = None
    compile_s: float | None = None
    step_ms_all: list[float] = field(default_factory=list)


@dataclass
class MemoryRow:
    model: str
    batch_size: int
    baseline_mib: float
    peak_mib: float
    step_peak_mib: float
    rss_after_steps_mib: list[float]
    growth_mib: float
    grows: bool


@dataclass
class DataRow:
    pipeline: str
    images: int
    workers: int
    images_per_s: float
    images_per_s_per_core: float
    stopped: str | None = None  # why this pipeline could not be timed (the others still are)


@dataclass
class Report:
    machine: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    data: list[DataRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "rows": [asdict(r) for r in self.rows],
            "memory": [asdict(m) for m in self.memory],
            "data": [asdict(d) for d in self.data],
        }


# --- machine ----------------------------------------------------------------------------------------------
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
        info["tf32"] = torch.backends.cudnn.allow_tf32  # fp32 convolutions (and the fp32 matmul reference)
    # which implementation the LRN rows measure on this machine (models/native.py)
    info["lrn"] = "PyTorch ops"
    if device.type == "cpu" and native.kernel() is not None:
        info["lrn"] = "fused C++ kernel"
        if extra := os.environ.get("ALEXNET_NATIVE_CFLAGS", "").strip():  # e.g. -O0: slower kernels
            info["lrn"] += f" (built with {extra})"
    elif device.type == "cuda" and triton_kernels() is not None:
        info["lrn"] = "Triton kernels"
    # ReLU + LRN + max-pool of a channels-last stage as one kernel (models/fused.py)
    fuse = os.environ.get("ALEXNET_FUSE", "1") != "0"
    if device.type == "cpu":
        fuse = fuse and native.kernel() is not None
        # an NCHW batch too: the paper models copy it to channels-last first (fused.kernel_layout)
        info["stages"] = "fused (channels-last; NCHW input copied to it)" if fuse else "modules"
        kernel = native.kernel()
        if fuse and kernel is not None and kernel.avx512 and native.vector_stages():
            info["stages"] = "fused, AVX-512 for fp32 and bf16 (channels-last; NCHW input copied to it)"
        # models/postops.py: the convs inside the fused path (it needs the kernel), the fc layers in any case
        post = os.environ.get("ALEXNET_FUSE", "1") != "0" and os.environ.get("ALEXNET_POSTOPS", "1") != "0"
        post = post and torch.backends.mkldnn.is_available()
        layers = "conv3-5, fc6-8" if fuse else "fc6-8"
        info["postops"] = f"{layers} as oneDNN primitives, ReLU in place" if post else "modules"
        # models/linear_train.py: fc6-8's three products of a training step
        info["fc_train"] = "oneDNN products (fp32)" if linear_train.switched_on() else "modules"
        grads = native.weight_grad_kernel() is not None  # built for AVX-512, or AVX2 with FMA
        own = os.environ.get("ALEXNET_FIRST_CONV", "1") != "0" and grads
        info["conv1"] = "weight gradient by C++ kernel (fp32)" if own else "oneDNN"  # models/first_conv.py
        if own and fuse and os.environ.get("ALEXNET_FIRST_STAGE", "1") != "0":  # models/first_stage.py
            info["conv1"] += ", from the pooled maps' gradient when pool1 precedes norm1"
        if fuse and grads and os.environ.get("ALEXNET_CONV_STAGE", "1") != "0":
            info["conv2"] = (
                "weight gradient from the pooled maps' when pool2 precedes norm2 (fp32)"  # models/conv_stage.py
            )
    else:
        fuse = fuse and triton_kernels() is not None
        info["stages"] = "fused, Triton (channels-last)" if fuse else "modules"
        s2d = os.environ.get("ALEXNET_S2D", "1") != "0"  # models/layers.py SpaceToDepthConv2d
        info["conv1"] = "space-to-depth in bf16/fp16" if s2d else "cuDNN as is"
        info["cudnn"] = "algorithms timed per shape" if cudnn_benchmark() else "algorithms by heuristics"
    info["malloc"] = malloc.state
    info["denormals"] = denormals.state
    with contextlib.suppress(OSError):
        info["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return info


def cudnn_benchmark() -> bool:
    """Whether cuDNN times its algorithms once per shape (the rows have fixed shapes), as `alexnet train` has it;
    ``ALEXNET_CUDNN_BENCHMARK=0`` leaves the choice to its heuristics, for an A/B of how much the rows vary from
    one process to the next (docs/performance.md, session 10)."""
    return os.environ.get("ALEXNET_CUDNN_BENCHMARK", "1") != "0"


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("device cuda requested but no CUDA GPU is available")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"device {name!r} is not supported by the bench (use cpu or cuda)")
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def matmul_size(device: torch.device) -> int:
    return CUDA_MATMUL_SIZE if device.type == "cuda" else MATMUL_SIZE


def matmul_gflops(
    device: torch.device, size: int | None = None, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """GFLOP/s of ``size``×``size`` ``torch.mm`` in ``dtype`` (``2·size³`` FLOPs each), median of ``repeats``.

    On CUDA an fp32 product runs as the convolutions do: on TF32 tensor cores when cuDNN may use them
    (``torch.backends.cudnn.allow_tf32``, PyTorch's default), so that '% of matmul' compares like with like.
    """
    size = size or matmul_size(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        return _matmul_gflops(device, size, repeats, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _matmul_gflops(device: torch.device, size: int, repeats: int, dtype: torch.dtype) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    times = _median_time(lambda: torch.mm(a, b, out=out), repeats, 1, device)
    return 2 * size**3 / statistics.median(times) / 1e9


# --- models -----------------------------------------------------------------------------------------------
def build(name: str) -> tuple[nn.Module, int, float]:
    """``(model, input_size, forward GFLOP per image)``; ``torchvision_alexnet`` is torchvision's own module."""
    from alexnet.analysis import summarize
    from alexnet.factory import create_model

    if name == REFERENCE:
        import torchvision

        model: nn.Module = torchvision.models.alexnet()
        counted = create_model("alexnet_owt")  # the same architecture, counted by our summary
    else:
        model = counted = create_model(name)
    size = counted.default_input_size
    flops = summarize(counted, size).totals["flops"]
    return model, size, flops / 1e9


def _setup(
    name: str, batch_size: int, device: torch.device, channels_last: bool = False
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """``(model on device, random inputs, random labels, forward GFLOP per image)``, seeded alike for every row."""
    torch.manual_seed(0)
    model, size, gflop = build(name)
    model.to(device)
    x = torch.randn(batch_size, 3, size, size, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    return model, x, y, gflop


def _step_fn(
    model: nn.Module,
    mode: str,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: bool = False,
    cache_casts: bool = True,
) -> Callable[[], object]:
    """One inference or training step; ``amp``: the forward under bf16 autocast, as ``alexnet train --amp``
    (``cache_casts=False`` for a step captured as a CUDA graph: autocast's cache of cast weights must not
    outlive the capture)."""

    def autocast() -> Any:
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp, cache_enabled=cache_casts)

    if mode == "infer":
        model.eval()

        def infer() -> object:
            with torch.inference_mode(), autocast():
                return model(x)

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # AlexNet §5's momentum and weight decay; fused as `alexnet train` runs it (the same for every row)
    opt = torch.optim.SGD(
        params, lr=1e-4, momentum=0.9, weight_decay=5e-4, fused=fused_supported(params) or None
    )

    def train() -> object:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    train.optimizer = opt  # type: ignore[attr-defined]  # for graphed(): the gradients freed before a capture
    return train


def graphed(step: Callable[[], object], device: torch.device, warmup: int = 3) -> Callable[[], object]:
    """``step`` captured as one CUDA graph: a call replays it (same inputs, same output tensors).

    ``warmup`` eager calls on a side stream first, as CUDA graph capture requires: they compile the Triton
    kernels, let cuDNN time its algorithms and create the optimizer's momentum buffers. The capture then runs on
    that same stream, so that cuBLAS's per-stream workspaces already exist (a first use inside the capture can
    fail). The warm-up calls are real steps (a training step updates the weights), which a benchmark's random
    model does not mind."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    optimizer = getattr(step, "optimizer", None)
    if optimizer is not None:  # as PyTorch's whole-network capture does: the warm-up's gradients go first, so
        optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them in the graph's own pool
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        out = step()

    def replay() -> object:
        graph.replay()
        return out

    return replay


def _prepared(
    name: str,
    mode: str,
    batch_size: int,
    device: torch.device,
    compile: bool,
    channels_last: bool,
    amp: bool,
    cuda_graph: bool = False,
) -> tuple[Callable[[], object], torch.Tensor, float, float | None]:
    """``(step, inputs, forward GFLOP per image, compile seconds)``: a model set up for timing one mode."""
    model, x, y, gflop = _setup(name, batch_size, device, channels_last)
    compile_s = None
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    step = _step_fn(model, mode, x, y, amp, cache_casts=not cuda_graph)
    if cuda_graph:
        step = graphed(step, device)
    if compile:  # the first call compiles; its time is reported separately and not timed as a step
        start = time.perf_counter()
        step()
        _sync(device)
        compile_s = time.perf_counter() - start
    return step, x, gflop, compile_s


def _row(
    name: str,
    mode: str,
    x: torch.Tensor,
    gflop: float,
    times: list[float],
    mm: float,
    compile_s: float | None,
) -> Row:
    batch_size = x.shape[0]
    step_s = statistics.median(times)
    flop = gflop * (TRAIN_FLOPS_FACTOR if mode == "train" else 1)
    achieved = flop * batch_size / step_s
    return Row(
        model=name,
        mode=mode,
        batch_size=batch_size,
        input_size=x.shape[-1],
        images_per_s=batch_size / step_s,
        step_ms=step_s * 1e3,
        gflop_per_image=flop,
        gflops=achieved,
        matmul_gflops=mm,
        pct_of_matmul=100.0 * achieved / mm,
        compile_s=compile_s,
        step_ms_all=[t * 1e3 for t in times],
    )


def bench_model(
    name: str,
    mode: str,
    *,
    batch_size: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    compile: bool = False,
    channels_last: bool = False,
    amp: bool = False,
    cuda_graph: bool = False,
) -> Row:
    """Time one model in one mode (``train`` or ``infer``) on random inputs; ``amp``: bf16 autocast, and
    the matmul reference in bf16 too; ``cuda_graph``: each step a replay of one CUDA graph (:func:`graphed`)."""
    step, x, gflop, compile_s = _prepared(
        name, mode, batch_size, device, compile, channels_last, amp, cuda_graph
    )
    mm = matmul_gflops(device, dtype=torch.bfloat16 if amp else torch.float32)
    times = _median_time(step, repeats, warmup, device)
    return _row(name, mode, x, gflop, times, mm, compile_s)


def bench_interleaved(
    names: Sequence[str],
    mode: str,
    *,
    batch_size: int,
    device: torch.device,
    repeats: int,
    warmup: int,
    compile: bool = False,
    channels_last: bool = False,
    amp: bool = False,
    cuda_graph: bool = False,
) -> list[Row]:
    """Time every model of one mode round-robin: each round runs one step of each model in turn, after one
    matmul measurement. A burst of load on a shared machine then slows every row of the round alike, which
    keeps the ratios between rows (``vs tv``) steadier than timing the rows one after the other. Every row's
    '% mm' uses the median matmul rate of the rounds. All the models are alive at once (memory)."""
    prepared = [
        _prepared(n, mode, batch_size, device, compile, channels_last, amp, cuda_graph) for n in names
    ]
    for step, *_ in prepared:
        _median_time(step, 0, warmup, device)
    times: list[list[float]] = [[] for _ in names]
    rates = []
    for _ in range(repeats):
        rates.append(matmul_gflops(device, dtype=torch.bfloat16 if amp else torch.float32))
        for (step, *_), out in zip(prepared, times, strict=True):
            out.extend(_median_time(step, 1, 0, device))
    mm = statistics.median(rates)
    return [
        _row(name, mode, x, gflop, t, mm, compile_s)
        for name, (_, x, gflop, compile_s), t in zip(names, prepared, times, strict=True)
    ]


# --- memory (one subprocess per model) --------------------------------------------------------------------
def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op elsewhere. Without it, the resident set after a step swings by
    ±200 MiB from step to step (freed activation blocks kept or not), hiding or faking a leak."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return lambda: libc.malloc_trim(0) and None
    except (OSError, AttributeError):
        return lambda: None


def _memory_child(
    name: str,
    batch_size: int,
    steps: int,
    threads: int,
    tune_malloc: bool = False,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Runs in the subprocess: a training step repeated ``steps`` times; resident-set figures in MiB."""
    if tune_malloc:
        malloc.tune()  # as the parent process (the `alexnet` command) runs
    torch.set_num_threads(threads)
    model, x, y, _ = _setup(name, batch_size, torch.device("cpu"), channels_last)
    step = _step_fn(model, "train", x, y)
    with contextlib.suppress(OSError):  # reset VmHWM so that the peak is this step's, not the imports'
        Path("/proc/self/clear_refs").write_text("5")
    base = _proc_status_kib("VmRSS")
    after = []
    trim = _malloc_trim()
    for _ in range(steps):
        step()
        trim()  # hand freed blocks back first, so the resident set after a step is what the step kept alive
        after.append(_proc_status_kib("VmRSS"))
    peak = _proc_status_kib("VmHWM")
    if base is None or peak is None:  # no /proc (not Linux): the lifetime maximum from getrusage
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale // 1024
        return {"baseline_kib": 0, "peak_kib": peak, "after_kib": [peak] * steps}
    return {"baseline_kib": base, "peak_kib": peak, "after_kib": after}


def memory_grows(rss_after_steps: list[float], step_peak: float) -> bool:
    """Whether the resident set (MiB after each step) rises at every step after the second by more than noise.

    A leak of one activation set per step adds hundreds of MiB at *every* step; glibc keeping freed blocks shows
    as a single jump (measured: torchvision's AlexNet jumps by ~90 MiB once), which is not flagged.
    """
    rises = [b - a for a, b in pairwise(rss_after_steps[1:])]
    return bool(rises) and min(rises) > max(32.0, 0.05 * step_peak / len(rises))


def bench_memory(
    name: str, batch_size: int = MEMORY_BATCH_SIZE, steps: int = MEMORY_STEPS, channels_last: bool = False
) -> MemoryRow:
    """Peak resident memory of a CPU training step of ``name`` at ``batch_size``, in a fresh process."""
    code = (
        "import json, sys; from alexnet.bench import _memory_child; "
        f"print(json.dumps(_memory_child({name!r}, {batch_size}, {steps}, {torch.get_num_threads()}, "
        f"{malloc.state.startswith('glibc heap')}, {channels_last})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"memory measurement of {name} failed: {last}")
    d = json.loads(proc.stdout.strip().splitlines()[-1])
    after = [a / 1024 for a in d["after_kib"]]
    base, peak = d["baseline_kib"] / 1024, d["peak_kib"] / 1024
    growth = after[-1] - after[1] if len(after) > 1 else 0.0
    return MemoryRow(
        model=name,
        batch_size=batch_size,
        baseline_mib=base,
        peak_mib=peak,
        step_peak_mib=peak - base,
        rss_after_steps_mib=after,
        growth_mib=growth,
        grows=memory_grows(after, peak - base),
    )


def bench_memory_cuda(
    name: str,
    device: torch.device,
    batch_size: int = MEMORY_BATCH_SIZE,
    steps: int = MEMORY_STEPS,
    *,
    amp: bool = False,
    channels_last: bool = False,
) -> MemoryRow:
    """Peak GPU memory of a training step (``torch.cuda.max_memory_allocated``, the caching allocator's own
    count) above what the model, optimizer state and inputs hold before it; the allocated memory after each
    step for the growth check."""
    model, x, y, _ = _setup(name, batch_size, device, channels_last)
    step = _step_fn(model, "train", x, y, amp)
    step()  # the optimizer's momentum buffers exist from the first step on: count them in the baseline
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device) / MIB
    torch.cuda.reset_peak_memory_stats(device)
    after = []
    for _ in range(steps):
        step()
        torch.cuda.synchronize(device)
        after.append(torch.cuda.memory_allocated(device) / MIB)
    peak = torch.cuda.max_memory_allocated(device) / MIB
    del model, x, y, step
    torch.cuda.empty_cache()
    return MemoryRow(
        model=name,
        batch_size=batch_size,
        baseline_mib=base,
        peak_mib=peak,
        step_peak_mib=peak - base,
        rss_after_steps_mib=after,
        growth_mib=after[-1] - after[1] if len(after) > 1 else 0.0,
        grows=memory_grows(after, peak - base),
    )


# --- the input pipeline -----------------------------------------------------------------------------------
def _count(loader: Iterable[Any], limit: int, device: torch.device) -> tuple[int, float]:
    """Images and seconds after the first batch (which pays for starting the workers), up to ``limit``."""
    from tqdm import tqdm

    total, first, start = 0, 0, 0.0
    with tqdm(total=limit, unit="img", leave=False, disable=None) as bar:
        for batch in loader:
            n = len(batch[1])
            bar.update(n)
            total += n
            if not start:
                _sync(device)
                first, start = n, time.perf_counter()
            if total >= limit:
                break
    seen = total - first
    _sync(device)
    return seen, time.perf_counter() - start


def bench_data(
    root: str | Path,
    *,
    images: int = 512,
    batch_size: int = 64,
    workers: int = 0,
    input_size: int = 227,
    device: str | torch.device = "cpu",
) -> list[DataRow]:
    """Training input pipeline (decode, resize 256, random crop, flip, PCA lighting; AlexNet §2, §4.1), ours
    against ``torchvision.datasets.ImageFolder`` + PIL + torchvision transforms, on ``root/train``; ours also
    from the pre-resized pixels of ``alexnet data-pack`` when ``root`` has them. On a CUDA ``device``, also ours
    with the batches finished on the GPU (``alexnet train --gpu-augment``), decoded there too (``--gpu-decode``),
    and from the pre-resized pixels.

    Each pipeline reads ``images`` images, cycling through the folder's files when it has fewer (a long run over
    a small folder times the steady state, with its files in the page cache). Timing starts when the first batch
    arrives (worker start-up excluded). All run with one intra-op thread,
    so images/s per core is images/s over ``max(1, workers)`` processes (for the GPU rows the main process also
    drives the GPU).
    """
    import torchvision
    from torchvision import transforms as T

    from alexnet.data.folders import ImageFolder
    from alexnet.data.loader import make_loader
    from alexnet.data.packed import attach
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import PCALighting, train_transform

    pre = Preprocessing(input_size=input_size)
    ours = ImageFolder(root, "train", transform=train_transform(pre))
    limit = images
    stock_tf = T.Compose(
        [
            T.Resize(pre.resize),
            T.CenterCrop(pre.resize),
            T.RandomCrop(input_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            PCALighting(std=0.1),
            T.Normalize(pre.mean, pre.std),
        ]
    )
    stock = torchvision.datasets.ImageFolder(str(Path(root) / "train"), transform=stock_tf)
    _cycle(ours, images)
    _cycle(stock, images)
    kwargs: dict[str, Any] = {"num_workers": workers, "persistent_workers": False}
    loaders: list[tuple[str, Iterable[Any]]] = [
        ("alexnet", make_loader(ours, batch_size, train=True, workers=workers, pin_memory=False)),
        (
            "torchvision_stock",
            torch.utils.data.DataLoader(stock, batch_size=batch_size, shuffle=True, **kwargs),
        ),
    ]
    packed = ImageFolder(root, "train", transform=train_transform(pre))
    _cycle(packed, images)
    if attach(packed, pre.resize) is not None:  # `alexnet data-pack ROOT` was run
        loaders.insert(1, ("alexnet_packed", make_loader(packed, batch_size, train=True, workers=workers)))
    dev = torch.device(device)
    if dev.type == "cuda":
        gpu_rows = [("alexnet_gpu_augment", ours, False), ("alexnet_gpu_decode", ours, True)]
        if packed.pixels is not None:
            gpu_rows.append(("alexnet_packed_gpu_augment", packed, False))
        for name, dataset, decode in gpu_rows:
            gpu = make_loader(
                dataset, batch_size, train=True, workers=workers, augment_device=dev, decode_on_device=decode
            )
            loaders.append((name, gpu))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for name, loader in loaders:
            # A pipeline that cannot be timed on this folder is a row saying why: the rows before it, and the
            # model table that took minutes before them, are kept.
            try:
                seen, seconds = _count(loader, limit, dev)
            except OSError as e:  # PIL's, from the stock pipeline, which has no notion of a bad file
                why = f"at an unreadable image ({e}): torchvision's stock pipeline cannot skip one, the alexnet "
                rows.append(_not_timed(name, workers, why + "rows do; time it on a folder without them"))
                continue
            bad = getattr(loader, "bad", None)
            if seen == 0 and bad:
                path, reason = bad[0]
                why = f"no readable image among the files read from {Path(root) / 'train'}: {path}: {reason}"
                rows.append(_not_timed(name, workers, why))
                continue
            if seen == 0:
                raise BenchError(
                    f"the input pipeline is timed after its first batch of {batch_size}: it needs more images "
                    f"than that (--data-images)"
                )
            rate = seen / seconds
            rows.append(DataRow(name, seen, workers, rate, rate / max(1, workers)))
    finally:
        torch.set_num_threads(threads)
    return rows


def _not_timed(name: str, workers: int, why: str) -> DataRow:
    return DataRow(name, 0, workers, 0.0, 0.0, stopped=why)


def _cycle(dataset: Any, images: int) -> None:
    """Repeat ``dataset``'s file list (ours or torchvision's ImageFolder) up to ``images`` entries."""
    samples = dataset.samples
    if len(samples) < images:
        dataset.samples = [samples[i % len(samples)] for i in range(images)]


# --- the whole run ----------------------------------------------------------------------------------------
def run_bench(
    models: Sequence[str],
    *,
    modes: Sequence[str] = ("train", "infer"),
    batch_size: int = 64,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 2,
    compile: bool = False,
    channels_last: bool = False,
    amp: bool = False,
    memory: bool = True,
    memory_batch_size: int = MEMORY_BATCH_SIZE,
    interleave: bool = False,
    cuda_graph: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Every model (and torchvision's AlexNet, always, first) in every mode; memory per model on CPU."""
    if batch_size < 1 or repeats < 1 or warmup < 0 or memory_batch_size < 1:
        raise BenchError("batch size, repeats and memory batch size must be ≥ 1, warm-up ≥ 0")
    dev = resolve_device(device)
    if cuda_graph and compile:
        raise BenchError(CUDA_GRAPH_WITH_COMPILE)
    if cuda_graph and dev.type != "cuda":
        raise BenchError(f"--cuda-graph needs a CUDA device (got {dev.type})")
    if amp and dev.type == "cpu" and not postops.bf16_supported():
        raise BenchError(
            f"--amp: {postops.NO_BF16_KERNELS}, so bf16 would run emulated, many times slower than float32; "
            "bench without --amp"
        )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark()
    names = list(dict.fromkeys([REFERENCE, *models]))
    report = Report(
        machine_info(dev),
        {
            "modes": list(modes),
            "batch_size": batch_size,
            "repeats": repeats,
            "warmup": warmup,
            "compile": compile,
            "channels_last": channels_last,
            "amp": amp,
            "interleave": interleave,
            "cuda_graph": cuda_graph,
            "memory_batch_size": memory_batch_size if memory else None,
            "train_flops_factor": TRAIN_FLOPS_FACTOR,
            "matmul_size": matmul_size(dev),
        },
    )
    for mode in modes:
        if interleave:
            if progress:
                progress(f"{', '.join(names)} {mode} (interleaved)")
            report.rows.extend(
                bench_interleaved(
                    names,
                    mode,
                    batch_size=batch_size,
                    device=dev,
                    repeats=repeats,
                    warmup=warmup,
                    compile=compile,
                    channels_last=channels_last,
                    amp=amp,
                    cuda_graph=cuda_graph,
                )
            )
            continue
        for name in names:
            if progress:
                progress(f"{name} {mode}")
            report.rows.append(
                bench_model(
                    name,
                    mode,
                    batch_size=batch_size,
                    device=dev,
                    repeats=repeats,
                    warmup=warmup,
                    compile=compile,
                    channels_last=channels_last,
                    amp=amp,
                    cuda_graph=cuda_graph,
                )
            )
    for row in report.rows:
        ref = next(r for r in report.rows if r.model == REFERENCE and r.mode == row.mode)
        row.vs_torchvision = row.gflops / ref.gflops
    if memory:
        for name in names:
            if progress:
                progress(f"{name} memory (train, batch {memory_batch_size})")
            if dev.type == "cuda":
                row_ = bench_memory_cuda(name, dev, memory_batch_size, amp=amp, channels_last=channels_last)
            else:
                row_ = bench_memory(name, memory_batch_size, channels_last=channels_last)
            report.memory.append(row_)
    return report


def format_report(report: Report) -> str:
    """A plain-text table for people."""
    m = report.machine
    lines = [
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), device {m['device']}"
        + (f" ({m['gpu']}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')})" if "gpu" in m else "")
        + (f", load {m['loadavg']}" if "loadavg" in m else ""),
    ]
    if report.rows:
        mm = statistics.median(r.matmul_gflops for r in report.rows)
        lrn = f"; LRN: {m['lrn']}" if "lrn" in m else ""
        lrn += f"; conv stages: {m['stages']}" if "stages" in m else ""
        lrn += f"; conv1: {m['conv1']}" if "conv1" in m else ""
        lrn += f"; conv2: {m['conv2']}" if "conv2" in m else ""
        lrn += f"; cuDNN: {m['cudnn']}" if "cudnn" in m else ""
        lrn += f"; inference post-ops: {m['postops']}" if "postops" in m else ""
        lrn += f"; fc6-8 in training: {m['fc_train']}" if "fc_train" in m else ""
        lrn += f"; malloc: {m['malloc']}" if "malloc" in m else ""
        lrn += f"; denormals: {m['denormals']}" if "denormals" in m else ""
        if report.settings.get("cuda_graph"):
            lrn += "; each step one CUDA graph replayed (the host's launch cost left out)"
        dtype = "bf16" if report.settings.get("amp") else "fp32"
        size = report.settings.get("matmul_size", MATMUL_SIZE)
        if dtype == "fp32" and m.get("tf32"):
            dtype = "fp32 (TF32 tensor cores)"
        lines.append(f"{dtype} matmul {size}²: {mm:.1f} GFLOP/s (median over rows){lrn}")
        head = (
            f"{'model':<22}{'mode':<7}{'batch':>6}{'img/s':>9}{'ms/step':>10}{'GFLOP/img':>11}"
            f"{'GFLOP/s':>9}{'% mm':>7}{'vs tv':>7}"
        )
        lines += ["", head, "-" * len(head)]
        for r in report.rows:
            vs = f"{r.vs_torchvision:.2f}" if r.vs_torchvision is not None else "-"
            lines.append(
                f"{r.model:<22}{r.mode:<7}{r.batch_size:>6}{r.images_per_s:>9.1f}"
                + (f"{r.step_ms:>10.2f}" if r.step_ms < 100 else f"{r.step_ms:>10.0f}")  # GPU steps take ms
                + f"{r.gflop_per_image:>11.2f}{r.gflops:>9.1f}{r.pct_of_matmul:>7.1f}{vs:>7}"
                + (f"  (compile {r.compile_s:.1f} s)" if r.compile_s is not None else "")
            )
        when = "per round (interleaved)" if report.settings.get("interleave") else "before each row"
        modes = {r.mode for r in report.rows}
        counts = "train counts 3× forward FLOPs; " if "train" in modes else ""
        lines.append(f"{counts}'% mm' is of the matmul rate measured {when}")
    if report.memory:
        head = f"{'model':<22}{'batch':>6}{'step peak MiB':>15}{'process peak MiB':>18}{'growth MiB':>12}"
        where = (
            "GPU memory allocated" if m.get("device", "cpu").startswith("cuda") else "fresh process per model"
        )
        lines += ["", f"training-step memory ({where})", head, "-" * len(head)]
        for mrow in report.memory:
            lines.append(
                f"{mrow.model:<22}{mrow.batch_size:>6}{mrow.step_peak_mib:>15.0f}{mrow.peak_mib:>18.0f}"
                f"{mrow.growth_mib:>12.1f}" + ("  GROWS" if mrow.grows else "")
            )
    if report.data:
        head = f"{'pipeline':<22}{'images':>8}{'workers':>9}{'img/s':>9}{'img/s/core':>12}"
        lines += ["", "training input pipeline (1 intra-op thread)", head, "-" * len(head)]
        for d in report.data:
            if d.stopped is not None:
                lines.append(f"{d.pipeline:<22}  not timed: stopped {d.stopped}")
                continue
            lines.append(
                f"{d.pipeline:<22}{d.images:>8}{d.workers:>9}{d.images_per_s:>9.1f}{d.images_per_s_per_core:>12.1f}"
            )
    return "\n".join(lines)
