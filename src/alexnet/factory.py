"""``create_model``: the public entry point (a registered name, optionally with weights), timm's way and
torchvision's (``get_model``)."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from alexnet.errors import ModelNotFound
from alexnet.models import build_model
from alexnet.models import list_models as _registered

if TYPE_CHECKING:
    from alexnet.models.net import AlexNetFamily

# The published weights ``pretrained=True`` loads: torchvision's own, and BVLC's original Caffe models (their
# digests are checked on download; alexnet weights sources lists the ONNX zoo's conversions as well).
DEFAULT_WEIGHTS = {
    "alexnet_owt": "torchvision",
    "bvlc_alexnet": "bvlc_alexnet",
    "caffenet": "bvlc_reference_caffenet",
}


def create_model(
    name: str | None,
    num_classes: int | None = None,
    *,
    weights: Any = None,
    pretrained: bool = False,
    **overrides: Any,
) -> AlexNetFamily:
    """Build a registered model (``list_models()``), freshly initialised as its paper says, or with ``weights``.

    ``weights`` is a ``.safetensors`` file written by this package, a ``.pth`` state dict (read with
    ``weights_only=True``), an ``.onnx`` or ``.caffemodel`` file, a published source name (``alexnet weights
    sources``), or ``"torchvision"`` (``alexnet_owt`` only); with ``weights``, ``name`` may be ``None``: the model
    the file records. ``pretrained=True`` (timm's spelling) loads the
    model's published weights (:data:`DEFAULT_WEIGHTS`). ``num_classes`` replaces the classifier layer's width;
    0 removes it, so the model returns fc7's 4096 features (timm's convention). ``overrides`` replace fields of
    the model's :class:`~alexnet.models.ArchConfig` (e.g. ``dropout=0.0``).
    """
    if not isinstance(name, str) and not (name is None and weights is not None):  # None: the file's own model
        raise ModelNotFound(
            f"a model name is a string, not {name!r}; choose one of: {', '.join(_registered())}"
        )
    if pretrained:
        if weights is not None:
            raise TypeError("pass either weights=... or pretrained=True, not both")
        if name not in DEFAULT_WEIGHTS:
            raise ModelNotFound(
                f"no published weights for {name!r}; models with published weights: {', '.join(DEFAULT_WEIGHTS)} "
                "(or pass weights=FILE)"
            )
        weights = DEFAULT_WEIGHTS[name]
    if weights is None:
        return build_model(name, num_classes=1000 if num_classes is None else num_classes, **overrides)
    from alexnet.weights import load_pretrained

    return load_pretrained(name, weights, num_classes, **overrides)


get_model = create_model  # torchvision's name for the same call


def list_models(filter: str = "", pretrained: bool = False) -> list[str]:
    """Registered model names, in registration order; ``filter`` is a shell pattern (``"zf*"``) and
    ``pretrained`` keeps the models with published weights (timm's signature)."""
    names = [n for n in _registered() if not filter or fnmatch.fnmatch(n, filter)]
    return [n for n in names if n in DEFAULT_WEIGHTS] if pretrained else names
