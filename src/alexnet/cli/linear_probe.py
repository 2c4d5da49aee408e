"""``alexnet linear-probe ROOT``: a linear SVM and a softmax on each layer's features (Zeiler & Fergus Table 7)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from alexnet.cli._common import add_command, add_device_argument, add_model_arguments, device_from_args


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "linear-probe",
        "how discriminative each layer's features are: a linear SVM and a softmax on each (ZF §5.3, Table 7)",
        "Zeiler & Fergus §5.3 and Table 7: keep the network fixed, take each image's features at a layer (by default the "
        "paper's layers 1-7: each block's output, e.g. AlexNet's pool1 pool2 relu3 relu4 pool5 relu6 relu7), "
        "train a linear classifier on them and report its mean per-class top-1 accuracy on held-out images. "
        "ROOT is split already (ROOT/train and ROOT/val: one trial), or a folder of class folders such as "
        "Caltech-101's 101_ObjectCategories, from which each trial draws --train-per-class images of each class "
        "to train on and tests on the others (ZF §5.2: 30, up to 50 tested, 5 trials; trial t is the split "
        "`alexnet data-split --seed S+t` makes). Both classifiers are solved to their optimum in float64 (the "
        "softmax by L-BFGS, the SVM by Newton's method) on standardised features; -C weighs the loss against "
        "the L2 penalty. docs/analysis.md has the details and a measured example.",
    )
    p.add_argument("root", metavar="ROOT", help="ROOT/train + ROOT/val, or ROOT/<class>/<images>")
    add_model_arguments(p, run=True)
    p.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="the layers whose features are classified (default: the paper's layers 1-7)",
    )
    p.add_argument(
        "--classifier",
        action="append",
        choices=["svm", "softmax"],
        help="svm (one-vs-rest, squared hinge) or softmax; repeatable (default: both)",
    )
    p.add_argument(
        "-C", type=float, default=1.0, help="loss weight against ½‖W‖², as scikit-learn's C (default 1)"
    )
    p.add_argument(
        "--train-per-class",
        type=int,
        metavar="N",
        help="training images drawn from each class of an unsplit ROOT (default 30)",
    )
    p.add_argument(
        "--test-per-class",
        type=int,
        metavar="M",
        help="test on at most M of each class's others (default all)",
    )
    p.add_argument("--trials", type=int, default=1, help="random splits of an unsplit ROOT (default 1)")
    p.add_argument("--seed", type=int, default=0, help="the first trial's split (default 0)")
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="CLASS",
        help="leave out this class folder of an unsplit ROOT (repeatable; e.g. BACKGROUND_Google)",
    )
    p.add_argument(
        "--pool-to",
        type=int,
        metavar="N",
        help="average each feature map down to N×N first (less memory; the paper uses the maps as they are)",
    )
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="keep the features in DIR as they are extracted (safetensors shards, about images × features × 4 "
        "bytes; of every image of an unsplit ROOT's classes when they are at most twice the images drawn): an "
        "interrupted probe goes on from there, and a second one of the same ROOT, layers and --pool-to (another "
        "-C, --classifier, --trials, --seed or per-class count) skips the network",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    p.add_argument("--workers", type=int, default=2, help="image-decoding worker processes (default 2)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.analysis.linear_probe import check_root, linear_probe
    from alexnet.cli._common import CommandError, load_model_from_args
    from alexnet.stopping import StopSignals

    if args.batch_size < 1 or args.workers < 0:
        raise CommandError("--batch-size must be at least 1 and --workers at least 0")
    device = device_from_args(args)
    check_root(args.root)  # before the weights are read: a typo must not wait for a .caffemodel
    model = load_model_from_args(args).to(device)
    # Ctrl-C or SIGTERM during the fits: the fits under way finish and the table so far is printed, marked
    signals = StopSignals(None if args.json else "stopping after this layer's fits, with the table so far")
    result = linear_probe(
        model,
        args.root,
        layers=args.layers,
        classifiers=args.classifier or ["svm", "softmax"],
        C=args.C,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        trials=args.trials,
        seed=args.seed,
        exclude=args.exclude,
        pool_to=args.pool_to,
        batch_size=args.batch_size,
        workers=args.workers,
        cache_dir=args.cache,
        progress=not (args.quiet or args.json),
        signals=signals,
    )
    if result.skipped:
        import sys

        from alexnet.data.folders import log_unreadable

        log_unreadable([(p, "does not decode") for p in result.skipped])
        print(f"alexnet: {len(result.skipped)} unreadable image(s) left out", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        weights = args.weights or args.run
        print(f"{result.model}" + (f" ({weights})" if weights else " (untrained: its initialisation)"))
        print(result.table())
    if result.stopped:
        kept = (
            f"; the features stay in {args.cache}: the same command goes on from them" if args.cache else ""
        )
        raise signals.interrupted(f"stopped {result.stopped}: the table is over those only{kept}")
    return 0
