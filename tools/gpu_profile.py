"""Where a bf16 channels-last training step spends its GPU time, and what LRN and the two-tower groups cost.

Times a training step (batch 256, median of 20 after 5 warm-ups) of torchvision's AlexNet and the paper models,
and of AlexNet variants: without LRN, without groups (dense convs, +FLOPs), with the grouped convs left to
cuDNN's grouped kernels (the models run them as block-diagonal dense convs on CUDA in bf16), with each
grouped conv as two dense convs on the channel halves (the paper's two GPUs, AlexNet §3.2), with the conv stages
as modules (no fused kernels), and with conv1 as cuDNN's 3-channel conv instead of space-to-depth. Then the top CUDA
kernels of one step per model (torch.profiler), and with ``--copies MODEL ...`` where each model's copy kernels
come from (the operator that asked for each ``aten::copy_``, its callers and the shapes). With ``--host MODEL ...``
first what a step costs the host: the time to enqueue it while the GPU is kept busy (so the host never waits for
it; a step that took as long as the GPU was kept busy has a synchronisation in it), and the operators with the
most host time of their own.

    python tools/gpu_profile.py [--batch-size 256] [--profile MODEL ...] [--copies MODEL ...] [--host MODEL ...]
        [--only-copies]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

import torch
from torch import nn

from alexnet.factory import create_model
from alexnet.models import build_model, get_config
from alexnet.models.layers import SpaceToDepthConv2d


class SplitConv(nn.Module):
    """A grouped conv as ``groups`` dense convs on channel slices, concatenated (AlexNet §3.2's two towers)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv, self.g = conv, conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        ws, bs, xs = c.weight.chunk(self.g), c.bias.chunk(self.g), x.chunk(self.g, dim=1)
        outs = [
            nn.functional.conv2d(xi, w, b, c.stride, c.padding) for xi, w, b in zip(xs, ws, bs, strict=True)
        ]
        return torch.cat(outs, dim=1)


def conv1_as(model: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """conv1 as ``cls`` (same parameters): ``nn.Conv2d`` is cuDNN's 3-channel conv, ``SpaceToDepthConv2d`` the
    models' form."""
    model.features[0].__class__ = cls
    return model


def conv_as(model: nn.Module, layer: str, cls: type[nn.Module]) -> nn.Module:
    """A named conv as ``cls`` (same parameters), e.g. ZFNet's stride-2 conv2 rearranged as conv1 is."""
    model.layer(layer).__class__ = cls
    return model


def modules_only(model: nn.Module) -> nn.Module:
    """The conv stages as modules: a hook on ``features`` turns the fused stages off."""
    model.features.register_forward_hook(lambda *_: None)
    return model


def swap_grouped(model: nn.Module, cls: type[nn.Module]) -> nn.Module:
    for name, m in list(model.features.named_children()):
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            setattr(model.features, name, cls(m))
    return model


def cudnn_groups(model: nn.Module) -> nn.Module:
    """The tower convs as plain ``nn.Conv2d`` (cuDNN's grouped kernels)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            m.__class__ = nn.Conv2d
    return model


def variants() -> dict[str, nn.Module]:
    import torchvision

    cfg = get_config("alexnet")
    dense = dataclasses.replace(cfg, convs=tuple(dataclasses.replace(c, groups=1) for c in cfg.convs))
    return {
        "torchvision_alexnet": torchvision.models.alexnet(),
        "alexnet": create_model("alexnet"),
        "caffenet": create_model("caffenet"),
        "zfnet": create_model("zfnet"),
        "alexnet_no_lrn": build_model(dataclasses.replace(cfg, lrn=None)),
        "alexnet_groups1_dense": build_model(dense),
        "alexnet_cudnn_groups": cudnn_groups(create_model("alexnet")),
        "alexnet_split_towers": swap_grouped(create_model("alexnet"), SplitConv),
        "alexnet_modules": modules_only(create_model("alexnet")),
        "zfnet_modules": modules_only(create_model("zfnet")),
        "caffenet_modules": modules_only(create_model("caffenet")),
        "zfnet_s2d_conv2": conv_as(create_model("zfnet"), "conv2", SpaceToDepthConv2d),
        "alexnet_cudnn_conv1": conv1_as(create_model("alexnet"), nn.Conv2d),
        "zfnet_cudnn_conv1": conv1_as(create_model("zfnet"), nn.Conv2d),
        "torchvision_s2d_conv1": conv1_as(torchvision.models.alexnet(), SpaceToDepthConv2d),
    }


def step_fn(model: nn.Module, batch: int, size: int):
    model = model.cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    return step


def time_ms(step, repeats: int = 20, warmup: int = 5) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def copy_sources(step, device_time: bool = True, top: int = 16) -> list[str]:
    """Lines naming where a step's ``aten::copy_`` time goes: per (caller chain, shapes), ms per step and calls.

    The caller chain is the profiler's operator nesting (three levels up), with the last frame of this package
    when Python called it, so a copy inside cuDNN's convolution backward and a ``.contiguous()`` in our code are
    told apart."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_time else [])
    with profile(activities=acts, record_shapes=True, with_stack=True) as prof:
        for _ in range(3):
            step()
        if device_time:
            torch.cuda.synchronize()
    totals: dict[tuple[str, str], list[float]] = {}
    for e in prof.events():
        if e.name != "aten::copy_":
            continue
        chain, p = [], e.cpu_parent
        while p is not None and len(chain) < 3:
            chain.append(p.name.replace("autograd::engine::evaluate_function: ", "bwd:"))
            p = p.cpu_parent
        frame = next((f for f in (e.stack or []) if "alexnet" in f and "gpu_profile" not in f), "")
        key = (" < ".join(chain) + (f" @ {frame.split('/')[-1]}" if frame else ""), str(e.input_shapes))
        t = e.device_time_total if device_time else e.cpu_time_total
        totals.setdefault(key, [0.0, 0])
        totals[key][0] += t
        totals[key][1] += 1
    rows = sorted(totals.items(), key=lambda kv: kv[1][0], reverse=True)[:top]
    return [f"{t / 3 / 1e3:8.3f} {n // 3:3d}  {chain}  {shapes}" for (chain, shapes), (t, n) in rows]


@functools.cache
def _sleep_cycles_per_ms() -> float:
    """GPU clock cycles per millisecond, timed with ``torch.cuda._sleep`` (a kernel that spins for a cycle count)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(1_000_000)  # the first launch loads the kernel
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def host_ms(step, repeats: int = 10, busy_ms: float = 80.0) -> tuple[float, bool]:
    """``(median ms the host takes to enqueue one step, whether a step waited for the GPU)``.

    Before each timed step the GPU gets ``busy_ms`` of spinning, so the step's launches queue up behind it and
    the time measured is the host's own: Python, the dispatcher, autograd, the launches. A step whose enqueueing
    took most of ``busy_ms`` waited for the GPU: something in it synchronises (a ``.item()``, a pageable copy)."""
    cycles = int(_sleep_cycles_per_ms() * busy_ms)
    step()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda._sleep(cycles)
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        torch.cuda.synchronize()
    return 1e3 * statistics.median(times), max(times) * 1e3 > 0.8 * busy_ms


def host_ops(step, steps: int = 3, top: int = 20, busy: bool = True) -> tuple[float, list[str]]:
    """``(ms of host time per step over all operators, lines)``: the operators with the most host time of their
    own (``self_cpu_time_total``, per step, and calls per step), under torch.profiler's CPU activity. The
    profiler adds its own cost to each operator, so read the shares, not the absolute numbers. With ``busy``
    (CUDA) the GPU is kept busy first, so that no operator's time is a wait for it."""
    from torch.profiler import ProfilerActivity, profile

    if busy:
        torch.cuda._sleep(int(_sleep_cycles_per_ms() * 50 * steps))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    if busy:
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    lines = [
        f"{e.self_cpu_time_total / steps / 1e3:8.3f} {e.count // steps:4d}  {e.key[:90]}"
        for e in events[:top]
    ]
    return total, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--profile", nargs="*", default=["torchvision_alexnet", "alexnet", "zfnet"], metavar="MODEL"
    )
    p.add_argument("--copies", nargs="*", default=[], metavar="MODEL")
    p.add_argument(
        "--host", nargs="*", default=[], metavar="MODEL", help="the host's time per step, and its operators"
    )
    p.add_argument("--only-copies", action="store_true", help="skip the timings and the kernel tables")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = True
    steps = {}
    models = variants()
    for name in args.copies:
        model = models[name]
        step = step_fn(model, args.batch_size, getattr(model, "default_input_size", 224))
        time_ms(step, repeats=1, warmup=3)
        print(f"\n--- {name}: aten::copy_ per training step (ms, calls, caller < its caller ..., shapes)")
        print("\n".join(copy_sources(step)), flush=True)
    for name in args.host:
        model = models[name]
        step = step_fn(model, args.batch_size, getattr(model, "default_input_size", 224))
        time_ms(step, repeats=1, warmup=3)
        ms, waited = host_ms(step)
        total, lines = host_ops(step)
        print(
            f"\n--- {name}: the host enqueues a step in {ms:.2f} ms"
            + (" (a step waited for the GPU: something in it synchronises)" if waited else "")
            + f"; profiled, {total:.2f} ms of operator time per step; top (ms per step, calls per step)"
        )
        print("\n".join(lines), flush=True)
    if args.only_copies:
        return
    print(f"{'variant':<24}{'ms/step':>9}{'img/s':>10}")
    for name, model in models.items():
        size = getattr(model, "default_input_size", 224)
        steps[name] = step_fn(model, args.batch_size, size)
        ms = time_ms(steps[name])
        print(f"{name:<24}{ms:>9.2f}{args.batch_size / ms * 1e3:>10.0f}", flush=True)
    from torch.profiler import ProfilerActivity, profile

    for name in args.profile:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                steps[name]()
            torch.cuda.synchronize()
        events = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)
        total = sum(e.self_device_time_total for e in events) / 3 / 1e3
        print(f"\n--- {name}: {total:.2f} ms of kernels per step; top kernels (ms per step, calls per step)")
        for e in events[:14]:
            print(f"{e.self_device_time_total / 3 / 1e3:8.3f} {e.count // 3:3d}  {e.key[:100]}")


if __name__ == "__main__":
    main()
