"""The papers' architecture ablations, as configurations of the one network.

- **Removing layers** (AlexNet §7: "removing any of the middle layers results in a loss of about 2% for the top-1
  performance"; ZF §5.1 and Table 3: without conv3 and conv4, or without fc6 and fc7, the error rises a little;
  without all four, "dramatically" — depth matters). The layers left keep their paper names: without conv3 and
  conv4, conv2's maps feed conv5, and fc8 stays fc8 without fc6 and fc7. The removable layers are those with no
  pooling or normalisation stage of their own (conv3, conv4, and the hidden fully connected layers), so that
  every map size after them stays as the paper's figure draws it. In the two-tower models conv3 is the only
  layer that crosses the towers (AlexNet §3.5); without it, they meet first at fc6.
- **No response normalisation** (AlexNet §3.3: LRN "reduces our top-1 and top-5 error rates by 1.4% and 1.2%").
- **Non-overlapping pooling** (AlexNet §3.4: z = 3, s = 2 "reduces the top-1 and top-5 error rates by 0.4% and
  0.3%, respectively, as compared with the non-overlapping scheme s = 2, z = 2, which produces output of
  equivalent dimensions"): 2×2 windows at stride 2, sizes rounded down, so that pool5 is still 6×6.
- **One tower** (AlexNet §3.2: the two-GPU scheme "reduces our top-1 and top-5 error rates by 1.7% and 1.2%,
  respectively, as compared with a net with half as many kernels in each convolutional layer trained on one GPU";
  its footnote keeps the last convolutional layer, and the fully connected layers after it, at full size, so that
  the two nets have about the same number of parameters): conv1–conv4 at half width, conv5 as it is, no groups.
- **Hidden layer width** (ZF Table 3, "Adjust layers 6,7: 2048 units" and "8192 units"): fc6 and fc7 resized.

Pure data, no torch: ``alexnet train`` and ``alexnet summary`` (``--remove``, ``--no-lrn``,
``--no-overlapping-pool``, ``--one-tower``, ``--fc-width``) apply it before a network is built.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from alexnet.errors import ModelOptionError
from alexnet.models.configs import ArchConfig


def ablate(
    config: ArchConfig,
    *,
    remove: Iterable[str] = (),
    lrn: bool = True,
    overlapping_pool: bool = True,
    fc_width: int | None = None,
    one_tower: bool = False,
) -> ArchConfig:
    """``config`` with the named layers removed (``("conv3", "conv4")``), without LRN (``lrn=False``), with
    2×2/2 pooling (``overlapping_pool=False``), fc6/fc7 ``fc_width`` wide, or as AlexNet's one-GPU net
    (``one_tower=True``); :class:`ModelOptionError` for a layer the network lacks or cannot lose. Unchanged when
    nothing is asked."""
    if isinstance(remove, str):  # "conv3,conv4", as the command line takes it
        remove = remove.split(",")
    names = list(dict.fromkeys(remove))  # in order, once each
    out = _without(config, names) if names else config
    changes = [f"without {', '.join(names)}"] if names else []
    if not lrn:
        if not any(c.norm for c in config.convs) or config.lrn is None:
            raise ModelOptionError(f"{config.name} has no response normalisation to remove")
        out = replace(out, lrn=None)
        changes.append("no LRN")
    if not overlapping_pool:
        if (config.pool_kernel, config.pool_stride) == (2, 2):
            raise ModelOptionError(
                f"{config.name}'s pooling windows do not overlap: they are 2×2 at stride 2 already"
            )
        if config.pool_stride != 2:
            raise ModelOptionError(f"{config.name} pools at stride {config.pool_stride}, not the papers' 2")
        out = replace(out, pool_kernel=2, ceil_mode=False)
        changes.append("2×2/2 pooling")
    if one_tower:
        if all(c.groups == 1 for c in config.convs):
            raise ModelOptionError(f"{config.name} has one tower already (no grouped convolution)")
        last = len(out.convs) - 1  # conv5 keeps its width (§3.2's footnote)
        convs = tuple(
            replace(c, out=c.out if i == last else c.out // 2, groups=1) for i, c in enumerate(out.convs)
        )
        out = replace(out, convs=convs)
        changes.append("one tower")
    if fc_width is not None:
        if isinstance(fc_width, bool) or not isinstance(fc_width, int) or fc_width < 1:
            raise ModelOptionError(f"fc width must be a whole number ≥ 1, not {fc_width!r}")
        if len(out.fcs) < 2:
            raise ModelOptionError(
                f"{config.name} without {', '.join(names)} has no hidden fc layer to resize"
            )
        out = replace(out, fcs=(*(replace(f, out=fc_width) for f in out.fcs[:-1]), out.fcs[-1]))
        changes.append(f"fc{'/'.join(map(str, out.fc_numbers()[:-1]))} {fc_width} wide")
    if not changes:
        return config
    return replace(out, ablation="; ".join(filter(None, (config.ablation, *changes))))


def removable(config: ArchConfig) -> list[str]:
    """The layers :func:`ablate` can remove: conv layers with no pooling or normalisation stage, and the fully
    connected layers before the classifier."""
    convs = [
        f"conv{n}" for n, c in zip(config.conv_numbers(), config.convs, strict=True) if not (c.pool or c.norm)
    ]
    return [*convs, *(f"fc{n}" for n in config.fc_numbers()[:-1])]


def _without(config: ArchConfig, names: list[str]) -> ArchConfig:
    allowed = removable(config)
    for name in names:
        if name not in allowed:
            conv_names = [f"conv{n}" for n in config.conv_numbers()]
            fc_names = [f"fc{n}" for n in config.fc_numbers()]
            if name in conv_names:
                why = "it has its own pooling or normalisation stage, and the map sizes after it would change"
            elif name == fc_names[-1]:
                why = "it is the classifier"
            else:
                why = "the network has no such layer"
            raise ModelOptionError(
                f"cannot remove {name} from {config.name}: {why}; removable: {', '.join(allowed) or 'none'}"
            )
    # every kept layer keeps its number (the names depend on it), so later ones do not shift down
    convs = tuple(
        replace(c, number=n)
        for n, c in zip(config.conv_numbers(), config.convs, strict=True)
        if f"conv{n}" not in names
    )
    fcs = tuple(
        replace(f, number=n)
        for n, f in zip(config.fc_numbers(), config.fcs, strict=True)
        if f"fc{n}" not in names
    )
    out = replace(config, convs=convs, fcs=fcs)
    channels = config.in_channels
    for n, c in zip(out.conv_numbers(), convs, strict=True):
        if channels % c.groups:
            raise ModelOptionError(
                f"cannot remove {', '.join(names)} from {config.name}: conv{n}'s {c.groups} groups cannot split "
                f"the {channels} maps it would then read"
            )
        channels = c.out
    return out
