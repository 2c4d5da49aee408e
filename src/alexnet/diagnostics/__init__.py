"""Training diagnostics: per-layer health during training, live warnings, and ``alexnet doctor``."""

from alexnet.diagnostics.health import HealthMonitor, default_callbacks, locate_nonfinite
from alexnet.diagnostics.rules import HealthRecord, LayerHealth, Thresholds

__all__ = [
    "HealthMonitor",
    "HealthRecord",
    "LayerHealth",
    "Thresholds",
    "default_callbacks",
    "locate_nonfinite",
]
