"""Training recipes as data, each named after its source. ``resolve_recipe(name, **overrides)`` → TrainConfig.

Every value below cites where it comes from; :mod:`alexnet.train.config` documents the fields. Each recipe names
the model its source trained (``model``), the default when none is given.
"""

from __future__ import annotations

from typing import Any

from alexnet.errors import TrainingError
from alexnet.train.config import TrainConfig

RECIPES: dict[str, dict[str, Any]] = {
    # Krizhevsky, Sutskever & Hinton, NIPS 2012, §5 "Details of learning": SGD, batch 128, momentum 0.9,
    # weight decay 0.0005 inside the update rule, lr 0.01 divided by 10 when the validation error stopped
    # improving (three times), roughly 90 cycles; dropout 0.5 (§4.2); N(0, 0.01) init, biases 1/0 (§5);
    # PCA lighting σ=0.1 (§4.1). §2 subtracts the per-pixel mean image; this recipe subtracts ImageNet's
    # per-channel mean, a constant that needs no pass over the training set first (`--normalize image` is §2's).
    "krizhevsky2012": dict(
        model="alexnet",
        optimizer="paper_sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=128,
        epochs=90,
        schedule="plateau",
        lr_factor=0.1,
        plateau_patience=1,
        max_reductions=3,
        dropout=0.5,
        init="paper",
        normalize="mean",
    ),
    # Caffe's models/bvlc_alexnet/solver.prototxt: base_lr 0.01, lr_policy "step", gamma 0.1, stepsize 100000,
    # max_iter 450000, momentum 0.9, weight_decay 0.0005, batch 256 (train_val.prototxt); every bias has
    # lr_mult 2 and decay_mult 0. Caffe's SGD has the same form as the paper's rule (lr inside the momentum).
    # Its model is bvlc_alexnet (Caffe's LRN, biases 0.1, fc6/fc7 std 0.005), trained "not ... with the
    # relighting data-augmentation" (models/bvlc_alexnet/readme.md): no PCA lighting. Caffe subtracts the
    # per-pixel mean image (mean_file); the per-channel mean here, as in krizhevsky2012 (`--normalize image`).
    "caffe": dict(
        model="bvlc_alexnet",
        optimizer="paper_sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        bias_lr_mult=2.0,
        bias_decay_mult=0.0,
        batch_size=256,
        epochs=10_000,  # bounded by max_steps, as Caffe's max_iter
        max_steps=450_000,
        schedule="step",
        lr_factor=0.1,
        step_every=100_000,
        step_unit="iter",
        dropout=0.5,
        init="paper",
        normalize="mean",
        pca_lighting=0.0,
    ),
    # Zeiler & Fergus, ECCV 2014, §3 "Training details": batch 128, lr 1e-2 "annealed throughout training
    # manually when the validation error plateaus", momentum 0.9, dropout 0.5 (fc6, fc7), weights 1e-2 and
    # biases 0 at init, 70 epochs, and any conv filter whose RMS exceeds 1e-1 renormalised to that value.
    # Inputs: "10 different sub-crops of size 224x224 (corners + center with(out) horizontal flips)" of the
    # central 256 patch, one drawn per image and use; §3 names no colour augmentation, so none.
    # The paper names no weight decay; AlexNet's 5e-4 (which ZF build on, §3) is kept. §3's per-pixel mean
    # subtraction is `--normalize image`; the default is the per-channel mean, as in krizhevsky2012.
    "zeiler2013": dict(
        model="zfnet",
        optimizer="paper_sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        batch_size=128,
        epochs=70,
        schedule="plateau",
        lr_factor=0.1,
        plateau_patience=1,
        max_reductions=3,
        dropout=0.5,
        init="paper",
        renorm_rms=0.1,
        normalize="mean",
        train_crops="ten",
        pca_lighting=0.0,
    ),
    # torchvision's references/classification/train.py for alexnet: SGD (PyTorch form), lr 0.01, momentum 0.9,
    # weight decay 1e-4, StepLR(30, 0.1), 90 epochs, 32 images per GPU on 8 GPUs (256 in all, the batch here:
    # `--batch-size` is global); ImageNet mean/std normalisation, no colour augmentation. The reference crops
    # with RandomResizedCrop(224); this recipe takes the papers' random crop of the central 256 patch.
    "torchvision": dict(
        model="alexnet_owt",
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=256,
        epochs=90,
        schedule="step",
        lr_factor=0.1,
        step_every=30,
        step_unit="epoch",
        dropout=0.5,
        init="paper",
        normalize="meanstd",
        pca_lighting=0.0,
    ),
    # NOT a paper recipe: what `make demo` uses to train on the built-in 10-class data set within minutes on a
    # 2-core CPU. Differences from krizhevsky2012 (table in docs/training.md): AdamW with warm-up and cosine decay
    # instead of paper SGD with ÷10 on plateau; He (Kaiming) init instead of N(0, 0.01) with biases 1, which
    # stays at chance for hundreds of steps; a 99-px crop of a 112-px image instead of 227 of 256 (≈5× less
    # compute; fc6 then sees 256×2×2); ImageNet mean/std normalisation; batch 32; label smoothing 0.1; 10
    # epochs. Architecture (two towers, LRN, overlapping pooling, fc 4096, dropout 0.5), augmentation (crops,
    # flips, PCA lighting) and ten-crop evaluation are the paper's.
    "demo": dict(
        model="alexnet",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        batch_size=32,
        epochs=10,
        schedule="cosine",
        warmup_steps=30,
        label_smoothing=0.1,
        dropout=0.5,
        init="kaiming",
        input_size=99,
        normalize="meanstd",
        checkpoint_every=100,
        eval_every=0,
    ),
}


def list_recipes() -> list[str]:
    return list(RECIPES)


def resolve_recipe(name: str, **overrides: Any) -> TrainConfig:
    """The recipe's values, then ``overrides`` (``None`` means "keep the recipe's value"), validated.

    With ``weights`` (a run that starts from trained weights) the recipe's crop size gives way to the weights'
    own (their fc6 is sized for it; the ``demo`` recipe's 99 px is for a network it builds itself), and unless
    ``normalize`` or ``stats`` is given, the images are prepared as the weights record (``normalize="weights"``)."""
    if name not in RECIPES:
        raise TrainingError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    if overrides.get("weights") is not None:
        values.pop("input_size", None)
        if overrides.get("normalize") is None and overrides.get("stats") is None:
            values["normalize"] = "weights"
    base = TrainConfig(recipe=name, **values)
    return base.with_overrides(**overrides)
