"""What a training step costs the host, measured without a GPU (docs/performance.md, session 20).

On an H100 alexnet's and caffenet's bf16 steps wait for the host at batch 256 (session 18): the Python,
dispatcher and launch work of a step took longer than its kernels. Two views of that work, on any machine:

* ``--ops``: the operators a CUDA training step dispatches and the autograd nodes its backward runs, counted on
  fake CUDA tensors (``FakeTensorMode``; nothing runs). Each operator but views and allocations is at least one
  kernel launch on a GPU; the copies cuDNN makes inside a convolution (a weight to the input's layout) are not
  seen.
* default: milliseconds per training step of each model's layer sequence with every layer 16 channels wide
  (fc 32, 10 classes) on its smallest image, batch 1, on this CPU in bf16 autocast. The kernels then cost next
  to nothing, so the time is the host's: Python, dispatch, autograd. CUDA-only layers (conv1 rearranged, the
  towers' block-diagonal weights) are not in it; ``--ops`` counts them.

    python tools/host_step.py                # ms per step, torchvision's layout (alexnet_owt) first
    python tools/host_step.py --ops          # operators and autograd nodes of a CUDA step
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import statistics
import time

import torch
import torchvision
from torch import nn

from alexnet.bench import REFERENCE, _step_fn
from alexnet.models import eager, fused
from alexnet.models.net import AlexNetFamily
from alexnet.models.registry import build_model, get_config

PAPER = ["alexnet", "caffenet", "zfnet"]
MODELS = ["alexnet_owt", *PAPER]  # timed narrow: alexnet_owt is torchvision's layout (its modules on a CPU)


def narrow(name: str) -> AlexNetFamily:
    """``name``'s layers, 16 channels each, fc 32, 10 classes, on its smallest input."""
    c = get_config(name)
    convs = tuple(dataclasses.replace(v, out=16) for v in c.convs)
    fcs = tuple(dataclasses.replace(f, out=32 if f.out is not None else None) for f in c.fcs)
    c = dataclasses.replace(c, convs=convs, fcs=fcs, num_classes=10)
    return AlexNetFamily(dataclasses.replace(c, input_size=AlexNetFamily.min_input_size(c)))


def host_ms(names: list[str], amp: bool, rounds: int, steps: int) -> dict[str, list[float]]:
    """ms per step of each narrow model, timed round-robin (each round one run of ``steps`` per model)."""
    torch.set_num_threads(1)
    runs = {}
    for name in names:
        model = narrow(name).to(memory_format=torch.channels_last)
        size = model.default_input_size
        x = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
        runs[name] = _step_fn(
            model, "train", x, torch.zeros(1, dtype=torch.long), amp
        )  # alexnet bench's step
    for step in runs.values():
        for _ in range(20):
            step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for n, step in runs.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            times[n].append((time.perf_counter() - start) / steps * 1e3)
    return times


class _Count(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


# views, allocations and fake-tensor bookkeeping: no kernel behind them
_VIEWS = (
    "detach",
    "alias",
    "view",
    "_unsafe_view",
    "permute",
    "t",
    "slice",
    "expand",
    "as_strided",
    "unsqueeze",
)
_ALLOCATIONS = ("empty", "new_empty", "empty_strided", "empty_like")
_NO_KERNEL = {"prim.device", "aten.diagonal", *(f"aten.{op}" for op in _VIEWS + _ALLOCATIONS)}


def cuda_ops(name: str, batch: int) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """(operators of the forward and loss, autograd nodes of the backward) of a bf16 CUDA training step of the
    full-size model, on fake tensors (``torchvision_alexnet``: torchvision's own module)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from alexnet.models import stage_triton

    plain, kernels_for = eager.plain, fused._kernels_for
    # fake tensors are a subclass, which the fast paths refuse; and fake convolutions come out NCHW without cuDNN
    # to ask, where a GPU's are channels-last: take the paths a GPU takes
    eager.plain = lambda x: isinstance(x, FakeTensor) or plain(x)  # type: ignore[assignment]
    fused._kernels_for = lambda x: stage_triton if isinstance(x, FakeTensor) and x.dim() == 4 else None  # type: ignore[assignment]
    try:
        with torch.device("meta"):
            model = torchvision.models.alexnet() if name == REFERENCE else build_model(name)
            model = model.to(memory_format=torch.channels_last)
        size = 224 if name == REFERENCE else model.default_input_size
        with FakeTensorMode(allow_non_fake_inputs=True):
            model = model.to_empty(device="cuda")
            x = torch.empty(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
            y = torch.zeros(batch, dtype=torch.long, device="cuda")
            with _cuda_autocast():
                model(x)  # a first step makes what the model keeps from step to step (the towers' index)
            count = _Count()
            with count, _cuda_autocast():
                loss = nn.functional.cross_entropy(model(x), y)
    finally:
        eager.plain, fused._kernels_for = plain, kernels_for  # type: ignore[assignment]
    nodes: collections.Counter[str] = collections.Counter()
    seen, todo = set(), [loss.grad_fn]
    while todo:  # the backward's nodes, without running it (that needs a CUDA context)
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes[type(node).__name__] += 1
        todo.extend(f for f, _ in node.next_functions)
    return count.ops, nodes


def _cuda_autocast() -> torch.autocast:
    """CUDA autocast on a machine without a GPU: its constructor asks the driver, the dispatch keys do not."""
    available, bf16 = torch.cuda.is_available, torch.cuda.is_bf16_supported
    torch.cuda.is_available = lambda: True  # type: ignore[assignment]
    torch.cuda.is_bf16_supported = lambda *a, **k: True  # type: ignore[assignment]
    try:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    finally:
        torch.cuda.is_available, torch.cuda.is_bf16_supported = available, bf16  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "models", nargs="*", help=f"default: {' '.join(MODELS)}; with --ops {' '.join([REFERENCE, *PAPER])}"
    )
    parser.add_argument("--ops", action="store_true", help="count a CUDA step's operators and autograd nodes")
    parser.add_argument("--fp32", action="store_true", help="time fp32 steps instead of bf16 autocast")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--steps", type=int, default=50, help="steps per model and round (default 50)")
    parser.add_argument("--top", type=int, default=0, help="with --ops: list the N most frequent of each")
    args = parser.parse_args(argv)
    if args.ops:
        args.models = args.models or [REFERENCE, *PAPER]
        print(
            "model                  ops  kernels  nodes   (bf16 CUDA training step, batch 256, fake tensors)"
        )
        for name in args.models:
            ops, nodes = cuda_ops(name, 256)
            kernels = sum(v for k, v in ops.items() if k not in _NO_KERNEL)
            print(f"{name:20s} {sum(ops.values()):5d} {kernels:8d} {sum(nodes.values()):6d}")
            if args.top:
                print(
                    "   ", ", ".join(f"{k} {v}" for k, v in ops.most_common(args.top) if k not in _NO_KERNEL)
                )
                print("   ", ", ".join(f"{k} {v}" for k, v in nodes.most_common(args.top)))
        return 0
    times = host_ms(args.models or MODELS, not args.fp32, args.rounds, args.steps)
    precision = "fp32" if args.fp32 else "bf16 autocast"
    print(
        f"model        ms/step (median, min)   narrow layers, smallest image, batch 1, {precision}, 1 thread"
    )
    for name, t in times.items():
        print(f"{name:12s} {statistics.median(t):7.3f}  {min(t):7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
