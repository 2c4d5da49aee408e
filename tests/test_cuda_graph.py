"""`alexnet train --cuda-graph` (alexnet.train.cuda_graph): the training forward and backward replayed from CUDA
graphs take the eager steps' values; steps a graph would get wrong (hooks, another batch shape, evaluation) run
eagerly; a run off CUDA, across processes or with torch.compile is one clear error. The CUDA tests skip without
a GPU (tools/gpu_check.sh runs them)."""

from __future__ import annotations

import pytest
import torch

from alexnet.errors import TrainingError
from alexnet.models import build_model
from alexnet.train.config import TrainConfig
from alexnet.train.cuda_graph import GraphedForward

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cuda_graph_needs_a_cuda_run(tmp_path):
    from alexnet.train.loop import train

    cfg = TrainConfig(model="alexnet", out=str(tmp_path / "run"), device="cpu", cuda_graph=True)
    with pytest.raises(TrainingError, match="--cuda-graph needs a CUDA GPU"):
        train(cfg, progress=False)


def test_cuda_graph_and_compile_are_not_combined():
    with pytest.raises(TrainingError, match="choose one"):
        TrainConfig(model="alexnet", cuda_graph=True, compile=True).validated()


def test_the_command_line_refuses_cuda_graphs_on_the_cpu_in_one_line(tmp_path, run_alexnet):
    proc = run_alexnet(
        "train", "--model", "alexnet", "--device", "cpu", "--cuda-graph", "--out", str(tmp_path / "run"),
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .endswith("--cuda-graph needs a CUDA GPU, but this run's device is cpu")
    )
    assert "Traceback" not in proc.stderr


def test_off_the_gpu_the_graphed_forward_is_the_module():
    torch.manual_seed(0)
    model = build_model("caffenet", num_classes=10).train()
    x = torch.randn(2, 3, 227, 227)
    forward = GraphedForward(model, amp=False)
    assert not forward.graphable(x)
    torch.manual_seed(1)
    got = forward(x)
    torch.manual_seed(1)  # the same dropout masks
    torch.testing.assert_close(got, model(x))
    assert forward.replays == 0 and forward.key is None


def _setup(name: str, batch: int = 8):
    torch.manual_seed(0)
    model = (
        build_model(name, num_classes=10, dropout=0.0).cuda().to(memory_format=torch.channels_last).train()
    )
    size = model.default_input_size
    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device="cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, fused=True)
    return model, x, y, opt


def _steps(forward, opt, x, y, n: int) -> list[float]:
    losses = []
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):  # the loop's autocast, its cast cache on
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@cuda
@pytest.mark.parametrize("name", ["alexnet", "zfnet"])
def test_replayed_training_steps_take_the_eager_steps_values(name):
    """Triton stages, the towers' block-diagonal weights, conv1 rearranged, in bf16: replayed, the same steps."""
    model, x, y, opt = _setup(name)
    eager = _steps(model, opt, x, y, 4)
    model_g, xg, yg, opt_g = _setup(name)
    forward = GraphedForward(model_g, amp=True)
    graphed = _steps(forward, opt_g, xg, yg, 4)
    assert forward.replays == 4  # the first step captured, then replayed
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=2e-2, atol=2e-2)
    assert graphed[-1] < graphed[0]
    for p, q in zip(model_g.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=2e-2, atol=2e-3)
    assert "forward" not in vars(model_g)  # the module kept its own forward


@cuda
def test_hooked_steps_other_shapes_and_evaluation_run_eagerly():
    model, x, y, opt = _setup("alexnet")
    forward = GraphedForward(model, amp=True)
    _steps(forward, opt, x, y, 1)
    assert forward.replays == 1
    seen = []
    handle = model.layer("relu1").register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert not forward.graphable(x)
    _steps(forward, opt, x, y, 1)
    handle.remove()
    assert seen and forward.replays == 1  # the hook saw the layer: the step ran the module
    _steps(forward, opt, x[:5], y[:5], 1)  # a last, shorter batch
    assert forward.replays == 1
    model.eval()
    assert not forward.graphable(x)
    with torch.no_grad():
        forward(x)
    model.train()
    _steps(forward, opt, x, y, 1)
    assert forward.replays == 2


@cuda
def test_training_end_to_end_with_cuda_graphs(photo_root, tmp_path, run_alexnet):
    """Health steps (every 2) eager, the others replayed; the run ends with its weights and finite losses."""
    import csv

    out = tmp_path / "run"
    proc = run_alexnet(
        "train", "--model", "alexnet", "--data", str(photo_root), "--out", str(out), "--device", "cuda",
        "--cuda-graph", "--amp", "--batch-size", "8", "--max-steps", "6", "--workers", "2", "--health-every", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.safetensors").is_file()
    assert "captured as CUDA graphs" in (out / "train.log").read_text()
    with (out / "steps.csv").open() as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
