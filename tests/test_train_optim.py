"""The paper's update rule (AlexNet §5), Caffe's per-group multipliers, and the learning-rate schedules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from alexnet.train.config import TrainConfig
from alexnet.train.optim import LRSchedule, PaperSGD, build_optimizer, load_optimizer_state, param_groups
from alexnet.train.recipes import resolve_recipe


def _grads(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_paper_sgd_matches_hand_computation_of_the_paper_rule_across_a_learning_rate_change() -> None:
    w0 = torch.tensor([0.5, -1.0, 2.0])
    p = nn.Parameter(w0.clone())
    opt = PaperSGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
    w, v = w0.clone().double(), torch.zeros(3, dtype=torch.float64)
    # the rate is divided by 10 after two steps, then annealed to 0 (a cosine schedule's end) and raised again
    for i, lr in enumerate([0.1, 0.1, 0.01, 0.01, 0.0, 0.0, 0.05]):
        for g in opt.param_groups:
            g["lr"] = lr
        grad = _grads(i, (3,))
        p.grad = grad.clone()
        opt.step()
        # v ← 0.9·v − 0.0005·ε·w − ε·∂L/∂w ;  w ← w + v   (AlexNet §5)
        v = 0.9 * v - 0.0005 * lr * w - lr * grad.double()
        w = w + v
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-6, atol=1e-7)


def test_paper_sgd_differs_from_torch_sgd_once_the_learning_rate_changes() -> None:
    a, b = nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(4))
    paper = PaperSGD([a], lr=0.1, momentum=0.9, weight_decay=0.0)
    torch_sgd = torch.optim.SGD([b], lr=0.1, momentum=0.9)
    for i, lr in enumerate([0.1, 0.01]):
        for opt in (paper, torch_sgd):
            opt.param_groups[0]["lr"] = lr
        g = _grads(i, (4,))
        a.grad, b.grad = g.clone(), g.clone()
        paper.step()
        torch_sgd.step()
        if i == 0:  # constant rate: the two forms agree
            torch.testing.assert_close(a.detach(), b.detach())
    assert not torch.allclose(a.detach(), b.detach())  # the paper's velocity keeps the old ε


def test_caffe_recipe_gives_biases_twice_the_rate_and_no_weight_decay() -> None:
    cfg = resolve_recipe("caffe")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    opt = build_optimizer(model, cfg)
    weights, biases = opt.param_groups
    assert {id(p) for p in weights["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert {id(p) for p in biases["params"]} == {id(model[0].bias), id(model[3].bias)}
    assert biases["lr"] == pytest.approx(2 * weights["lr"]) and weights["lr"] == pytest.approx(0.01)
    assert weights["weight_decay"] == pytest.approx(5e-4) and biases["weight_decay"] == 0.0
    sched = LRSchedule(cfg, total_steps=450_000, steps_per_epoch=5000)
    sched.apply(opt, 250_000)  # two steps of ×0.1 every 100k iterations
    assert weights["lr"] == pytest.approx(1e-4) and biases["lr"] == pytest.approx(2e-4)


def test_param_groups_cover_every_parameter_once() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    groups = param_groups(model, TrainConfig())
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_plateau_schedule_divides_by_ten_when_validation_error_stops_improving_at_most_three_times() -> None:
    cfg = resolve_recipe("krizhevsky2012")
    s = LRSchedule(cfg, total_steps=1000, steps_per_epoch=10)
    assert s.lr_at(0) == pytest.approx(0.01)
    assert not s.on_eval(0.5) and not s.on_eval(0.4)  # improving
    assert s.on_eval(0.4)  # no improvement → ÷10
    assert s.lr_at(500) == pytest.approx(0.001)
    assert s.on_eval(0.45) and s.on_eval(0.45)  # twice more
    assert not s.on_eval(0.45) and not s.on_eval(0.45)  # at most three reductions
    assert s.lr_at(999) == pytest.approx(1e-5)
    restored = LRSchedule(cfg, 1000, 10)
    restored.load_state_dict(s.state_dict())
    assert restored.lr_at(3) == s.lr_at(3) and restored.reductions == 3


def test_step_schedule_in_epochs_as_torchvision() -> None:
    s = LRSchedule(resolve_recipe("torchvision"), total_steps=900, steps_per_epoch=10)
    assert [s.lr_at(e * 10) for e in (0, 29, 30, 59, 60, 89)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 0.0001, 0.0001]
    )


def test_warmup_then_cosine_reaches_min_lr_at_the_end() -> None:
    cfg = TrainConfig(schedule="cosine", lr=0.1, warmup_steps=10, min_lr=0.0)
    s = LRSchedule(cfg, total_steps=110, steps_per_epoch=10)
    assert s.lr_at(0) == pytest.approx(0.01) and s.lr_at(9) == pytest.approx(0.1)
    assert s.lr_at(10) == pytest.approx(0.1)
    assert s.lr_at(60) == pytest.approx(0.05)
    assert s.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    assert all(s.lr_at(i) >= s.lr_at(i + 1) for i in range(10, 110))
    assert math.isclose(s.lr_at(35), 0.1 * 0.5 * (1 + math.cos(math.pi * 25 / 100)))


def test_paper_sgd_uses_the_fused_update_and_resumes_from_its_state_dict() -> None:
    w0 = torch.randn(5, generator=torch.Generator().manual_seed(3))
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    first = PaperSGD([a], lr=0.1)
    assert first.defaults["fused"]
    schedule = [0.1, 0.1, 0.01, 0.01]
    for i, lr in enumerate(schedule[:2]):
        first.param_groups[0]["lr"] = lr
        a.grad = _grads(i, (5,))
        first.step()
    # a second optimizer resumed from the first one's state continues exactly where it left off
    b.data.copy_(a.detach())
    resumed = PaperSGD([b], lr=0.1)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))  # as if read from a checkpoint file
    for i, lr in enumerate(schedule[2:], start=2):
        for opt, p in ((first, a), (resumed, b)):
            opt.param_groups[0]["lr"] = lr
            p.grad = _grads(i, (5,))
            opt.step()
    torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=0)


def test_build_optimizer_picks_the_fused_kernels_on_cpu() -> None:
    model = nn.Linear(4, 3)
    for name in ("paper_sgd", "sgd", "adamw"):
        opt = build_optimizer(model, TrainConfig(optimizer=name))
        assert opt.defaults["fused"], name


def test_paper_sgd_reads_the_velocity_of_older_checkpoints() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = PaperSGD([p], lr=0.1, weight_decay=0.0)
    old = opt.state_dict()
    old["state"] = {0: {"velocity": torch.full((3,), -0.2)}}  # v as the per-tensor implementation saved it
    opt.load_state_dict(old)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1.0 - 0.9 * 0.2))  # w + μ·v


def test_paper_sgd_step_with_a_closure_returns_the_loss_before_the_update() -> None:
    p = nn.Parameter(torch.tensor([2.0]))
    opt = PaperSGD([p], lr=0.1, weight_decay=0.0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 4.0
    torch.testing.assert_close(p.detach(), torch.tensor([2.0 - 0.1 * 4.0]))  # w − ε·∂L/∂w, ∂L/∂w = 2w


@pytest.mark.parametrize("optimizer", ["paper_sgd", "sgd", "adamw"])
def test_resume_takes_momentum_weight_decay_and_bias_multipliers_from_the_flags_not_the_checkpoint(
    optimizer: str,
) -> None:
    model = nn.Linear(4, 3)
    saved = resolve_recipe("caffe", optimizer=optimizer)  # biases: lr ×2, decay ×0
    first = build_optimizer(model, saved)
    model(torch.randn(2, 4)).sum().backward()
    first.step()
    state = copy.deepcopy(first.state_dict())
    now = saved.with_overrides(momentum=0.8, weight_decay=1e-3, bias_lr_mult=1.5, bias_decay_mult=0.5)
    resumed = build_optimizer(model, now)
    load_optimizer_state(resumed, state, model, now)
    got = [(g["lr_mult"], g["weight_decay"], g.get("momentum")) for g in resumed.param_groups]
    momentum = None if optimizer == "adamw" else 0.8
    assert got == [(1.0, 1e-3, momentum), (1.5, 0.5e-3, momentum)]
    # the optimizer's own state (momentum buffers, Adam moments) still comes from the checkpoint
    for p in model.parameters():
        for key, value in first.state[p].items():
            torch.testing.assert_close(resumed.state[p][key], value)
