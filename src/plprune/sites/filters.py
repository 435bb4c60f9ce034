"""Conv filters as prunable groups (paper Sec. 3.2.1: filters of CNNs).

A :class:`FilterSite` is one set of conv layers whose output channels must go together, with the
BatchNorm after each. Channel c is one group: ``conv.weight[c]`` (and ``conv.bias[c]``), BN ``weight[c]``
and ``bias[c]`` of every member. The gate multiplies channel c of each member's BN output (forward hook;
the conv's output when there is no BN): after BN, because a gate before BN would be divided out again by
the batch statistics. Hard pruning zeroes the whole group, so every member writes 0 into channel c in train
and eval mode, exactly as gate 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.groups import GateSite, Group, ParamSlice


@dataclass(frozen=True)
class ConvMember:
    """One conv layer of a filter site and the norm layer right after it (``None``: none)."""

    conv_name: str
    conv: nn.Module
    norm_name: str | None
    norm: nn.Module | None


class FilterSite(GateSite):
    """Output channels of one conv (or of several convs coupled by residual additions).

    ``feature_module``: the module whose output is the site's feature maps ``(N, C, *spatial)`` (CHIP
    scores them); default the first member's norm (its gated output), else its conv.
    """

    def __init__(
        self,
        module_name: str,
        module: nn.Module,
        layer: int,
        members: list[ConvMember],
        feature_module: nn.Module | None = None,
    ) -> None:
        if not members:
            raise PlpruneError(f"{module_name}: a filter site needs at least one conv layer")
        channels = {_out_channels(m.conv) for m in members}
        if len(channels) != 1:
            raise PlpruneError(
                f"{module_name}: coupled convs have different channel counts {sorted(channels)}"
            )
        super().__init__(module_name, module, "filter", layer, channels.pop())
        self.members = list(members)
        first = self.members[0]
        self.feature_module = feature_module or (first.norm if first.norm is not None else first.conv)

    @property
    def norm_weight_names(self) -> list[str]:
        """The BatchNorm scale parameters (γ) of the members, by name (DPFPS ranks these)."""
        return [f"{m.norm_name}.weight" for m in self.members if m.norm is not None]

    @property
    def norm_weights(self) -> list[Tensor | None]:
        """The members' norm scales γ in member order (``None`` for a member without a norm)."""
        return [getattr(m.norm, "weight", None) if m.norm is not None else None for m in self.members]

    def groups(self) -> list[Group]:
        out = []
        for c in range(self.num_groups):
            slices = []
            for m in self.members:
                for name, _ in m.conv.named_parameters(recurse=False):
                    slices.append(ParamSlice(f"{m.conv_name}.{name}", 0, c, c + 1))
                if m.norm is not None:
                    for name, _ in m.norm.named_parameters(recurse=False):
                        slices.append(ParamSlice(f"{m.norm_name}.{name}", 0, c, c + 1))
            out.append(Group("filter", self.layer, c, tuple(slices)))
        return out

    def _gate_channels(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        gate = self.gate
        if gate is None:
            return None
        shape = (1, self.num_groups) + (1,) * (output.dim() - 2)
        return output * gate.to(output.device, output.dtype).view(shape)

    def _register_hooks(self) -> list[RemovableHandle]:
        hook: Callable = self._gate_channels
        return [(m.norm if m.norm is not None else m.conv).register_forward_hook(hook) for m in self.members]


def _out_channels(conv: nn.Module) -> int:
    weight = getattr(conv, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() < 2:
        raise PlpruneError(f"{type(conv).__name__} is not a conv layer with a weight of >= 2 dimensions")
    return int(weight.shape[0])
