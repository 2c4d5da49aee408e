"""Weights files: safetensors with metadata (model, classes, preprocessing, source, licence, architecture).

Never unpickles user files: ``.safetensors`` is read with safetensors, legacy ``.pth``/``.pt`` only with
``torch.load(weights_only=True)``. Writes are atomic and durable (:func:`alexnet.files.atomic_write`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from alexnet.data.preprocess import Preprocessing
from alexnet.errors import OutputError, WeightsError, WeightsMismatch
from alexnet.files import atomic_write

if TYPE_CHECKING:
    from alexnet.models import ArchConfig

EXTRA_PREFIX = "__extra__."  # tensors that are not parameters (e.g. a per-pixel mean image)
CHECKPOINT_FORMAT = "alexnet-checkpoint/1"  # a training run's checkpoint (alexnet.train.checkpoint)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")  # names that promise torch.save's format to other tools


@dataclass
class WeightsMeta:
    """What travels with a weights file."""

    model: str | None = None
    num_classes: int | None = None
    classes: list[str] | None = None
    preprocessing: Preprocessing | None = None
    source: str = ""
    license: str = ""
    config: dict[str, Any] | None = None  # full ArchConfig, for variants that are not registered
    extra: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # non-parameter tensors

    def to_strings(self) -> dict[str, str]:
        out = {"format": "alexnet-weights/1"}
        if self.model:
            out["model"] = self.model
        if self.num_classes is not None:
            out["num_classes"] = str(self.num_classes)
        if self.classes is not None:
            out["classes"] = json.dumps(self.classes)
        if self.preprocessing is not None:
            out["preprocessing"] = json.dumps(self.preprocessing.to_dict())
        if self.source:
            out["source"] = self.source
        if self.license:
            out["license"] = self.license
        if self.config is not None:
            out["config"] = json.dumps(self.config)
        if self.extra:
            out["extra"] = json.dumps(self.extra)
        return out

    # --- torchvision's view of the same record: ``weights.transforms()`` and ``weights.meta[...]`` -----------
    def eval_preprocessing(self, input_size: int | None = None) -> Preprocessing:
        """The recorded preprocessing; without one, ImageNet RGB mean/std at ``input_size`` (default: the
        architecture's input size), as ``alexnet predict`` assumes (:func:`alexnet.predict.preprocessing_of`)."""
        if self.preprocessing is not None:
            return self.preprocessing
        if input_size is None:
            config = self.arch_config()
            if config is None:
                raise WeightsError(
                    "the weights record neither their preprocessing nor their model; use "
                    "alexnet.predict.input_transform(model)"
                )
            input_size = config.input_size
        return Preprocessing(input_size=input_size)

    def mean_image(self) -> torch.Tensor | None:
        """The per-pixel mean image (3×resize×resize, model convention) when the preprocessing subtracts one
        (AlexNet §2), else ``None``; :class:`WeightsError` if it should and the record carries none."""
        if self.preprocessing is None or not self.preprocessing.mean_image:
            return None
        image = self.tensors.get("mean_image")
        if image is None:
            raise WeightsError(
                "the weights' preprocessing subtracts a per-pixel mean image, but the file carries none"
            )
        return image

    def transforms(self, *, ten_crop: bool = False) -> Any:
        """torchvision's ``weights.transforms()``: image → model input, the pipeline ``alexnet predict`` and
        ``alexnet eval`` use (:func:`alexnet.predict.input_transform`, the same numbers): shorter side ``resize``,
        central ``resize`` patch (AlexNet §2), its central ``input_size`` crop, then the weights' normalisation,
        per-pixel mean image included. Takes a ``uint8`` 3×H×W tensor (``torchvision.io.read_image``), a batch
        of them, a PIL image or a NumPy H×W×C array; grayscale and RGBA images become RGB first
        (:class:`~alexnet.data.transforms.AsRGB`). ``ten_crop``: AlexNet §4.1's ten crops (10×3×S×S)."""
        from torchvision.transforms import v2

        from alexnet.data import transforms

        pre, mean = self.eval_preprocessing(), self.mean_image()
        steps = transforms.ten_crop if ten_crop else transforms.eval_transform
        return v2.Compose([transforms.AsRGB(), *steps(pre, mean_image=mean).transforms])

    def arch_config(self) -> ArchConfig | None:
        """The architecture these weights are for: the recorded one, else the registered model's."""
        from alexnet.models import ArchConfig, get_config
        from alexnet.models.configs import CONFIGS

        if self.config is not None:
            return ArchConfig.from_dict(self.config)
        if self.model in CONFIGS:
            return get_config(self.model)
        return None

    @property
    def meta(self) -> dict[str, Any]:
        """torchvision's ``weights.meta``: ``categories`` (the labels ``alexnet predict`` prints), ``num_params``
        and ``min_size`` (the smallest (H, W) the network takes; from the architecture), ``_metrics``
        (published accuracies, torchvision's ``{"ImageNet-1K": {"acc@1": ..., "acc@5": ...}}``; a run's own
        validation accuracy under ``"val"``), and, when recorded, ``recipe``, ``source`` and ``license``.
        A fresh dict each time."""
        from alexnet.data.classes import class_names

        out: dict[str, Any] = {}
        config = self.arch_config()
        num_classes = (
            self.num_classes if self.num_classes is not None else getattr(config, "num_classes", None)
        )
        if num_classes is not None:
            out["categories"] = class_names(num_classes, self.classes)
        elif self.classes is not None:
            out["categories"] = list(self.classes)
        if config is not None:
            out["num_params"] = _num_params(config, num_classes)
            size = _min_size(config)
            out["min_size"] = (size, size)
        out["_metrics"] = self.metrics()
        if "recipe" in self.extra:  # torchvision's recipe URL, or the `alexnet train --recipe` name
            out["recipe"] = self.extra["recipe"]
        if self.source:
            out["source"] = self.source
        if self.license:
            out["license"] = self.license
        return out

    def metrics(self) -> dict[str, dict[str, float]]:
        """Accuracies (percent) recorded for these weights, by data set, in torchvision's layout: torchvision's
        own (``extra["acc@1"]``), the published figures of a known source (:data:`alexnet.weights.sources.SOURCES`,
        centre crop), and a training run's last validation (``extra["val_top1_err"]``) under ``"val"``."""
        from alexnet.weights.sources import SOURCES

        out: dict[str, dict[str, float]] = {}
        if "acc@1" in self.extra and "acc@5" in self.extra:
            out["ImageNet-1K"] = {"acc@1": float(self.extra["acc@1"]), "acc@5": float(self.extra["acc@5"])}
        else:
            known = next((s for s in SOURCES.values() if self.source.startswith(s.describe())), None)
            published = known.metrics() if known is not None else None
            if published is not None:
                out["ImageNet-1K"] = published
        if "val_top1_err" in self.extra and "val_top5_err" in self.extra:
            out["val"] = {
                "acc@1": round(100 * (1 - float(self.extra["val_top1_err"])), 3),
                "acc@5": round(100 * (1 - float(self.extra["val_top5_err"])), 3),
            }
        return out

    @classmethod
    def from_strings(cls, meta: dict[str, str] | None, where: str = "") -> WeightsMeta:
        meta = meta or {}
        try:
            return cls(
                model=meta.get("model"),
                num_classes=int(meta["num_classes"]) if "num_classes" in meta else None,
                classes=json.loads(meta["classes"]) if "classes" in meta else None,
                preprocessing=Preprocessing.from_dict(json.loads(meta["preprocessing"]))
                if "preprocessing" in meta
                else None,
                source=meta.get("source", ""),
                license=meta.get("license", ""),
                config=json.loads(meta["config"]) if "config" in meta else None,
                extra=json.loads(meta["extra"]) if "extra" in meta else {},
            )
        except (ValueError, TypeError, KeyError) as e:
            raise WeightsError(f"{where}: malformed metadata ({e})") from None


def _min_size(config: ArchConfig) -> int:
    """The smallest input side the network takes: with an adaptive pool before fc6 (torchvision's), the smallest
    that leaves a pool5 map; without one, the smallest that gives fc6 the pool5 map of the config's own input
    size (shape propagation with ``nn.Conv2d``'s and ``nn.MaxPool2d``'s output sizes)."""
    from alexnet.models import AlexNetFamily

    if config.adaptive_pool:
        return AlexNetFamily.min_input_size(config)
    want = AlexNetFamily.pool5_size(config, config.input_size)
    return next(s for s in range(1, config.input_size + 1) if AlexNetFamily.pool5_size(config, s) == want)


def _num_params(config: ArchConfig, num_classes: int | None) -> int:
    """Parameters of ``config``'s network, counted on a model built on the meta device (no memory, no init)."""
    from alexnet.models import build_model

    with torch.device("meta"):
        model = build_model(config, num_classes=config.num_classes if num_classes is None else num_classes)
    return sum(p.numel() for p in model.parameters())


def save_weights(model: nn.Module, path: str | Path, meta: WeightsMeta | None = None) -> Path:
    """Write ``model``'s state dict and ``meta`` to a ``.safetensors`` file atomically. Without ``meta``, the
    metadata the model carries (``model.weights_meta``: classes, preprocessing, source) is written, so that a
    loaded model saved again keeps what it needs to be fed and read."""
    import copy

    from safetensors.torch import save_file

    # torch.load and other tools would expect a pickle under such a name
    if Path(path).suffix in TORCH_SUFFIXES:
        raise OutputError(f"{path}: save_weights writes safetensors; name the file .safetensors")
    carried = getattr(model, "weights_meta", None)
    meta = meta or (copy.deepcopy(carried) if isinstance(carried, WeightsMeta) else WeightsMeta())
    cfg = getattr(model, "config", None)
    if cfg is not None:
        meta.model = meta.model or cfg.name
        meta.num_classes = cfg.num_classes if meta.num_classes is None else meta.num_classes
        meta.config = meta.config or cfg.to_dict()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update({EXTRA_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in meta.tensors.items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta.to_strings()))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Read a weights file: safetensors, or what ``torch.save`` wrote (``.pth``/``.pt``…) with
    ``weights_only=True``, told apart by the file's first bytes."""
    p = Path(path)
    if not p.is_file():
        if not p.exists():
            raise WeightsError(f"{p}: no such weights file")
        from alexnet.train.run_folder import WEIGHTS

        if (p / WEIGHTS).is_file():  # a training run's folder
            raise WeightsError(f"{p}: a run folder, not a weights file; its weights are {p / WEIGHTS}")
        raise WeightsError(f"{p}: a folder, not a weights file" if p.is_dir() else f"{p}: not a regular file")
    try:
        torch_file = _is_torch_file(p)
    except OSError as e:  # safetensors would report a file it may not read as missing
        raise WeightsError(f"{p}: cannot read the weights file ({e.strerror or e})") from None
    if torch_file:
        return _read_torch(p)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            meta = WeightsMeta.from_strings(f.metadata(), str(p))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{p}: not a readable safetensors file ({e})") from None
    meta.tensors = {k[len(EXTRA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIX)}
    state = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    return state, meta


def _is_torch_file(p: Path) -> bool:
    """Whether ``p`` is read with ``torch.load``: by its first bytes (a zip archive or a pickle), else by its name.
    A safetensors file starts with its header's length (8 bytes) and the header's ``{``, whatever it is called."""
    with p.open("rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= p.stat().st_size - 8:
        return False  # checked first: the length's low byte may be a pickle's 0x80
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return True
    return p.suffix in TORCH_SUFFIXES


def _read_torch(p: Path) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    try:
        with p.open("rb") as f:  # a file object: torch.load would take a .safetensors name as safetensors
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler fails on junk with KeyError, IndexError, …
        raise WeightsError(f"{p}: not a loadable PyTorch weights file ({load_failure(e)})") from None
    meta = WeightsMeta()
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:  # a training run's checkpoint
        from alexnet.train.checkpoint import checkpoint_meta

        meta = checkpoint_meta(obj, p)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{p}: does not hold a state dict of tensors")
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in obj.items()}
    return state, meta


def load_failure(e: Exception) -> str:
    """torch.load's refusal in a few words: its weights-only message is a paragraph that ends in advice to load
    the file unsafely, which this package never does."""
    import pickle

    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "Weights only load failed" in text:
        # torch names the first class it refused ("GLOBAL torchvision.models.alexnet.AlexNet"), then advises
        # allow-listing it: name it, and say what to save instead
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (a pickled {refused.group(1)})" if refused else ""
        return (
            f"it holds Python objects other than tensors{what}, which are never unpickled: save the model's "
            f"state_dict() (torch.save(model.state_dict(), path)) or a .safetensors file instead"
        )
    if isinstance(e, KeyError | IndexError | AttributeError | TypeError):
        return "its bytes are neither a pickle nor a zip archive"
    return text.splitlines()[0] if text.strip() else type(e).__name__


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], where: str = "weights") -> None:
    """``load_state_dict`` with a precise message for the first missing, unexpected or mis-shaped tensor."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise WeightsMismatch(f"{where}: missing tensor {key} (expected shape {list(tensor.shape)})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsMismatch(
                f"{where}: {key} expects {list(tensor.shape)}, file has {list(state[key].shape)}"
            )
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise WeightsMismatch(f"{where}: unexpected tensor {unexpected[0]} (and {len(unexpected) - 1} more)")
    model.load_state_dict(state)
