"""Structured groups: the units that plprune scores, gates and prunes (paper Sec. 3.2.1, ``w_[i]``).

A :class:`Group` is a set of parameter slices (e.g. head h of layer l: rows of W_Q, W_K, W_V and their
biases, columns of W_O). Groups live in *gate sites*: a module that multiplies each of its groups'
outputs by a gate (an attention layer gates its heads). :func:`find_groups` discovers them.
Pruners and curvature code only see groups and their slices; they never reach into model modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.bert import MultiHeadSelfAttention

GROUP_KINDS = ("head", "expert", "filter")


@dataclass(frozen=True)
class ParamSlice:
    """``parameter.narrow(dim, start, stop - start)``: the part of one parameter that belongs to a group."""

    param_name: str
    dim: int
    start: int
    stop: int

    def select(self, tensor: Tensor) -> Tensor:
        """This slice of ``tensor`` (a parameter or anything of the parameter's shape, e.g. its gradient).

        A leading batch dimension is allowed when ``tensor`` has one more dimension than the parameter
        would (per-sample gradients): pass ``batched=True`` via :meth:`select_batched`.
        """
        return tensor.narrow(self.dim, self.start, self.stop - self.start)

    def select_batched(self, tensor: Tensor) -> Tensor:
        """The slice of a batched tensor ``(n, *param_shape)``, e.g. per-sample gradients."""
        return tensor.narrow(self.dim + 1, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Group:
    """One structured unit. ``layer`` is the protection unit (a layer never loses all its groups)."""

    kind: str
    layer: int
    index: int
    slices: tuple[ParamSlice, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}:L{self.layer}.{self.index}"

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.param_name for s in self.slices))


@dataclass
class GateSite:
    """A module that applies one gate per group to its output (e.g. one attention layer's heads)."""

    module_name: str
    module: nn.Module
    kind: str
    layer: int
    num_groups: int

    def set_gate(self, gate: Tensor | None) -> None:
        if self.kind == "head":
            self.module.set_head_gate(gate)
        else:
            self.module.set_group_gate(gate)

    def set_hard_mask(self, keep: Tensor) -> None:
        """Tell the module which groups are pruned, if it acts on that beyond the zero gate
        (an MoE layer stops routing tokens to a pruned expert)."""
        if hasattr(self.module, "set_hard_mask"):
            self.module.set_hard_mask(keep)


def _head_slices(module_name: str, head: int, head_size: int) -> tuple[ParamSlice, ...]:
    start, stop = head * head_size, (head + 1) * head_size
    slices = []
    for proj in ("query", "key", "value"):
        slices.append(ParamSlice(f"{module_name}.{proj}.weight", 0, start, stop))
        slices.append(ParamSlice(f"{module_name}.{proj}.bias", 0, start, stop))
    slices.append(ParamSlice(f"{module_name}.output.weight", 1, start, stop))
    return tuple(slices)


def iter_gate_sites(
    model: nn.Module, kinds: tuple[str, ...] = GROUP_KINDS
) -> Iterator[tuple[GateSite, list[Group]]]:
    """Yield each gate site of ``model`` with its groups, in module order."""
    layer = {kind: 0 for kind in GROUP_KINDS}
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadSelfAttention) and "head" in kinds:
            site = GateSite(name, module, "head", layer["head"], module.num_heads)
            groups = [
                Group("head", layer["head"], h, _head_slices(name, h, module.head_size))
                for h in range(module.num_heads)
            ]
            layer["head"] += 1
            yield site, groups
        elif hasattr(module, "gate_groups") and getattr(module, "group_kind", None) in kinds:
            # protocol of non-head sites: group_kind, num_gate_groups, gate_groups(module_name) -> list of
            # ParamSlice lists (one per group), set_group_gate(Tensor | None), optional set_hard_mask(keep)
            kind = module.group_kind
            site = GateSite(name, module, kind, layer[kind], module.num_gate_groups)
            groups = [Group(kind, layer[kind], i, tuple(s)) for i, s in enumerate(module.gate_groups(name))]
            layer[kind] += 1
            yield site, groups


def check_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in GROUP_KINDS]
    if bad or not kinds:
        raise PlpruneError(f"group kinds must be a non-empty subset of {GROUP_KINDS}, got {kinds!r}")
    return kinds
