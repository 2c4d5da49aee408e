"""Where a CPU training or inference step spends its time: torch.profiler's operator table per model.

The step is ``alexnet bench``'s (channels-last, SGD with momentum and weight decay, the same random batch), and
the process first sets glibc's allocator up as every ``alexnet`` command does (:func:`alexnet.malloc.tune`).
Without that, a bare script page-faults every large activation and gradient in again each step, and the table
shows allocation costs the commands never pay (docs/performance.md, Session 15).

    python tools/cpu_profile.py [MODEL ...] [--mode train|infer] [--batch-size 64] [--steps 2] [--rows 25]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from alexnet import malloc
from alexnet.bench import REFERENCE, _setup, _step_fn


def profile_step(name: str, mode: str, batch_size: int, steps: int, warmup: int = 2) -> str:
    """The operator table (self CPU time, grouped by input shapes) of ``steps`` steps of ``name``, per step."""
    model, x, y, _ = _setup(name, batch_size, torch.device("cpu"), channels_last=True)
    step = _step_fn(model, mode, x, y)
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages(group_by_input_shape=True)
    total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / steps
    lines = [
        f"{name} {mode}, batch {batch_size}: {total_ms:.0f} ms of CPU time per step ({steps} step{'s' * (steps != 1)})"
    ]
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    for e in top:
        ms = e.self_cpu_time_total / 1e3 / steps
        shapes = str(e.input_shapes)[:70] if e.input_shapes else ""
        lines.append(f"  {ms:8.1f} ms  {100 * ms / total_ms:5.1f} %  {e.key[:44]:44s} {shapes}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="*", default=[REFERENCE, "alexnet", "caffenet", "zfnet"])
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--rows", type=int, default=25, help="operators shown per model")
    args = parser.parse_args(argv)
    print(f"allocator: {malloc.tune()}; {torch.get_num_threads()} threads")
    for name in args.models:
        table = profile_step(name, args.mode, args.batch_size, args.steps).split("\n")
        print("\n".join(table[: args.rows + 1]), end="\n\n")


if __name__ == "__main__":
    main()
