"""Measure what :class:`HealthMonitor` costs: steps/s of the same training with and without it.

``python -m alexnet.diagnostics.overhead [--model alexnet] [--input-size 67] [--batch-size 32] [--every 50]``

Blocks of ``every`` steps with and without the monitor alternate (ABAB…), so that a change in machine load
affects both; each block is timed by wall clock and by process CPU time (the latter is robust to other
processes sharing the CPU). Results go to stdout; ``docs/diagnostics.md`` records them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.diagnostics.health import HealthMonitor
from alexnet.diagnostics.probe import gratings
from alexnet.factory import create_model
from alexnet.train.callbacks import TrainContext


def measure(model_name: str, input_size: int, batch_size: int, every: int, blocks: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, input_size=input_size)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x, y = gratings(10, max(1, batch_size // 10 + 1), input_size)
    x, y = x[:batch_size], y[:batch_size]
    x = (x - 0.5) / 0.25
    run_dir = Path(tempfile.mkdtemp(prefix="health-overhead-"))
    ctx = TrainContext(model=model, optimizer=opt, run_dir=run_dir, num_classes=10, inputs=x)
    mon = HealthMonitor(every=every)
    mon.on_train_start(ctx)
    totals = {True: [0.0, 0.0, 0], False: [0.0, 0.0, 0]}

    def block(monitored: bool) -> None:
        w0, c0 = time.perf_counter(), time.process_time()
        for _ in range(every):
            if monitored:
                mon.on_step_start(ctx)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ctx.loss = loss.detach()
            if monitored:
                mon.on_after_backward(ctx)
            opt.step()
            ctx.step += 1
            if monitored:
                mon.on_step_end(ctx)
            float(loss.detach())  # the loop reads the loss every step
        t = totals[monitored]
        t[0] += time.perf_counter() - w0
        t[1] += time.process_time() - c0
        t[2] += every

    block(False)  # warm-up, not counted
    totals = {True: [0.0, 0.0, 0], False: [0.0, 0.0, 0]}
    for _ in range(blocks):
        block(False)
        ctx.step = 0  # so that the monitored block starts on a health step: one health step per block
        block(True)
    off, on = totals[False], totals[True]
    return {
        "steps_per_s_without": off[2] / off[0],
        "steps_per_s_with": on[2] / on[0],
        "wall_overhead_pct": 100 * (on[0] / off[0] - 1),
        "cpu_overhead_pct": 100 * (on[1] / off[1] - 1),
        "steps": off[2] + on[2],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--input-size", type=int, default=67)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--blocks", type=int, default=3)
    a = p.parse_args()
    r = measure(a.model, a.input_size, a.batch_size, a.every, a.blocks)
    print(
        f"{a.model} {a.input_size}px batch {a.batch_size}, health every {a.every} steps, {r['steps']} steps "
        f"({torch.get_num_threads()} threads): {r['steps_per_s_without']:.3f} steps/s without, "
        f"{r['steps_per_s_with']:.3f} with; overhead {r['wall_overhead_pct']:+.2f}% wall, "
        f"{r['cpu_overhead_pct']:+.2f}% CPU time"
    )


if __name__ == "__main__":
    main()
