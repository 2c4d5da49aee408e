"""AlexNet (Krizhevsky et al., NIPS 2012) and ZFNet (Zeiler & Fergus, ECCV 2014), faithful to the papers."""

from __future__ import annotations

from alexnet import denormals, malloc
from alexnet.factory import create_model, get_model, list_models

__version__ = "0.1.0"
__all__ = ["__version__", "create_model", "denormals", "get_model", "list_models", "malloc"]

# `import alexnet` imports no torch (the registry is plain data; `alexnet --help` answers at once);
# `alexnet.visualize.deconvnet(...)`, `alexnet.analysis.summarize(...)` and the other subpackages load on first
# use (PEP 562).
_SUBPACKAGES = frozenset(
    {
        "analysis",
        "bench",
        "data",
        "diagnostics",
        "evaluate",
        "inputs",
        "models",
        "predict",
        "serve",
        "train",
        "visualize",
        "weights",
    }
)


def __getattr__(name: str) -> object:
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"alexnet.{name}")
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
