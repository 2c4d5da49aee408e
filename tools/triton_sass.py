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


def executed(cubin: bytes, trips: int | dict[int, list[int]]) -> tuple[int, int]:
    """(instructions one thread executes, registers). Straight-line code runs once and each loop body (a
    backward branch) as often as its own and its enclosing loops' trip counts say: ``trips`` for every loop, or
    per loop in the order the loops start in the code, keyed by how many loops there are (ptxas unrolls some
    loops of three at some tile sizes); a number of loops ``trips`` has no entry for is an error."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([TOOLS / "cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
        usage = subprocess.run(
            [TOOLS / "cuobjdump", "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    addresses = [int(a, 16) for a in re.findall(r"/\*([0-9a-f]{4})\*/\s+[^;]*;", sass)]
    loops = sorted(
        (int(m.group(3), 16), int(m.group(1), 16))
        for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+(@!?U?P\w+\s+)?BRA\s+0x([0-9a-f]+)", sass)
        if int(m.group(3), 16) < int(m.group(1), 16)
    )
    if isinstance(trips, int):
        counts = [trips] * len(loops)
    elif len(loops) in trips:
        counts = trips[len(loops)]
    else:
        raise ValueError(f"{len(loops)} loops in the SASS; trip counts given for {sorted(trips)}")
    count = 0
    for address in addresses:
        times = 1
        for (start, end), n in zip(loops, counts, strict=True):
            times *= n if start <= address <= end else 1
        count += times
    registers = re.search(r"REG:(\d+)", usage)
    return count, int(registers.group(1)) if registers else 0


def _ms(instructions: float) -> float:
    """Milliseconds to issue ``instructions`` (one per thread, 32 to a warp)."""
    return instructions / 32 / WARP_INSTRUCTIONS_PER_S * 1e3


def rows(batch: int, tiles: list[int], fast: bool) -> list[tuple[str, str, int, int, float, float]]:
    """(stage, kernel, tile, registers, instructions per element, issue-bound ms) for the paper models' stages,
    the whole launch (every thread of every program, padding included) over the real elements: pooled values
    for the forward and the LRN, conv output values for the stage's backward."""
    window = {"K": 3, "S": 2, "BEFORE": 2, "AFTER": 2, "FAST": fast}
    out = []
    for name, c, size, pooled, pool_first in STAGES:
        norm = not pool_first
        for tile in tiles:
            block_c, block_p, warps = stage_triton._tiles(c, pooled * pooled, tile)
            threads = 32 * warps
            forward = {"NORM": norm, "TRAIN": True, "BLOCK_C": block_c, "BLOCK_P": block_p} | window
            rows_, programs = stage_triton.row_chunks((pooled, pooled), block_p, batch, 3)
            # every loop of _forward runs K = 3 times; _forward_rows: the first row's columns (3, when not
            # unrolled), then ROWS rows of K − 1 = 2 rows of 3 columns (the inner two unrolled or not)
            walk = {4: [3, rows_, 2, 3], 3: [rows_, 2, 3], 2: [rows_, 2], 1: [rows_]}
            variants = [
                ("forward", stage_triton._forward, {}, 3, triton.cdiv(pooled**2, block_p)),
                ("forward, rows", stage_triton._forward_rows, {"ROWS": rows_}, walk, programs),
            ]
            for label, fn, extra, trips, per_image in variants:
                for keep in (False, True) if norm else (False,):
                    count, registers = executed(
                        compile_sm90(fn, forward | extra | {"KEEP": keep}, warps), trips
                    )
                    total = count * threads * per_image * batch
                    label_ = f"{label}, keeping d" if keep else label
                    out.append((name, label_, tile, registers, total / (batch * c * pooled**2), _ms(total)))
            block_c, block_p, warps = stage_triton._tiles(c, size * size, tile)
            threads, per_image = 32 * warps, triton.cdiv(size * size, block_p)
            backward = {"NORM": norm, "BLOCK_C": block_c, "BLOCK_P": block_p} | window
            for kept in (False, True) if norm else (False,):
                total, registers = 0, 0
                for pass_ in (0, 1) if norm else (1,):
                    cubin = compile_sm90(
                        stage_triton._backward, backward | {"KEPT": kept, "PASS": pass_}, warps
                    )
                    count, regs = executed(cubin, {0: []})
                    total, registers = total + count * threads * per_image * batch, max(registers, regs)
                label = "backward, kept d" if kept else "backward"
                out.append((name, label, tile, registers, total / (batch * c * size**2), _ms(total)))
        if pool_first:  # the LRN on the pooled maps, by its own kernels (tile as lrn_triton launches it)
            block_c = triton.next_power_of_2(c)
            block_p = max(1, min(triton.next_power_of_2(pooled * pooled), 4096 // block_c))
            warps = 8 if block_c * block_p >= 2048 else 4
            launched = 32 * warps * triton.cdiv(pooled**2, block_p) * batch
            lrn = {"BEFORE": 2, "AFTER": 2, "BLOCK_C": block_c, "BLOCK_P": block_p, "FAST": fast}
            kernels = {
                "LRN forward": [lrn_triton._lrn_forward],
                "LRN backward": [lrn_triton._lrn_backward_scaled, lrn_triton._lrn_backward],
            }
            for label, fns in kernels.items():
                total = sum(executed(compile_sm90(fn, lrn, warps), {0: []})[0] for fn in fns) * launched
                out.append((name, label, 4096, 0, total / (batch * c * pooled**2), _ms(total)))
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
