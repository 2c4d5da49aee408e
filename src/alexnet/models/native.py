"""The CPU kernels (``lrn_cpu.cpp``, ``first_conv_cpu.cpp``, ``conv_stage_cpu.cpp``): built once per machine
with the system C++ compiler into one library, loaded by ctypes.

Why not ``torch.utils.cpp_extension``: the kernel needs no PyTorch headers (it works on raw pointers), so a plain
``c++ -O3 -march=native -fopenmp -shared`` builds it, each source by a compiler of its own at once (8–15 s on
2 cores, once per machine). OpenMP resolves to the ``libgomp.so.1`` that torch has already loaded, so the kernel
shares torch's thread pool settings; the thread count is passed on every call (``torch.get_num_threads()``).
ctypes releases the GIL during the call.

``$ALEXNET_NATIVE_CFLAGS`` adds compiler flags after those (``-O0 -g`` for a debugger, ``-fsanitize=...``; a later
``-O`` wins). The build goes to ``$ALEXNET_CACHE`` (default ``~/.cache/alexnet``)``/native/lrn-<hash>.so``, the hash
covering the source, the compiler command and the CPU's flags (``-march=native`` code must not run on another CPU). The file
is written under a temporary name and renamed, so concurrent builds (one per DDP rank) never load a half-written
library. No compiler, a failed build, or ``ALEXNET_NATIVE=0`` → :func:`kernel` returns ``None`` and the LRN runs
as the PyTorch composition in ``layers.py`` (same numbers, slower); the reason is logged once. The same library
holds the conv-stage kernels (ReLU + LRN + max-pool, :mod:`alexnet.models.fused`), the first convolution's
weight gradient (:mod:`alexnet.models.first_conv`, :mod:`alexnet.models.first_stage`) and conv2's from the pooled
maps' (:mod:`alexnet.models.conv_stage`); without it the stages run as their three modules and the weight
gradients as oneDNN's.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from alexnet.files import make_temp

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name) for name in ("lrn_cpu.cpp", "first_conv_cpu.cpp", "conv_stage_cpu.cpp")
]
HEADERS = [Path(__file__).with_name("vec16.h")]  # included by the sources: part of the build's cache key
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math"]
DTYPES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}  # bf16 computed in fp32
VECTOR_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}  # the AVX-512 code's


def cache_dir() -> Path:
    root = os.environ.get("ALEXNET_CACHE") or Path.home() / ".cache" / "alexnet"
    return Path(root) / "native"


def _cpu_signature() -> str:
    """The CPU model and feature flags (what ``-march=native`` compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(sorted(set(keep)))


def _compiler() -> str | None:
    """``$CXX`` when set (and only it), else the first of ``c++``, ``g++``, ``clang++`` on the PATH."""
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"])
    return shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def build(out_dir: Path | None = None) -> Path:
    """Compile the ``SOURCES`` into one library (or reuse the cached build); returns the shared library's path.

    Raises ``RuntimeError`` with the compiler's message when there is no compiler or the build fails.
    """
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(
            f"no C++ compiler found ({os.environ.get('CXX') or 'c++, g++, clang++'} not on PATH; set CXX)"
        )
    flags = [*FLAGS, *shlex.split(os.environ.get("ALEXNET_NATIVE_CFLAGS", ""))]
    sources = [path.read_bytes() for path in [*SOURCES, *HEADERS]]
    key = hashlib.sha256(b"\0".join([*sources, " ".join([cxx, *flags]).encode(), _cpu_signature().encode()]))
    out_dir = out_dir or cache_dir()
    target = out_dir / f"lrn-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("building the CPU kernels for this machine into %s (once; 8-15 s)", target)
    # named for the target, so that a build killed midway leaves nothing the next build of it keeps
    tmp = make_temp(out_dir, target.name)
    work: Path | None = None
    try:
        work = make_temp(out_dir, target.name, ".objects", directory=True)
        # one compiler per source, side by side: the build takes as long as its longest file
        objects = [str(work / f"{path.stem}.o") for path in SOURCES]
        pairs = zip(SOURCES, objects, strict=True)
        _run_all([[cxx, *flags, "-c", str(path), "-o", obj] for path, obj in pairs])
        _run_all([[cxx, *flags, *objects, "-o", str(tmp)]])
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _run_all(commands: list[list[str]], timeout: float = 300) -> None:
    """Runs the compiler ``commands`` at once; ``RuntimeError`` with the first failure's message."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    errors = []
    try:
        for command, proc in zip(commands, procs, strict=True):
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                errors.append(f"{command[0]} failed: {err.strip()[-2000:]}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if errors:
        raise RuntimeError(errors[0])


class Kernel:
    """The loaded library: ``forward(x)`` and ``backward(g, x, y)`` on dense CPU float32/float64/bfloat16
    tensors (bfloat16, as autocast produces it, is computed in float32 and rounded once on the way out), and
    ``stage`` / ``stage_backward``: a conv stage's ReLU, LRN and max-pool in one pass each way, channels-last
    (:mod:`alexnet.models.fused`)."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))
        i64, i32, f64, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
        lrn = [i64] * 3 + [i32] * 2 + [f64] * 3 + [i32]  # outer C inner; the window; α β k; threads
        # N H W C Ho Wo; kernel, stride, pool_first; the window; α β k; threads
        shape = [i64] * 6 + [i32] * 5 + [f64] * 3 + [i32]
        # the generic entry points, and their AVX-512 twins (…16_*: 1 when they took the work, else 0)
        signatures = {"lrn_forward": (2, lrn), "lrn_backward": (4, lrn), "stage_forward": (4, shape)}
        signatures["stage_backward"] = (5, shape)
        for op, (pointers, tail) in signatures.items():
            for suffix in DTYPES.values():
                self._declare(f"{op}_{suffix}", [ptr] * pointers + tail, None)
            for suffix in VECTOR_DTYPES.values():
                self._declare(f"{op}16_{suffix}", [ptr] * pointers + tail, i32)
        self._declare("stages_avx512", [], i32)
        self.avx512 = bool(self.lib.stages_avx512())  # built with the AVX-512 stages (float32, bfloat16)
        # x g dw db; N H W C OC OH OW KH KW SH SW PH PW; dw's strides; threads
        self._declare("first_conv_weight_grad_f32", [ptr, ptr, ptr, ptr, *[i64] * 13, ptr, i32], i32)
        # x g pooled idx dw db; N H W C OC GROUPS OH OW PH PW KH KW SH SW PADH PADW; pool; strides; threads
        self._declare("pooled_weight_grad_f32", [ptr] * 6 + [i64] * 18 + [ptr, i32], i32)
        # x g pooled idx dw db; N H W C OC OH OW PH PW KH KW SH SW PADH PADW; pool kernel, stride; strides; threads
        self._declare("first_conv_pooled_weight_grad_f32", [ptr] * 6 + [i64] * 17 + [ptr, i32], i32)
        self._declare("weight_grad_lanes", [], i32)
        # the weight-gradient kernels' vector width: 16 (AVX-512), 8 (AVX2 + FMA), 0 (not measured elsewhere)
        self.weight_grad_lanes = int(self.lib.weight_grad_lanes())

    def _declare(self, name: str, argtypes: list[Any], restype: Any) -> None:
        fn = getattr(self.lib, name)
        fn.argtypes, fn.restype = argtypes, restype

    @staticmethod
    def supports(x: torch.Tensor) -> bool:
        return x.device.type == "cpu" and x.dtype in DTYPES and x.dim() >= 2

    @staticmethod
    def _shape(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
        """A dense layout the kernel reads: ``[outer, C, inner]``; channels-last 4-D is ``[N·H·W, C, 1]``."""
        n, c = x.shape[0], x.shape[1]
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return x, n * x.shape[2] * x.shape[3], c, 1
        x = x.contiguous()
        return x, n, c, x.numel() // max(n * c, 1)

    def forward(
        self, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, inplace: bool = False
    ) -> torch.Tensor:
        """The LRN of ``x``; with ``inplace`` written into ``x`` itself (which is returned)."""
        original = x
        x, outer, c, inner = self._shape(x)
        y = x if inplace else torch.empty_like(x)
        if x.numel():
            window = (size // 2, (size - 1) // 2)
            args = (
                x.data_ptr(),
                y.data_ptr(),
                outer,
                c,
                inner,
                *window,
                alpha,
                beta,
                k,
                torch.get_num_threads(),
            )
            if not self._vector("lrn_forward16", x.dtype, args):
                getattr(self.lib, f"lrn_forward_{DTYPES[x.dtype]}")(*args)
        if inplace and y is not original:  # x was not dense: the kernel worked on a contiguous copy
            return original.copy_(y)
        return y

    def backward(
        self,
        g: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        size: int,
        alpha: float,
        beta: float,
        k: float,
    ) -> torch.Tensor:
        x, outer, c, inner = self._shape(x)
        fmt = torch.channels_last if inner == 1 and x.dim() == 4 and not x.is_contiguous() else None
        g = g.contiguous(memory_format=fmt) if fmt else g.contiguous()
        y = y.contiguous(memory_format=fmt) if fmt else y.contiguous()
        dx = torch.empty_like(x)
        if x.numel():
            window = (size // 2, (size - 1) // 2)
            pointers = (g.data_ptr(), x.data_ptr(), y.data_ptr(), dx.data_ptr())
            args = (*pointers, outer, c, inner, *window, alpha, beta, k, torch.get_num_threads())
            if not self._vector("lrn_backward16", x.dtype, args):
                getattr(self.lib, f"lrn_backward_{DTYPES[x.dtype]}")(*args)
        return dx

    @staticmethod
    def _stage_args(shape: Sequence[int], out: Sequence[int], stage: StageArgs) -> tuple:
        n, c, h, w = shape
        window = (stage.size // 2, (stage.size - 1) // 2)
        pooling = (stage.kernel_size, stage.stride, int(stage.pool_first))
        return (
            n,
            h,
            w,
            c,
            *out,
            *pooling,
            *window,
            stage.alpha,
            stage.beta,
            stage.k,
            torch.get_num_threads(),
        )

    def stage(
        self, x: torch.Tensor, out: tuple[int, int], stage: StageArgs, training: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """ReLU, LRN and max-pool (no padding) of a channels-last N×C×H×W ``x`` in one pass: ``pool(lrn(relu(x)))``,
        or ``lrn(pool(relu(x)))`` with ``stage.pool_first``; ``out`` is the pooled H×W.

        Returns ``(y, pooled, idx)``; with ``training``, ``idx`` (uint8, like ``y``) holds where in its k×k window
        each maximum was, and ``pooled`` (``pool_first`` only) the LRN's input; else both are ``None``.
        """
        like = dict(dtype=x.dtype, memory_format=torch.channels_last)
        size = (x.shape[0], x.shape[1], *out)
        y = torch.empty(size, **like)
        idx = torch.empty(size, dtype=torch.uint8, memory_format=torch.channels_last) if training else None
        pooled = torch.empty(size, **like) if training and stage.pool_first else None
        if y.numel() and vector_stages() and self.vector_stage(x, y, stage, pooled, idx):
            return y, pooled, idx
        if y.numel():
            fn = getattr(self.lib, f"stage_forward_{DTYPES[x.dtype]}")
            fn(x.data_ptr(), y.data_ptr(), _ptr(pooled), _ptr(idx), *self._stage_args(x.shape, out, stage))
        return y, pooled, idx

    def vector_stage(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        stage: StageArgs,
        pooled: torch.Tensor | None = None,
        idx: torch.Tensor | None = None,
    ) -> bool:
        """:meth:`stage` into ``y`` (and, for training, ``pooled`` and ``idx``) by the AVX-512 code
        (``lrn_cpu.cpp``); ``False``, with nothing written, where that code does not take the stage: not float32
        or bfloat16, no AVX-512, channels not a multiple of 16, or not the papers' LRN (5 channels, beta 0.75)."""
        if y.dtype != x.dtype:
            return False
        args = self._stage_args(x.shape, y.shape[2:], stage)
        return self._vector(
            "stage_forward16", x.dtype, (x.data_ptr(), y.data_ptr(), _ptr(pooled), _ptr(idx), *args)
        )

    def _vector(self, name: str, dtype: torch.dtype, args: tuple) -> bool:
        """Whether the AVX-512 entry point ``name`` took the work (float32 and bfloat16; ``ALEXNET_AVX512=0``:
        never)."""
        suffix = VECTOR_DTYPES.get(dtype)
        return suffix is not None and vector_stages() and bool(getattr(self.lib, f"{name}_{suffix}")(*args))

    def stage_backward(
        self,
        grad: torch.Tensor,
        shape: Sequence[int],
        x: torch.Tensor | None,
        pooled: torch.Tensor | None,
        idx: torch.Tensor,
        stage: StageArgs,
    ) -> torch.Tensor:
        """The gradient of the stage's input (the conv output, of ``shape``), channels-last.

        relu → norm → pool: ``grad`` is the gradient of the stage's output and ``x`` its input. relu → pool → norm:
        ``grad`` is the gradient of ``pooled``, the LRN's input (the LRN's backward runs first, as
        ``alexnet::lrn_backward``), and ``x`` is not needed.
        """
        grad = grad.contiguous(memory_format=torch.channels_last)
        dx = torch.empty(tuple(shape), dtype=grad.dtype, memory_format=torch.channels_last)
        if dx.numel():
            args = self._stage_args(shape, idx.shape[2:], stage)
            pointers = (grad.data_ptr(), _ptr(x), _ptr(pooled), idx.data_ptr(), dx.data_ptr())
            if self._vector("stage_backward16", grad.dtype, (*pointers, *args)):
                return dx
            getattr(self.lib, f"stage_backward_{DTYPES[grad.dtype]}")(*pointers, *args)
        return dx

    def first_conv_weight_grad(
        self,
        x: torch.Tensor,
        grad: torch.Tensor,
        weight: torch.Tensor,
        stride: tuple[int, int],
        padding: tuple[int, int],
        bias: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(grad_weight, grad_bias)`` of ``conv2d(x, weight, stride=stride, padding=padding)`` from the output's
        ``grad``: float32, both channels-last, ``weight``'s output channels a multiple of 16
        (:mod:`alexnet.models.first_conv` checks); ``grad_weight`` in ``weight``'s layout."""
        dw = torch.empty_like(weight, memory_format=torch.preserve_format)
        db = torch.empty(weight.shape[0], dtype=weight.dtype) if bias else None
        (n, c, h, w), (oc, oh, ow) = x.shape, grad.shape[1:]
        strides = (ctypes.c_int64 * 4)(*dw.stride())
        done = self.lib.first_conv_weight_grad_f32(
            x.data_ptr(), grad.data_ptr(), dw.data_ptr(), _ptr(db), n, h, w, c, oc, oh, ow,
            *weight.shape[2:], *stride, *padding, strides, torch.get_num_threads(),
        )  # fmt: skip
        if done != 0:
            raise ValueError(f"first_conv_weight_grad: {oc} output channels are not a multiple of 16")
        return dw, db

    def pooled_weight_grad(
        self,
        x: torch.Tensor,
        grad: torch.Tensor,
        pooled: torch.Tensor,
        idx: torch.Tensor,
        weight: torch.Tensor,
        conv_out: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        groups: int,
        pool: tuple[int, int],
        bias: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(grad_weight, grad_bias)`` of ``conv2d(x, weight, ...)`` (output ``conv_out``) followed by ReLU and a
        max-pool (``pool``: kernel, stride) whose maxima are ``idx`` (:meth:`stage`'s) and output ``pooled``, from
        ``grad``, the pooled maps' gradient: float32, channels-last (:mod:`alexnet.models.conv_stage`).
        ``grad_weight`` is in ``weight``'s layout. An image of a few channels (under 16) takes
        ``first_conv_pooled_weight_grad_f32`` (a kernel row of at most 48 floats), more channels
        ``pooled_weight_grad_f32`` (a multiple of 16 a group, at most 128). ``None``, with nothing computed, where
        the kernel does not take the layer."""
        dw = torch.empty_like(weight, memory_format=torch.preserve_format)
        db = torch.empty(weight.shape[0], dtype=weight.dtype) if bias else None
        grad = grad.contiguous(memory_format=torch.channels_last)
        (n, c, h, w), (oc, ph, pw) = x.shape, grad.shape[1:]
        image = groups == 1 and c < 16
        geometry = (n, h, w, c, oc) if image else (n, h, w, c, oc, groups)
        strides = (ctypes.c_int64 * 4)(*dw.stride())
        fn = self.lib.first_conv_pooled_weight_grad_f32 if image else self.lib.pooled_weight_grad_f32
        done = fn(
            x.data_ptr(), grad.data_ptr(), pooled.data_ptr(), idx.data_ptr(), dw.data_ptr(), _ptr(db),
            *geometry, *conv_out, ph, pw, *weight.shape[2:], *stride, *padding, *pool, strides,
            torch.get_num_threads(),
        )  # fmt: skip
        return (dw, db) if done == 0 else None


def weight_grad_kernel() -> Kernel | None:
    """The library when its weight-gradient kernels (``first_conv_cpu.cpp``, ``conv_stage_cpu.cpp``) are the fast
    way on this CPU: built for AVX-512 or for AVX2 with FMA, else ``None`` and the weight gradients stay oneDNN's.

    Their register blocks are sized per instruction set (``vec16.h``). Elsewhere (SSE only, ARM) they are not
    measured. Before session 18 an AVX2 build kept each 16-float vector on the stack and ran at 9 GFLOP/s against
    oneDNN's 150 and more: alexnet trained at half of torchvision's FLOP/s (docs/performance.md, sessions 17–18)."""
    found = kernel()
    return found if found is not None and found.weight_grad_lanes in (8, 16) else None


def vector_stages() -> bool:
    """Whether float32 and bfloat16 conv stages and channels-last LRNs may take the AVX-512 code
    (``stage_forward16_*``, ``stage_backward16_*``, ``lrn_forward16_*``, ``lrn_backward16_*``, where the CPU has it);
    ``ALEXNET_AVX512=0`` keeps them on the generic loops (A/B measurements)."""
    return os.environ.get("ALEXNET_AVX512", "1") != "0"


def channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` as the stage kernels read it: a 4-D tensor dense in channels-last, other tensors as they are. A
    saved-tensor hook may hand a backward its tensors in another layout (``torch.autograd.graph.save_on_cpu``
    gives them back NCHW); for the tensors the forward saved, this is free."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class StageArgs(NamedTuple):
    """A conv stage's ReLU + LRN + max-pool (:mod:`alexnet.models.fused`); ``alpha`` multiplies the window sum."""

    pool_first: bool
    size: int
    alpha: float
    beta: float
    k: float
    kernel_size: int
    stride: int
    ceil_mode: bool


def load(out_dir: Path | None = None) -> Kernel:
    """Build (or reuse) and load the kernel; a cached library that does not load (a truncated file, say) is
    deleted and built again once."""
    path = build(out_dir)
    try:
        return Kernel(path)
    except OSError as err:
        log.warning("cached kernel %s does not load (%s); rebuilding it", path, err)
        path.unlink(missing_ok=True)
        return Kernel(build(out_dir))


@functools.cache
def kernel() -> Kernel | None:
    """The fused CPU LRN kernel, or ``None`` (disabled, no compiler, failed build: logged once)."""
    if os.environ.get("ALEXNET_NATIVE", "1") == "0":
        return None
    try:
        return load()
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        log.warning("fused CPU LRN kernel unavailable, using the PyTorch composition: %s", err)
        return None
