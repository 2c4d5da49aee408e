"""Training diagnostics: per-layer health during training, live warnings, and ``alexnet doctor``."""

from alexnet.diagnostics.health import HealthMonitor, locate_nonfinite
from alexnet.diagnostics.rules import HealthRecord, LayerHealth, Thresholds

__all__ = ["HealthMonitor", "HealthRecord", "LayerHealth", "Thresholds", "locate_nonfinite"]
