"""Mixture-of-experts experts of any model, found through one small adapter per MoE family.

An :class:`MoEAdapter` names, relative to an MoE layer, its expert modules and its router (an
``nn.Linear`` whose output column i is expert i's routing logit). Expert i of the layer is one group: every
parameter of expert module i. Its soft gate multiplies the expert module's output (forward hook), leaving
routing alone, so gate 0 equals zeroing the expert. A *hard* prune also sets expert i's router logit to −∞
(forward hook on the router), so no token is routed to it and the softmax renormalises over the rest: the
pruned layer routes exactly like a layer that never had the expert. ``on_hard_mask`` lets a family do more
(plprune's Switch recomputes its expert capacity over the remaining experts).

Families that store all experts in *fused* 3-D parameters (Hugging Face Mixtral, Qwen-MoE, ...: one
``gate_up_proj`` of shape ``(E, 2·I, H)`` and one ``down_proj`` ``(E, H, I)``) have no module per expert.
A :class:`FusedMoEAdapter` names the experts module, its fused parameters (expert i = index i along dim 0)
and the router. Expert i's soft gate multiplies its routing weight (forward pre-hook on the experts
module, which receives ``(hidden, top_k_index, top_k_weights)``): expert i's output is scaled by its
routing weight, so this equals gating its output, and gate 0 equals zeroing its weights. A hard prune
re-routes with expert i's router logit at −∞ (``reroute``, a forward hook on the router).
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
    in ``on_hard_mask``); ``on_hard_mask(layer, keep)`` is an optional extra action on a new hard mask.

    For compaction (:mod:`plprune.compaction`): ``container`` is the dotted path of the ``nn.ModuleList`` /
    ``nn.ModuleDict`` holding the experts (its pruned children are removed), ``router_linear`` the router
    whose output rows are removed (default: ``router``), and ``on_compact(layer, keep)`` updates whatever
    else the family keeps per expert (counts, routing buffers)."""

    name: str
    matches: Callable[[nn.Module], bool]
    experts: Callable[[nn.Module], list[nn.Module]]
    router: str | None
    on_hard_mask: Callable[[nn.Module, Tensor], None] | None = None
    container: str | None = None
    router_linear: str | None = None
    on_compact: Callable[[nn.Module, Tensor], None] | None = None


@dataclass(frozen=True)
class FusedMoEAdapter:
    """How to read an MoE family with fused expert parameters (module docstring).

    ``experts``: dotted path of the module holding the fused parameters, called as
    ``experts(hidden, top_k_index, top_k_weights)`` (positionally or by these keyword names);
    ``params``: its parameter names, each with one slice per expert along dim 0; ``router``: path of the
    router module; ``num_experts(layer)``: the expert count; ``reroute(router, masked_logits, output)``:
    the router's output recomputed from logits in which pruned experts are −∞.
    """

    name: str
    matches: Callable[[nn.Module], bool]
    experts: str
    params: tuple[str, ...]
    router: str
    num_experts: Callable[[nn.Module], int]
    reroute: Callable[[nn.Module, Tensor, object], object]
    logits: Callable[[object], Tensor] = lambda output: output[0]


_MOE_ADAPTERS: list[MoEAdapter | FusedMoEAdapter] = []


def register_moe(adapter: MoEAdapter | FusedMoEAdapter) -> MoEAdapter | FusedMoEAdapter:
    """Make ``adapter`` known to expert discovery (later registrations are tried first)."""
    if not isinstance(adapter, (MoEAdapter, FusedMoEAdapter)):
        raise PlpruneError(
            f"register_moe takes an MoEAdapter or FusedMoEAdapter, got {type(adapter).__name__}"
        )
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
            return output * gate[index].to(output.device, output.dtype)

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


class FusedExpertSite(GateSite):
    """The experts of one MoE layer whose expert weights are slices of fused 3-D parameters."""

    def __init__(self, module_name: str, module: nn.Module, layer: int, adapter: FusedMoEAdapter) -> None:
        count = int(adapter.num_experts(module))
        if count < 2:
            raise PlpruneError(f"{module_name}: an MoE layer needs at least 2 experts, found {count}")
        super().__init__(module_name, module, "expert", layer, count)
        self.adapter = adapter
        self.experts = module.get_submodule(adapter.experts)
        self.router = module.get_submodule(adapter.router)
        for name in adapter.params:
            param = getattr(self.experts, name, None)
            if not isinstance(param, nn.Parameter) or param.dim() < 2 or param.shape[0] != count:
                got = tuple(param.shape) if isinstance(param, Tensor) else type(param).__name__
                raise PlpruneError(
                    f"{module_name}.{adapter.experts}.{name} must be a parameter with one slice per expert "
                    f"along dim 0 ({count}), got {got}"
                )

    def groups(self) -> list[Group]:
        prefix = f"{self.module_name}." if self.module_name else ""
        return [
            Group(
                "expert",
                self.layer,
                i,
                tuple(
                    ParamSlice(f"{prefix}{self.adapter.experts}.{p}", 0, i, i + 1)
                    for p in self.adapter.params
                ),
            )
            for i in range(self.num_groups)
        ]

    def _gate_routing(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        gate = self.gate
        if gate is None:
            return None
        args = list(args)
        index = kwargs["top_k_index"] if len(args) < 2 else args[1]
        weights = kwargs["top_k_weights"] if len(args) < 3 else args[2]
        # index E (expert-parallel sentinel: a token handled elsewhere) is skipped by the experts anyway
        gated = weights * gate.to(weights.device, weights.dtype)[index.clamp(max=self.num_groups - 1)]
        if len(args) >= 3:
            args[2] = gated
        else:
            kwargs = {**kwargs, "top_k_weights": gated}
        return tuple(args), kwargs

    def _mask_router(self, module: nn.Module, args: tuple, output: object) -> object | None:
        keep = self.keep
        if keep is None or bool(keep.all()):
            return None
        logits = self.adapter.logits(output)
        masked = torch.where(keep.to(logits.device), logits, torch.full_like(logits, -math.inf))
        return self.adapter.reroute(module, masked, output)

    def _register_hooks(self) -> list[RemovableHandle]:
        return [
            self.experts.register_forward_pre_hook(self._gate_routing, with_kwargs=True),
            self.router.register_forward_hook(self._mask_router),
        ]


def find_expert_sites(model: nn.Module) -> list[GateSite]:
    """Expert sites of ``model`` in module order."""
    sites: list[GateSite] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside):
            continue
        adapter = next((a for a in _MOE_ADAPTERS if a.matches(module)), None)
        if isinstance(adapter, FusedMoEAdapter):
            sites.append(FusedExpertSite(name, module, len(sites), adapter))
            inside.append(name)
        elif adapter is not None:
            sites.append(ExpertSite(name, module, len(sites), adapter))
            inside.append(name)
    return sites
