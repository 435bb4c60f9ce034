"""CIFAR ResNet (He et al., 2016, Sec. 4.2) with basic blocks, depth 6n + 2 (ResNet-20: n = 3,
ResNet-56: n = 9; paper Table 5: ResNet-56 on CIFAR, linear filter pruning from epoch 5).

Layout: a 3-tap / 3×3 stem conv (16 channels at width 1) → three stages of n basic blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 has stride 2) → global average pooling → linear.
Shortcuts are He et al.'s CIFAR "option A": identity, subsampled by 2 and zero-padded with extra
channels where the block changes shape (no parameters). ``dims=1`` builds the 1-D variant for
sequences ``(N, C, L)`` (MNIST-1D), ``dims=2`` the usual image network. Every norm is our
:class:`~plprune.models.layers.BatchNorm` (exact third derivatives).

**Which filters are prunable.** The model carries no pruning code; :mod:`plprune.sites` finds its filters
through a dependency graph (:mod:`plprune.sites.filter_discovery`). They are the *first (inner) conv of
each basic block* (a :class:`~plprune.models.filters.GatedConvBN`): its output channels feed only the
block's second conv, so removing filter c (its conv weight[c], BN γ_c, β_c) is well-defined and removes a
whole input channel of the second conv. The stem and every block's second conv
(:class:`~plprune.models.filters.ConvBN`) are tied by the residual sums (channel c of every block output is
``x_c + F(x)_c``), across stages too through the option-A shortcut; Torch-Pruning reads that shortcut's
``F.pad`` as the identity on channels (and, for ``dims=1``, its stride slice as a channel slice), so the
discovery rejects those groups and leaves the stem and second convs unpruned. This is the common choice
for CIFAR ResNets (e.g. Li et al. 2017, "Pruning Filters for Efficient ConvNets").
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import register_architecture
from plprune.models.filters import (
    ConvBN,
    GatedConvBN,
    check_dims,
    check_input_shape,
    check_width_multiplier,
    global_average_pool,
    scale_channels,
)
from plprune.validation import check_positive_int

__all__ = ["STAGE_WIDTHS", "BasicBlock", "ResNet"]

#: channels of the stem and of the three stages at width 1 (He et al. 2016, CIFAR).
STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """``relu(shortcut(x) + bn(conv2(relu(bn(conv1(x))))))``: ``conv1`` (a GatedConvBN) holds the
    block's prunable filters (gated after its BN), ``conv2`` (a ConvBN without ReLU) is tied to the
    residual sum."""

    def __init__(self, in_channels: int, out_channels: int, dims: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = GatedConvBN(in_channels, out_channels, dims=dims, stride=stride)
        self.conv2 = ConvBN(out_channels, out_channels, dims=dims, relu=False)
        self.stride = stride
        self.pad_channels = out_channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: identity, subsampled by the stride, extra output channels zero-padded at the end."""
        if self.stride > 1:
            x = x[:, :, :: self.stride] if x.dim() == 3 else x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, self.pad_channels))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x) + self.conv2(self.conv1(x)))


class ResNet(nn.Module):
    """CIFAR ResNet of ``depth = 6n + 2`` layers; channels ``round(c · width_multiplier)`` (half up).

    Args:
        depth: 8, 14, 20, 26, ..., 56, ... (6n + 2, n ≥ 1).
        width_multiplier: scales 16/32/64; every layer keeps ≥ 1 channel (else raises).
        in_channels: input channels (3 for CIFAR, 1 for MNIST-1D and digits).
        num_classes: outputs of the linear classifier.
        dims: 1 (sequences) or 2 (images).
    """

    def __init__(
        self,
        depth: int = 20,
        width_multiplier: float = 1.0,
        in_channels: int = 3,
        num_classes: int = 10,
        dims: int = 2,
    ) -> None:
        super().__init__()
        check_positive_int("depth", depth)
        if depth < 8 or (depth - 2) % 6:
            raise PlpruneError(
                f"ResNet depth must be 6n + 2 with n >= 1 (8, 14, 20, ..., 56, ...), got {depth}"
            )
        self.depth = depth
        self.blocks_per_stage = (depth - 2) // 6
        self.width_multiplier = check_width_multiplier(width_multiplier)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.dims = check_dims(dims)
        widths = [
            scale_channels(c, self.width_multiplier, f"stage {i + 1}") for i, c in enumerate(STAGE_WIDTHS)
        ]
        self.stem = ConvBN(in_channels, widths[0], dims=self.dims)
        blocks: list[nn.Module] = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, self.dims, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of inputs ``(N, in_channels, L)`` or ``(N, in_channels, H, W)``."""
        check_input_shape(x, self.in_channels, self.dims, f"ResNet-{self.depth}")
        return self.classifier(global_average_pool(self.blocks(self.stem(x))))


# -- export: the family as data (plprune.models.architecture) -------------------------------------------
def _describe(model: ResNet) -> dict[str, Any]:
    args = {k: getattr(model, k) for k in ("depth", "width_multiplier", "in_channels", "num_classes")}
    return {"args": {**args, "dims": model.dims}}


register_architecture(
    ResNet, "plprune.ResNet", describe=_describe, build=lambda description: ResNet(**description["args"])
)
