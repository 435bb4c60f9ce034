"""CIFAR-style VGG-16 with BatchNorm (Simonyan & Zisserman, 2015), every conv's filters prunable
(paper Table 3: VGG-16 on CIFAR-10/100, linear filter-pruning schedule from epoch 15).

Layout: 13 × ``GatedConvBN`` (3-tap or 3×3 conv, BN, ReLU; see :mod:`plprune.models.filters`; each is
one filter site, gated after its BN by :mod:`plprune.sites`) with 5 max-pools (``VGG16_CFG``), then
global average pooling and one linear classifier. ``dims=1`` builds Conv1d/MaxPool1d for sequences
``(N, C, L)`` (MNIST-1D), ``dims=2`` Conv2d/MaxPool2d for images ``(N, C, H, W)``.

**Pool rule for short inputs.** A max-pool (kernel 2, stride 2) is applied only if every spatial
dimension of its input is ≥ 2; otherwise it is skipped (the identity), because it would reduce a
dimension below 1. The rule is evaluated on the actual input shape in ``forward``, so one model
accepts any input size: MNIST-1D (length 40) goes 40→20→10→5→2→1 (all five pools applied); 8×8 digits
go 8→4→2→1 and the last two pools are skipped; CIFAR (32×32) uses all five, as in the original.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import register_architecture
from plprune.models.filters import (
    GatedConvBN,
    check_dims,
    check_input_shape,
    check_width_multiplier,
    global_average_pool,
    scale_channels,
)
from plprune.validation import check_positive_int

__all__ = ["VGG", "VGG16_CFG", "MaxPoolIfLarger"]

#: VGG-16 (configuration "D"): conv widths at width 1, "M" = 2× max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class MaxPoolIfLarger(nn.Module):
    """Max-pool with kernel 2 and stride 2, skipped when a spatial dimension is < 2 (module docstring)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = check_dims(dims)

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[2:]) < 2:
            return x
        return F.max_pool1d(x, 2) if self.dims == 1 else F.max_pool2d(x, 2)


class VGG(nn.Module):
    """VGG with BN; channels ``round(c · width_multiplier)`` (half up), at least 1 per layer (else raises).

    Args:
        width_multiplier: scales every conv width of ``cfg`` (e.g. 0.25 → 16 … 128 channels).
        in_channels: input channels (3 for CIFAR, 1 for MNIST-1D and digits).
        num_classes: outputs of the linear classifier.
        dims: 1 (sequences) or 2 (images).
        cfg: conv widths and ``"M"`` pools; default :data:`VGG16_CFG`.
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        in_channels: int = 3,
        num_classes: int = 10,
        dims: int = 2,
        cfg: tuple[int | str, ...] = VGG16_CFG,
    ) -> None:
        super().__init__()
        self.width_multiplier = check_width_multiplier(width_multiplier)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.dims = check_dims(dims)
        layers: list[nn.Module] = []
        channels, conv_index = in_channels, 0
        for item in cfg:
            if item == "M":
                layers.append(MaxPoolIfLarger(self.dims))
                continue
            width = scale_channels(
                check_positive_int("cfg width", item), self.width_multiplier, f"conv {conv_index}"
            )
            layers.append(GatedConvBN(channels, width, dims=self.dims))
            channels, conv_index = width, conv_index + 1
        if conv_index == 0:
            raise PlpruneError(f"cfg must contain at least one conv width (a positive int), got {cfg!r}")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of inputs ``(N, in_channels, L)`` or ``(N, in_channels, H, W)``."""
        check_input_shape(x, self.in_channels, self.dims, "VGG")
        return self.classifier(global_average_pool(self.features(x)))


# -- export: the family as data (plprune.models.architecture) -------------------------------------------
def _describe(model: VGG) -> dict[str, Any]:
    """The constructor arguments; a custom ``cfg`` is recorded as its actual widths at width 1."""
    widths: list[int | str] = []
    for layer in model.features:
        if isinstance(layer, MaxPoolIfLarger):
            widths.append("M")
        elif isinstance(layer, GatedConvBN):
            widths.append(int(layer.conv.out_channels))
        else:
            raise PlpruneError(f"cannot describe a VGG with a {type(layer).__name__} in its features")
    args: dict[str, Any] = {
        "width_multiplier": model.width_multiplier,
        "in_channels": model.in_channels,
        "num_classes": model.num_classes,
        "dims": model.dims,
    }
    default = [c if c == "M" else scale_channels(c, model.width_multiplier, "") for c in VGG16_CFG]
    if widths != default:  # a custom cfg: record the actual widths at width 1
        args.update(width_multiplier=1.0, cfg=widths)
    return {"args": args}


def _build(description: dict[str, Any]) -> VGG:
    args = dict(description["args"])
    if "cfg" in args:
        args["cfg"] = tuple(args["cfg"])
    return VGG(**args)


register_architecture(VGG, "plprune.VGG", describe=_describe, build=_build)
