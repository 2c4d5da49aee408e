"""How much each layer knows: a linear classifier on one layer's features — Zeiler & Fergus §5.3, Table 7.

"We explore how discriminative the features in each layer of our ImageNet-pretrained model are. We do this by
varying the number of layers retained from the ImageNet model and place either a linear SVM or softmax classifier
on top." (ZF §5.3.) Layer n is the output of the paper's n-th block: conv + ReLU (+ pool and normalisation) for
layers 1–5, fc + ReLU for 6 and 7 (:func:`block_outputs`); any layer can be named instead. The network is fixed:
each image's features of every asked layer come from one forward pass (the weights' evaluation preprocessing, a
centre crop), and only the classifiers (:mod:`alexnet.analysis.linear_classifiers`) are trained.

The data set is either split already (``ROOT/train`` and ``ROOT/val``: one trial) or a folder of class folders
(Caltech-101's ``101_ObjectCategories``), from which each of ``trials`` random splits takes ``train_per_class``
images of each class to train on and up to ``test_per_class`` of the others to test on: ZF §5.2's protocol
(Caltech-101: 30 per class, up to 50 tested, five trials). Trial t's split is ``alexnet data-split --seed S+t``'s.
The score is Caltech's: the mean over classes of each class's top-1 accuracy, mean ± standard deviation over the
trials.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from alexnet.analysis.features import extract_features, pooled
from alexnet.analysis.linear_classifiers import KINDS, Kind, Standardiser, fit, principal_coordinates
from alexnet.data.folders import class_folders, files_under
from alexnet.data.split import class_split
from alexnet.errors import DataError
from alexnet.models import AlexNetFamily
from alexnet.models.capture import capture, check_layers
from alexnet.stopping import StopSignals

TRAIN_PER_CLASS = 30  # ZF §5.2's larger Caltech-101 setting (Table 4: 15 and 30 per class)
ALL_IMAGES_FACTOR = (
    2  # a cache holds all of an unsplit ROOT's images when they are at most this × those drawn
)
Item = tuple[Path, int]  # an image file and its class index
Split = tuple[list[Item], list[Item]]  # (train, test)


def block_outputs(model: AlexNetFamily) -> list[str]:
    """The paper's layers 1 … 7 by the name of each block's last layer (dropout aside): ``pool1`` for AlexNet's
    conv1 → relu1 → norm1 → pool1 (§3.5), ``norm1`` for ZFNet's conv1 → relu1 → pool1 → norm1 (Fig. 3); then
    ``relu3``, ``relu4``, ``pool5``, ``relu6``, ``relu7``."""
    *below, _classifier = model.layer_names()
    last: dict[int, str] = {}
    for name in below:
        m = re.fullmatch(r"([a-z]+)(\d+)", name)
        if m and m.group(1) != "drop":
            last[int(m.group(2))] = name
    return [last[n] for n in sorted(last)]


def _check_class_files(root: Path, classes: list[str]) -> dict[str, list[Path]]:
    files = {name: files_under(root / name) for name in classes}
    empty = [name for name, f in files.items() if not f]
    if empty:
        raise DataError(
            f"{root}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} hold no files"
        )
    return files


def check_root(root: str | Path) -> Path:
    """``root`` as a folder path, or :class:`DataError` naming the two layouts a probe reads."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"{path}: no such folder (expected ROOT/train and ROOT/val, or ROOT/<class>/<images>)"
        )
    return path


def probe_splits(
    root: str | Path,
    *,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    trials: int = 1,
    seed: int = 0,
    exclude: Sequence[str] = (),
) -> tuple[list[str], list[Split]]:
    """(class names, one (train, test) list of (file, class index) per trial) of the data set ``root`` (module
    docstring). A split data set is used as it is: then the per-class counts, ``trials`` and ``exclude`` must be
    left unset. ``train_per_class`` defaults to :data:`TRAIN_PER_CLASS`."""
    classes, splits, _ = _plan(root, train_per_class, test_per_class, trials, seed, exclude)
    return classes, splits


def _plan(
    root: str | Path,
    train_per_class: int | None,
    test_per_class: int | None,
    trials: int,
    seed: int,
    exclude: Sequence[str],
) -> tuple[list[str], list[Split], list[Path] | None]:
    """:func:`probe_splits`'s classes and splits, and every image of an unsplit ``root``'s classes in listing
    order (``None`` for a split one)."""
    if trials < 1:
        raise DataError(f"--trials must be at least 1 (got {trials})")
    root = check_root(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        if trials != 1 or exclude or test_per_class is not None or train_per_class is not None:
            raise DataError(
                f"{root} is split already (train/ and val/): it is used as it is, one trial; --train-per-class, "
                "--test-per-class, --trials and --exclude choose splits of a folder of class folders"
            )
        classes = class_folders(root / "train")
        if len(classes) < 2:
            raise DataError(f"{root / 'train'} holds {len(classes)} class folder(s); a classifier needs 2")
        unknown = sorted(set(class_folders(root / "val")) - set(classes))
        if unknown:
            raise DataError(
                f"{root / 'val'}: class folder(s) {', '.join(unknown)} are not in {root / 'train'}"
            )
        index = {name: i for i, name in enumerate(classes)}
        train = [(f, i) for name, i in index.items() for f in files_under(root / "train" / name)]
        test = [
            (f, index[name]) for name in class_folders(root / "val") for f in files_under(root / "val" / name)
        ]
        if not test:
            raise DataError(f"{root / 'val'} holds no images to test on")
        return classes, [(train, test)], None
    train_per_class = TRAIN_PER_CLASS if train_per_class is None else train_per_class
    if train_per_class < 1:
        raise DataError(f"--train-per-class must be at least 1 (got {train_per_class})")
    if test_per_class is not None and test_per_class < 1:
        raise DataError(f"--test-per-class must be at least 1 (got {test_per_class})")
    found = class_folders(root)
    unknown = sorted(set(exclude) - set(found))
    if unknown:
        raise DataError(f"--exclude {', '.join(unknown)}: no such class folder in {root}")
    classes = [c for c in found if c not in set(exclude)]
    if len(classes) < 2:
        raise DataError(f"{root} holds {len(classes)} class folder(s); a classifier needs 2")
    files = _check_class_files(root, classes)
    out: list[Split] = []
    for t in range(trials):
        train: list[Item] = []
        test: list[Item] = []
        for i, name in enumerate(classes):
            tr, te = class_split(
                files[name], name, seed + t, train_per_class, test_per_class, held_out="test"
            )
            train += [(f, i) for f in tr]
            test += [(f, i) for f in te]
        out.append((train, test))
    return classes, out, [f for name in classes for f in files[name]]


def _feature_sizes(model: AlexNetFamily, layers: list[str], pool_to: int | None) -> dict[str, int]:
    from alexnet.predict import preprocessing_of

    size = preprocessing_of(model).input_size
    maps = capture(model, torch.zeros(1, 3, size, size), layers)
    return {name: pooled(m, pool_to).shape[1] for name, m in maps.items()}


def _memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def layer_features(
    model: AlexNetFamily,
    paths: Sequence[Path],
    layers: list[str],
    *,
    pool_to: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """(each layer's features N×D in float32 on the CPU, the places in ``paths`` of the images that did not
    decode and have no row), from one forward pass per batch; ``pool_to``: maps averaged down to that size.
    With ``cache_dir`` the features are kept there in shards as they are extracted (the cache retrieval reads too,
    :func:`alexnet.analysis.features.extract_features`): an interrupted extraction goes on from its last
    shard, and a second call for the same images reads them back."""
    sizes = _feature_sizes(model, layers, pool_to)
    need = len(paths) * sum(sizes.values()) * 4
    if need > _memory() // 2:
        raise DataError(
            f"the features of {len(paths)} images ({', '.join(f'{k} {v:,}' for k, v in sizes.items())} per "
            f"image) need {need / 2**30:.1f} GiB, more than half this machine's memory: fewer layers, or "
            "--pool-to N (each map averaged down to N×N)"
        )
    features = extract_features(
        model,
        paths,
        layers,
        batch_size=batch_size,
        cache_dir=cache_dir,
        progress=progress,
        workers=workers,
        pool_to=pool_to,
    )
    skipped = set(features.skipped)
    return features.take_by_layer(), [i for i, p in enumerate(paths) if str(p) in skipped]


@dataclass
class ProbeRow:
    layer: str
    features: int
    classifier: Kind
    mean_class_acc: list[float]  # per trial: the mean over classes of each class's top-1 accuracy
    accuracy: list[float]  # per trial: the fraction of test images right
    converged: bool = True

    @property
    def mean(self) -> float:
        return sum(self.mean_class_acc) / len(self.mean_class_acc)

    @property
    def std(self) -> float:
        """The sample standard deviation over the trials (0 for one trial)."""
        n = len(self.mean_class_acc)
        if n < 2:
            return 0.0
        return math.sqrt(sum((a - self.mean) ** 2 for a in self.mean_class_acc) / (n - 1))


@dataclass
class ProbeResult:
    model: str
    data: str
    classes: int
    trials: int
    train_images: list[int]  # per trial
    test_images: list[int]
    C: float
    pool_to: int | None
    rows: list[ProbeRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # files that did not decode
    # stopped by Ctrl-C or SIGTERM: the rows hold the finished trials (or, within the first, the layers finished)
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        return self.stopped is None

    def row(self, layer: str, classifier: str) -> ProbeRow:
        return next(r for r in self.rows if r.layer == layer and r.classifier == classifier)

    def table(self) -> str:
        """ZF Table 7's layout: a row per layer, a column per classifier, mean per-class accuracy (± std over
        the trials)."""
        layers = list(dict.fromkeys(r.layer for r in self.rows))
        kinds = list(dict.fromkeys(r.classifier for r in self.rows))
        head = f"{'layer':<8} {'features':>10}" + "".join(f"  {k:>15}" for k in kinds)
        lines = [head]
        for layer in layers:
            cells = []
            for k in kinds:
                r = self.row(layer, k)
                cell = f"{100 * r.mean:.1f} %" + (f" ± {100 * r.std:.1f}" if self.trials > 1 else "")
                cells.append(f"  {cell + ('' if r.converged else '*'):>15}")
            lines.append(f"{layer:<8} {self.row(layer, kinds[0]).features:>10,}" + "".join(cells))
        n_train, n_test = (
            "/".join(f"{n:,}" for n in sorted(set(c))) for c in (self.train_images, self.test_images)
        )
        lines.append(
            f"mean per-class top-1 accuracy on {n_test} test images"
            + (f" (mean ± std over {self.trials} trials)" if self.trials > 1 else "")
            + f"; {self.classes} classes, {n_train} training images; C = {self.C:g}"
            + (f"; maps averaged to {self.pool_to}×{self.pool_to}" if self.pool_to else "")
        )
        if not all(r.converged for r in self.rows):
            lines.append("* the solver stopped before converging (a smaller -C is better conditioned)")
        if self.stopped:
            lines.append(f"stopped early: {self.stopped}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "classes": self.classes,
            "trials": self.trials,
            "train_images": self.train_images,
            "test_images": self.test_images,
            "C": self.C,
            "pool_to": self.pool_to,
            "skipped": self.skipped,
            "complete": self.complete,
            "stopped": self.stopped,
            "rows": [
                {
                    "layer": r.layer,
                    "features": r.features,
                    "classifier": r.classifier,
                    "mean_class_acc": r.mean,
                    "std": r.std,
                    "trials_mean_class_acc": r.mean_class_acc,
                    "trials_accuracy": r.accuracy,
                    "converged": r.converged,
                }
                for r in self.rows
            ],
        }


def mean_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The mean over the classes present in ``labels`` of the fraction of each one's images predicted right."""
    hits = (predicted == labels).double()
    present = labels.unique()
    return float(torch.stack([hits[labels == c].mean() for c in present]).mean())


def linear_probe(
    model: AlexNetFamily,
    root: str | Path,
    *,
    layers: Sequence[str] | None = None,
    classifiers: Sequence[Kind] = KINDS,
    C: float = 1.0,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    trials: int = 1,
    seed: int = 0,
    exclude: Sequence[str] = (),
    pool_to: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    signals: StopSignals | None = None,
) -> ProbeResult:
    """ZF Table 7 on the data set ``root`` (module docstring): each of ``layers`` (default: the paper's seven,
    :func:`block_outputs`) × each classifier, trained on each trial's training images, scored on its test
    images. The classifiers are solved on the model's device (float64; the CPU for MPS). ``cache_dir``: see
    :func:`layer_features`; for an unsplit ``root`` it holds every image of the classes, whichever the trials
    draw, so that other trials, seeds or per-class counts read the same features (unless the classes hold more
    than :data:`ALL_IMAGES_FACTOR` times the images drawn: then those only).

    ``signals`` (not entered yet) is entered around the fits only, the features being extracted before (with
    ``cache_dir``, an interrupted extraction stops on its own, its shards kept): Ctrl-C or SIGTERM then ends the
    fits after the one under way, and the result, marked :attr:`ProbeResult.stopped`, holds the trials that
    finished, or, when the first had not, the layers it finished."""
    layers = list(dict.fromkeys(check_layers(model, layers or block_outputs(model))))  # each once
    classifiers = list(dict.fromkeys(classifiers))
    top = model.layer_names()[-1]
    if top in layers:
        raise DataError(f"{top} is the network's own classifier: probe the layers below it")
    unknown = sorted(set(classifiers) - set(KINDS))
    if unknown or not classifiers:
        raise DataError(f"classifiers: choose from {', '.join(KINDS)} (got {', '.join(unknown) or 'none'})")
    if C <= 0:
        raise DataError(f"-C must be positive (got {C})")
    if pool_to is not None and pool_to < 1:
        raise DataError(f"--pool-to must be at least 1 (got {pool_to})")
    classes, splits, every = _plan(root, train_per_class, test_per_class, trials, seed, exclude)
    # every image any trial uses, once; with a cache, every image of the classes (unless that is more than
    # ALL_IMAGES_FACTOR times as many: 30 per class drawn from ImageNet's 1,300 must not extract them all), so that
    # the cache's listing and key do not depend on --trials, --seed or the per-class counts
    paths = list(dict.fromkeys(f for train, test in splits for f, _ in train + test))
    if cache_dir is not None and every is not None and len(every) <= ALL_IMAGES_FACTOR * len(paths):
        paths = every
    feats, bad = layer_features(
        model,
        paths,
        layers,
        pool_to=pool_to,
        batch_size=batch_size,
        workers=workers,
        cache_dir=cache_dir,
        progress=progress,
    )
    unreadable = {paths[i] for i in bad}
    row_of = {p: r for r, p in enumerate(p for p in paths if p not in unreadable)}
    device = next(model.parameters()).device
    solve_on = torch.device("cpu") if device.type == "mps" else device  # no float64 on MPS
    result = ProbeResult(
        model=model.config.name,
        data=str(root),
        classes=len(classes),
        trials=len(splits),
        train_images=[],
        test_images=[],
        C=C,
        pool_to=pool_to,
        skipped=[str(p) for p in sorted(unreadable)],
    )
    rows = {
        (layer, kind): ProbeRow(layer, feats[layer].shape[1], kind, [], [])
        for layer in layers
        for kind in classifiers
    }
    bar = tqdm(total=len(splits) * len(rows), desc="classifiers", unit="fit", disable=not progress)
    with signals if signals is not None else contextlib.nullcontext():
        for t, (train, test) in enumerate(splits):
            train = [(f, y) for f, y in train if f not in unreadable]
            test = [(f, y) for f, y in test if f not in unreadable]
            if len({y for _, y in train}) < len(classes):
                missing = sorted(set(classes) - {classes[y] for _, y in train})
                raise DataError(f"no readable training image of class(es) {', '.join(missing)}")
            if not test:
                raise DataError("no readable image to test on")
            result.train_images.append(len(train))
            result.test_images.append(len(test))
            tr = torch.tensor([row_of[f] for f, _ in train])
            te = torch.tensor([row_of[f] for f, _ in test])
            y_train = torch.tensor([y for _, y in train])
            y_test = torch.tensor([y for _, y in test])
            for i, layer in enumerate(layers):
                # the rotation is shared by the classifiers: its n×n products are most of the cost
                x_train, x_test = feats[layer][tr], feats[layer][te]
                train_at, test_at = principal_coordinates(x_train, x_test, Standardiser.of(x_train, solve_on))
                del x_train, x_test
                for kind in classifiers:
                    clf = fit(kind, train_at, y_train.to(solve_on), len(classes), C)
                    predicted = clf.decision(test_at).argmax(1).cpu()
                    row = rows[layer, kind]
                    row.mean_class_acc.append(mean_class_accuracy(predicted, y_test))
                    row.accuracy.append(float((predicted == y_test).double().mean()))
                    row.converged = row.converged and clf.converged
                    bar.update(1)
                # a signal after this layer's fits: stop, unless they were the last (then all is done)
                stop = signals is not None and signals.signum is not None
                if stop and (t + 1, i + 1) != (len(splits), len(layers)):
                    finished = t + 1 if i + 1 == len(layers) else t  # trials whose every layer is fitted
                    _keep_finished(rows, result, finished, i + 1, len(layers), len(splits))
                    break
            if result.stopped:
                break
    bar.close()
    result.rows = [row for row in rows.values() if row.mean_class_acc]
    return result


def _keep_finished(
    rows: dict[tuple[str, Kind], ProbeRow],
    result: ProbeResult,
    trials: int,
    layers: int,
    of_layers: int,
    of_trials: int,
) -> None:
    """Stopped with ``trials`` trials finished and ``layers`` of the next one's layers: the rows and image counts
    keep the finished trials, or, when none had finished, the first trial's finished layers."""
    if trials == 0:
        result.stopped = f"after {layers} of {of_layers} layers" + (
            f" of the first of {of_trials} trials" if of_trials > 1 else ""
        )
        result.trials = 1
        return
    result.stopped = f"after {trials} of {of_trials} trials"
    for row in rows.values():
        del row.mean_class_acc[trials:], row.accuracy[trials:]
    del result.train_images[trials:], result.test_images[trials:]
    result.trials = trials


__all__ = [
    "ProbeResult",
    "ProbeRow",
    "block_outputs",
    "check_root",
    "layer_features",
    "linear_probe",
    "mean_class_accuracy",
    "probe_splits",
]
