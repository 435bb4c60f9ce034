"""Compacting MoE experts: a pruned expert's module and its router row go; routing is unchanged.

In the masked model a pruned expert's router logit is −∞ (no token reaches it, the softmax renormalises over
the others), so removing the expert and its router row leaves every routing decision and probability as it
was. The family's ``on_compact`` keeps its counts and buffers in step (plprune's Switch: ``num_experts`` and
the all-kept routing buffer; its capacity is computed over the remaining experts, as it was when masked).
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from plprune.compaction.core import register_planner
from plprune.compaction.ops import CallOnModule, KeepChildren, KeepSlices, Op
from plprune.errors import PlpruneError
from plprune.sites.experts import ExpertSite, FusedExpertSite


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


@register_planner(ExpertSite)
def plan_experts(site: ExpertSite, keep: Tensor, model: nn.Module, example_inputs: Any = None) -> list[Op]:
    adapter = site.adapter
    if adapter.container is None:
        raise PlpruneError(
            f"the MoE adapter {adapter.name!r} names no expert container, so its experts cannot be removed; "
            "give MoEAdapter(container=...) the path of the ModuleList/ModuleDict holding them"
        )
    kept = tuple(keep.nonzero().flatten().tolist())
    container = site.module.get_submodule(adapter.container)
    prefix = None
    if isinstance(container, nn.ModuleDict):
        stems = {re.sub(r"\d+$", "", key) for key in container}
        prefix = stems.pop() if len(stems) == 1 else None
    ops: list[Op] = [KeepChildren(_join(site.module_name, adapter.container), kept, prefix)]
    router_path = adapter.router_linear or adapter.router
    if router_path is not None:
        router = site.module.get_submodule(router_path)
        ops.append(KeepSlices(_join(site.module_name, router_path, "weight"), 0, kept))
        if getattr(router, "bias", None) is not None:
            ops.append(KeepSlices(_join(site.module_name, router_path, "bias"), 0, kept))
        ops.append(CallOnModule(_join(site.module_name, router_path), _set_out, len(kept)))
    if adapter.on_compact is not None:
        ops.append(CallOnModule(site.module_name, adapter.on_compact, keep.clone()))
    return ops


@register_planner(FusedExpertSite)
def plan_fused_experts(
    site: FusedExpertSite, keep: Tensor, model: nn.Module, example_inputs: Any = None
) -> list[Op]:
    raise PlpruneError(
        f"compacting fused experts ({site.adapter.name}, stacked expert tensors) is not supported yet; the "
        "masked model is exact, and its pruned experts receive no tokens"
    )


def _set_out(module: nn.Module, count: int) -> None:
    module.out_features = count
