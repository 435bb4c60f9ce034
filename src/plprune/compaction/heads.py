"""Compacting attention heads: head h's rows of W_Q, W_K, W_V (and biases) and columns of W_O go.

For the kept heads K (in order) the kept rows/columns are ``[h·d, (h+1)·d)`` for h in K; the layer's head
count follows through its adapter's ``set_num_heads``. W_O's bias and everything outside the attention block
stay. A removed head contributed exactly nothing in the masked model (its context was gated by 0 and its
weights were 0), so the compacted layer computes the same output.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from plprune.compaction.core import register_planner
from plprune.compaction.ops import CallOnModule, KeepSlices, Op
from plprune.sites.heads import HeadSite


@register_planner(HeadSite)
def plan_heads(site: HeadSite, keep: Tensor, model: nn.Module, example_inputs: Any = None) -> list[Op]:
    heads = keep.nonzero().flatten().tolist()
    rows = tuple(i for h in heads for i in range(h * site.head_size, (h + 1) * site.head_size))
    ops: list[Op] = []
    for proj in ("query", "key", "value"):
        ops.append(KeepSlices(site._param(proj, "weight"), 0, rows))
        if site.linears[proj].bias is not None:
            ops.append(KeepSlices(site._param(proj, "bias"), 0, rows))
    ops.append(KeepSlices(site._param("output", "weight"), 1, rows))
    for proj in ("query", "key", "value", "output"):
        path = f"{site.module_name}.{site.paths[proj]}" if site.module_name else site.paths[proj]
        size_attr = "in_features" if proj == "output" else "out_features"
        ops.append(CallOnModule(path, _set, (size_attr, len(rows))))
    if site.adapter.set_num_heads is not None:
        ops.append(CallOnModule(site.module_name, site.adapter.set_num_heads, len(heads)))
    return ops


def _set(module: nn.Module, attr_value: tuple[str, Any]) -> None:
    setattr(module, *attr_value)
