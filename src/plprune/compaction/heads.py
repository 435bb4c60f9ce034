"""Compacting attention heads: every weight slice of a removed head goes, whatever the layout.

The edits are read off the head groups themselves (:class:`~plprune.sites.heads.HeadSite`): for each
parameter dimension a removed head's slices touch (its W_Q rows — in a fused QKV projection wherever the
layout puts them —, its W_K/W_V rows under multi-head attention, its W_O columns), the entries of the removed
heads go and every other entry stays. Under grouped-query attention the shared key/value rows belong to no
head and stay, so the KV head of every group survives (the keep rule keeps the same number of query heads in
each KV group). Per-head tables (T5's relative-position bias) lose the removed heads' entries. The
projections' sizes (``in_features``/``out_features``, Conv1D's ``nf``) follow the new weights, and the
module's head counts follow through its adapter's ``set_num_heads``. A removed head contributed exactly
nothing in the masked model (its context was gated by 0 and its weights were 0), so the compacted layer
computes the same output.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any

from torch import Tensor, nn

from plprune.compaction.core import register_plan_check, register_planner
from plprune.compaction.ops import CallOnModule, KeepSlices, Op, sync_sizes
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.sites.heads import HeadSite


@register_planner(HeadSite)
def plan_heads(site: HeadSite, keep: Tensor, model: nn.Module, example_inputs: Any = None) -> list[Op]:
    removed: dict[tuple[str, int], set[int]] = defaultdict(set)
    for group, kept in zip(site.groups(), keep.tolist(), strict=True):
        if not kept:
            for piece in group.slices:
                removed[(piece.param_name, piece.dim)].update(range(piece.start, piece.stop))
    tensors = dict(model.named_parameters())
    ops: list[Op] = []
    for (name, dim), gone in removed.items():
        size = tensors[name].shape[dim]
        ops.append(KeepSlices(name, dim, tuple(i for i in range(size) if i not in gone)))
    heads = tuple(keep.nonzero().flatten().tolist())
    for name, dim in site.head_tables():
        ops.append(KeepSlices(name, dim, heads))
    prefix = f"{site.module_name}." if site.module_name else ""
    touched = {path for path in site.paths.values()}
    touched |= {name[len(prefix) :].rpartition(".")[0] for name, _ in site.head_tables()}
    for path in sorted(touched):
        ops.append(CallOnModule(f"{prefix}{path}" if prefix else path, sync_sizes, None))
    setter = site.adapter.set_num_heads
    if setter is not None:
        kv_heads = site.kv_heads if site.grouped else len(heads)
        ops.append(CallOnModule(site.module_name, _set_counts, (setter, len(heads), kv_heads)))
    return ops


def _set_counts(module: nn.Module, argument: tuple) -> None:
    setter, heads, kv_heads = argument
    if len(inspect.signature(setter).parameters) >= 3:
        setter(module, heads, kv_heads)
    else:  # an adapter written for plprune <= 0.1: query heads only
        setter(module, heads)


@register_plan_check
def check_shared_position_bias(groups: GroupSet) -> None:
    """Attention modules that consume one position bias computed once (T5: the first layer's relative bias
    table, passed to every layer of the stack) can lose heads only together: the same heads everywhere."""
    shared: dict[str, list[tuple[HeadSite, list[int]]]] = defaultdict(list)
    for site, start, stop in groups.site_ranges():
        if not isinstance(site, HeadSite) or site.adapter.shared_bias_key is None:
            continue
        key = site.adapter.shared_bias_key(site.module_name)
        if key is not None:
            shared[key].append((site, groups.mask[start:stop].nonzero().flatten().tolist()))
    for key, members in shared.items():
        kept = {tuple(heads) for _, heads in members}
        if len(kept) > 1:
            described = "; ".join(f"{site.module_name}: {heads}" for site, heads in members[:4])
            raise PlpruneError(
                f"the attention layers of {key} share one relative-position bias (computed by the first "
                "layer and passed to every layer, as in T5), so they compact only when they keep the "
                f"same heads; kept heads differ ({described}{'; ...' if len(members) > 4 else ''}). Keep the "
                "model masked (it computes the same function), or prune the same head indices in every layer"
            )
