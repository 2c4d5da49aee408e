"""``alexnet visualize <kind>``: activation maps, filters, deconvnet, top-9, occlusion, evolution, invariance,
retrieval, predictions, correspondence, Grad-CAM, integrated gradients, SmoothGrad, LRP, region perturbation, sanity
checks, optimised images (maximize). Each kind writes PNGs and the numbers behind them (.npz / .json) into
``--out`` and prints the paths (correspondence, perturbation and sanity print their tables first)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from pathlib import Path
from typing import Any

from alexnet.cli._common import (
    ArgumentParser,
    CommandError,
    add_command,
    add_device_argument,
    add_model_arguments,
    device_from_args,
    image_files,
    readable_images,
    seed,
    writable_folder,
)

KINDS = {
    "activations": "activation maps of a layer (or all five conv stages) tiled per channel",
    "filters": "conv1 filters (AlexNet Fig. 3), conv2 per input channel, dead / aliasing statistics (ZF Fig. 6)",
    "deconv": "Zeiler & Fergus deconvnet projection of a feature map or unit to pixels (ZF §2.1)",
    "top9": "the 9 strongest activations of each feature map over a data set, patches + projections (ZF Fig. 2)",
    "occlusion": "occlusion sensitivity: layer-5 activation, class probability, label map (ZF Fig. 7)",
    "evolution": "deconv projections of chosen feature maps at each saved checkpoint (ZF Fig. 4)",
    "invariance": "feature distances and class probability under translation, scaling, rotation (ZF Fig. 5)",
    "retrieval": "nearest training images by the last hidden layer's activations (relu7; AlexNet Fig. 4)",
    "predictions": "images with their five most probable labels as bars, the correct one red (AlexNet Fig. 4, "
    "left)",
    "gradcam": "Grad-CAM: where a class's score comes from, at a conv layer's resolution (Selvaraju et al. 2017, "
    "§3), over the image",
    "integrated-gradients": "integrated gradients: each pixel's share of a class's output against a black image "
    "(Sundararajan et al. 2017, §3; sums to the output's change)",
    "smoothgrad": "SmoothGrad: a class's gradient map averaged over noisy copies of the image (Smilkov et al. "
    "2017, §3), also of guided backpropagation or integrated gradients",
    "lrp": "layer-wise relevance propagation: a class's score split into one relevance per pixel (Bach et al. "
    "2015), the LRN passed as the identity (Binder et al. 2016)",
    "perturbation": "which attribution map finds the evidence? Regions destroyed most relevant first, the "
    "class's fall measured (AOPC; Samek et al. 2017)",
    "sanity": "sanity check of the saliency maps: do they change when the weights are randomised? (Adebayo et "
    "al. 2018)",
    "maximize": "images that drive chosen units highest, by regularised gradient ascent (Yosinski et al. 2015, "
    "§3: the DeepVis toolbox's optimised images)",
    "correspondence": "does masking the same part of several images change the features alike? (ZF §4.2, "
    "Table 1, Fig. 8)",
}


def _rule(k: argparse.ArgumentParser, more: str = "") -> None:
    k.add_argument(
        "--rule",
        choices=("deconvnet", "gradient", "guided"),
        default="deconvnet",
        help="how the signal crosses each ReLU and LRN on the way down: deconvnet (ZF §2.1: rectified, LRN passed "
        "through; default), gradient (the exact gradient: Simonyan et al.'s saliency) or guided (Springenberg et "
        "al.'s guided backpropagation); for comparing the deconvnet's pictures with theirs; another rule's files "
        "are named with it, beside the deconvnet's." + more,
    )


def _unit(text: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (e.g. 6,7), got {text!r}") from None
    return row, col


MAX_CHANNEL = 1 << 16  # far above any conv layer of the family (384 … 1024 maps)


def _channels(text: str) -> list[int]:
    """``0,5,10-15`` → [0, 5, 10, …, 15], in the order given, each channel once. Empty items, non-numbers,
    negative numbers and reversed ranges (``5-2``) are errors: none of them may quietly select nothing."""
    out: list[int] = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        if m is None:
            raise argparse.ArgumentTypeError(
                f"expected channels like 0,5,10-15 (numbers ≥ 0, ranges LOW-HIGH), got {text!r}"
            )
        first = int(m[1])
        last = int(m[2]) if m[2] is not None else first
        if last < first:
            raise argparse.ArgumentTypeError(
                f"reversed channel range {part!r} in {text!r}: write {last}-{first}"
            )
        if last > MAX_CHANNEL:  # before building the list: 0-999999999 must not eat the memory
            raise argparse.ArgumentTypeError(f"channel {last} is out of range for every model")
        out.extend(range(first, last + 1))
    return list(dict.fromkeys(out))  # each channel once, in the order given


def _names(text: str) -> list[str]:
    """``gradient,guided`` → ["gradient", "guided"]; an empty item is an error."""
    names = [v.strip() for v in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _indices(text: str) -> list[int]:
    """``3,3,7`` → [3, 3, 7]: one class index per image, repeats allowed."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected class indices like 3,0,7, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"class indices are ≥ 0, got {text!r}")
    return values


def _image_set(p: ArgumentParser, what: str, split: str, images: str) -> None:
    """``--data ROOT --split S --max-images N``: the images top9 and retrieval stream (topk.folder_items)."""
    p.add_argument(
        "--data",
        required=True,
        metavar="ROOT",
        help=f"{what}: ROOT/<split>/<class>/*, or a folder of images without split folders",
    )
    p.add_argument("--split", default=split, help=f"split folder under ROOT (default {split})")
    p.add_argument("--max-images", type=int, metavar="N", help=f"only the first N {images} (default all)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument(
        "--workers",
        type=int,
        help="processes decoding the images ahead of the model (default: 2 with a GPU; 0 on the CPU, whose "
        "cores the model's own threads use: measured no faster with workers); 0: in this process",
    )


def _common(p: ArgumentParser, images: str = "+") -> None:
    add_model_arguments(p, run=True)
    add_device_argument(p)
    p.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="folder for the PNG / .npz / .json files"
    )
    if images:
        p.add_argument(
            "images",
            nargs=images,
            metavar="IMAGE",
            help="image files, or folders standing for their image files (sub-folders too, sorted), as in predict",
        )


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "visualize",
        "look inside a model: activations, filters, deconvnet, top-9, occlusion, evolution, invariance, retrieval, "
        "predictions, correspondence, gradcam, integrated-gradients, smoothgrad, lrp, perturbation, sanity, maximize",
        "Figures of AlexNet §6 / Fig. 3–4, Zeiler & Fergus §2–4 / Figs. 2–8 and Table 1, Selvaraju et al.'s "
        "Grad-CAM, Sundararajan et al.'s integrated gradients, Smilkov et al.'s SmoothGrad, Bach et al.'s LRP, "
        "Samek et al.'s region perturbation, Adebayo et al.'s sanity "
        "checks and Yosinski et al.'s optimised images for any "
        "registered model. Each kind writes PNGs plus the numbers behind them "
        "(.npz / .json) into --out and prints the paths.",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", parser_class=ArgumentParser)
    kinds.required = True

    k = kinds.add_parser("activations", help=KINDS["activations"], description=KINDS["activations"])
    _common(k)
    k.add_argument("--layer", help="paper layer name (conv1 … pool5; default relu1); not with --all")
    k.add_argument("--top", type=int, help="only the K most active channels")
    k.add_argument("--all", action="store_true", help="all five conv stages on one figure")
    k.add_argument(
        "--stage",
        choices=("conv", "relu", "norm", "pool"),
        help="with --all only: which output of each stage (default relu); a stage without it (pool3) "
        "shows its ReLU output, a model without any (norm on alexnet_owt) is an error",
    )

    k = kinds.add_parser("filters", help=KINDS["filters"], description=KINDS["filters"])
    _common(k, images="*")

    k = kinds.add_parser("deconv", help=KINDS["deconv"], description=KINDS["deconv"])
    _common(k)
    k.add_argument(
        "--layer",
        default="conv5",
        help="conv-trunk layer: convN, reluN, normN or poolN (default conv5); or a classifier layer (fc6, relu6, "
        "fc7, relu7): one of its units, through the classifier first; or the last layer (fc8): a class score",
    )
    k.add_argument(
        "--channel",
        type=int,
        help="feature map (default: with --unit, the map strongest at that unit; else each image's strongest "
        "activation); for a classifier layer one of its units (default the strongest), for fc8 a class (default "
        "each image's top class)",
    )
    k.add_argument(
        "--unit", type=_unit, metavar="ROW,COL", help="only this unit of the map (default: the whole map)"
    )
    _rule(k, " With --layer fc8 and gradient: Simonyan et al.'s class saliency map (§3.1) too.")

    k = kinds.add_parser("top9", help=KINDS["top9"], description=KINDS["top9"])
    _common(k, images="")
    _image_set(k, "data set", "val", "images")
    k.add_argument("--layer", default="conv5", help="conv-trunk layer (default conv5)")
    k.add_argument("--channels", type=_channels, help="feature maps to draw, e.g. 0,5,10-15 (default 0-15)")
    k.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted pass from its saved state (refused if the model, weights, layer or "
        "first images differ)",
    )
    _rule(k)

    k = kinds.add_parser("occlusion", help=KINDS["occlusion"], description=KINDS["occlusion"])
    _common(k)
    k.add_argument("--size", type=int, default=32, help="side of the grey square in pixels (default 32)")
    k.add_argument("--stride", type=int, default=8, help="step between positions in pixels (default 8)")
    k.add_argument("--target", type=int, help="the correct class index (default: the top prediction)")
    k.add_argument("--batch-size", type=int, default=64, help="occluded copies per forward pass (default 64)")

    k = kinds.add_parser("evolution", help=KINDS["evolution"], description=KINDS["evolution"])
    _common(k)
    k.add_argument(
        "--checkpoints",
        nargs="*",
        metavar="FILE",
        help=".pt checkpoints or .safetensors files (default: RUN/checkpoints/*.pt)",
    )
    k.add_argument("--layer", default="conv5", help="conv-trunk layer (default conv5)")
    k.add_argument(
        "--channels",
        type=_channels,
        default=[0, 1, 2, 3],
        help="feature maps (rows), e.g. 0,5,10-15 (default 0-3)",
    )
    _rule(k)

    k = kinds.add_parser("invariance", help=KINDS["invariance"], description=KINDS["invariance"])
    _common(k)
    k.add_argument("--target", type=int, help="true class of the images (default: top prediction)")

    k = kinds.add_parser("retrieval", help=KINDS["retrieval"], description=KINDS["retrieval"])
    _common(k)
    _image_set(k, "the gallery", "train", "gallery images")
    k.add_argument("--neighbours", type=int, default=6, help="nearest images shown per query (default 6)")
    k.add_argument("--cache", metavar="DIR", help="feature cache folder (default OUT/cache)")

    k = kinds.add_parser(
        "predictions",
        help=KINDS["predictions"],
        description=KINDS["predictions"]
        + ". The correct class is --targets, else the image's folder when it "
        "is named after one of the model's classes (ROOT/val/<class>/<image>); without either the image has no "
        "red bar.",
    )
    _common(k)
    k.add_argument("--topk", type=int, default=5, help="labels shown per image (default 5)")
    k.add_argument(
        "--targets",
        type=_indices,
        metavar="I,J,…",
        help="the correct class index of each image, in order (default: from the image's folder name)",
    )

    k = kinds.add_parser(
        "correspondence",
        help=KINDS["correspondence"],
        description="Zeiler & Fergus §4.2: mask the same part (an eye, the nose) in each image and measure how "
        "consistently that changes the features of layers 5 and 7 (pool5, relu7): the fraction of features whose "
        "change has another sign, mean ± std over the image pairs, against independent random squares. Lower "
        "is a tighter correspondence. Prints Table 1 and writes correspondence.json and Fig. 8's masks.",
    )
    _common(k)
    k.add_argument(
        "--parts",
        required=True,
        metavar="FILE",
        help='JSON: {"right eye": [[x, y], ...], "nose": [...]}, one [x, y] per image in the order given, in '
        "each image's own pixels (x to the right, y down); a square is centred on each",
    )
    k.add_argument(
        "--size", type=int, default=32, help="side of the mean-pixel square in input pixels (default 32)"
    )
    k.add_argument(
        "--draws", type=int, default=10, help="random squares per image for the baseline (default 10)"
    )

    k = kinds.add_parser(
        "gradcam",
        help=KINDS["gradcam"],
        description="Selvaraju et al., 'Grad-CAM' (ICCV 2017), §3: the gradient of a class's score (before the "
        "softmax) with respect to a conv layer's maps, averaged over each map, weighs the maps; their weighted sum, "
        "rectified and upsampled, shows where in the image the class's evidence lies. One forward and one backward "
        "pass: a companion to occlusion's hundreds of forward passes (ZF Fig. 7).",
    )
    _common(k)
    k.add_argument("--layer", help="conv-trunk layer (default the last conv stage's ReLU output, relu5)")
    k.add_argument("--target", type=int, help="class index to explain (default: each image's top class)")
    k.add_argument(
        "--guided",
        action="store_true",
        help="also the class's guided backpropagation and Guided Grad-CAM (their product; §3, Fig. 1 (b)-(d))",
    )

    k = kinds.add_parser(
        "integrated-gradients",
        help=KINDS["integrated-gradients"],
        description="Sundararajan, Taly & Yan, 'Axiomatic Attribution for Deep Networks' (ICML 2017): each pixel's "
        "difference from a baseline image times the class output's gradient averaged along the straight path "
        "from the baseline (§3, Eq. 1); the attributions sum to the output's change from the baseline "
        "(completeness, Proposition 1), and the error of the --steps sum is printed (§5: 20-300 steps bring it "
        "within 5 per cent).",
    )
    _common(k)
    k.add_argument("--target", type=int, help="class index to explain (default: each image's top class)")
    k.add_argument(
        "--baseline",
        choices=("black", "mean"),
        default="black",
        help="the path's start: a black image (§6; default) or the model's mean (its zero input)",
    )
    k.add_argument("--steps", type=int, default=50, help="points along the path (default 50; §5: 20-300)")
    k.add_argument(
        "--method",
        choices=("riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"),
        default="riemann_right",
        help="how the points are placed and weighed (default riemann_right, §5's sum)",
    )
    k.add_argument(
        "--of",
        choices=("probability", "score"),
        default="probability",
        help="the output explained: the class's probability after the softmax (default) or its score before it",
    )
    k.add_argument("--batch-size", type=int, default=32, help="path images per forward pass (default 32)")

    k = kinds.add_parser(
        "smoothgrad",
        help=KINDS["smoothgrad"],
        description="Smilkov, Thorat, Kim, Viégas & Wattenberg, 'SmoothGrad: removing noise by adding noise' "
        "(2017): the class score's gradient with respect to the image fluctuates sharply from pixel to pixel; its "
        "mean over --samples copies of the image with Gaussian noise of --noise times the image's range added is "
        "smoother (§3; §4.2: 10-20 per cent noise, about 50 samples). The same mean of guided backpropagation, "
        "the deconvnet's rules or integrated gradients (§4.4) with --method; --statistic smoothgrad_sq or vargrad "
        "takes the mean square or the variance of the noisy maps instead (as Captum's NoiseTunnel). Draws the "
        "crop, the map of one pass without noise and the smoothed map, its absolute values summed over the "
        "colours and capped at the 99th percentile (§4.1).",
    )
    _common(k)
    k.add_argument("--target", type=int, help="class index to explain (default: each image's top class)")
    k.add_argument(
        "--method",
        choices=("gradient", "guided", "deconvnet", "integrated"),
        default="gradient",
        help="the map averaged: the score's gradient (the paper's; default), guided backpropagation, the "
        "deconvnet's rules through the classifier, or integrated gradients",
    )
    k.add_argument("--samples", type=int, default=50, help="noisy copies per image (default 50; §4.2)")
    k.add_argument(
        "--noise",
        type=float,
        default=0.15,
        help="the noise's standard deviation as a fraction of the image's range (default 0.15; §4.2: 0.1-0.2)",
    )
    k.add_argument(
        "--statistic",
        choices=("smoothgrad", "smoothgrad_sq", "vargrad"),
        default="smoothgrad",
        help="the noisy maps' mean (default), mean square or variance",
    )
    k.add_argument(
        "--seed", type=seed, default=0, help="the noise's seed (default 0): the same maps every run"
    )
    k.add_argument("--batch-size", type=int, default=32, help="noisy copies per forward pass (default 32)")
    k.add_argument(
        "--steps", type=int, default=20, help="--method integrated: points along each path (default 20)"
    )
    k.add_argument(
        "--baseline",
        choices=("black", "mean"),
        default="black",
        help="--method integrated: the path's start (default black)",
    )
    k.add_argument(
        "--of",
        choices=("probability", "score"),
        default="probability",
        help="--method integrated: the output explained (default the class's probability); the other methods "
        "take the score before the softmax, as the paper does",
    )

    k = kinds.add_parser(
        "lrp",
        help=KINDS["lrp"],
        description="Bach, Binder, Montavon, Klauschen, Müller & Samek, 'On pixel-wise explanations for "
        "non-linear classifier decisions by layer-wise relevance propagation' (PLoS ONE 2015): the class's score "
        "before the softmax is handed down layer by layer, each unit's relevance shared among its inputs by "
        "their contributions, to one relevance per pixel that sums to (nearly) the score. --rule composite "
        "(default) is the overview's choice (Montavon et al. 2019): z^B at conv1 (bounded pixels, Montavon et al. "
        "2017), LRP-gamma at conv2-conv3, LRP-epsilon at conv4-conv5, LRP-0 at the fc layers; epsilon and "
        "alpha1beta0 are Bach et al.'s rules at every layer (alpha1beta0 keeps positive contributions only and "
        "conserves the score). Max-pooling hands relevance to each window's maximum; the local response "
        "normalisation passes it unchanged (Binder et al. 2016's identity treatment). Draws the crop and the "
        "relevance summed over the colours (red for the class, blue against it); the .npz holds the 3×H×W map.",
    )
    _common(k)
    k.add_argument("--target", type=int, help="class index to explain (default: each image's top class)")
    k.add_argument(
        "--rule",
        choices=("composite", "epsilon", "alpha1beta0"),
        default="composite",
        help="the rules' preset (default composite)",
    )
    k.add_argument(
        "--epsilon",
        type=float,
        default=0.25,
        help="LRP-epsilon's stabiliser, added to each unit's total input (default 0.25)",
    )
    k.add_argument(
        "--gamma", type=float, default=0.25, help="LRP-gamma's boost of positive weights (default 0.25)"
    )

    k = kinds.add_parser(
        "perturbation",
        help=KINDS["perturbation"],
        description="Samek, Binder, Montavon, Lapuschkin & Müller, 'Evaluating the visualization of what a deep "
        "neural network has learned' (IEEE TNNLS 2017): each method's map ranks the image's --region × --region "
        "tiles; the tiles are replaced by uniform noise one after another, most relevant first, and the class's "
        "score (or probability) is read after each of --steps steps. The area over that perturbation curve, "
        "AOPC = mean over k = 0..L of f(x) - f(x_k), averaged over the images, is higher for a map that finds "
        "what the output depends on; 'random' orders the tiles at random (the paper's baseline). Prints the "
        "methods by AOPC and writes perturbation.png (the mean curves), .json and .npz.",
    )
    _common(k)
    k.add_argument("--target", type=int, help="class index to explain (default: each image's top class)")
    k.add_argument(
        "--methods",
        type=_names,
        help="comma-separated, from random, gradient, smoothgrad, guided, deconvnet, gradcam, guided-gradcam, "
        "integrated, lrp (the composite), lrp-epsilon, lrp-alpha1beta0 (default all)",
    )
    k.add_argument("--region", type=int, default=9, help="the tiles' side in pixels (default 9, the paper's)")
    k.add_argument("--steps", type=int, default=100, help="tiles destroyed, one per step (default 100)")
    k.add_argument(
        "--of",
        choices=("score", "probability"),
        default="score",
        help="the output read: the class's score before the softmax (default) or its probability",
    )
    k.add_argument("--seed", type=seed, default=0, help="the noise's and the random order's seed (default 0)")
    k.add_argument(
        "--batch-size", type=int, default=64, help="perturbed images per forward pass (default 64)"
    )
    k.add_argument("--samples", type=int, default=50, help="SmoothGrad's noisy copies (default 50)")
    k.add_argument(
        "--integration-steps", type=int, default=50, help="integrated gradients' points (default 50)"
    )

    k = kinds.add_parser(
        "sanity",
        help=KINDS["sanity"],
        description="Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, 'Sanity Checks for Saliency Maps' (NeurIPS "
        "2018), their model parameter randomisation test: the layers' weights are re-initialised as the model "
        "initialises them, from the top (fc8, then fc7 as well, ... down to conv1; --independent: one layer at a "
        "time), and each method's map of the trained network's class is compared with the trained network's by "
        "Spearman rank correlation (of absolute values and signed) and SSIM. A map that explains what the network "
        "learned changes; the paper finds guided backpropagation nearly unchanged. --against RUN runs their data "
        "randomisation test instead: each map against the same network's trained on random labels. "
        "Prints the correlations, "
        "writes Fig. 2's grid (.png) and the numbers (.json, .npz).",
    )
    _common(k)
    k.add_argument("--target", type=int, help="class index to explain (default: each image's top class)")
    k.add_argument(
        "--methods",
        type=_names,
        help="comma-separated, from gradient, smoothgrad, guided, deconvnet, gradcam, guided-gradcam, integrated "
        "(default: these, the paper's) and lrp, lrp-epsilon, lrp-alpha1beta0 (layer-wise relevance propagation's "
        "composite and Bach et al.'s two rules)",
    )
    k.add_argument(
        "--layers",
        type=_names,
        help="layers to randomise, in order (default every conv and fc layer, top down)",
    )
    k.add_argument(
        "--independent",
        action="store_true",
        help="randomise one layer at a time, the others as trained (default: cascading, each step keeping the "
        "layers above random)",
    )
    k.add_argument(
        "--against",
        metavar="RUN_OR_WEIGHTS",
        help="the data randomisation test instead: each map against the same map of this network, the "
        "same architecture trained on random labels (alexnet train --random-labels 1); a run folder or weights",
    )
    k.add_argument("--seed", type=seed, default=0, help="the random weights' seed (default 0)")
    k.add_argument("--samples", type=int, default=50, help="SmoothGrad's noisy copies (default 50)")
    k.add_argument("--steps", type=int, default=50, help="integrated gradients' points (default 50)")

    k = kinds.add_parser(
        "maximize",
        help=KINDS["maximize"],
        description="Yosinski, Clune, Nguyen, Fuchs & Lipson, 'Understanding Neural Networks Through Deep "
        "Visualization' (2015), §3: from the mean image plus a little noise, gradient ascent on one unit's "
        "activation (a class score before the softmax, or a feature map's unit), regularised after each step by "
        "L2 decay, Gaussian blur and clipping pixels of small norm or contribution. --preset picks one of the "
        "paper's Table 1 rows; the flags after it override its values. Writes the images side by side "
        "(a feature map's unit cropped to its receptive field), one PNG per unit and the numbers (.npz).",
    )
    _common(k, images="")
    k.add_argument(
        "--layer",
        help="any layer by paper name: the last (default, e.g. fc8: the class scores), fc6/fc7, or a conv-trunk "
        "layer (conv5: before its ReLU, whose zeros have no gradient)",
    )
    k.add_argument(
        "--channels", type=_channels, help="units (classes) or feature maps, e.g. 0,5,10-15 (default 0-7)"
    )
    k.add_argument(
        "--unit", type=_unit, metavar="ROW,COL", help="a feature map's unit to drive (default its centre)"
    )
    k.add_argument(
        "--preset",
        type=int,
        choices=(1, 2, 3, 4),
        default=3,
        help="the paper's Table 1 row: regularisers and steps (default 3, used for most of its images)",
    )
    k.add_argument("--steps", type=int, help="gradient steps (preset: 500, 750, 1000, 1000)")
    k.add_argument(
        "--lr",
        type=float,
        help="step size: with --lr-policy rms, pixel values (of 0-255, root mean square) each step moves the "
        "image (preset: 2, 16, 2, 4)",
    )
    k.add_argument(
        "--lr-policy",
        choices=("rms", "constant", "progress"),
        help="rms: steps of --lr pixel values, whatever the network's scale (default); constant: --lr times the "
        "gradient and progress: the step that raises the activation by --desired-progress, at most --lr (the "
        "DeepVis toolbox's rules: --lr 100 there, tuned on CaffeNet)",
    )
    k.add_argument(
        "--desired-progress", type=float, help="--lr-policy progress: activation gain per step (2.0)"
    )
    k.add_argument("--decay", type=float, help="L2 decay per step, θ_decay (preset: 0, 0.3, 0.0001, 0)")
    k.add_argument(
        "--blur-radius", type=float, help="Gaussian blur width in pixels, θ_b_width (0.5, 0, 1, 0.5)"
    )
    k.add_argument("--blur-every", type=int, help="blur every K steps, θ_b_every; 0: never (4, 0, 4, 4)")
    k.add_argument(
        "--norm-percentile",
        type=float,
        help="zero the pixels whose colour norm is below this percentile, θ_n_pct (50, 20, 0, 0)",
    )
    k.add_argument(
        "--contribution-percentile",
        type=float,
        help="zero the pixels of smallest contribution to the unit below this percentile, θ_c_pct (0, 0, 0, 90)",
    )
    k.add_argument(
        "--seed", type=seed, default=0, help="the starting noise (default 0); every unit starts alike"
    )
    k.add_argument("--batch-size", type=int, default=16, help="units optimised together (default 16)")
    p.set_defaults(func=run)


def load_model(args: argparse.Namespace) -> Any:
    from alexnet.cli._common import load_model_from_args

    if args.run is not None and args.model is None:  # older weights files may not record their model
        config = Path(args.run) / "config.json"
        if config.is_file():
            with contextlib.suppress(
                OSError, ValueError, AttributeError
            ):  # else the weights' metadata decides
                args.model = json.loads(config.read_text()).get("model")
    # evolution is about a run's checkpoints: one still training, or stopped, has them without its final weights
    return load_model_from_args(args, unfinished_ok=args.kind == "evolution")


def run(args: argparse.Namespace) -> int:
    from alexnet.visualize import outputs

    for name in (
        "top",
        "size",
        "stride",
        "batch_size",
        "max_images",
        "neighbours",
        "draws",
        "topk",
        "steps",
        "samples",
        "integration_steps",
    ):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    if (getattr(args, "workers", None) or 0) < 0:
        raise CommandError(f"--workers must be at least 0 (got {args.workers})")
    if getattr(args, "stage", None) is not None and not args.all:  # else it would be silently ignored
        raise CommandError("--stage applies only with --all (one layer: --layer, e.g. --layer norm1)")
    if getattr(args, "all", False) and args.layer is not None:
        raise CommandError("give --layer or --all, not both")
    if getattr(args, "images", None):
        args.images = image_files(args.images)
    readable_images(getattr(args, "images", None))
    writable_folder(args.out)
    device = device_from_args(args)
    model = load_model(args).to(device)
    if getattr(args, "workers", 0) is None:
        args.workers = 0 if device.type == "cpu" else 2
    kind = args.kind
    if kind == "activations":
        paths = outputs.write_activations(
            model, args.images, args.out, args.layer or "relu1", args.top, args.all, args.stage or "relu"
        )
    elif kind == "filters":
        paths = outputs.write_filters(model, args.out, args.images)
    elif kind == "deconv":
        paths = outputs.write_deconv(
            model, args.images, args.out, args.layer, args.channel, args.unit, args.rule
        )
    elif kind == "top9":
        paths = outputs.write_top9(
            model,
            args.data,
            args.out,
            args.layer,
            split=args.split,
            channels=args.channels,
            max_images=args.max_images,
            resume=args.resume,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=True,
            rule=args.rule,
        )
    elif kind == "occlusion":
        paths = outputs.write_occlusion(
            model,
            args.images,
            args.out,
            size=args.size,
            stride=args.stride,
            target=args.target,
            batch_size=args.batch_size,
            progress=True,
        )
    elif kind == "evolution":
        paths = outputs.write_evolution(
            model, args.images, args.out, args.run, args.checkpoints, args.layer, args.channels, args.rule
        )
    elif kind == "invariance":
        paths = outputs.write_invariance(model, args.images, args.out, args.target)
    elif kind == "predictions":
        paths = outputs.write_predictions(model, args.images, args.out, targets=args.targets, topk=args.topk)
    elif kind == "gradcam":
        paths = outputs.write_gradcam(model, args.images, args.out, args.layer, args.target, args.guided)
    elif kind == "integrated-gradients":
        paths = _integrated(model, args)
    elif kind == "smoothgrad":
        paths = outputs.write_smoothgrad(
            model,
            args.images,
            args.out,
            target=args.target,
            method=args.method,
            samples=args.samples,
            noise=args.noise,
            statistic=args.statistic,
            seed=args.seed,
            batch_size=args.batch_size,
            steps=args.steps,
            baseline=args.baseline,
            output=args.of,
            progress=True,
        )
    elif kind == "lrp":
        paths = outputs.write_lrp(
            model, args.images, args.out, args.target, args.rule, args.epsilon, args.gamma, progress=True
        )
    elif kind == "perturbation":
        paths = _perturbation(model, args)
    elif kind == "sanity":
        paths, tables = outputs.write_sanity(
            model,
            args.images,
            args.out,
            target=args.target,
            methods=args.methods,
            layers=args.layers,
            cascading=not args.independent,
            against=_against(args, device),
            seed=args.seed,
            samples=args.samples,
            steps=args.steps,
            progress=True,
        )
        print("\n\n".join(tables))
    elif kind == "maximize":
        paths = _maximize(model, args)
    elif kind == "correspondence":
        table, paths = outputs.write_correspondence(
            model, args.images, args.parts, args.out, size=args.size, draws=args.draws
        )
        print(table)
    else:
        paths = outputs.write_retrieval(
            model,
            args.images,
            args.data,
            args.out,
            split=args.split,
            max_images=args.max_images,
            neighbours=args.neighbours,
            cache=args.cache,
            batch_size=args.batch_size,
            workers=args.workers,
        )
    for path in paths:
        print(path)
    return 0


def _against(args: argparse.Namespace, device: Any) -> tuple[str, Any] | None:
    """``sanity --against RUN_OR_WEIGHTS``: (its name, the network), or None."""
    if args.against is None:
        return None
    if args.layers is not None or args.independent:
        raise CommandError(
            "--against compares two trained networks; --layers and --independent randomise one"
        )
    from alexnet.cli._common import check_weights_exist
    from alexnet.train.run_folder import run_weights
    from alexnet.weights import load_pretrained

    where = Path(args.against)
    weights = run_weights(where) if where.is_dir() else where
    check_weights_exist(str(weights))
    name = where.name if where.is_dir() else where.stem
    return name, load_pretrained(None, str(weights)).to(device)


def _integrated(model: Any, args: argparse.Namespace) -> list[Path]:
    """``visualize integrated-gradients``: per image, completeness's check (the attributions' sum against the
    output's change from the baseline; §5 asks for 5 %), then the files."""
    from alexnet.predict import labels_of
    from alexnet.visualize.outputs import write_integrated

    paths, results = write_integrated(
        model,
        args.images,
        args.out,
        target=args.target,
        baseline=args.baseline,
        steps=args.steps,
        method=args.method,
        output=args.of,
        batch_size=args.batch_size,
        progress=True,
    )
    labels = labels_of(model)
    for image, res in zip(args.images, results, strict=True):
        c, change = int(res.targets[0]), float(res.outputs[0] - res.baseline_outputs[0])
        total = change + float(res.delta[0])
        off = abs(float(res.delta[0])) / max(abs(change), 1e-12)
        advice = "" if off <= 0.05 else f"; above §5's 5 %: more --steps (now {args.steps}) bring it closer"
        print(
            f"{Path(image).name}: {labels[c]} ({c}), {args.of} {float(res.outputs[0]):.4g} "
            f"({change:+.4g} from the {args.baseline} baseline); attributions sum to {total:+.4g}, "
            f"{100 * off:.1f} % off{advice}"
        )
    return paths


def _perturbation(model: Any, args: argparse.Namespace) -> list[Path]:
    """``visualize perturbation``: the table, then the files; Ctrl-C finishes the image under way and writes the
    images done."""
    from alexnet.stopping import StopSignals
    from alexnet.visualize import outputs
    from alexnet.visualize.perturbation import table

    signals = StopSignals("stopping after this image, with the images done written")
    with signals:
        paths, res = outputs.write_perturbation(
            model,
            args.images,
            args.out,
            target=args.target,
            methods=args.methods,
            region=args.region,
            steps=args.steps,
            output=args.of,
            seed=args.seed,
            batch_size=args.batch_size,
            samples=args.samples,
            integration_steps=args.integration_steps,
            progress=True,
            stop=lambda: signals.signum is not None,
        )
    print(table(res))
    if not res.complete:
        for path in paths:
            print(path)
        raise signals.interrupted(
            f"stopped after {res.aopc.shape[0]} of {res.asked} images; their results are written"
        )
    return paths


def _maximize(model: Any, args: argparse.Namespace) -> list[Path]:
    """``visualize maximize``: one line per unit (its best activation, and from which step it led its layer),
    then the files; Ctrl-C writes the best images so far."""
    from alexnet.predict import labels_of
    from alexnet.stopping import StopSignals
    from alexnet.visualize.maximize import default_channels, preset
    from alexnet.visualize.outputs import write_maximize

    settings = preset(
        args.preset,
        steps=args.steps,
        lr=args.lr,
        lr_policy=args.lr_policy,
        desired_progress=args.desired_progress,
        decay=args.decay,
        blur_radius=args.blur_radius,
        blur_every=args.blur_every,
        norm_percentile=args.norm_percentile,
        contribution_percentile=args.contribution_percentile,
    )
    layer = args.layer or model.layer_names()[-1]
    channels = args.channels or default_channels(model, layer)
    signals = StopSignals("stopping after this step, with the best images so far written")
    with signals:
        paths, res = write_maximize(
            model,
            args.out,
            layer,
            channels,
            args.unit,
            settings,
            args.seed,
            batch_size=args.batch_size,
            progress=True,
            stop=lambda: signals.signum is not None,
        )
    labels = labels_of(model) if layer == model.layer_names()[-1] else None
    for i, ch in enumerate(res.channels):
        name = f"{layer} {ch}" + (f" ({labels[ch]})" if labels is not None else "")
        if bool(res.stuck[i]):
            names = model.layer_names()
            before = (
                names[names.index(layer) - 1] if layer.startswith("relu") else "the layer before its ReLU"
            )
            print(f"{name}: no gradient at the start (a rectified unit at 0): climb {before} instead")
            continue
        led = int(res.first_top[i])
        lead = f"the largest of {layer} from step {led}" if led >= 0 else f"never the largest of {layer}"
        print(f"{name}: {float(res.best[i]):.4g} at step {int(res.best_step[i])}, {lead}")
    if signals.signum is not None:
        for path in paths:
            print(path)
        raise signals.interrupted(
            f"stopped after {res.steps} of {settings.steps} steps, for {len(res.channels)} of "
            f"{len(channels)} units; the best images so far are written"
        )
    return paths
