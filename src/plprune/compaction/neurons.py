"""Compacting feed-forward neurons: channel c's rows of the input projections and column of the output go.

For the kept channels K (in order): the input projections keep their outputs K (weight rows of an
``nn.Linear``, weight *columns* of a Hugging Face ``Conv1D``, and the bias entries; both halves ``K`` and
``I + K`` of a fused ``[gate; up]`` projection, in that order, so ``chunk(2)`` still splits gate from up),
the output projection keeps its inputs K (weight columns of a Linear, rows of a Conv1D). The width follows:
``out_features``/``in_features`` of a Linear, ``nf``/``nx`` of a Conv1D, and the FFN module's own count
(the adapter's ``set_size``, else an attribute of :data:`~plprune.sites.neurons.SIZE_ATTRIBUTES` equal to the
old width, e.g. ``LlamaMLP.intermediate_size``). The output projection's bias and everything outside the FFN
stay. A removed channel contributed exactly nothing in the masked model (gated by 0, weights 0), so the
compacted block computes the same output.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from plprune.compaction.core import register_planner
from plprune.compaction.ops import CallOnModule, KeepSlices, Op, SetAttribute, sync_sizes
from plprune.errors import PlpruneError
from plprune.groups import GateSite
from plprune.sites.neurons import SIZE_ATTRIBUTES, NeuronSite
from plprune.sites.projections import in_dim, out_dim


def _expert_fate(site: NeuronSite) -> str:
    """``"removed"`` when the block is an expert that this mask prunes (the expert planner removes it whole:
    nothing to do here), ``"kept"`` otherwise; raises when it is expert i of a layer losing an expert j < i
    (the expert planner runs first, in module order, and renumbers the experts, so edits by name would hit
    another expert). The expert site is found through its per-expert output hook on the block, a closure
    over the site and the expert's index (:class:`~plprune.sites.experts.ExpertSite`)."""
    for hook in site.module._forward_hooks.values():
        code, cells = getattr(hook, "__code__", None), getattr(hook, "__closure__", None) or ()
        if code is None:
            continue
        captured = {}
        for name, cell in zip(code.co_freevars, cells, strict=False):
            try:
                captured[name] = cell.cell_contents
            except ValueError:  # an empty cell
                continue
        owner, index = captured.get("self"), captured.get("index")
        if not (isinstance(owner, GateSite) and owner.kind == "expert" and isinstance(index, int)):
            continue
        if owner.keep is None or bool(owner.keep[: index + 1].all()):
            continue
        if not bool(owner.keep[index]):
            return "removed"
        raise PlpruneError(
            f"cannot compact the neurons of {site.module_name}: it is expert {index} of "
            f"{owner.module_name}, which loses experts {(~owner.keep[:index]).nonzero().flatten().tolist()} "
            "in the same mask, and removing those renumbers the experts; compacting neurons of an expert "
            "behind a removed one is not supported yet (the masked model computes the same function)"
        )
    return "kept"


def _path(site: NeuronSite, path: str) -> str:
    return f"{site.module_name}.{path}" if site.module_name else path


@register_planner(NeuronSite)
def plan_neurons(site: NeuronSite, keep: Tensor, model: nn.Module, example_inputs: Any = None) -> list[Op]:
    if _expert_fate(site) == "removed":
        return []
    channels = keep.nonzero().flatten().tolist()
    width = len(channels)
    rows = tuple(site.input_rows(channels))
    ops: list[Op] = []
    for path, proj in zip(site.adapter.inputs, site.inputs, strict=True):
        ops.append(KeepSlices(_path(site, f"{path}.weight"), out_dim(proj), rows))
        if proj.bias is not None:
            ops.append(KeepSlices(_path(site, f"{path}.bias"), 0, rows))
        ops.append(CallOnModule(_path(site, path), sync_sizes, None))
    output = site.output
    ops.append(KeepSlices(_path(site, f"{site.adapter.output}.weight"), in_dim(output), tuple(channels)))
    ops.append(CallOnModule(_path(site, site.adapter.output), sync_sizes, None))
    if site.adapter.set_size is not None:
        ops.append(CallOnModule(site.module_name, site.adapter.set_size, width))
    else:
        for attr in SIZE_ATTRIBUTES:
            value = getattr(site.module, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value == site.num_groups:
                ops.append(SetAttribute(site.module_name, attr, width))
    return ops
