"""The one AlexNet-family network. Every registered model is an :class:`ArchConfig` of this class.

Layout follows torchvision's ``AlexNet`` (``features`` → [``avgpool``] → flatten → ``classifier``) so that
``alexnet_owt`` loads ``torchvision.models.alexnet`` state dicts unchanged; every layer is also reachable by the
papers' names (``conv1`` … ``conv5``, ``relu1``, ``norm1``, ``pool1``, ``fc6``, ``relu6``, ``drop6``, … ``fc8``)
through :meth:`AlexNetFamily.layer` and :meth:`AlexNetFamily.named_layers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from alexnet.errors import InputSizeError, LayerNotFound, ModelOptionError
from alexnet.models import fused, linear_train, postops
from alexnet.models.configs import ArchConfig
from alexnet.models.layers import GroupedConv2d, LocalResponseNorm, SpaceToDepthConv2d


class AlexNetFamily(nn.Module):
    """conv stages (conv, ReLU, LRN, overlapping max-pool; AlexNet §3) then dropout-regularised fc layers."""

    # The metadata of the weights loaded into the model (``alexnet.weights.WeightsMeta``: classes, preprocessing,
    # source), set by ``create_model(..., weights=...)``; ``None`` for a freshly initialised one.
    weights_meta: Any = None

    def __init__(self, config: ArchConfig) -> None:
        super().__init__()
        self.config = config
        self.default_input_size = config.input_size
        self.num_classes = config.num_classes
        self._paths: dict[str, str] = {}

        features: list[tuple[str, nn.Module]] = []
        in_ch = config.in_channels
        # layers keep their paper numbers when one before them was removed (conv5 stays conv5 without conv3)
        for first, (i, c) in enumerate(zip(config.conv_numbers(), config.convs, strict=True)):
            conv = nn.Conv2d
            if c.groups > 1:
                conv = GroupedConv2d  # AlexNet §3.2's towers
            elif first == 0 and c.stride > 1:
                # the image's convolution: a fast form on CUDA. Not ZFNet's conv2 (stride 2 on 96 maps), which
                # cuDNN runs fast as it is and the rearrangement only slowed (docs/performance.md, session 10)
                conv = SpaceToDepthConv2d

            features.append((f"conv{i}", conv(in_ch, c.out, c.kernel, c.stride, c.padding, groups=c.groups)))
            # In place (as torchvision's AlexNet): one activation-sized tensor less per ReLU in training
            # (docs/performance.md). A forward hook on a conv layer sees its output *before* the ReLU
            # overwrites it: clone it there, or hook the ReLU.
            features.append((f"relu{i}", nn.ReLU(inplace=True)))
            post: list[tuple[str, nn.Module]] = []
            if c.norm and config.lrn is not None:
                lrn = config.lrn
                # Out of place: an LRN written over its input would change what a hook kept of the ReLU or
                # pool before it. The fused stages (:mod:`.fused`) skip that allocation where nobody watches.
                norm = LocalResponseNorm(lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.alpha_over_size)
                post.append((f"norm{i}", norm))
            if c.pool:
                pool = nn.MaxPool2d(config.pool_kernel, config.pool_stride, ceil_mode=config.ceil_mode)
                post.insert(0 if config.pool_before_norm else len(post), (f"pool{i}", pool))
            features.extend(post)
            in_ch = c.out
        self.features = self._sequential("features", features)

        self._pool5 = self.pool5_size(config, config.input_size)
        if self._pool5 < 1:
            raise InputSizeError(
                f"{config.name} cannot take {config.input_size}×{config.input_size} images: its conv trunk "
                f"leaves no pool5 map; the smallest input is {self.min_input_size(config)} px"
            )
        _check_num_classes(config.num_classes)
        spatial = config.adaptive_pool or self._pool5
        if config.adaptive_pool:
            self.avgpool = nn.AdaptiveAvgPool2d(config.adaptive_pool)
            self._paths["avgpool"] = "avgpool"
        classifier: list[tuple[str, nn.Module]] = []
        in_f = in_ch * spatial * spatial
        for j, (idx, f) in enumerate(zip(config.fc_numbers(), config.fcs, strict=True)):
            out_f = f.out if f.out is not None else config.num_classes
            last = j == len(config.fcs) - 1
            if not last and config.dropout_before_fc:
                classifier.append((f"drop{idx}", nn.Dropout(config.dropout)))
            # num_classes=0 (timm's convention): no classifier layer, the model returns fc7's features
            fc: nn.Module = nn.Identity() if last and out_f == 0 else nn.Linear(in_f, out_f)
            classifier.append((f"fc{idx}", fc))
            if not last:
                classifier.append((f"relu{idx}", nn.ReLU(inplace=True)))
                if not config.dropout_before_fc:
                    classifier.append((f"drop{idx}", nn.Dropout(config.dropout)))
            in_f = out_f
        self.classifier = self._sequential("classifier", classifier)
        self.reset_parameters()

    def _sequential(self, prefix: str, named: list[tuple[str, nn.Module]]) -> nn.Sequential:
        for index, (name, _) in enumerate(named):
            self._paths[name] = f"{prefix}.{index}"
        return nn.Sequential(*(m for _, m in named))

    @staticmethod
    def pool5_size(config: ArchConfig, size: int) -> int:
        """Spatial size at the end of the conv trunk for an input side of ``size``, by ``nn.Conv2d``'s and
        ``nn.MaxPool2d``'s output sizes (a ceil-mode window may hang over the edge); 0 when a layer would get an
        empty map."""
        for c in config.convs:
            size = (size + 2 * c.padding - c.kernel) // c.stride + 1
            if size >= 1 and c.pool:
                size = fused.pooled_size(size, config.pool_kernel, config.pool_stride, config.ceil_mode)
            if size < 1:
                return 0
        return size

    @classmethod
    def min_input_size(cls, config: ArchConfig) -> int:
        """The smallest input side the conv trunk takes (a pool5 map of at least 1×1)."""
        size = 1
        while cls.pool5_size(config, size) < 1:
            size += 1
        return size

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Paper initialisation: weights N(0, std) and constant biases per layer (AlexNet §5, ZFNet §3)."""
        for name in self.learnable_layers():
            self.reset_layer(name)

    def learnable_layers(self) -> list[str]:
        """The paper names of the conv and fully connected layers, in forward order (``conv1`` … ``fc8``)."""
        return [name for name, m in self.named_layers() if isinstance(m, nn.Conv2d | nn.Linear)]

    @torch.no_grad()
    def reset_layer(self, name: str, module: nn.Module | None = None) -> None:
        """One conv or fully connected layer's initialisation, as :meth:`reset_parameters` gives it (from torch's
        global generator); ``module``: a copy of that layer (e.g. on the CPU) to initialise instead."""
        names = self.learnable_layers()
        if name not in names:
            raise LayerNotFound(
                f"{name!r} has no weights to initialise; layers with weights: {', '.join(names)}"
            )
        m = module if module is not None else self.layer(name)
        assert isinstance(m, nn.Conv2d | nn.Linear)
        if self.config.init == "pytorch":
            m.reset_parameters()
            return
        spec = [*self.config.convs, *self.config.fcs][names.index(name)]
        nn.init.normal_(m.weight, 0.0, spec.weight_std)
        nn.init.constant_(m.bias, spec.bias)

    # --- the papers' vocabulary -------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """Paper names of every layer in forward order (``conv1``, ``relu1``, ``norm1``, ``pool1`` …)."""
        return list(self._paths)

    def layer(self, name: str) -> nn.Module:
        """The module called ``name`` in the papers (``conv5``, ``pool5``, ``fc7`` …)."""
        if name not in self._paths:
            raise LayerNotFound(
                f"no layer {name!r} in {self.config.name}; valid layers: {', '.join(self._paths)}"
            )
        return self.get_submodule(self._paths[name])

    def layer_path(self, name: str) -> str:
        """The module path (``features.0``) of a paper-named layer, as used in state-dict keys."""
        self.layer(name)
        return self._paths[name]

    def named_layers(self) -> Iterator[tuple[str, nn.Module]]:
        for name, path in self._paths.items():
            yield name, self.get_submodule(path)

    def top_hidden(self, rectified: bool = True) -> str:
        """The last hidden layer: ``relu7`` (``fc7`` unless ``rectified``) in the papers' networks, AlexNet §6.1's
        "last, 4096-dimensional hidden layer" and ZF's layer 7; the same layer of an ablated network without fc7
        (``relu6``), or ``pool5`` without fc6 and fc7."""
        hidden = self.config.fc_numbers()[:-1]
        if not hidden:
            return f"pool{self.config.conv_numbers()[-1]}"
        return f"{'relu' if rectified else 'fc'}{hidden[-1]}"

    # --- forward ----------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The conv trunk: image batch → pool5 maps (``N×256×6×6`` for the paper models), in the input's memory
        format (``.view(N, -1)`` works on an NCHW batch's maps).

        Each unhooked ReLU + LRN + max-pool runs as one kernel where one takes the input (:mod:`.fused`); on CPU
        an NCHW batch is first copied to channels-last for it (:func:`.fused.kernel_layout`).
        """
        out = self._trunk(x)
        if isinstance(out, torch.Tensor) and x.is_contiguous() and not out.is_contiguous():
            out = out.contiguous()  # 9216 values an image; forward() keeps the kernels' layout instead
        return out

    def check_input(self, x: torch.Tensor, classify: bool = False) -> None:
        """:class:`InputSizeError` unless ``x`` is an image batch the trunk can take: N×C×H×W (or one C×H×W)
        floats with the model's channels, large enough to leave a pool5 map; with ``classify``, also of the size
        whose pool5 maps the classifier reads."""
        if not _sized(x):
            return
        if x.dim() not in (3, 4):
            raise InputSizeError(
                f"{self.config.name} takes N×C×H×W image batches (or one C×H×W image), not a {x.dim()}-D tensor "
                f"of shape {tuple(x.shape)}"
            )
        if x.shape[-3] != self.config.in_channels:
            raise InputSizeError(
                f"{self.config.name} takes {self.config.in_channels}-channel images; this input has "
                f"{x.shape[-3]} channels (shape {tuple(x.shape)}; a grayscale or RGBA image converts to RGB)"
            )
        if not x.is_floating_point():
            raise InputSizeError(
                f"{self.config.name} takes float images, normalised as the weights were trained on "
                f"(model.weights_meta.transforms(), alexnet.inputs.prepare), not {x.dtype}"
            )
        sides = [self.pool5_size(self.config, s) for s in x.shape[-2:]]
        if any(s < 1 for s in sides):
            raise InputSizeError(
                f"{self.config.name} cannot take a {x.shape[-2]}×{x.shape[-1]} image: its conv trunk leaves "
                f"no pool5 map; the smallest side is {self.min_input_size(self.config)} px and the model "
                f"was built for {self.config.input_size}×{self.config.input_size}"
            )
        if classify and not self.config.adaptive_pool and sides != [self._pool5, self._pool5]:
            raise self._head_size_error(*sides)

    def _head_size_error(self, rows: int, cols: int) -> InputSizeError:
        s = self._pool5
        return InputSizeError(
            f"{self.config.name} takes {self.config.input_size}×{self.config.input_size} images (pool5 maps "
            f"of {s}×{s} feed fc{self.config.fc_numbers()[0]}); this input gives pool5 maps of {rows}×{cols}"
        )

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        # N×C×H×W or an unbatched C×H×W
        self.check_input(x)
        x = fused.kernel_layout(self.features, x)
        if fused.applies(self.features, x):
            return fused.run(self.features, x)
        return self.features(x)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """pool5 maps → logits, or fc7's features (after its ReLU and dropout) with ``pre_logits`` (timm's
        convention); on CPU each fc layer and its ReLU as one oneDNN primitive, in inference (:mod:`.postops`)
        and in float32 training (:mod:`.linear_train`)."""
        if self.config.adaptive_pool:
            features = self.avgpool(features)
        elif _sized(features) and (features.shape[-1] != self._pool5 or features.shape[-2] != self._pool5):
            raise self._head_size_error(features.shape[-2], features.shape[-1])
        x = fused.flatten(self.features, features)
        classifier = self.classifier[:-1] if pre_logits else self.classifier
        if fused.has_norm(self.features):
            if postops.head_applies(classifier, x):
                return postops.head(classifier, x)
            if linear_train.applies(classifier, x):
                return linear_train.head(classifier, x)
        return classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N×classes) of an image batch, or of one C×H×W image (classes), as ``nn.Conv2d`` takes one."""
        if _sized(x) and x.dim() == 3:
            self.check_input(x)
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self.forward_head(self._trunk(x))

    # --- timm's conveniences ----------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """Width of the features the classifier layer reads (fc7's 4096)."""
        hidden = [f.out for f in self.config.fcs[:-1] if f.out is not None]
        if hidden:
            return hidden[-1]
        spatial = self.config.adaptive_pool or self._pool5
        return self.config.convs[-1].out * spatial * spatial

    def get_classifier(self) -> nn.Module:
        """The last layer (fc8): an ``nn.Linear``, or ``nn.Identity`` after ``reset_classifier(0)``."""
        return self.classifier[-1]

    @torch.no_grad()
    def reset_classifier(self, num_classes: int) -> None:
        """A fresh last layer for ``num_classes`` classes, initialised as the model's config says (fine-tuning);
        0 removes it, so the model returns fc7's features (timm's convention). Everything else is kept."""
        _check_num_classes(num_classes)
        ref = next(p for p in self.classifier.parameters())
        fc: nn.Module = nn.Identity()
        if num_classes:
            fc = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
            spec = self.config.fcs[-1]
            if self.config.init == "pytorch":
                fc.reset_parameters()
            else:
                nn.init.normal_(fc.weight, 0.0, spec.weight_std)
                nn.init.constant_(fc.bias, spec.bias)
        self.classifier[len(self.classifier) - 1] = fc
        self.config, self.num_classes = self.config.with_overrides(num_classes=num_classes), num_classes
        if self.weights_meta is not None:  # the loaded weights' record no longer names these classes
            self.weights_meta.num_classes, self.weights_meta.classes = num_classes, None
            self.weights_meta.config = self.config.to_dict()


def _sized(x: object) -> bool:
    """Whether a size check can read ``x``'s shape: not an FX proxy, and no ``torch.jit.trace`` (ONNX export)
    recording the comparison as a constant, with a warning each."""
    return isinstance(x, torch.Tensor) and not torch.jit.is_tracing()


def _check_num_classes(num_classes: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ModelOptionError(
            f"num_classes must be a whole number ≥ 1 (or 0 for fc7's features), not {num_classes!r}"
        )
