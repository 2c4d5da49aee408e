"""Optimizers and learning-rate schedules of the recipes.

:class:`PaperSGD` is AlexNet §5's update rule, which puts the learning rate *inside* the momentum::

    v ← μ·v − λ·ε·w − ε·∂L/∂w
    w ← w + v

``torch.optim.SGD`` instead keeps ``v ← μ·v + g + λ·w; w ← w − ε·v``: the two agree while ε is constant but not
after ε changes (the paper's velocity carries the old ε, PyTorch's is rescaled by the new one). Caffe's SGD solver
uses the paper's form, so the ``caffe`` recipe uses this class as well, with per-group multipliers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from alexnet.train.config import TrainConfig


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """Whether PyTorch's fused (single-kernel) SGD/AdamW can update these parameters: floating point, CPU or CUDA.

    Fused updates read and write each parameter, gradient and state tensor once; the per-tensor ("foreach")
    path makes one pass per arithmetic op. Measured on AlexNet's 61 M parameters (2-core CPU): SGD with
    momentum and weight decay 139 → 32 ms per step, AdamW 283 → 43 ms (docs/performance.md).
    """
    params = list(params)
    return bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)


class PaperSGD(torch.optim.SGD):
    """SGD with momentum and weight decay exactly in the form of AlexNet §5 (see the module docstring).

    Runs PyTorch's fused SGD on the buffer ``b = −v / ε`` (dampening 0, no Nesterov), which is the same rule while
    ε stays constant; when a group's ε changes from ε₁ to ε₂ the buffers are multiplied by ε₁/ε₂ first, so that
    the velocity ``v = −ε₂·b`` the paper carries over is the old one (``−ε₁·b``). The state is PyTorch's
    ``momentum_buffer``.
    """

    def __init__(
        self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"bad hyper-parameters lr={lr} momentum={momentum} weight_decay={weight_decay}")
        params = list(params)
        flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
        super().__init__(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused_supported(flat) or None
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also reads checkpoints of the earlier per-tensor implementation, which stored ``velocity`` = v."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                if "velocity" in state:
                    lr = group.get("paper_last_lr") or group["lr"]
                    state["momentum_buffer"] = state.pop("velocity").div(-lr)
                    group["paper_last_lr"] = lr

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:  # the loss at the weights before this update, as torch.optim.SGD does
            with torch.enable_grad():
                loss = closure()
        frozen: list[tuple[dict[str, Any], list[torch.Tensor]]] = []
        for group in self.param_groups:
            lr, last = group["lr"], group.get("paper_last_lr")
            if lr == 0:
                # ε = 0: v ← μ·v, w ← w + v. b cannot carry ε = 0, so keep it scaled by the last non-zero ε
                # and leave the group out of the fused step.
                for p in group["params"]:
                    buf = self.state.get(p, {}).get("momentum_buffer")
                    if buf is not None and last:
                        p.add_(buf.mul_(group["momentum"]), alpha=-last)
                frozen.append((group, group["params"]))
                group["params"] = []
                continue
            if last is not None and last != lr:
                for p in group["params"]:
                    buf = self.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        buf.mul_(last / lr)  # keep v = −ε·b equal to the velocity of the last step
            group["paper_last_lr"] = lr
        try:
            super().step()
            return loss
        finally:
            for group, params in frozen:
                group["params"] = params


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Weights and biases as two groups, with Caffe's ``lr_mult`` / ``decay_mult`` for the biases; with a
    ``classifier_lr_mult`` other than 1, the classifier layer's weight and bias as two more groups whose rates are
    multiplied by it (Caffe's fine-tuning example, ``models/finetune_flickr_style``, gives its new layer 10× the
    rate of the layers it starts from). Parameters that are not trained (``--freeze``) are in no group."""
    head = {id(p) for p in _classifier(model).parameters()} if cfg.classifier_lr_mult != 1 else set()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = _weights_and_biases([(n, p) for n, p in named if id(p) not in head], 1.0, cfg)
    if head:
        groups += _weights_and_biases(
            [(n, p) for n, p in named if id(p) in head], cfg.classifier_lr_mult, cfg
        )
    return groups


def _weights_and_biases(named: list[tuple[str, Any]], mult: float, cfg: TrainConfig) -> list[dict[str, Any]]:
    return [
        {
            "params": [p for n, p in named if not n.endswith("bias")],
            "lr_mult": mult,
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": [p for n, p in named if n.endswith("bias")],
            "lr_mult": mult * cfg.bias_lr_mult,
            "weight_decay": cfg.weight_decay * cfg.bias_decay_mult,
        },
    ]


def _classifier(model: nn.Module) -> nn.Module:
    """The last layer: ``get_classifier()`` of a model of this package (timm's name), else the last Linear."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        return get()  # type: ignore[no-any-return]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else nn.Identity()


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg)
    fused = fused_supported(p for g in groups for p in g["params"])
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    if cfg.optimizer == "paper_sgd":
        return PaperSGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, fused=fused or None
        )
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], model: nn.Module, cfg: TrainConfig
) -> None:
    """A checkpoint's optimizer state (momentum buffers, Adam moments) under this run's hyper-parameters.

    ``Optimizer.load_state_dict`` also restores each group's saved momentum, weight decay and multipliers, which
    would silently undo ``--momentum``, ``--weight-decay``, ``--bias-lr-mult`` and ``--bias-decay-mult`` given with
    ``--resume``; they are set from ``cfg`` again (the learning rate is the schedule's at every step). A
    ``--classifier-lr-mult`` may change too, but not to or from 1, which adds or removes the classifier layer's
    own groups."""
    saved = len(state.get("param_groups", []))
    if saved != len(optimizer.param_groups):
        from alexnet.errors import TrainingError

        split = saved > len(optimizer.param_groups)
        raise TrainingError(
            f"--resume: the run was trained {'with' if split else 'without'} a --classifier-lr-mult of its own "
            f"for the classifier layer, not {'without' if split else 'with'} one; resume with "
            + ("a --classifier-lr-mult other than 1" if split else "--classifier-lr-mult 1")
        )
    optimizer.load_state_dict(state)
    for group, fresh in zip(optimizer.param_groups, param_groups(model, cfg), strict=True):
        group["lr_mult"] = fresh["lr_mult"]
        group["weight_decay"] = fresh["weight_decay"]
        if "momentum" in group:  # SGD and the paper's rule; AdamW has betas, which no flag sets
            group["momentum"] = cfg.momentum


class LRSchedule:
    """The learning rate as a function of (step, epoch, validation history); its state is plain Python.

    - ``step``: × ``lr_factor`` every ``step_every`` iterations or epochs (Caffe's "step" policy, torchvision).
    - ``plateau``: × ``lr_factor`` when the validation error has not improved for ``plateau_patience``
      evaluations, at most ``max_reductions`` times (AlexNet §5, ZF §3).
    - ``cosine``: cosine decay from ``lr`` to ``min_lr`` over the run.
    - ``constant``.

    All of them start with ``warmup_steps`` of linear warm-up when that is non-zero.
    """

    def __init__(self, cfg: TrainConfig, total_steps: int, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.scale = 1.0  # plateau reductions so far, as a factor
        self.reductions = 0
        self.best: float | None = None
        self.bad_evals = 0

    def lr_at(self, step: int) -> float:
        """Learning rate for the update that follows ``step`` completed steps."""
        cfg = self.cfg
        if cfg.schedule == "step":
            count = step if cfg.step_unit == "iter" else step // self.steps_per_epoch
            lr = cfg.lr * cfg.lr_factor ** (count // cfg.step_every)
        elif cfg.schedule == "cosine":
            t = min(1.0, max(0, step - cfg.warmup_steps) / max(1, self.total_steps - cfg.warmup_steps))
            lr = cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        else:
            lr = cfg.lr * self.scale
        if cfg.warmup_steps and step < cfg.warmup_steps:
            lr *= (step + 1) / cfg.warmup_steps
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        return lr

    def on_eval(self, val_error: float) -> bool:
        """Record a validation error; returns True when the plateau schedule just divided the rate."""
        if self.cfg.schedule != "plateau":
            return False
        if self.best is None or val_error < self.best - 1e-9:
            self.best, self.bad_evals = val_error, 0
            return False
        self.bad_evals += 1
        if self.bad_evals >= self.cfg.plateau_patience and self.reductions < self.cfg.max_reductions:
            self.scale *= self.cfg.lr_factor
            self.reductions += 1
            self.bad_evals = 0
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "reductions": self.reductions,
            "best": self.best,
            "bad_evals": self.bad_evals,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.reductions = int(state["reductions"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])
