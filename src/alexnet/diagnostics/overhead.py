"""Measure what :class:`HealthMonitor` costs per training step.

``python -m alexnet.diagnostics.overhead [--model alexnet] [--input-size 67] [--batch-size 32] [--every 50]``

Three kinds of step are interleaved one by one — plain (no monitor), monitored but not a health step, and a
health step — so that a change in machine load affects all three alike (the shared 2-core machine this was
written on ran at a load average of ~10). Each is timed by wall clock and by process CPU time. The overhead of
the monitor at interval N is ``((N−1)·(t_monitored − t_plain) + (t_health − t_plain)) / (N·t_plain)``.
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


def measure(model_name: str, input_size: int, batch_size: int, every: int, cycles: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, input_size=input_size)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x, y = gratings(10, batch_size // 10 + 1, input_size)
    x, y = (x[:batch_size] - 0.5) / 0.25, y[:batch_size]
    run_dir = Path(tempfile.mkdtemp(prefix="health-overhead-"))
    ctx = TrainContext(model=model, optimizer=opt, run_dir=run_dir, num_classes=10, inputs=x)
    mon = HealthMonitor(every=every)
    mon.on_train_start(ctx)
    kinds = ("plain", "monitored", "health")
    wall = dict.fromkeys(kinds, 0.0)
    cpu = dict.fromkeys(kinds, 0.0)

    def step(kind: str) -> None:
        monitored = kind != "plain"
        ctx.step = 0 if kind == "health" else 1  # step % every == 0 ⇔ a health step
        w0, c0 = time.perf_counter(), time.process_time()
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
        wall[kind] += time.perf_counter() - w0
        cpu[kind] += time.process_time() - c0

    for kind in kinds:  # warm-up, not counted
        step(kind)
    wall.update(dict.fromkeys(kinds, 0.0))
    cpu.update(dict.fromkeys(kinds, 0.0))
    for _ in range(cycles):
        for kind in kinds:
            step(kind)

    def overhead(t: dict[str, float]) -> float:
        plain, mon_, health = (t[k] / cycles for k in kinds)
        return 100 * ((every - 1) * (mon_ - plain) + (health - plain)) / (every * plain)

    return {
        "plain_s": wall["plain"] / cycles,
        "monitored_s": wall["monitored"] / cycles,
        "health_s": wall["health"] / cycles,
        "plain_cpu_s": cpu["plain"] / cycles,
        "monitored_cpu_s": cpu["monitored"] / cycles,
        "health_cpu_s": cpu["health"] / cycles,
        "wall_overhead_pct": overhead(wall),
        "cpu_overhead_pct": overhead(cpu),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--input-size", type=int, default=67)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--cycles", type=int, default=20)
    a = p.parse_args()
    r = measure(a.model, a.input_size, a.batch_size, a.every, a.cycles)
    print(
        f"{a.model} {a.input_size}px batch {a.batch_size}, {a.cycles} cycles, {torch.get_num_threads()} threads\n"
        f"  per step, wall (CPU): plain {r['plain_s']:.3f} s ({r['plain_cpu_s']:.3f}), monitored "
        f"{r['monitored_s']:.3f} s ({r['monitored_cpu_s']:.3f}), health step {r['health_s']:.3f} s "
        f"({r['health_cpu_s']:.3f})\n"
        f"  overhead with health every {a.every} steps: {r['wall_overhead_pct']:+.2f}% wall, "
        f"{r['cpu_overhead_pct']:+.2f}% CPU time"
    )


if __name__ == "__main__":
    main()
