"""Mixture-of-experts experts of any model, found through one small adapter per MoE family.

An :class:`MoEAdapter` names, relative to an MoE layer, its expert modules and its router (an
``nn.Linear`` whose output column i is expert i's routing logit). Expert i of the layer is one group: every
parameter of expert module i. Its soft gate multiplies the expert module's output (forward hook), leaving
routing alone, so gate 0 equals zeroing the expert. A *hard* prune also sets expert i's router logit to −∞
(forward hook on the router), so no token is routed to it and the softmax renormalises over the rest: the
pruned layer routes exactly like a layer that never had the expert. ``on_hard_mask`` lets a family do more
(plprune's Switch recomputes its expert capacity over the remaining experts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError
from plprune.groups import GateSite, Group, ParamSlice


@dataclass(frozen=True)
class MoEAdapter:
    """How to read one MoE family. ``experts(layer)`` lists the expert modules in index order;
    ``router`` is the dotted path of the router ``nn.Linear`` (``None``: the family masks routing itself
    in ``on_hard_mask``); ``on_hard_mask(layer, keep)`` is an optional extra action on a new hard mask."""

    name: str
    matches: Callable[[nn.Module], bool]
    experts: Callable[[nn.Module], list[nn.Module]]
    router: str | None
    on_hard_mask: Callable[[nn.Module, Tensor], None] | None = None


_MOE_ADAPTERS: list[MoEAdapter] = []


def register_moe(adapter: MoEAdapter) -> MoEAdapter:
    """Make ``adapter`` known to expert discovery (later registrations are tried first)."""
    if not isinstance(adapter, MoEAdapter):
        raise PlpruneError(f"register_moe takes an MoEAdapter, got {type(adapter).__name__}")
    _MOE_ADAPTERS[:] = [a for a in _MOE_ADAPTERS if a.name != adapter.name]
    _MOE_ADAPTERS.insert(0, adapter)
    return adapter


class ExpertSite(GateSite):
    """The experts of one MoE layer: output hooks on each expert, a logit hook on the router."""

    def __init__(self, module_name: str, module: nn.Module, layer: int, adapter: MoEAdapter) -> None:
        experts = list(adapter.experts(module))
        if len(experts) < 2:
            raise PlpruneError(f"{module_name}: an MoE layer needs at least 2 experts, found {len(experts)}")
        super().__init__(module_name, module, "expert", layer, len(experts))
        self.adapter = adapter
        self.experts = experts
        names = {id(m): n for n, m in module.named_modules()}
        missing = [i for i, e in enumerate(experts) if id(e) not in names]
        if missing:
            raise PlpruneError(f"{module_name}: experts {missing} are not submodules of the MoE layer")
        self.expert_paths = [names[id(e)] for e in experts]
        self.router: nn.Linear | None = None
        if adapter.router is not None:
            router = module.get_submodule(adapter.router)
            if not isinstance(router, nn.Linear) or router.out_features != len(experts):
                raise PlpruneError(
                    f"{module_name}.{adapter.router} must be an nn.Linear with one output per expert "
                    f"({len(experts)})"
                )
            self.router = router

    def groups(self) -> list[Group]:
        prefix = f"{self.module_name}." if self.module_name else ""
        out = []
        for i, (path, expert) in enumerate(zip(self.expert_paths, self.experts, strict=True)):
            slices = tuple(
                ParamSlice(f"{prefix}{path}.{name}", 0, 0, param.shape[0])
                for name, param in expert.named_parameters()
            )
            if not slices:
                raise PlpruneError(f"{prefix}{path}: expert {i} has no parameters")
            out.append(Group("expert", self.layer, i, slices))
        return out

    def set_hard_mask(self, keep: Tensor) -> None:
        super().set_hard_mask(keep)
        if self.adapter.on_hard_mask is not None:
            self.adapter.on_hard_mask(self.module, self.keep)

    def _expert_hook(self, index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
            gate = self.gate
            if gate is None:
                return None
            return output * gate[index].to(output.dtype)

        return hook

    def _mask_router(self, module: nn.Module, args: tuple, logits: Tensor) -> Tensor | None:
        keep = self.keep
        if keep is None or bool(keep.all()):
            return None
        return torch.where(keep.to(logits.device), logits, torch.full_like(logits, -math.inf))

    def _register_hooks(self) -> list[RemovableHandle]:
        handles = [e.register_forward_hook(self._expert_hook(i)) for i, e in enumerate(self.experts)]
        if self.router is not None:
            handles.append(self.router.register_forward_hook(self._mask_router))
        return handles


def find_expert_sites(model: nn.Module) -> list[ExpertSite]:
    """Expert sites of ``model`` in module order."""
    sites: list[ExpertSite] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside):
            continue
        adapter = next((a for a in _MOE_ADAPTERS if a.matches(module)), None)
        if adapter is not None:
            sites.append(ExpertSite(name, module, len(sites), adapter))
            inside.append(name)
    return sites
