"""The resolved training configuration: one flat dataclass, saved as ``config.json`` in the run folder.

A recipe (:mod:`alexnet.train.recipes`) fills in the values its source prescribes; every field can then be
overridden (the CLI turns each flag into an override). Validation happens here so that a bad value is one clear
:class:`~alexnet.errors.TrainingError`, never a traceback from deep inside the loop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from math import inf
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexnet.errors import TrainingError

if TYPE_CHECKING:
    from alexnet.models import ArchConfig

# `alexnet train` and `alexnet bench` refuse the two together
CUDA_GRAPH_WITH_COMPILE = (
    "--cuda-graph and --compile together: choose one (torch.compile captures graphs itself with "
    "mode='reduce-overhead')"
)

OPTIMIZERS = ("paper_sgd", "sgd", "adamw")
SCHEDULES = ("plateau", "step", "cosine", "constant")
INITS = ("paper", "kaiming")
# "weights": as the starting weights (`--weights`) record their inputs were prepared (alexnet.train.finetune)
NORMALIZATIONS = ("mean", "image", "meanstd", "weights")
TRAIN_CROPS = ("random", "ten")  # any position (AlexNet §4.1); a corner or the centre (ZF §3)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. ``step_every`` counts optimizer steps (``step_unit="iter"``) or epochs."""

    model: str = "alexnet"
    recipe: str = "krizhevsky2012"
    data: str | None = None  # ImageNet-layout root; None → the built-in data set
    out: str = "runs/run"
    # optimisation
    optimizer: str = "paper_sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_mult: float = 1.0
    bias_decay_mult: float = 1.0
    # the classifier layer's learning rate as a multiple of the others' (Caffe's fine-tuning: 10 for a new layer)
    classifier_lr_mult: float = 1.0
    batch_size: int = 128
    epochs: int = 90
    max_steps: int | None = None
    schedule: str = "plateau"
    lr_factor: float = 0.1
    step_every: int = 30
    step_unit: str = "epoch"
    plateau_patience: int = 1
    max_reductions: int = 3
    warmup_steps: int = 0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    # model
    dropout: float = 0.5
    init: str = "paper"
    bias_init: float | None = None  # None → the model's own; else the value of every bias its init sets ≠ 0
    renorm_rms: float | None = None  # ZF §3: renormalise conv filters to this RMS after every update
    input_size: int | None = None  # None → the model's (227 / 224); else the crop side, resize scaled alike
    # the papers' ablations (models/ablations.py): layers removed (AlexNet §7, ZF Table 3), no LRN (AlexNet §3.3),
    # 2×2/2 pooling (AlexNet §3.4), fc6/fc7 width (ZF Table 3), one tower (AlexNet §3.2)
    remove: tuple[str, ...] = ()
    lrn: bool = True
    overlapping_pool: bool = True
    fc_width: int | None = None
    one_tower: bool = False
    # start from trained weights instead of the init (a file, a run folder, "torchvision", a published source)
    weights: str | None = None
    freeze: str | None = None  # keep every layer up to this one fixed (ZF §5.2: "fc7" trains a new fc8 only)
    # data
    classes: int | None = None
    images_per_class: int | None = None
    # each training label replaced, with this probability, by a uniformly random class (Zhang et al. 2017, §2)
    random_labels: float = 0.0
    normalize: str = (
        "mean"  # per-channel mean; "image": per-pixel mean image (AlexNet §2); "meanstd": torchvision
    )
    stats: str | None = (
        None  # `alexnet data-stats --out FILE`: the data's own mean (image) and PCA (AlexNet §4.1)
    )
    pca_lighting: float = 0.1
    train_crops: str = "random"  # "random" (AlexNet §4.1) or "ten": a corner or the centre (ZF §3)
    ten_crop: bool = False
    workers: int = 2
    # workers decode + resize to uint8 patches, the GPU crops, mirrors, lights batches; None: on CUDA wherever
    # the preprocessing runs batched (the same batches, 1.35x the images/s on a 16-core host, docs/training.md)
    gpu_augment: bool | None = None
    gpu_decode: bool = False  # as gpu_augment, and the GPU decodes the JPEGs (nvJPEG); the workers read files
    # run
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # 0 → at each epoch end only; N → also every N steps
    amp: bool = False
    channels_last: bool = True  # measured faster for every model on CPU (docs/performance.md)
    compile: bool = False
    # the training forward and backward replayed from CUDA graphs (train/cuda_graph.py)
    cuda_graph: bool = False

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` applied (``None`` values mean "keep the recipe's value")."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TrainingError(f"unknown training option(s): {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validated()

    def validated(self) -> TrainConfig:
        """Raise :class:`TrainingError` naming the first bad value."""
        checks: list[tuple[bool, str]] = [
            (self.batch_size >= 1, f"batch size must be at least 1 (got {self.batch_size})"),
            (self.epochs >= 1, f"epochs must be at least 1 (got {self.epochs})"),
            (
                self.max_steps is None or self.max_steps >= 1,
                f"max steps must be at least 1 (got {self.max_steps})",
            ),
            (0 < self.lr < inf, f"learning rate must be positive and finite (got {self.lr})"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1) (got {self.momentum})"),
            (0 <= self.weight_decay < inf, f"weight decay must be >= 0 and finite (got {self.weight_decay})"),
            (
                0 <= self.bias_lr_mult < inf,
                f"bias lr mult must be >= 0 and finite (got {self.bias_lr_mult})",
            ),
            (
                0 <= self.bias_decay_mult < inf,
                f"bias decay mult must be >= 0 and finite (got {self.bias_decay_mult})",
            ),
            (
                0 <= self.classifier_lr_mult < inf,
                f"classifier lr mult must be >= 0 and finite (got {self.classifier_lr_mult})",
            ),
            (0 < self.lr_factor <= 1, f"lr factor must be in (0, 1] (got {self.lr_factor})"),
            (0 <= self.min_lr < inf, f"min lr must be >= 0 and finite (got {self.min_lr})"),
            (
                self.grad_clip is None or 0 < self.grad_clip < inf,
                f"gradient clipping norm must be positive and finite (got {self.grad_clip})",
            ),
            (self.plateau_patience >= 0, f"plateau patience must be >= 0 (got {self.plateau_patience})"),
            (self.max_reductions >= 0, f"max reductions must be >= 0 (got {self.max_reductions})"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1) (got {self.dropout})"),
            (
                0 <= self.label_smoothing < 1,
                f"label smoothing must be in [0, 1) (got {self.label_smoothing})",
            ),
            (self.workers >= 0, f"workers must be >= 0 (got {self.workers})"),
            (
                self.checkpoint_every >= 1,
                f"checkpoint-every must be at least 1 (got {self.checkpoint_every})",
            ),
            (
                self.keep_checkpoints >= 1,
                f"keep-checkpoints must be at least 1 (got {self.keep_checkpoints})",
            ),
            (self.eval_every >= 0, f"eval-every must be >= 0 (got {self.eval_every})"),
            (self.step_every >= 1, f"step-every must be at least 1 (got {self.step_every})"),
            (self.warmup_steps >= 0, f"warmup steps must be >= 0 (got {self.warmup_steps})"),
            (self.classes is None or self.classes >= 2, f"classes must be at least 2 (got {self.classes})"),
            (
                self.images_per_class is None or self.images_per_class >= 1,
                f"images per class must be at least 1 (got {self.images_per_class})",
            ),
            (
                self.bias_init is None or -inf < self.bias_init < inf,
                f"bias init must be a finite number (got {self.bias_init})",
            ),
            (
                self.bias_init is None or self.init == "paper",
                "bias init applies to the paper init only (kaiming sets every bias to 0)",
            ),
            (
                self.renorm_rms is None or 0 < self.renorm_rms < inf,
                f"renorm RMS must be positive and finite (got {self.renorm_rms})",
            ),
            (
                self.input_size is None or 32 <= self.input_size <= 512,
                f"input size must be 32–512 pixels (got {self.input_size})",
            ),
            (
                0 <= self.random_labels <= 1,
                f"the fraction of random labels must be in [0, 1] (got {self.random_labels})",
            ),
            (
                0 <= self.pca_lighting < inf,
                f"PCA lighting std must be >= 0 and finite (got {self.pca_lighting})",
            ),
            (
                self.train_crops in TRAIN_CROPS,
                f"train crops must be one of {', '.join(TRAIN_CROPS)} (got {self.train_crops!r})",
            ),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (self.step_unit in ("iter", "epoch"), "step unit must be 'iter' or 'epoch'"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}"),
            (self.normalize in NORMALIZATIONS, f"normalize must be one of {', '.join(NORMALIZATIONS)}"),
            (
                self.normalize != "weights" or self.weights is not None,
                "normalize 'weights' (the starting weights' own input convention) needs --weights",
            ),
            (
                not (self.normalize == "weights" and self.stats is not None),
                "--stats sets the normalisation, and with --weights the weights' own is used: give --normalize "
                "mean, image or meanstd too to use the statistics",
            ),
            (
                self.weights is None or self.bias_init is None,
                "--bias-init with --weights: the loaded layers keep their biases (a new classifier layer starts "
                "as the model's init says)",
            ),
            (not (self.cuda_graph and self.compile), CUDA_GRAPH_WITH_COMPILE),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainingError(message)
        if self.ablated():
            if self.weights is not None:
                raise TrainingError(
                    f"{self.ablation_flags()} change the architecture of a fresh model; the --weights bring "
                    "their own"
                )
            self.architecture()  # a layer the model lacks or cannot lose: refused before any data is read
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from alexnet.files import atomic_write

        text = json.dumps(self.to_dict(), indent=2) + "\n"
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise TrainingError(f"{path}: not a readable config.json ({e})") from None
        if not isinstance(data, dict):
            raise TrainingError(f"{path}: not a config.json (it holds {type(data).__name__}, not settings)")
        return cls.from_dict(data)

    def model_overrides(self) -> dict[str, Any]:
        """What the run changes in its registered model's configuration (``create_model(name, **overrides)``)."""
        overrides: dict[str, Any] = {"dropout": self.dropout}
        if self.input_size is not None:
            overrides["input_size"] = self.input_size  # fc6's width follows the pool5 size (see models.net)
        return overrides

    def ablated(self) -> bool:
        """Whether the run changes its model's architecture as one of the papers' ablations."""
        return bool(self.ablation_flags())

    def ablation_flags(self) -> str:
        """The command-line flags of the run's ablations (``--remove conv3,conv4 --no-lrn``)."""
        flags = [f"--remove {','.join(self.remove)}"] if self.remove else []
        flags += [] if self.lrn else ["--no-lrn"]
        flags += [] if self.overlapping_pool else ["--no-overlapping-pool"]
        flags += [] if self.fc_width is None else [f"--fc-width {self.fc_width}"]
        flags += ["--one-tower"] if self.one_tower else []
        return " ".join(flags)

    def architecture(self) -> ArchConfig:
        """The run's network: its registered model with :meth:`model_overrides` and the ablations applied."""
        from alexnet.models import ablate, get_config

        return ablate(
            get_config(self.model).with_overrides(**self.model_overrides()),
            remove=self.remove,
            lrn=self.lrn,
            overlapping_pool=self.overlapping_pool,
            fc_width=self.fc_width,
            one_tower=self.one_tower,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The settings a config.json or a checkpoint holds; keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("remove"), list):  # JSON has no tuples
            values["remove"] = tuple(values["remove"])
        return cls(**values)
