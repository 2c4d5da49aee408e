"""Models: LRN and filter renormalisation (layers), the one network (net), its configurations, the registry."""

from alexnet.models.configs import CONFIGS, LRN, ArchConfig, Conv, Fc
from alexnet.models.layers import LocalResponseNorm, lrn_reference, renormalize_filters_
from alexnet.models.net import AlexNetFamily
from alexnet.models.registry import build_model, get_config, list_models, register, unregister

__all__ = [
    "CONFIGS",
    "LRN",
    "AlexNetFamily",
    "ArchConfig",
    "Conv",
    "Fc",
    "LocalResponseNorm",
    "build_model",
    "get_config",
    "list_models",
    "lrn_reference",
    "register",
    "renormalize_filters_",
    "unregister",
]
