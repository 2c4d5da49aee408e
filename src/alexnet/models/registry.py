"""timm-style registry: ``create_model(name)`` and ``list_models()`` over :data:`~alexnet.models.configs.CONFIGS`."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any

from alexnet.errors import ModelNotFound
from alexnet.models.configs import CONFIGS, ArchConfig

if TYPE_CHECKING:
    from alexnet.models.net import AlexNetFamily


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(CONFIGS)


def get_config(name: str) -> ArchConfig:
    """The registered :class:`ArchConfig` called ``name``; :class:`ModelNotFound` (with the nearest name, if one
    is close) otherwise."""
    try:
        return CONFIGS[name]
    except (KeyError, TypeError):  # TypeError: an unhashable "name"
        close = difflib.get_close_matches(str(name).lower().replace("-", "_"), CONFIGS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ModelNotFound(f"unknown model {name!r}; {hint}choose one of: {', '.join(CONFIGS)}") from None


def register(config: ArchConfig) -> ArchConfig:
    """Add a configuration (e.g. one read from an ONNX graph) under ``config.name``."""
    CONFIGS[config.name] = config
    return config


def unregister(name: str) -> None:
    """Remove a configuration added with :func:`register` (no-op when absent)."""
    CONFIGS.pop(name, None)


def build_model(name_or_config: str | ArchConfig, num_classes: int = 1000, **overrides: Any) -> AlexNetFamily:
    """Build a freshly initialised network from a registered name or a config."""
    from alexnet.models.net import AlexNetFamily  # torch: imported on first build, not with the registry

    config = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return AlexNetFamily(config.with_overrides(num_classes=num_classes, **overrides))
