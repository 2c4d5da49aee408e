"""The first conv stage of CaffeNet and ZFNet in CPU training: conv1's weight gradient from the pooled maps'.

CaffeNet and ZFNet (Zeiler & Fergus Fig. 3) run conv1 → ReLU → max-pool → LRN. The pool is AlexNet's overlapping
one (§3.4: z = 3, s = 2), so each pooled value's gradient reaches one conv output pixel, the window's maximum, and
the ReLU passes it only where that maximum is above zero. conv1's output gradient is therefore zero at three
pixels in four or more, and when the image needs no gradient (training) that map serves only conv1's weight and
bias gradients. Here they are taken straight from the pooled gradient, its maxima and the image
(``first_conv_pooled_weight_grad_f32`` in ``first_conv_cpu.cpp``): the same sums in another order, a quarter
of :mod:`alexnet.models.first_conv`'s multiply-adds, and the 110×110 gradient map of ZFNet (300 MB at batch 64)
is never written (docs/performance.md, session 15). The forward is unchanged: oneDNN's convolution, then the
fused stage kernel of :mod:`alexnet.models.fused`, which writes where each maximum was.

:func:`applies` says when :func:`alexnet.models.fused.run` takes it for ``conv, relu, pool, norm``:

* everything :func:`alexnet.models.first_conv.applies` asks (eager CPU float32, channels-last, no autocast, a
  weight that needs a gradient, at most 4 image channels, output channels a multiple of 16) and an image that
  needs no gradient;
* a relu → pool → norm stage after it (:func:`alexnet.models.fused.stage_at`), no hook on the conv;
* a kernel row of at most 48 floats (``kernel width × channels``: AlexNet's 11 × 3, ZFNet's 7 × 3) and an image
  whose padded floats a 32-bit offset reaches;
* ``ALEXNET_FIRST_STAGE`` not 0 (A/B measurements).

Under ``backward(create_graph=True)`` it raises, as the fused relu → pool → norm stage does: the conv output
is not kept (``ALEXNET_FUSE=0`` runs the modules).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from alexnet.models import conv_stage, eager, first_conv
from alexnet.models.layers import SpaceToDepthConv2d
from alexnet.models.native import StageArgs

MAX_ROW_FLOATS = 48  # the kernel keeps at most 3 vectors of 16 floats per kernel row


def applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`run` may replace ``conv`` on ``x`` and a relu → pool → norm stage after it (module
    docstring; :func:`alexnet.models.fused.run` checks the stage)."""
    return (
        type(conv) in (nn.Conv2d, SpaceToDepthConv2d)
        and first_conv.applies(conv, x)  # first: it asks whether anything traces x
        and not x.requires_grad
        and not eager.hooked(conv)
        and conv.kernel_size[1] * x.shape[1] <= MAX_ROW_FLOATS
        and conv_stage.offsets_fit(conv, x)  # type: ignore[arg-type]
        and os.environ.get("ALEXNET_FIRST_STAGE", "1") != "0"
    )


class _FirstStage(conv_stage.ConvStage):
    """conv_stage's function, named for conv1 in profiles; the image needs no gradient, so its backward writes
    no full-size map at all."""


def run(conv: nn.Conv2d, x: torch.Tensor, stage: StageArgs) -> torch.Tensor:
    """``norm(pool(relu(conv(x))))`` for a relu → pool → norm ``stage``, with conv's weight and bias gradients from
    the pooled maps' (call only when :func:`applies`)."""
    return conv_stage.apply(conv, x, stage, _FirstStage)
