"""HealthMonitor: what it measures (against independent formulations), when it hooks, what it warns about."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.diagnostics.health import (
    CSV_COLUMNS,
    HEALTH_CSV,
    HealthMonitor,
    locate_nonfinite,
    lrn_denominator,
    watched_layers,
)
from alexnet.diagnostics.probe import apply_init, gratings
from alexnet.diagnostics.rules import Thresholds
from alexnet.factory import create_model
from alexnet.models import LocalResponseNorm
from alexnet.models.configs import Fc
from alexnet.train.callbacks import TrainContext

SMALL = dict(input_size=67, fcs=(Fc(64), Fc(64), Fc(None)))


def small_model(name: str = "alexnet", classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=classes, **SMALL)


class FakeWriter:
    def __init__(self) -> None:
        self.scalars: dict[str, list[tuple[int, float]]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, []).append((step, value))


def one_step(
    model: nn.Module, mon: HealthMonitor, ctx: TrainContext, x: torch.Tensor, y: torch.Tensor
) -> list[str]:
    """The loop's hook order for one optimizer step."""
    ctx.inputs = x
    mon.on_step_start(ctx)
    loss = F.cross_entropy(model(x), y)
    ctx.optimizer.zero_grad()
    loss.backward()
    ctx.loss = loss.detach()
    mon.on_after_backward(ctx)
    ctx.optimizer.step()
    ctx.step += 1
    return mon.on_step_end(ctx) or []


def batch(classes: int = 3, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = gratings(classes, n, 67, seed=1)
    return (x - 0.5) / 0.25, y


def test_watched_layers_are_conv_and_fc_with_their_relu_and_lrn_in_forward_order() -> None:
    model = small_model()
    got = [(n, r is not None, lrn is not None) for n, _, r, lrn in watched_layers(model)]
    assert got == [
        ("conv1", True, True),
        ("conv2", True, True),
        ("conv3", True, False),
        ("conv4", True, False),
        ("conv5", True, False),
        ("fc6", True, False),
        ("fc7", True, False),
        ("fc8", False, False),
    ]


@pytest.mark.parametrize("alpha_over_size", [False, True])
def test_lrn_denominator_matches_the_denominator_implied_by_torch_lrn(alpha_over_size: bool) -> None:
    # torch.nn.LocalResponseNorm computes b = a / d^β with α/n (Caffe's convention); recover d = (a / b)^(1/β)
    torch.manual_seed(0)
    x = torch.rand(2, 12, 5, 5) * 30 + 1  # strictly positive, large enough that α·Σa² matters
    ours = LocalResponseNorm(size=5, alpha=1e-3, beta=0.75, k=2.0, alpha_over_size=alpha_over_size)
    alpha_sum = 1e-3 if alpha_over_size else 1e-3 * 5  # torch divides α by n
    ref = nn.LocalResponseNorm(5, alpha=alpha_sum, beta=0.75, k=2.0)
    implied = (x / ref(x)) ** (1 / 0.75)
    torch.testing.assert_close(lrn_denominator(ours, x), implied, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lrn_denominator(ref, x), implied, rtol=1e-4, atol=1e-4)


def test_logged_metrics_equal_independent_computations(tmp_path: Path) -> None:
    model = small_model()
    apply_init(model, "he", None, None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    writer = FakeWriter()
    ctx = TrainContext(model=model, optimizer=opt, run_dir=tmp_path, num_classes=3, writer=writer, lr=0.01)
    mon = HealthMonitor(every=1)
    mon.on_train_start(ctx)
    x, y = batch()

    # the independent formulation: capture conv outputs and LRN inputs by hand, and the weights before/after
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        model.layer(n).register_forward_hook(lambda m, i, o, n=n: captured.__setitem__(n, o.detach().clone()))
        for n in ("conv1", "conv3", "fc6", "fc8")
    ]
    hooks.append(
        model.layer("norm1").register_forward_pre_hook(lambda m, i: captured.__setitem__("in1", i[0].clone()))
    )
    before = {n: model.layer(n).weight.detach().clone() for n in ("conv1", "fc6")}
    ctx.inputs = x
    mon.on_step_start(ctx)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    grads = {n: model.layer(n).weight.grad.norm().item() for n in ("conv1", "fc6")}
    ctx.loss = loss.detach()
    mon.on_after_backward(ctx)
    opt.step()
    ctx.step = 1
    mon.on_step_end(ctx)
    for h in hooks:
        h.remove()

    rec = mon.records[-1]
    c3 = captured["conv3"]
    assert rec.layer("conv3").act_mean == pytest.approx(c3.mean().item(), rel=1e-5, abs=1e-7)
    assert rec.layer("conv3").act_std == pytest.approx(c3.std().item(), rel=1e-5)
    # dead feature map: its ReLU output is 0 at every position of every example
    dead3 = (c3.clamp(min=0).amax(dim=(0, 2, 3)) == 0).float().mean().item()
    assert rec.layer("conv3").dead_frac == pytest.approx(dead3)
    fc6 = captured["fc6"]
    assert rec.layer("fc6").dead_frac == pytest.approx(
        (fc6.clamp(min=0).amax(dim=0) == 0).float().mean().item()
    )
    assert rec.layer("fc8").dead_frac is None  # no ReLU after the classifier
    for n in ("conv1", "fc6"):
        w1 = model.layer(n).weight.detach()
        assert rec.layer(n).grad_norm == pytest.approx(grads[n], rel=1e-5)
        assert rec.layer(n).weight_norm == pytest.approx(before[n].norm().item(), rel=1e-5)
        expect = ((w1 - before[n]).norm() / before[n].norm()).item()
        assert rec.layer(n).update_ratio == pytest.approx(expect, rel=1e-4)
    a = captured["in1"]
    sums = torch.stack([(a[:, max(0, i - 2) : i + 3] ** 2).sum(1) for i in range(a.shape[1])], 1)
    den = 2.0 + 1e-4 * sums  # AlexNet §3.3: k=2, α=1e-4 multiplies the window sum
    assert rec.layer("conv1").lrn_denom_min == pytest.approx(den.min().item(), rel=1e-6)
    assert rec.layer("conv1").lrn_denom_max == pytest.approx(den.max().item(), rel=1e-6)
    assert rec.layer("conv3").lrn_denom_min is None
    assert rec.loss == pytest.approx(loss.item())
    # TensorBoard receives every metric per layer
    assert writer.scalars["health/grad_norm/conv1"] == [(1, pytest.approx(grads["conv1"], rel=1e-5))]
    assert "health/lrn_denom_max/conv2" in writer.scalars


def test_health_csv_has_one_row_per_layer_per_health_step(tmp_path: Path) -> None:
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = TrainContext(model=model, optimizer=opt, run_dir=tmp_path, num_classes=3)
    mon = HealthMonitor(every=3)
    mon.on_train_start(ctx)
    x, y = batch()
    for _ in range(7):
        one_step(model, mon, ctx, x, y)
    with (tmp_path / HEALTH_CSV).open() as f:
        rows = list(csv.DictReader(f))
        assert f.seek(0) == 0 and next(csv.reader(f)) == CSV_COLUMNS
    # health steps are those that start at a multiple of `every`: steps 0, 3, 6 → logged as 1, 4, 7
    assert sorted({int(r["step"]) for r in rows}) == [1, 4, 7]
    assert len(rows) == 3 * 8
    assert [r["layer"] for r in rows[:8]] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "fc6",
        "fc7",
        "fc8",
    ]
    fc8 = next(r for r in rows if r["layer"] == "fc8")
    assert fc8["dead_frac"] == "" and fc8["lrn_denom_min"] == ""
    assert all(math.isfinite(float(r["grad_norm"])) for r in rows)


def test_hooks_are_registered_only_on_health_steps_and_removed_after_backward() -> None:
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = TrainContext(model=model, optimizer=opt, run_dir=None, num_classes=3)
    mon = HealthMonitor(every=5)
    mon.on_train_start(ctx)

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    ctx.step = 1
    mon.on_step_start(ctx)
    assert n_hooks() == 0
    ctx.step = 5
    mon.on_step_start(ctx)
    assert n_hooks() == 8 + 7 + 2  # every conv/fc, every ReLU after one, both LRNs
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    ctx.loss = torch.tensor(1.0)
    mon.on_after_backward(ctx)
    assert n_hooks() == 0


def test_a_layer_with_most_units_dead_is_named_in_a_warning() -> None:
    model = small_model()
    apply_init(model, "he", None, None)
    with torch.no_grad():
        model.layer("fc6").bias[:40] = -1e4  # 40 of 64 fc6 neurons can never fire
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ctx = TrainContext(model=model, optimizer=opt, run_dir=None, num_classes=3)
    mon = HealthMonitor(every=1)
    mon.on_train_start(ctx)
    x, y = batch()
    warnings = one_step(model, mon, ctx, x, y)
    assert mon.records[-1].layer("fc6").dead_frac >= 40 / 64
    assert any("fc6" in w and "dead" in w for w in warnings)
    assert not one_step(model, mon, ctx, x, y)  # the same warning is not repeated


def test_locate_nonfinite_names_the_first_layer_whose_output_overflows() -> None:
    model = small_model().eval()
    apply_init(model, "he", None, None)  # O(1) activations in every layer
    x, _ = batch()
    assert locate_nonfinite(model, x) is None
    with torch.no_grad():
        model.layer("conv4").weight.fill_(1e37)  # finite weights whose sums overflow float32 (max ≈ 3.4e38)
    where = locate_nonfinite(model, x)
    assert where is not None and where.startswith("first non-finite output at conv4 ")
    x_bad = x.clone()
    x_bad[0, 0, 0, 0] = float("nan")
    assert "input batch" in (locate_nonfinite(model, x_bad) or "")
    with torch.no_grad():
        model.layer("conv2").weight[0, 0, 0, 0] = float("inf")
    assert (locate_nonfinite(model, x) or "").startswith("conv2.weight is already non-finite")


def test_nonfinite_loss_is_reported_with_the_first_bad_layer(tmp_path: Path) -> None:
    model = small_model()
    apply_init(model, "he", None, None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ctx = TrainContext(model=model, optimizer=opt, run_dir=tmp_path, num_classes=3)
    mon = HealthMonitor(every=100)
    mon.on_train_start(ctx)
    with torch.no_grad():
        model.layer("fc7").weight.fill_(1e37)
    x, y = batch()
    ctx.inputs = x
    mon.on_step_start(ctx)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    ctx.loss = loss.detach()
    warnings = mon.on_after_backward(ctx) or []
    assert len(warnings) == 1 and "first non-finite output at fc7" in warnings[0]
    assert "fc7" in (tmp_path / "health_events.jsonl").read_text()


def test_monitor_overrides_reach_the_rules() -> None:
    th = Thresholds(stuck_after=5, dead_frac=0.9)
    mon = HealthMonitor(every=2, thresholds=th)
    assert mon.th.stuck_after == 5 and mon.every == 2
    with pytest.raises(ValueError):
        HealthMonitor(every=0)


@pytest.mark.parametrize("layout", ["ROOT/train/<class>", "ROOT/<class>"])
def test_probe_reads_the_imagenet_layout_like_every_other_command(
    tmp_path: Path, chelsea, layout: str
) -> None:
    from PIL import Image

    from alexnet.diagnostics.probe import folder_images

    base = tmp_path / "train" if layout == "ROOT/train/<class>" else tmp_path
    for name, img in (("cat", chelsea), ("flipped", chelsea[:, ::-1])):
        (base / name).mkdir(parents=True)
        Image.fromarray(img.copy()).save(base / name / "a.jpg")
    x, y, classes = folder_images(tmp_path, 32, per_class=1)
    assert classes == ["cat", "flipped"] and x.shape == (2, 3, 32, 32) and y.tolist() == [0, 1]


def test_probe_skips_an_unreadable_image_names_it_and_takes_the_next(tmp_path: Path, chelsea, caplog) -> None:
    from PIL import Image

    from alexnet.diagnostics.probe import folder_images

    for name, img in (("cat", chelsea), ("flipped", chelsea[:, ::-1])):
        (tmp_path / name / "sub").mkdir(parents=True)
        (tmp_path / name / "a.jpg").write_bytes(b"\xff\xd8\xff not a JPEG after all")
        Image.fromarray(img.copy()).save(tmp_path / name / "b.jpg")
        Image.fromarray(img.copy()).save(tmp_path / name / "sub" / "c.png")
    with caplog.at_level("WARNING", logger="alexnet.data"):
        x, y, _ = folder_images(tmp_path, 32, per_class=2)
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]  # b.jpg and sub/c.png of each class
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"skipping unreadable file {tmp_path / c / 'a.jpg'}" for c in ("cat", "flipped")
    ]
