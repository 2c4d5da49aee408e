"""Initialisations a recipe can choose besides the paper's (which is the model's own ``reset_parameters``)."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def kaiming_init_(model: nn.Module, last_std: float = 0.01) -> None:
    """He et al. (ICCV 2015) normal init for every conv/fc layer feeding a ReLU, zero biases; the classifier
    layer (the last ``nn.Linear``) gets N(0, ``last_std``) so the initial softmax is near uniform.

    Not in the papers: used by the ``demo`` recipe because N(0, 0.01) with biases 1 (AlexNet §5) takes hundreds of
    steps to leave chance level on a small data set.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for m in layers[:-1]:
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(m.bias)
    nn.init.normal_(layers[-1].weight, 0.0, last_std)
    nn.init.zeros_(layers[-1].bias)


@torch.no_grad()
def set_nonzero_biases_(model: nn.Module, value: float) -> int:
    """Set every conv/fc bias that the model's init sets to a non-zero constant to ``value`` (AlexNet §5's biases of
    1 in conv2, conv4, conv5, fc6 and fc7; Caffe's bvlc_alexnet uses 0.1 there, because 1 "gave flat loss").
    Returns how many layers it changed; biases initialised to 0 stay 0, and PyTorch's default init (random
    biases, ``alexnet_owt``) has no constant bias to change, so nothing is."""
    config = getattr(model, "config", None)
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear) and m.bias is not None]
    if config is not None:  # an AlexNetFamily: its config says which biases its init set, and to what
        if config.init != "gaussian":
            return 0
        specs = [*config.convs, *config.fcs]
        chosen = [m for spec, m in zip(specs, layers, strict=False) if spec.bias != 0]
    else:
        chosen = [m for m in layers if bool((m.bias != 0).any())]
    for m in chosen:
        nn.init.constant_(m.bias, value)
    return len(chosen)
