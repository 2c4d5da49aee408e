"""tools/: the photo-JPEG folder and the worker rate for pipeline benchmarks, tools/gpu_profile.py's model
variants (each must compute the network it claims to, so that its timings compare like with like),
tools/cpu_profile.py's table, and tools/triton_sass.py's instruction counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def test_make_jpegs_writes_an_imagenet_like_folder(tmp_path):
    root = tmp_path / "jpegs"
    proc = subprocess.run(
        [sys.executable, str(TOOLS / "make_jpegs.py"), str(root), "--images", "12", "--classes", "3"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    train = sorted((root / "train").rglob("*.jpg"))
    assert len(train) == 12 and {p.parent.name for p in train} == {"class000", "class001", "class002"}
    assert len(list((root / "val").rglob("*.jpg"))) == 3
    for path in train:
        with Image.open(path) as im:
            assert im.format == "JPEG" and 400 <= im.width <= 500 and 300 <= im.height <= 500


def test_attribution_rate_times_ours_against_captums_on_the_same_numbers():
    """tools/attribution_rate.py: one line per attribution, both times positive, ours and Captum's agreeing."""
    import pytest

    pytest.importorskip("captum")
    command = [sys.executable, str(TOOLS / "attribution_rate.py"), "--models", "alexnet_owt"]
    proc = subprocess.run(
        [*command, "--batch-size", "2", "--repeats", "1"], capture_output=True, text=True, check=True
    )
    lines = proc.stdout.splitlines()[1:]
    whats = [line.split(" ours ")[0].split(None, 1)[1].strip() for line in lines]
    assert whats == [
        "guided backprop",
        "Guided Grad-CAM",
        "Grad-CAM",
        "IG, 16 steps",
        "SmoothGrad, 16",
        "LRP-ε",
    ]
    rows = [line.split() for line in lines]
    for r in rows:
        assert float(r[r.index("ours") + 1]) > 0 and float(r[r.index("captum") + 1]) > 0
        assert float(r[r.index("apart") + 1]) < 1e-4  # alexnet_owt: no max-pool near-tie at this seed


def test_worker_rate_times_the_files_then_the_packed_store(tmp_path):
    from alexnet.data.packed import pack

    root = tmp_path / "jpegs"
    subprocess.run(
        [sys.executable, str(TOOLS / "make_jpegs.py"), str(root), "--images", "8", "--classes", "2"],
        check=True,
    )
    command = [sys.executable, str(TOOLS / "worker_rate.py"), str(root), "--images", "8", "--batch-size", "4"]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "files :" in proc.stdout and "no store" in proc.stdout
    pack(root, "train", progress=False)
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines] == ["files", "packed"]
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in lines)
    # through a DataLoader with two worker processes: the rate per worker, and the main thread's CPU per batch
    proc = subprocess.run(
        [*command, "--loader", "--workers", "2"], capture_output=True, text=True, check=True
    )
    rates = [line for line in proc.stdout.splitlines() if "main thread" not in line]
    assert [line.split(":")[0].strip() for line in rates] == ["files", "packed"]
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in rates)
    assert proc.stdout.count("ms CPU per batch received") == 2
    if not torch.cuda.is_available():  # pinned memory is the GPU driver's: a clear refusal without one
        proc = subprocess.run([*command, "--loader", "--pin"], capture_output=True, text=True, check=False)
        assert proc.returncode == 2 and "--pin needs --loader and a CUDA GPU" in proc.stderr


def test_profile_variants_compute_the_same_network(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import gpu_profile

    from alexnet.factory import create_model

    torch.manual_seed(0)
    reference = create_model("alexnet").eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        expected = reference(x)
        for variant in (
            gpu_profile.cudnn_groups,
            lambda m: gpu_profile.swap_grouped(m, gpu_profile.SplitConv),
        ):
            model = create_model("alexnet").eval()
            model.load_state_dict(reference.state_dict())
            torch.testing.assert_close(variant(model)(x), expected, rtol=1e-4, atol=1e-5)
    zfnet = create_model("zfnet").eval()
    rearranged = gpu_profile.conv_as(create_model("zfnet").eval(), "conv2", gpu_profile.SpaceToDepthConv2d)
    rearranged.load_state_dict(zfnet.state_dict())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(rearranged(x), zfnet(x), rtol=1e-4, atol=1e-5)


def test_copy_sources_names_the_operator_that_copied_and_the_shape(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import gpu_profile

    a = torch.randn(64, 48)

    def step() -> None:
        a.t().contiguous()

    lines = gpu_profile.copy_sources(step, device_time=False)
    assert len(lines) == 1
    ms, calls, chain = lines[0].split(maxsplit=2)
    assert float(ms) >= 0 and calls == "1"
    assert chain.startswith("aten::clone < aten::contiguous") and "[48, 64]" in chain


def test_host_ops_lists_the_operators_by_their_own_host_time(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import gpu_profile

    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def step() -> None:
        for _ in range(4):
            torch.mm(a, b)
        torch.relu(a)

    total, lines = gpu_profile.host_ops(step, steps=2, busy=False)
    rows = {line.split()[2]: line.split() for line in lines}
    assert rows["aten::mm"][1] == "4" and rows["aten::relu"][1] == "1"  # calls per step
    assert float(rows["aten::mm"][0]) > 0
    # the lines are shares of the total, each printed to 3 decimals (half a unit of rounding a line)
    assert total >= sum(float(r[0]) for r in rows.values()) - 0.0005 * len(rows)


def test_cpu_profile_tunes_the_allocator_and_shows_the_first_stage_kernel(monkeypatch, capsys):
    """tools/cpu_profile.py profiles the bench's step with the allocator the commands use, per model."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import cpu_profile

    from alexnet import malloc
    from alexnet.models import native

    monkeypatch.setattr(malloc, "state", "glibc defaults")
    cpu_profile.main(["zfnet", "--batch-size", "2", "--steps", "1", "--rows", "60"])
    out = capsys.readouterr().out
    assert out.startswith(f"allocator: {malloc.state};") and malloc.state != "glibc defaults"
    header, *rows = out.split("\n\n")[0].split("\n")[1:]
    assert header.startswith("zfnet train, batch 2:") and "ms of CPU time per step (1 step)" in header
    names = [row.split("%", 1)[1].split()[0] for row in rows]
    assert "aten::convolution_backward" in names
    if native.weight_grad_kernel() is not None:  # conv1 + relu → pool → norm in CPU training (first_stage.py)
        assert "_FirstStageBackward" in names


def test_triton_sass_counts_the_stage_kernels_instructions_for_an_h100(tmp_path):
    """tools/triton_sass.py compiles the kernels for sm_90 without a GPU (Triton's own ptxas) and counts what one
    thread executes, loops by their trip counts. The variants do what docs/performance.md (Session 19) says
    they do: relu → norm → pool's backward with the kept denominators executes fewer instructions than the one
    that recomputes them, and the forward that walks down the rows fewer per pooled value than the one that
    evaluates every window position; a wrong loop count is an error, not a number."""
    script = """
import triton_sass as t
from alexnet.models import stage_triton as s
w = dict(K=3, S=2, BEFORE=2, AFTER=2, NORM=True, BLOCK_C=128, FAST=False)
for kept in (False, True):
    print(sum(t.executed(t.compile_sm90(s._backward, w | dict(BLOCK_P=8, KEPT=kept, PASS=p), 8), {0: []})[0]
              for p in (0, 1)))
forward = w | dict(BLOCK_P=16, TRAIN=True, KEEP=False)
print(t.executed(t.compile_sm90(s._forward, forward, 8), 3)[0])
rows = t.compile_sm90(s._forward_rows, forward | dict(ROWS=7), 8)
print(t.executed(rows, {4: [3, 7, 2, 3]})[0] / 7)  # seven pooled rows per column of the tile
try:
    t.executed(rows, {2: [3, 3]})
except ValueError:
    print("refused")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(TOOLS), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    recomputed, kept, window, walking, refused = done.stdout.split()
    assert 0 < int(kept) < int(recomputed)
    assert 0 < float(walking) < 0.8 * int(window)
    assert refused == "refused"


def test_host_step_counts_a_cuda_steps_operators_on_fake_tensors_and_times_narrow_steps(monkeypatch):
    """tools/host_step.py: without a GPU, a CUDA training step's operators as a GPU would dispatch them (the
    fused stages as one operator each, the towers' block-diagonal weights, torchvision's three max-pools), and
    the host's ms per step of narrow models."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import host_step

    ops, nodes = host_step.cuda_ops("alexnet", 4)
    assert ops["alexnet.relu_lrn_pool_train"] == 2 and ops["aten.max_pool2d_with_indices"] == 1  # pool5
    # the towers' dense weights (conv2, conv4, conv5) and conv1's rearranged image, each from zeros
    assert ops["aten.convolution"] == 5 and ops["aten.zero_"] == 3 and ops["aten.new_zeros"] == 1
    assert nodes["ConvolutionBackward0"] == 5 and nodes["AccumulateGrad"] == 16
    ops, _ = host_step.cuda_ops("torchvision_alexnet", 4)
    assert ops["aten.max_pool2d_with_indices"] == 3 and not any(k.startswith("alexnet.") for k in ops)
    times = host_step.host_ms(["alexnet_owt", "zfnet"], amp=True, rounds=1, steps=2)
    assert all(len(t) == 1 and t[0] > 0 for t in times.values())
