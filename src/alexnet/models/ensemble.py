"""Several trained networks as one: their softmax outputs averaged.

AlexNet §6 and Table 2: "averaging the predictions of five similar CNNs" gave 16.4 % top-5 error on the
ILSVRC-2012 validation set where one CNN gave 18.2 %; Zeiler & Fergus Table 2: five ZFNets 15.3 % where one
gave 16.5 %.
``alexnet eval --weights A --weights B …`` evaluates such an ensemble, with ten crops per image if asked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alexnet.errors import WeightsMismatch


class Ensemble(nn.Module):
    """Members that take the same input and predict the same classes; ``forward`` returns the log of their mean
    class probabilities, so its softmax is that mean (what :func:`alexnet.evaluate.class_probabilities` and
    :func:`alexnet.predict.predict` take) and its arg-max the ensemble's prediction.

    The members' preprocessing (input size, resize, mean and std, channel order, mean image) and class lists
    must agree: one input batch feeds them all. ``names`` label the members in the error messages. The ensemble
    starts in eval mode, its members with it."""

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members (got {len(members)})")
        names = list(names) if names is not None else [f"member {i + 1}" for i in range(len(members))]
        first = members[0]
        for member, name in zip(members, names, strict=True):
            if not getattr(member, "num_classes", 0):
                raise WeightsMismatch(
                    f"{name} has no classifier layer: an ensemble averages class probabilities"
                )
        for member, name in zip(members[1:], names[1:], strict=True):
            if (why := _differs(first, member)) is not None:
                raise WeightsMismatch(f"{names[0]} and {name} cannot be averaged: {why}")
        self.members = nn.ModuleList(members)
        self.weights_meta: Any = getattr(first, "weights_meta", None)
        self.num_classes: int = first.num_classes  # type: ignore[assignment]
        self.default_input_size: int = first.default_input_size  # type: ignore[assignment]
        self.eval()  # trained networks' predictions: a new module would start in training mode, dropout on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([m(x).float().log_softmax(dim=1) for m in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def _differs(a: nn.Module, b: nn.Module) -> str | None:
    """Why ``b`` cannot share ``a``'s input batches and class indices, or ``None``."""
    from alexnet.predict import mean_image_of, preprocessing_of

    if a.num_classes != b.num_classes:
        return f"they predict {a.num_classes} and {b.num_classes} classes"
    meta_a, meta_b = getattr(a, "weights_meta", None), getattr(b, "weights_meta", None)
    classes_a = meta_a.classes if meta_a is not None else None
    classes_b = meta_b.classes if meta_b is not None else None
    if classes_a is not None and classes_b is not None and classes_a != classes_b:
        return "their class lists differ (the same index would mean another class)"
    pre_a, pre_b = preprocessing_of(a), preprocessing_of(b)  # type: ignore[arg-type]
    if pre_a != pre_b:
        return f"they take different inputs ({pre_a.describe()} and {pre_b.describe()})"
    mean_a, mean_b = mean_image_of(a), mean_image_of(b)  # type: ignore[arg-type]
    if (mean_a is None) != (mean_b is None) or (
        mean_a is not None and mean_b is not None and not torch.equal(mean_a, mean_b)
    ):
        return "they subtract different mean images"
    return None
