"""Times one conv stage's ReLU + LRN + max-pool on CUDA, forward and backward, as modules and as the fused Triton
kernels at a few tile sizes (elements per program, forward and backward), bf16, channels-last, batch 256, for the
stages of the paper models; the last lines name the tiles with the least time summed over the stages
(ALEXNET_STAGE_TILES's form) and each kernel variant's time summed over the stages.

The variants are the environment settings of :data:`VARIANTS` (docs/performance.md, Session 19), each read when
the kernels launch, so one process times them all, in turn at each stage.

    python tools/gpu_stage.py [--batch-size 256] [--tiles FORWARD,BACKWARD ...] [--variants NAME ...]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import torch
from torch import nn

from alexnet.models import fused, stage_triton
from alexnet.models.layers import LocalResponseNorm
from alexnet.models.native import StageArgs

# Kernel variants by the settings that choose them (each unset variable is "0")
VARIANTS = {
    "shipped": {},
    "log2": {"ALEXNET_FAST_LOG2": "1"},
    "kept": {"ALEXNET_KEEP_DENOMINATOR": "1"},
    "rows": {"ALEXNET_STAGE_ROWS": "1"},
    "all": {"ALEXNET_FAST_LOG2": "1", "ALEXNET_KEEP_DENOMINATOR": "1", "ALEXNET_STAGE_ROWS": "1"},
}
SETTINGS = ("ALEXNET_FAST_LOG2", "ALEXNET_KEEP_DENOMINATOR", "ALEXNET_STAGE_ROWS")

# (name, channels, conv-output size, pool_first, LRN α as the module stores it (multiplies the sum), k)
STAGES = [
    ("alexnet stage 1", 96, 55, False, 1e-4, 2.0),
    ("alexnet stage 2", 256, 27, False, 1e-4, 2.0),
    ("caffenet stage 1", 96, 55, True, 2e-5, 1.0),
    ("zfnet stage 1", 96, 110, True, 2e-5, 1.0),
    ("zfnet stage 2", 256, 26, True, 2e-5, 1.0),
]


def time_ms(fn, repeats: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure(f, x: torch.Tensor, g: torch.Tensor) -> tuple[float, float]:
    """(inference forward, training forward + backward) in ms; ``x * 1`` is a non-leaf, as a conv output is."""

    def infer() -> None:
        with torch.no_grad():
            f(x.detach())

    return time_ms(infer), time_ms(lambda: f(x * 1).backward(g))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--tiles",
        nargs="*",
        default=["1024,1024", "2048,2048", "4096,4096"],
        help="forward,backward",
    )
    p.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["shipped"])
    args = p.parse_args()
    print(f"{'stage':<18}{'variant':<26}{'fwd ms':>8}{'fwd+bwd ms':>12}")
    forward: dict[int, float] = {}  # tile → summed over the stages (the shipped kernels)
    backward: dict[int, float] = {}
    total: dict[str, float] = {}  # variant and tiles → forward + backward summed over the stages
    for name, c, size, pool_first, alpha, k in STAGES:
        stage = StageArgs(pool_first, 5, alpha, 0.75, k, 3, 2, True)  # the models pool in ceil mode
        norm, pool = LocalResponseNorm(5, alpha, 0.75, k), nn.MaxPool2d(3, 2, ceil_mode=True)
        mods = nn.Sequential(nn.ReLU(inplace=True), *((pool, norm) if pool_first else (norm, pool)))
        x = torch.randn(args.batch_size, c, size, size, device="cuda", dtype=torch.bfloat16) * 30
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        g = torch.randn_like(mods(x * 1).detach())
        fwd, train = measure(mods, x, g)
        print(f"{name:<18}{'modules':<26}{fwd:>8.3f}{train:>12.3f}", flush=True)
        for variant in args.variants:
            os.environ.update({setting: VARIANTS[variant].get(setting, "0") for setting in SETTINGS})
            for tile in args.tiles:
                stage_triton.TILES = tuple(int(t) for t in tile.split(","))
                fwd, train = measure(functools.partial(fused.stage, args=stage), x, g)
                print(f"{name:<18}{f'{variant} {tile}':<26}{fwd:>8.3f}{train:>12.3f}", flush=True)
                total[f"{variant} {tile}"] = total.get(f"{variant} {tile}", 0.0) + train
                if variant == "shipped":
                    f, b = stage_triton.TILES
                    forward[f] = forward.get(f, 0.0) + fwd
                    backward[b] = backward.get(b, 0.0) + train - fwd  # the kernels are separate: tiles add up
    for key, ms in sorted(total.items(), key=lambda item: item[1]):
        print(f"all stages, fwd+bwd: {key:<26}{ms:>8.3f} ms")
    if forward:
        print(
            f"best tiles: {min(forward, key=forward.__getitem__)},{min(backward, key=backward.__getitem__)}"
        )


if __name__ == "__main__":
    main()
