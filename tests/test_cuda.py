"""CUDA: the LRN operator's Triton kernels against the formula and the composed ops, whole models against the
CPU, bf16 channels-last training steps, batched nvJPEG decoding against the CPU loader, and a short
`alexnet train --gpu-augment` / `--gpu-decode` run. Skipped on machines without a GPU (CI); tools/gpu_check.sh runs them."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from alexnet.factory import create_model  # noqa: E402
from alexnet.models.layers import (  # noqa: E402
    local_response_norm,
    lrn_backward_composed,
    lrn_composed,
    lrn_reference,
    triton_for,
)

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 means fp32 here: no TF32 tensor cores, so CPU and GPU results agree to fp32 rounding."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("size", "alpha", "k"), [(5, 1e-4, 2.0), (5, 1e-4 / 5, 1.0), (4, 0.05, 1.0)])
def test_lrn_operator_on_cuda_matches_the_formula(channels_last, size, alpha, k):
    torch.manual_seed(0)
    x = torch.randn(4, 96, 27, 27, device=CUDA) * 30  # conv-sized activations: the normalisation bites
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert triton_for(x) is not None  # the fast path is what runs
    x.requires_grad_()
    y = local_response_norm(x, size, alpha, 0.75, k)
    g = torch.randn_like(y)
    y.backward(g)
    xd = x.detach().double().requires_grad_()
    ref = lrn_reference(xd, size, alpha, 0.75, k)
    ref.backward(g.double())
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xd.grad, rtol=1e-5, atol=1e-5)
    # the composed ops on the same device agree too
    xc = x.detach()
    torch.testing.assert_close(lrn_composed(xc, size, alpha, 0.75, k), y.detach(), rtol=1e-5, atol=1e-5)
    back = lrn_backward_composed(g, xc, y.detach(), size, alpha, 0.75, k)
    torch.testing.assert_close(back, x.grad, rtol=1e-4, atol=1e-5)


def test_lrn_operator_passes_opcheck_on_cuda():
    x = torch.randn(2, 16, 5, 5, device=CUDA, requires_grad=True)
    torch.library.opcheck(torch.ops.alexnet.lrn.default, (x, 5, 1e-2, 0.75, 2.0))


def test_lrn_in_place_inference_on_cuda():
    x = torch.randn(2, 256, 13, 13, device=CUDA).contiguous(memory_format=torch.channels_last) * 10
    expected = lrn_reference(x.double(), 5, 1e-4, 0.75, 2.0)
    with torch.inference_mode():
        out = local_response_norm(x, 5, 1e-4, 0.75, 2.0, inplace=True)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_tower_conv_under_bf16_autocast_is_the_grouped_conv():
    from alexnet.models.layers import GroupedConv2d

    torch.manual_seed(0)
    conv = GroupedConv2d(96, 256, 5, padding=2, groups=2).to(CUDA)
    x = torch.randn(8, 96, 27, 27, device=CUDA).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fast = conv(x)  # the block-diagonal dense path
    grouped = torch.nn.functional.conv2d(
        x.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), padding=2, groups=2
    )
    torch.testing.assert_close(fast.float(), grouped.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_first_conv_under_bf16_autocast_is_the_strided_conv(name, monkeypatch):
    torch.manual_seed(0)
    model = create_model(name).to(CUDA)
    conv = model.features[0]
    size = model.default_input_size
    x = torch.randn(8, 3, size, size, device=CUDA).contiguous(memory_format=torch.channels_last)
    results = []
    for s2d in ("1", "0"):
        monkeypatch.setenv("ALEXNET_S2D", s2d)
        conv.weight.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert conv._rearranged(x) == (s2d == "1")
            y = conv(x)
        y.float().square().sum().backward()
        results.append((y.float(), conv.weight.grad.clone()))
    (fast, fast_grad), (plain, plain_grad) = results
    torch.testing.assert_close(fast, plain, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(fast_grad, plain_grad, rtol=2e-2, atol=2e-2 * plain_grad.abs().max().item())


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_models_on_cuda_compute_what_they_compute_on_cpu(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.randn(2, 3, model.default_input_size, model.default_input_size)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to(CUDA).to(memory_format=torch.channels_last)(
            x.to(CUDA).contiguous(memory_format=torch.channels_last)
        )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_bf16_channels_last_training_steps_on_cuda_learn(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).to(CUDA).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
    size = model.default_input_size
    x = torch.randn(16, 3, size, size, device=CUDA).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=CUDA)
    losses = []
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # it fits a fixed batch


@pytest.mark.parametrize("name", ["alexnet", "caffenet"])
def test_a_training_step_captured_as_a_cuda_graph_is_the_eager_step(name):
    """`alexnet bench --cuda-graph`: the replayed step (Triton stages, towers, conv1 rearranged, fused SGD) takes
    the same steps as the eager one; dropout off, so both see the same numbers."""
    from alexnet.bench import _step_fn, graphed
    from alexnet.models import build_model

    def setup():
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, dropout=0.0)
        model = model.to(CUDA).to(memory_format=torch.channels_last)
        size = model.default_input_size
        x = torch.randn(8, 3, size, size, device=CUDA).contiguous(memory_format=torch.channels_last)
        return model, x, torch.randint(0, 10, (8,), device=CUDA)

    model, x, y = setup()
    eager = _step_fn(model, "train", x, y, amp=True)
    losses = [eager().item() for _ in range(6)]  # 3 warm-up steps and 3 replays below
    model_g, xg, yg = setup()
    replay = graphed(_step_fn(model_g, "train", xg, yg, amp=True, cache_casts=False), CUDA, warmup=3)
    replayed = [replay().item() for _ in range(3)]
    torch.testing.assert_close(torch.tensor(replayed), torch.tensor(losses[3:]), rtol=2e-2, atol=2e-2)
    assert replayed[-1] < losses[0]  # the replays updated the weights
    for p, q in zip(model_g.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-3)


def test_bench_rows_with_cuda_graphs():
    from alexnet.bench import format_report, run_bench

    report = run_bench(["alexnet"], batch_size=8, device="cuda", repeats=2, warmup=1, amp=True,
                       channels_last=True, memory=False, cuda_graph=True)  # fmt: skip
    assert [(r.model, r.mode) for r in report.rows] == [
        ("torchvision_alexnet", "train"), ("alexnet", "train"),
        ("torchvision_alexnet", "infer"), ("alexnet", "infer"),
    ]  # fmt: skip
    assert all(r.images_per_s > 0 for r in report.rows)
    assert report.settings["cuda_graph"] and "one CUDA graph replayed" in format_report(report)


def _step(model: torch.nn.Module, x: torch.Tensor, fuse: str, amp: bool, monkeypatch) -> tuple:
    """Logits and parameter gradients of one step, and how many fused training stages ran."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        stages = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.stages += str(func.overloadpacket) == "alexnet.relu_lrn_pool_train"
            return func(*args, **(kwargs or {}))

    monkeypatch.setenv("ALEXNET_FUSE", fuse)
    model.zero_grad()
    with Count(), torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    logits.double().logsumexp(1).sum().backward()
    # copies: .double()/.cpu() return the grad itself for a CPU float64 model, and moving the model moves it
    grads = [p.grad.double().cpu().clone() for p in model.parameters()]
    return logits.detach().double().cpu(), grads, Count.stages


def _error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "zfnet"])
def test_fused_triton_stages_are_as_accurate_as_the_modules_on_cuda(name, monkeypatch):
    """Against a float64 CPU step (eval mode: no dropout; the stages still take the training kernels), the fused
    stages' logits and gradients are as close as the modules'. (cuDNN's fp32 grouped weight gradient alone is
    1e-3 off in places, run to run, so the paths are compared with the truth rather than with each other.)"""
    torch.manual_seed(0)
    model = create_model(name).eval()
    size = model.default_input_size
    x = (torch.randn(4, 3, size, size) * 2).contiguous(memory_format=torch.channels_last)
    truth_logits, truth, _ = _step(model.double(), x.double(), "0", False, monkeypatch)
    model = model.float().to(CUDA).to(memory_format=torch.channels_last)
    for amp in (False, True):
        fast_logits, fast, stages = _step(model, x.to(CUDA), "1", amp, monkeypatch)
        slow_logits, slow, none = _step(model, x.to(CUDA), "0", amp, monkeypatch)
        assert (stages, none) == (2, 0)  # both conv stages ran fused, and only when asked
        floor = 2e-2 if amp else 1e-5
        pairs = [(fast_logits, slow_logits, truth_logits), *zip(fast, slow, truth, strict=True)]
        for got, modules, want in pairs:
            assert _error(got, want) <= max(floor, 2 * _error(modules, want))


def test_fused_triton_stage_inference_matches_the_modules_on_cuda(monkeypatch):
    torch.manual_seed(0)
    model = create_model("alexnet").eval().to(CUDA).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 227, 227, device=CUDA).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        fast = model(x)
        monkeypatch.setenv("ALEXNET_FUSE", "0")
        slow = model(x)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pool_first", [False, True])
def test_fused_stage_operators_pass_opcheck_on_cuda(pool_first):
    from alexnet.models import fused

    x = (torch.randn(2, 16, 13, 13, device=CUDA) * 10).contiguous(memory_format=torch.channels_last)
    args = (pool_first, 5, 1e-4, 0.75, 2.0, 3, 2, True)
    torch.library.opcheck(fused.relu_lrn_pool, (x, *args))
    torch.library.opcheck(torch.ops.alexnet.relu_lrn_pool_train.default, (x.requires_grad_(), *args))


def test_compiled_model_on_cuda_matches_eager():
    torch.manual_seed(0)
    model = create_model("alexnet").to(CUDA).eval()
    x = torch.randn(4, 3, 227, 227, device=CUDA)
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)


def test_gpu_augmented_batches_equal_the_cpu_loaders(photo_root):
    """--gpu-augment: the workers' patches are the CPU loader's; crop, mirror, lighting per sample on the GPU."""
    from alexnet.data.folders import ImageFolder
    from alexnet.data.loader import make_loader
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import train_transform

    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    cpu = list(make_loader(ds, 8, train=True, seed=1, pin_memory=False))
    gpu = list(make_loader(ds, 8, train=True, seed=1, workers=2, augment_device="cuda"))
    assert len(cpu) == len(gpu) > 0
    for (x1, y1), (x2, y2) in zip(cpu, gpu, strict=True):
        assert x2.is_cuda and torch.equal(y1, y2.cpu())
        torch.testing.assert_close(x2.cpu(), x1, rtol=0, atol=1e-5)


def test_nvjpeg_batches_match_the_cpu_loader(photo_root):
    """Same crops, mirrors and lighting per sample; pixels differ only by the decoders' and resamplers'
    rounding (nvJPEG's IDCT and a float resize on the GPU, libjpeg and uint8 resize on the CPU)."""
    from alexnet.data.folders import ImageFolder
    from alexnet.data.loader import make_loader
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import train_transform

    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()), min_side=None)
    cpu = list(make_loader(ds, 8, train=True, seed=1, pin_memory=False))
    gpu = list(
        make_loader(ds, 8, train=True, seed=1, workers=2, augment_device="cuda", decode_on_device=True)
    )
    assert len(cpu) == len(gpu) > 0
    for (x1, y1), (x2, y2) in zip(cpu, gpu, strict=True):
        assert x2.is_cuda and torch.equal(y1, y2.cpu())
        diff = (x2.cpu() - x1).abs()
        # normalised units: one uint8 level is ~0.017; the same crop of the same photo stays within a few
        assert diff.mean() < 0.03, diff.mean()
        assert torch.quantile(diff.flatten()[::97], 0.99) < 0.15


@pytest.mark.parametrize("flag", ["--gpu-augment", "--gpu-decode", "--no-gpu-augment"])
def test_train_on_each_cuda_input_pipeline_runs_end_to_end(photo_root, tmp_path, flag, run_alexnet):
    """The GPU's pipelines, and the workers' own (--no-gpu-augment; unset, a CUDA run augments on the GPU)."""
    out = tmp_path / "run"
    proc = run_alexnet(
        "train", "--model", "alexnet", "--data", str(photo_root), "--out", str(out), "--device", "cuda", flag,
        "--amp", "--batch-size", "8", "--max-steps", "3", "--workers", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("prefetch", ["1", "0"])
def test_batches_delivered_ahead_on_a_side_stream_are_the_cpu_loaders(photo_root, prefetch, monkeypatch):
    """alexnet.data.ahead: the batch the compute stream reads is complete, and its memory is not reused by the
    side stream while a slow step still reads it (each step here sleeps on the GPU before it reads its batch)."""
    from alexnet.data.ahead import PREFETCH_ENV
    from alexnet.data.folders import ImageFolder
    from alexnet.data.loader import make_loader
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import train_transform

    monkeypatch.setenv(PREFETCH_ENV, prefetch)
    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    cpu = list(make_loader(ds, 4, train=True, seed=1, pin_memory=False))
    for kwargs in ({"device": CUDA, "pin_memory": True}, {"augment_device": "cuda"}):
        sums, targets = [], []
        for x, y in make_loader(ds, 4, train=True, seed=1, workers=2, **kwargs):
            assert x.is_cuda and y.is_cuda
            torch.cuda._sleep(20_000_000)  # a long step on the compute stream, queued before it reads x
            sums.append(x.double().sum(dim=(1, 2, 3)))
            targets.append(y)
        assert len(sums) == len(cpu) > 1
        for (x1, y1), s, y in zip(cpu, sums, targets, strict=True):
            assert torch.equal(y.cpu(), y1)
            torch.testing.assert_close(s.cpu(), x1.double().sum(dim=(1, 2, 3)), rtol=1e-6, atol=1e-2)


def test_a_non_finite_loss_on_cuda_skips_the_fused_update_without_a_host_read():
    """alexnet.train.loss_reader on CUDA (lag 1): the update of the bad step and of the next are skipped on the
    device; the bad step's record says so one step later."""
    from alexnet.train.distributed import DistInfo
    from alexnet.train.loss_reader import LossReader, StepRecord

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    reader = LossReader(opt, DistInfo(device=CUDA), lag=1)
    x, y = torch.randn(16, 8, device=CUDA), torch.randint(0, 4, (16,), device=CUDA)
    records, seen = [], None
    for step in range(4):
        if step == 2:
            seen = model.weight.detach().clone()
        loss = torch.nn.functional.cross_entropy(model(x), y) * (float("nan") if step == 2 else 1.0)
        records += reader.push(loss, StepRecord(step, 0, 0.1, x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    records += reader.flush()
    assert [r.step for r in records] == [0, 1, 2, 3]
    assert [r.finite for r in records] == [True, True, False, True]
    assert torch.equal(model.weight, seen)


def test_training_end_to_end_on_cuda_reads_its_losses_late_and_logs_every_step(
    photo_root, tmp_path, run_alexnet
):
    """The loop's default on CUDA (lag 1, batches ahead): the same steps are logged, with finite losses."""
    import csv

    out = tmp_path / "run"
    proc = run_alexnet(
        "train", "--model", "alexnet", "--data", str(photo_root), "--out", str(out), "--device", "cuda", "--amp",
        "--batch-size", "4", "--max-steps", "5", "--workers", "2", "--checkpoint-every", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with (out / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)


def test_pinning_a_pooled_batch_frees_its_slot_at_once(photo_root):
    """alexnet.data.shm_pool on the pinned path: the pin thread copies the patches and frees the slot, so the
    workers keep refilling a few buffers while the batches are used on the GPU."""
    import gc

    from alexnet.data.folders import ImageFolder
    from alexnet.data.loader import make_loader
    from alexnet.data.preprocess import Preprocessing
    from alexnet.data.transforms import train_transform

    ds = ImageFolder(photo_root, "train", train_transform(Preprocessing()))
    loader = make_loader(ds, 4, train=True, seed=1, workers=2, augment_device="cuda")
    pool = loader.collate_fn.keywords["pool"]
    held = [x for x, _ in loader]  # the batches on the GPU are kept; their slots are not
    gc.collect()
    assert len(held) > 1 and pool.in_use() == 0


@pytest.mark.parametrize("ten_crop", [False, True])
def test_evaluate_on_cuda_counts_what_the_cpu_counts(photo_root, ten_crop):
    """alexnet eval on CUDA: centre crops finished on the GPU, sums kept on the device, one read at the end."""
    from alexnet.evaluate import evaluate

    torch.manual_seed(0)
    model = create_model("alexnet", num_classes=2).eval()
    cpu = evaluate(model, photo_root, ten_crop=ten_crop, batch_size=4, workers=2, progress=False)
    gpu = evaluate(
        model, photo_root, ten_crop=ten_crop, batch_size=4, workers=2, device="cuda", progress=False
    )
    assert gpu.images == cpu.images == 14 and gpu.skipped == cpu.skipped == 0
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-3)  # the same probabilities, fp32 rounding aside
    # an untrained model's two classes are near ties: rounding may flip one image
    assert abs(gpu.top1_err - cpu.top1_err) <= 1 / 14 + 1e-9 and gpu.top5_err == cpu.top5_err == 0


def test_visualisations_on_cuda_compute_what_they_compute_on_the_cpu(photo_root, tmp_path):
    """`alexnet visualize --device cuda`: activations, deconvnet projections, occlusion, top-9 with decoding
    workers (pinned batches) and retrieval's gallery, each against the same model on the CPU."""
    import copy

    from alexnet.analysis.features import extract_features
    from alexnet.inputs import prepare
    from alexnet.models.capture import capture
    from alexnet.visualize.deconvnet import deconvnet_strongest
    from alexnet.visualize.occlusion import occlusion
    from alexnet.visualize.topk import folder_items, stream_topk

    torch.manual_seed(0)
    cpu = create_model("alexnet").eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    items = folder_items(photo_root, "val")
    x = torch.stack([prepare(cpu, path).tensor for path, _ in items[:4]])
    a, b = capture(cpu, x, ["norm1", "relu7"]), capture(gpu, x, ["norm1", "relu7"])
    for layer in a:
        assert b[layer].device.type == "cpu"
        torch.testing.assert_close(b[layer], a[layer], rtol=1e-4, atol=1e-4)
    d_cpu, d_gpu = deconvnet_strongest(cpu, x, "pool2", 7), deconvnet_strongest(gpu, x, "pool2", 7)
    assert torch.equal(d_gpu.units, d_cpu.units)
    torch.testing.assert_close(d_gpu.images, d_cpu.images, rtol=1e-3, atol=1e-3)
    o_cpu = occlusion(cpu, x[0], size=64, stride=48, batch_size=8)
    o_gpu = occlusion(gpu, x[0], size=64, stride=48, batch_size=8)
    assert o_gpu.target == o_cpu.target and o_gpu.channel == o_cpu.channel
    torch.testing.assert_close(
        torch.from_numpy(o_gpu.probability), torch.from_numpy(o_cpu.probability), atol=1e-4, rtol=1e-3
    )
    t_cpu = stream_topk(cpu, items, "conv5", k=3, batch_size=4)
    t_gpu = stream_topk(gpu, items, "conv5", k=3, batch_size=4, workers=2)
    assert (t_gpu.seen, t_gpu.skipped) == (t_cpu.seen, t_cpu.skipped) == (14, 0)
    torch.testing.assert_close(
        torch.from_numpy(t_gpu.values), torch.from_numpy(t_cpu.values), rtol=1e-4, atol=1e-4
    )
    files = [path for path, _ in items]
    g_cpu = extract_features(cpu, files, shard=5)
    g_gpu = extract_features(gpu, files, shard=5, workers=2, cache_dir=tmp_path)
    torch.testing.assert_close(g_gpu.features, g_cpu.features, rtol=1e-4, atol=1e-4)


def test_the_class_attributions_on_cuda_compute_what_they_compute_on_the_cpu():
    """Guided backpropagation of a class, Guided Grad-CAM, integrated gradients and SmoothGrad (its noise drawn on
    the CPU, so the same copies) with the model on the GPU: CPU tensors back, the CPU's numbers (float64 and no
    LRN: no max-pool near-tie parts the two devices' paths)."""
    import copy

    from alexnet.visualize.deconvnet import class_projection
    from alexnet.visualize.gradcam import gradcam
    from alexnet.visualize.integrated import integrated_gradients
    from alexnet.visualize.smoothgrad import smoothgrad

    torch.manual_seed(0)
    cpu = create_model("alexnet_owt", num_classes=10, init="pytorch").eval().double()
    gpu = copy.deepcopy(cpu).to(CUDA)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    results = [
        [
            class_projection(model, x, [3, 7], "guided").images,
            gradcam(model, x, "relu5", [3, 7], guided=True).guided_gradcam(),
            integrated_gradients(model, x, [3, 7], steps=4).attributions,
            smoothgrad(model, x, [3, 7], samples=3).attributions,
        ]
        for model in (cpu, gpu)
    ]
    for a, b in zip(*results, strict=True):
        assert b.device.type == "cpu"
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * float(a.abs().max()))


def test_lrp_and_region_perturbation_on_cuda_compute_what_they_compute_on_the_cpu():
    """LRP's three presets (z^B's box moved to the GPU with the images) and a region perturbation of their maps
    and the gradient's, the noise and the random order drawn on the CPU: CPU tensors back, the CPU's numbers
    (float64, alexnet_owt: no max-pool near-tie parts the two devices' paths)."""
    import copy

    from alexnet.visualize.lrp import lrp
    from alexnet.visualize.perturbation import region_perturbation

    torch.manual_seed(0)
    cpu = create_model("alexnet_owt", num_classes=10, init="pytorch").eval().double()
    gpu = copy.deepcopy(cpu).to(CUDA)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    for rule in ("composite", "epsilon", "alpha1beta0"):
        a, b = (lrp(model, x, [3, 7], rule).attributions for model in (cpu, gpu))
        assert b.device.type == "cpu"
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * float(a.abs().max()))
    methods = ["random", "gradient", "lrp"]
    a, b = (region_perturbation(m, x, [3, 7], methods, region=32, steps=6).outputs for m in (cpu, gpu))
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_an_optimised_image_on_cuda_climbs_as_on_the_cpu():
    """Yosinski et al. §3 on the GPU: the first step's activation is the CPU's (the same start), the unit rises,
    the pixels stay in 0–255. The paths part after a few steps (near-ties in a max-pool; tests say why)."""
    import copy

    from alexnet.visualize.maximize import maximize, preset

    torch.manual_seed(0)
    cpu = create_model("alexnet", num_classes=10, init="pytorch").eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    settings = preset(3, steps=20, lr=20.0)
    a, b = maximize(cpu, "fc8", [1, 4], settings=settings), maximize(gpu, "fc8", [1, 4], settings=settings)
    assert b.pixels.device.type == "cpu"
    torch.testing.assert_close(b.objective[:, 0], a.objective[:, 0], rtol=1e-3, atol=1e-4)
    assert (b.best > b.objective[:, 0]).all() and (b.first_top >= 0).all()
    assert b.pixels.min() >= 0 and b.pixels.max() <= 255


def test_a_linear_probe_on_cuda_scores_what_it_scores_on_the_cpu(photo_root, tmp_path):
    """ZF Table 7 with the features and both classifiers (float64 products, Cholesky, L-BFGS) on the GPU."""
    import copy

    from alexnet.analysis.linear_classifiers import fit
    from alexnet.analysis.linear_probe import linear_probe

    torch.manual_seed(0)
    cpu = create_model("alexnet").eval()
    gpu = copy.deepcopy(cpu).to(CUDA)
    root = photo_root / "train"  # two classes of seven images: a folder of class folders
    a = linear_probe(cpu, root, layers=["pool2", "relu7"], train_per_class=4)
    b = linear_probe(gpu, root, layers=["pool2", "relu7"], train_per_class=4, workers=2, cache_dir=tmp_path)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert (rb.layer, rb.classifier, rb.converged) == (ra.layer, ra.classifier, True)
        # features within 1e-4 of the CPU's: a near tie may flip, at most one test image of the six
        assert rb.mean_class_acc == pytest.approx(ra.mean_class_acc, abs=0.17)
    x = torch.randn(50, 30, dtype=torch.float64)
    y = torch.arange(50) % 3
    for kind in ("svm", "softmax"):
        on_cpu, on_gpu = fit(kind, x, y, 3), fit(kind, x.to(CUDA), y.to(CUDA), 3)
        assert on_gpu.weight.device.type == "cuda"
        torch.testing.assert_close(
            on_gpu.decision(x.to(CUDA)).cpu(), on_cpu.decision(x), atol=1e-4, rtol=1e-4
        )


def test_the_explorer_on_cuda_shows_what_it_shows_on_the_cpu():
    """`alexnet serve --device cuda`: the page's predictions, maps and deconvnet PNGs from a model on the GPU."""
    import copy

    from fastapi.testclient import TestClient

    from alexnet.serve.app import create_app
    from alexnet.serve.state import Slot

    torch.manual_seed(0)
    cpu = create_model("alexnet").eval()
    pages = {}
    for name, model in (("cpu", cpu), ("cuda", copy.deepcopy(cpu).to(CUDA))):
        with TestClient(create_app([Slot("a", model, "random initialisation", trained=False)])) as c:
            image_id = c.post("/api/samples/chelsea").json()["image_id"]
            r = c.get(f"/api/models/a/images/{image_id}")
            assert r.status_code == 200, r.text
            info = c.get(f"/api/models/a/images/{image_id}/layers/relu5/channels/3")
            assert info.status_code == 200, info.text
            pages[name] = r.json()["predictions"]
    assert [p["index"] for p in pages["cuda"]] == [p["index"] for p in pages["cpu"]]
    for g, c in zip(pages["cuda"], pages["cpu"], strict=True):
        assert g["probability"] == pytest.approx(c["probability"], rel=1e-3, abs=1e-5)


def test_a_doctor_probe_on_cuda_measures_what_the_cpu_measures(tmp_path):
    """`alexnet doctor --model M --device cuda`: the same initial weights and batches, so the first health step
    (loss, gradient norms, LRN denominators) agrees with the CPU's to fp32 rounding."""
    import json

    from alexnet.diagnostics.probe import ProbeConfig, probe

    cfg = dict(model="alexnet", steps=3, every=1, num_classes=4, batch_size=8, fc_width=64)
    cpu = probe(ProbeConfig(**cfg, device="cpu"), tmp_path / "cpu").records[0]
    gpu = probe(ProbeConfig(**cfg, device="cuda"), tmp_path / "cuda").records[0]
    assert json.loads((tmp_path / "cuda" / "config.json").read_text())["device"] == "cuda:0"
    assert gpu.loss == pytest.approx(cpu.loss, rel=1e-4)
    assert [lh.layer for lh in gpu.layers] == [lh.layer for lh in cpu.layers]
    for a, b in zip(gpu.layers, cpu.layers, strict=True):
        assert a.grad_norm == pytest.approx(b.grad_norm, rel=1e-3), a.layer
        assert a.weight_norm == pytest.approx(b.weight_norm, rel=1e-5), a.layer
        if b.lrn_denom_max is not None:
            assert a.lrn_denom_max == pytest.approx(b.lrn_denom_max, rel=1e-3), a.layer
