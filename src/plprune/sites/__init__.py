"""Finding the prunable groups of any model: heads, experts and filters, gated by hooks.

:func:`find_sites` returns every :class:`~plprune.groups.GateSite` of the requested kinds in module order.
Heads and experts are found through adapters (:mod:`plprune.sites.heads`, :mod:`plprune.sites.experts`;
the built-in ones in :mod:`plprune.sites.builtin`), conv filters through a dependency graph of the model
(:mod:`plprune.sites.filter_discovery`, which needs example inputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from plprune.errors import PlpruneError
from plprune.groups import GateSite, check_kinds
from plprune.sites import builtin as _builtin  # noqa: F401  (registers the built-in adapters)
from plprune.sites.experts import (
    ExpertSite,
    FusedExpertSite,
    FusedMoEAdapter,
    MoEAdapter,
    find_expert_sites,
    register_moe,
)
from plprune.sites.filters import ConvMember, FilterSite
from plprune.sites.heads import AttentionAdapter, HeadSite, find_head_sites, register_attention
from plprune.sites.layers import LayerAdapter, LayerSite, layer_sites, register_layers
from plprune.sites.neurons import FFNAdapter, NeuronSite, neuron_sites, register_ffn

__all__ = [
    "AttentionAdapter",
    "ConvMember",
    "ExpertSite",
    "FFNAdapter",
    "FilterSite",
    "FusedExpertSite",
    "FusedMoEAdapter",
    "HeadSite",
    "LayerAdapter",
    "LayerSite",
    "MoEAdapter",
    "NeuronSite",
    "find_sites",
    "kinds_need_inputs",
    "register_attention",
    "register_ffn",
    "register_kind_finder",
    "register_layers",
    "register_moe",
]

_HOW_TO_ADAPT = (
    "register an adapter that names its Q/K/V/O projections and head count: "
    "plprune.register_attention(plprune.AttentionAdapter(name=..., "
    "matches=lambda m: isinstance(m, YourAttention), "
    "query='q', key='k', value='v', output='o', num_heads=lambda m: m.n_heads)) (docs/byom.md)"
)


def _head_sites(model: nn.Module, example_inputs: Any) -> list[GateSite]:
    heads, unmatched = find_head_sites(model)
    if not heads:
        found = "no attention module"
        if unmatched:
            found = f"attention modules of class {', '.join(unmatched)} with no adapter"
        raise PlpruneError(
            f"{type(model).__name__} has no attention heads plprune can find ({found}); "
            f"to prune heads, {_HOW_TO_ADAPT}"
        )
    return list(heads)


def _expert_sites(model: nn.Module, example_inputs: Any) -> list[GateSite]:
    experts = find_expert_sites(model)
    if not experts:
        raise PlpruneError(
            f"{type(model).__name__} has no mixture-of-experts layer plprune can find; known families: "
            "plprune's Switch, Hugging Face SwitchTransformers and Mixtral; add yours with "
            "plprune.register_moe(plprune.MoEAdapter(name=..., matches=..., experts=..., router=...))"
        )
    return list(experts)


def _filter_sites(model: nn.Module, example_inputs: Any) -> list[GateSite]:
    from plprune.sites.filter_discovery import find_filter_sites

    return list(find_filter_sites(model, example_inputs))


#: kind -> finder(model, example_inputs): the kind's sites, or a PlpruneError saying what was found and how
#: to make the kind discoverable. A new kind adds one entry (with :func:`register_kind_finder`).
KindFinder = Callable[[nn.Module, Any], list[GateSite]]
_FINDERS: dict[str, KindFinder] = {
    "head": _head_sites,
    "expert": _expert_sites,
    "filter": _filter_sites,
    "neuron": neuron_sites,
    "layer": layer_sites,
}
#: kinds that need example inputs to be found (found by tracing); skipped by ``kinds=None`` without them
_NEEDS_INPUTS = {"filter"}
#: kinds found only when asked for by name (``kinds=None`` means heads, experts and filters, as it always has)
_ON_REQUEST = {"neuron", "layer"}


def register_kind_finder(kind: str, finder: KindFinder, *, needs_example_inputs: bool = False) -> None:
    """Make ``find_sites`` find the groups of ``kind`` (one of :data:`plprune.groups.GROUP_KINDS`)."""
    check_kinds((kind,))
    _FINDERS[kind] = finder
    if needs_example_inputs:
        _NEEDS_INPUTS.add(kind)


def kinds_need_inputs(kinds: Iterable[str] | None) -> bool:
    """Whether finding the groups of ``kinds`` needs example inputs (a kind found by tracing the model, such
    as ``"filter"``; :func:`register_kind_finder` says which). ``None`` means the kinds ``find_sites`` looks
    for by default. Callers ask this instead of testing kind names, so a new kind edits no caller."""
    if kinds is None:
        return any(kind in _NEEDS_INPUTS for kind in _FINDERS if kind not in _ON_REQUEST)
    if isinstance(kinds, str):
        kinds = (kinds,)
    return any(kind in _NEEDS_INPUTS for kind in kinds)


def find_sites(
    model: nn.Module, kinds: tuple[str, ...] | None = None, example_inputs: Any = None
) -> list[GateSite]:
    """Every gate site of ``model`` of the given kinds, in module order.

    ``example_inputs`` (what ``model(example_inputs)`` accepts; a tuple is unpacked) is needed for
    ``"filter"``: conv channels coupled by residual additions are found by tracing the model once.
    Raises if a requested kind has no group, naming what was found and how to make it discoverable.
    ``kinds=None``: every kind that is there (filters only when ``example_inputs`` are given).
    """
    if not isinstance(model, nn.Module):
        raise PlpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if kinds is None:
        sites = _any_sites(model, example_inputs)
        if not sites:
            raise PlpruneError(
                f"{type(model).__name__} has no discoverable groups: no attention heads, MoE experts"
                + (" or conv filters" if example_inputs is not None else " (filters need example_inputs)")
                + f"; to prune heads of an unknown attention module, {_HOW_TO_ADAPT}"
            )
        return sites
    kinds = check_kinds(tuple(kinds))
    sites: list[GateSite] = []
    for kind in kinds:
        if kind not in _FINDERS:
            raise PlpruneError(f"no finder is registered for group kind {kind!r}")
        sites.extend(_FINDERS[kind](model, example_inputs))
    return _in_module_order(model, sites)


def _any_sites(model: nn.Module, example_inputs: Any) -> list[GateSite]:
    """Every kind's sites that are there; kinds found by tracing only when ``example_inputs`` are given.
    Kinds in ``_ON_REQUEST`` (neurons) are not found here: ask for them by name."""
    sites: list[GateSite] = []
    for kind, finder in _FINDERS.items():
        if kind in _ON_REQUEST or (kind in _NEEDS_INPUTS and example_inputs is None):
            continue
        with contextlib.suppress(PlpruneError):  # a kind that is not there: fine when none was asked for
            sites.extend(finder(model, example_inputs))
    return _in_module_order(model, sites)


def _in_module_order(model: nn.Module, sites: list[GateSite]) -> list[GateSite]:
    order = {id(m): i for i, (_, m) in enumerate(model.named_modules())}
    return sorted(sites, key=lambda s: order[id(s.module)])

