"""Conv building blocks of plprune's CNNs (paper Sec. 3.2.1: "filters" of CNNs, Tables 3 and 5).

:class:`GatedConvBN` is ``conv (no bias) → BatchNorm → ReLU``; it carries no pruning code. Its output
channels are found as conv filters by :mod:`plprune.sites` (``GroupSet(model, kinds=("filter",),
example_inputs=x)``, through a dependency graph of the model, :mod:`plprune.sites.filter_discovery`):
output channel c is one group ``w_[c]`` = conv ``weight[c]`` (all its input channels and taps), BN
``weight[c]`` and BN ``bias[c]``, and its gate is applied by a forward hook on the BN output, **after
BatchNorm and before the ReLU**: a gate placed before BN would be divided out again by the batch
statistics (BN is invariant to a per-channel scale of its input in training mode), so only a post-BN gate
actually scales the channel (Eq. 6, ``g ⊙ w``: scaling BN's γ_c and β_c by g_c is exactly this).

Hard pruning zeroes the whole group; then the conv output of channel c is 0 and BN gives
``0 · γ_c + β_c = 0`` (training mode: (0 − 0)/√(0 + eps)·0 + 0; eval mode: anything·0 + 0), the same
channel as gate 0 — so a hard mask and a zero gate give identical networks (tested in train and eval).

:class:`ConvBN` is the same block with an optional ReLU (ResNet's stem and residual-tied convs, whose
channels the discovery leaves alone; see :mod:`plprune.models.resnet`). Every layer uses our
:class:`~plprune.models.layers.BatchNorm` (exact third derivatives).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.layers import BatchNorm
from plprune.validation import check_positive_int

__all__ = [
    "CONV_DIMS",
    "ConvBN",
    "GatedConvBN",
    "check_dims",
    "check_input_shape",
    "check_width_multiplier",
    "global_average_pool",
    "make_conv",
    "scale_channels",
]

CONV_DIMS = (1, 2)


def check_dims(dims: object) -> int:
    """``dims`` is 1 (``Conv1d`` on ``(N, C, L)``) or 2 (``Conv2d`` on ``(N, C, H, W)``)."""
    if isinstance(dims, bool) or dims not in CONV_DIMS:
        raise PlpruneError(
            f"dims must be 1 (sequences (N, C, L), e.g. MNIST-1D) or 2 (images (N, C, H, W)), got {dims!r}"
        )
    return int(dims)


def check_width_multiplier(width_multiplier: object) -> float:
    if (
        isinstance(width_multiplier, bool)
        or not isinstance(width_multiplier, (int, float))
        or not math.isfinite(width_multiplier)
        or width_multiplier <= 0
    ):
        raise PlpruneError(f"width_multiplier must be a finite number > 0, got {width_multiplier!r}")
    return float(width_multiplier)


def scale_channels(channels: int, width_multiplier: float, where: str) -> int:
    """``round(channels · width_multiplier)`` (half up); raises if a layer would get < 1 channel."""
    scaled = math.floor(channels * width_multiplier + 0.5)
    if scaled < 1:
        smallest = 0.5 / channels
        raise PlpruneError(
            f"width_multiplier {width_multiplier} leaves {where} ({channels} channels at width 1) with "
            f"{scaled} channels; every layer needs at least 1, so use width_multiplier >= {smallest:g}"
        )
    return scaled


def make_conv(dims: int, in_channels: int, out_channels: int, stride: int = 1) -> nn.Module:
    """A 3-tap (1-D) or 3×3 (2-D) convolution with padding 1 and no bias (BatchNorm follows)."""
    conv = (nn.Conv1d if dims == 1 else nn.Conv2d)(
        in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
    )
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def check_input_shape(x: Tensor, in_channels: int, dims: int, model: str) -> None:
    """Raise a clear error unless ``x`` is ``(N, in_channels, L)`` (dims 1) or ``(N, in_channels, H, W)``."""
    if not isinstance(x, Tensor):
        raise PlpruneError(f"{model} expects a Tensor input, got {type(x).__name__}")
    layout = "(N, C, L)" if dims == 1 else "(N, C, H, W)"
    if x.dim() != dims + 2 or x.shape[1] != in_channels:
        raise PlpruneError(
            f"{model} was built for {dims}-D inputs {layout} with C = in_channels = {in_channels}, got input "
            f"shape {tuple(x.shape)}; build the model with the data's in_channels and dims"
        )


class ConvBN(nn.Module):
    """``conv → BatchNorm [→ ReLU]`` (the ReLU optional, e.g. before a residual sum)."""

    def __init__(
        self, in_channels: int, out_channels: int, dims: int = 2, stride: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.dims = check_dims(dims)
        self.conv = make_conv(self.dims, in_channels, out_channels, stride)
        self.bn = BatchNorm(out_channels)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        return F.relu(y) if self.relu else y


class GatedConvBN(nn.Module):
    """``conv → BatchNorm → ReLU`` whose filters plprune prunes (module docstring): the filter site found
    for it gates channel c of the BN output (a forward hook) before the ReLU; with no gate (or all-ones
    gates) the block computes exactly ``relu(bn(conv(x)))``."""

    def __init__(self, in_channels: int, out_channels: int, dims: int = 2, stride: int = 1) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        self.dims = check_dims(dims)
        self.conv = make_conv(self.dims, in_channels, out_channels, stride)
        self.bn = BatchNorm(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def global_average_pool(x: Tensor) -> Tensor:
    """Mean over every spatial dimension: ``(N, C, *spatial) → (N, C)``."""
    return x.flatten(2).mean(dim=2)
