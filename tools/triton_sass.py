"""Counts the machine instructions per element of the CUDA LRN and stage kernels, compiled for an H100 (sm_90)
on a machine without a GPU (Triton bundles ptxas and cuobjdump), and the time they would take if issuing
instructions were all that bound them.

Session 6's timings of the stage kernels on an H100 match that bound within 10–20 % (docs/performance.md,
Session 19), so the counts predict what a change to the kernels does where no GPU is lent; a GPU still has the
last word. Each kernel is counted with Triton's exact log2 and with ``lg2.approx`` (``ALEXNET_FAST_LOG2=1``).

    python tools/triton_sass.py [--batch-size 256] [--tiles 1024 2048] [--log2 exact approx]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from alexnet.models import lrn_triton, stage_triton

# H100 SXM: 132 multiprocessors, each issuing 4 warp instructions per clock; 1.75 GHz under load
WARP_INSTRUCTIONS_PER_S = 132 * 4 * 1.75e9
POINTERS = {"idx_ptr": "*u8", "t_ptr": "*fp32", "d_ptr": "*fp32"}  # the others are bf16 maps
UNIT_STRIDES = {"sxc", "syc", "sgc", "sic", "stride_c"}  # channels-last: Triton specialises a stride of 1
# (name, channels, conv output size, pooled size, relu → pool → norm): the paper models' stages, as tools/gpu_stage.py
STAGES = [
    ("alexnet 1", 96, 55, 27, False),
    ("alexnet 2", 256, 27, 13, False),
    ("caffenet 1", 96, 55, 27, True),
    ("zfnet 1", 96, 110, 55, True),
    ("zfnet 2", 256, 26, 13, True),
]
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_sm90(fn: triton.JITFunction, constexprs: dict, warps: int) -> bytes:
    """The cubin of ``fn`` for sm_90 with bf16 maps, the channel strides 1 and the other integers divisible by
    16 (as the paper models' channels-last maps are)."""
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in UNIT_STRIDES:
            signature[name], consts[name] = "constexpr", 1
        elif name.endswith("_ptr"):
            signature[name] = POINTERS.get(name, "*bf16")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ("alpha", "beta", "k"):
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name == "C" or name.startswith("s"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    return kernel.asm["cubin"]


def executed(cubin: bytes, trips: int) -> tuple[int, int]:
    """(instructions one thread executes, registers): straight-line code once, each loop body (a backward
    branch) ``trips`` times per enclosing loop, as the stage forward's window loops run."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([TOOLS / "cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
        usage = subprocess.run(
            [TOOLS / "cuobjdump", "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    addresses = [int(a, 16) for a in re.findall(r"/\*([0-9a-f]{4})\*/\s+[^;]*;", sass)]
    loops = [
        (int(m.group(3), 16), int(m.group(1), 16))
        for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+(@!?U?P\w+\s+)?BRA\s+0x([0-9a-f]+)", sass)
        if int(m.group(3), 16) < int(m.group(1), 16)
    ]
    count = 0
    for address in addresses:
        depth = sum(start <= address <= end for start, end in loops)
        count += trips**depth
    registers = re.search(r"REG:(\d+)", usage)
    return count, int(registers.group(1)) if registers else 0


def _ms(elements: int, per_element: float) -> float:
    """Milliseconds to issue ``per_element`` instructions for each of ``elements`` (32 to a warp)."""
    return elements * per_element / 32 / WARP_INSTRUCTIONS_PER_S * 1e3


def rows(batch: int, tiles: list[int], fast: bool) -> list[tuple[str, str, int, int, float, float]]:
    """(stage, kernel, tile, registers, instructions per element, issue-bound ms) for the paper models' stages;
    an element is a pooled value (channels padded to a power of two) in the forward and the LRN, a conv output
    value in the stage's backward."""
    window = {"K": 3, "S": 2, "BEFORE": 2, "AFTER": 2, "FAST": fast}
    out = []
    for name, c, size, pooled, pool_first in STAGES:
        for tile in tiles:
            block_c, block_p, warps = stage_triton._tiles(c, pooled * pooled, tile)
            per_thread = block_c * block_p / (32 * warps)
            forward = {"NORM": not pool_first, "TRAIN": True, "BLOCK_C": block_c, "BLOCK_P": block_p}
            variants = [("forward", dict(forward, KEEP=False))]
            if not pool_first:
                variants.append(("forward, keeping d", dict(forward, KEEP=True)))
            for label, constexprs in variants:
                cubin = compile_sm90(stage_triton._forward, constexprs | window, warps)
                count, registers = executed(cubin, 3)
                elements = batch * block_c * pooled * pooled  # per pooled value, the channels padded
                out.append(
                    (name, label, tile, registers, count / per_thread, _ms(elements, count / per_thread))
                )
            block_c, block_p, warps = stage_triton._tiles(c, size * size, tile)
            per_thread = block_c * block_p / (32 * warps)
            backward = {"NORM": not pool_first, "BLOCK_C": block_c, "BLOCK_P": block_p}
            variants = [("backward", (False,))]
            if not pool_first:
                variants.append(("backward, kept d", (True,)))
            for label, (kept,) in variants:
                total, registers = 0.0, 0
                for pass_ in (0, 1) if not pool_first else (1,):
                    constexprs = dict(backward, KEPT=kept, PASS=pass_) | window
                    count, regs = executed(compile_sm90(stage_triton._backward, constexprs, warps), 3)
                    total, registers = total + count / per_thread, max(registers, regs)
                elements = batch * block_c * size * size  # per conv output value
                out.append((name, label, tile, registers, total, _ms(elements, total)))
            if pool_first:  # the LRN on the pooled maps, by its own kernels (tile as lrn_triton launches it)
                block_p = max(1, min(triton.next_power_of_2(pooled * pooled), 4096 // block_c))
                warps = 8 if block_c * block_p >= 2048 else 4
                per_thread = block_c * block_p / (32 * warps)
                lrn = {"BEFORE": 2, "AFTER": 2, "BLOCK_C": block_c, "BLOCK_P": block_p, "FAST": fast}
                forward_count = executed(compile_sm90(lrn_triton._lrn_forward, lrn, warps), 1)[0] / per_thread
                backward_count = sum(
                    executed(compile_sm90(kernel, lrn, warps), 1)[0] / per_thread
                    for kernel in (lrn_triton._lrn_backward_scaled, lrn_triton._lrn_backward)
                )
                elements = batch * block_c * pooled * pooled
                for label, per in (("LRN forward", forward_count), ("LRN backward", backward_count)):
                    out.append((name, label, 4096, 0, per, _ms(elements, per)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tiles", type=int, nargs="*", default=[1024, 2048], help="elements per program")
    parser.add_argument("--log2", nargs="*", choices=["exact", "approx"], default=["exact", "approx"])
    args = parser.parse_args()
    print(f"batch {args.batch_size}, bf16, channels-last; instructions one thread executes per element")
    print(
        f"{'stage':<12}{'kernel':<22}{'log2':>7}{'tile':>6}{'regs':>6}{'instr/element':>15}{'issue-bound ms':>16}"
    )
    for log2 in args.log2:
        for name, label, tile, registers, per, ms in rows(args.batch_size, args.tiles, log2 == "approx"):
            print(f"{name:<12}{label:<22}{log2:>7}{tile:>6}{registers:>6}{per:>15.1f}{ms:>16.3f}", flush=True)


if __name__ == "__main__":
    main()
