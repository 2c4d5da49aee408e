"""Models: LRN and filter renormalisation (layers), the one network (net), its configurations, the papers'
ablations of them (ablations), the registry, and the walk that reads any layer's output by its paper name (capture).

The configurations and the registry import no torch, so that ``alexnet --help`` and a command's argument errors
answer at once; the network and its layers load on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alexnet.models.ablations import ablate, removable
from alexnet.models.configs import CONFIGS, LRN, ArchConfig, Conv, Fc
from alexnet.models.registry import build_model, get_config, list_models, register, unregister

if TYPE_CHECKING:
    from alexnet.models.layers import LocalResponseNorm, lrn_reference, renormalize_filters_
    from alexnet.models.net import AlexNetFamily

_LAZY = {
    "AlexNetFamily": "alexnet.models.net",
    "LocalResponseNorm": "alexnet.models.layers",
    "lrn_reference": "alexnet.models.layers",
    "renormalize_filters_": "alexnet.models.layers",
}

__all__ = [
    "CONFIGS",
    "LRN",
    "AlexNetFamily",
    "ArchConfig",
    "Conv",
    "Fc",
    "LocalResponseNorm",
    "ablate",
    "build_model",
    "get_config",
    "list_models",
    "lrn_reference",
    "register",
    "removable",
    "renormalize_filters_",
    "unregister",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'alexnet.models' has no attribute {name!r}")
