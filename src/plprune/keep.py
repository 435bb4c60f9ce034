"""The one keep rule: which groups survive a pruning event (paper Alg. 2 line 8, App. E.3).

Everything that decides a mask from scores lives here, for every method:

* :func:`prune_count` — how many of p groups a ratio removes (rounded to nearest);
* protection — a layer never loses its last group (:func:`check_protection`, :func:`check_ratio`);
* :func:`protected_top_k` — the TopK of one kind with protection;
* :data:`ALLOCATIONS`, :func:`kind_mask` (one kind) and :func:`select_mask` (every kind of a GroupSet) —
  ``"global"`` (one TopK over all groups of a kind: layer sparsity emerges from the scores, as in PL, IMP,
  SNIP) or ``"per_layer"`` (every layer loses the same fraction, ranked within the layer, as FPGM and CHIP),
  or ``"per_layer_for_filters"`` (per layer for conv filters, global for heads and experts: PL's default,
  since the global TopK collapses VGG's filters, docs/pl-method.md; :func:`kind_allocation` resolves it).

Inputs are plain tensors (scores, layer ids, alive masks), so the rule is testable without a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.validation import check_choice, check_probability

PER_LAYER_FOR_FILTERS = "per_layer_for_filters"
ALLOCATIONS = ("global", "per_layer", PER_LAYER_FOR_FILTERS)


def prune_count(num_groups: int, ratio: float) -> int:
    """Number of groups removed at pruned ratio ``ratio`` (k = p − this; rounded to nearest)."""
    check_probability("prune ratio", ratio)
    return math.floor(ratio * num_groups + 0.5)


def check_protection(mask: Tensor, layer_ids: Tensor, layer_names: Sequence[str]) -> None:
    """Raise if ``mask`` leaves some layer with no group (paper App. E.3). ``layer_names[i]`` describes
    group i's layer in the message (e.g. "head of layer 2")."""
    for layer in torch.unique(layer_ids):
        members = layer_ids == layer
        if not bool(mask[members].any()):
            name = layer_names[int(members.nonzero()[0])]
            raise PlpruneError(f"mask would remove every {name}; at least one group per layer is protected")


def check_ratio(ratio: float, kind: str, layer_ids: Tensor) -> None:
    """Raise if removing a fraction ``ratio`` of the groups of ``kind`` (one per entry of ``layer_ids``)
    would empty a layer; the message gives the largest ratio allowed."""
    total = len(layer_ids)
    layers = len(torch.unique(layer_ids))
    keep = total - prune_count(total, ratio)
    if keep < layers:
        raise PlpruneError(
            f"prune ratio {ratio} keeps {keep} of {total} {kind}s, but each of the {layers} layers keeps at "
            f"least one, so it would remove a protected group; the largest allowed ratio here is "
            f"{(total - layers) / total:.3f}"
        )


def protected_top_k(scores: Tensor, keep: int, layer_ids: Tensor, alive: Tensor | None = None) -> Tensor:
    """Boolean mask keeping ``keep`` groups of highest score, never emptying a layer (Alg. 2 line 8).

    Rules: only ``alive`` groups may be kept; first the best alive group of every layer is kept
    (protection), then the remaining places go to the highest scores. Ties go to the lower index
    (stable sort), so the result is deterministic. Raises if ``keep`` is smaller than the number of
    layers (a protected group would be removed) or larger than the number of alive groups.
    """
    p = scores.shape[0]
    if scores.dim() != 1 or layer_ids.shape != (p,):
        raise PlpruneError(
            f"scores must be (p,) and layer_ids (p,), got {tuple(scores.shape)}, {tuple(layer_ids.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise PlpruneError("pruning scores contain NaN or Inf")
    alive = torch.ones(p, dtype=torch.bool) if alive is None else alive.to(torch.bool)
    layers = torch.unique(layer_ids)
    if keep < len(layers):
        raise PlpruneError(
            f"keeping {keep} of {p} groups would remove a protected group: {len(layers)} layers each keep at "
            f"least one, so the prune ratio must leave ≥ {len(layers)} groups"
        )
    if keep > int(alive.sum()):
        raise PlpruneError(f"cannot keep {keep} groups: only {int(alive.sum())} are not pruned already")
    # in score order: each layer's first alive group is protected; the next best alive groups fill the rest
    order = torch.sort(scores.detach().double(), descending=True, stable=True).indices
    ordered_alive = alive[order]
    ordered_layer = torch.unique(layer_ids, return_inverse=True)[1][order]
    positions = torch.arange(p)
    first = torch.full((len(layers),), p, dtype=torch.long)
    first.scatter_reduce_(0, ordered_layer[ordered_alive], positions[ordered_alive], reduce="amin")
    if bool((first == p).any()):
        empty = int(layers[int((first == p).nonzero()[0])])
        raise PlpruneError(f"layer {empty} has no alive group left to protect")
    protected = torch.zeros(p, dtype=torch.bool)
    protected[first] = True
    others = ordered_alive & ~protected
    kept = protected | (others & (torch.cumsum(others.long(), 0) <= keep - len(layers)))
    mask = torch.zeros(p, dtype=torch.bool)
    mask[order] = kept
    return mask


def select_mask(
    groups: object, scores: Tensor, ratio: float | Mapping[str, float], allocation: str = "global"
) -> Tensor:
    """Keep mask at pruned ratio ``ratio`` (one for all kinds, or ``{kind: ratio}``) for every kind of
    ``groups`` (a :class:`~plprune.gates.GroupSet`) separately; already pruned groups stay pruned.

    ``allocation="global"``: TopK over all groups of a kind, protected per layer (Alg. 2 line 8).
    ``"per_layer"``: every layer of the kind keeps ``count − prune_count(count, ratio)`` of its groups
    (at least one), the best-scored alive ones of that layer. ``"per_layer_for_filters"``: per layer for
    the ``filter`` kind, global for every other kind.
    """
    check_choice("allocation", allocation, ALLOCATIONS)
    mask = groups.mask.clone()
    for kind in groups.kinds:
        kind_ratio = ratio if isinstance(ratio, (int, float)) else ratio.get(kind, 0.0)
        index = groups.kind_index(kind)
        even = getattr(groups, "even_ids", None)
        mask[index] = kind_mask(
            scores[index],
            kind_ratio,
            groups.layer_ids[index],
            groups.mask[index],
            kind_allocation(allocation, kind),
            even_ids=None if even is None else even[index],
        )
    return mask


def kind_allocation(allocation: str, kind: str | None) -> str:
    """The allocation one kind gets: ``"per_layer_for_filters"`` is ``"per_layer"`` for ``"filter"`` groups
    and ``"global"`` for every other kind (``None``: single weights); the others apply to every kind."""
    check_choice("allocation", allocation, ALLOCATIONS)
    if allocation == PER_LAYER_FOR_FILTERS:
        return "per_layer" if kind == "filter" else "global"
    return allocation


def kind_mask(
    scores: Tensor,
    ratio: float,
    layer_ids: Tensor,
    alive: Tensor | None = None,
    allocation: str = "global",
    *,
    even_ids: Tensor | None = None,
) -> Tensor:
    """Keep mask of the ``p`` groups of one kind at pruned ratio ``ratio`` (the rule of :func:`select_mask`
    for one kind; also the ℓ0 projection's kept set, :class:`plprune.sparsity.prox.ProximalMethod`).

    ``"global"``: :func:`protected_top_k` keeps ``p − prune_count(p, ratio)`` groups. ``"per_layer"``: every
    layer of ``c`` groups keeps ``max(1, c − prune_count(c, ratio))`` of them (at most its alive ones), the
    best-scored alive ones of that layer. (``"per_layer_for_filters"`` needs the kind: resolve it with
    :func:`kind_allocation` first.) ``even_ids`` (optional, one per group, ``-1`` where free): groups of a
    layer that share an id ≥ 0 form a bucket, and every bucket of a layer keeps the same number of groups
    (:func:`even_within_buckets`: grouped-query attention's query heads per KV head).
    """
    check_choice("allocation", allocation, ("global", "per_layer"))
    p = scores.shape[0]
    alive = torch.ones(p, dtype=torch.bool) if alive is None else alive.to(torch.bool)
    bucketed = even_ids is not None and bool((even_ids >= 0).any())
    if allocation == "global" and bucketed:
        return even_global_top_k(scores, p - prune_count(p, ratio), layer_ids, alive, even_ids)
    if allocation == "global":
        mask = protected_top_k(scores, p - prune_count(p, ratio), layer_ids, alive=alive)
    else:
        mask = torch.zeros(p, dtype=torch.bool)
        for layer in torch.unique(layer_ids):
            members = (layer_ids == layer).nonzero().flatten()
            keep = max(1, len(members) - prune_count(len(members), ratio))
            keep = min(keep, int(alive[members].sum()))
            mask[members] = protected_top_k(scores[members], keep, layer_ids[members], alive=alive[members])
    if bucketed:
        mask = even_within_buckets(mask, scores, layer_ids, alive, even_ids)
    return mask


def even_global_top_k(
    scores: Tensor, keep: int, layer_ids: Tensor, alive: Tensor, even_ids: Tensor
) -> Tensor:
    """The global TopK (:func:`protected_top_k`) when some layers' groups fall into buckets that must keep
    equal counts (grouped-query attention: query heads per KV head).

    In such a layer of ``B`` buckets the unit is a *slot*: slot r holds the r-th best alive group of every
    bucket (``B`` groups) and scores their mean, which does not grow with r; a free group is a unit of one.
    Each layer's best unit is kept (protection), then units in descending score (ties: lower slot, then lower
    index) while they fit into ``keep`` groups. The kept count is ``keep`` whenever the slot sizes allow it
    (e.g. any even ``keep`` with 2 KV heads per layer), else the largest count below it.
    """
    units: list[tuple[float, int, int, list[int]]] = []  # (score, layer, order, members)
    for layer in torch.unique(layer_ids).tolist():
        members = (layer_ids == layer).nonzero().flatten()
        free = members[(even_ids[members] < 0) & alive[members]]
        units += [(float(scores[i]), layer, int(i), [int(i)]) for i in free]
        tied = members[even_ids[members] >= 0]
        if not len(tied):
            continue
        buckets = []
        for bucket in torch.unique(even_ids[tied]):
            inside = tied[(even_ids[tied] == bucket) & alive[tied]]
            order = torch.sort(scores[inside].detach().double(), descending=True, stable=True).indices
            buckets.append(inside[order].tolist())
        for r in range(min(len(b) for b in buckets)):
            slot = [b[r] for b in buckets]
            units.append((float(scores[slot].double().mean()), layer, r * len(scores) + min(slot), slot))
    units.sort(key=lambda u: (-u[0], u[2]))
    mask = torch.zeros(len(scores), dtype=torch.bool)
    protected = {}
    for unit in units:
        protected.setdefault(unit[1], unit)
    used = sum(len(u[3]) for u in protected.values())
    if used > keep:
        raise PlpruneError(
            f"keeping {keep} groups would remove a protected group: each of the {len(protected)} layers "
            f"keeps at least one (grouped-query attention: one query head per KV head), {used} in all"
        )
    for unit in protected.values():
        mask[unit[3]] = True
    for unit in units:
        if protected[unit[1]] is unit:
            continue
        if used + len(unit[3]) <= keep:
            mask[unit[3]] = True
            used += len(unit[3])
    return mask


def even_within_buckets(
    mask: Tensor, scores: Tensor, layer_ids: Tensor, alive: Tensor, even_ids: Tensor
) -> Tensor:
    """``mask`` made even within buckets: a layer whose groups fall into ``B`` buckets (``even_ids`` ≥ 0) and
    that ``mask`` keeps ``k`` groups of keeps ``B · max(1, round(k / B))`` (at most what is alive), the
    best-scored alive groups of each bucket; ties go to the lower index.

    This is how grouped-query attention is pruned (query head j reads KV head ``j // (heads / kv_heads)``,
    the bucket): every KV head keeps the same number of query heads, so the compacted layer is again
    grouped-query attention with the same KV heads (Torch-Pruning prunes GQA heads evenly per KV group the
    same way). A layer's count moves by less than ``B / 2`` groups.
    """
    mask = mask.clone()
    for layer in torch.unique(layer_ids):
        members = ((layer_ids == layer) & (even_ids >= 0)).nonzero().flatten()
        if not len(members):
            continue
        buckets = torch.unique(even_ids[members])
        per_alive = min(int(alive[members][even_ids[members] == b].sum()) for b in buckets)
        per = min(max(1, math.floor(int(mask[members].sum()) / len(buckets) + 0.5)), per_alive)
        for bucket in buckets:
            inside = members[even_ids[members] == bucket]
            candidates = inside[alive[inside]]
            order = torch.sort(scores[candidates].detach().double(), descending=True, stable=True).indices
            mask[inside] = False
            mask[candidates[order[:per]]] = True
    return mask


def check_even(mask: Tensor, even_ids: Tensor, layer_ids: Tensor, names: Sequence[str]) -> None:
    """Raise unless every bucket of a layer keeps the same number of groups (:func:`even_within_buckets`)."""
    for layer in torch.unique(layer_ids):
        members = ((layer_ids == layer) & (even_ids >= 0)).nonzero().flatten()
        if not len(members):
            continue
        ids = even_ids[members]
        counts = {int(b): int(mask[members][ids == b].sum()) for b in torch.unique(ids)}
        if len(set(counts.values())) > 1:
            raise PlpruneError(
                f"the mask keeps {sorted(counts.values())} query heads in the key/value groups of "
                f"{names[int(members[0])]}: grouped-query attention needs the same number in every group "
                "(query head j reads KV head j // (heads / kv_heads)), else the compacted layer has no "
                "consistent mapping; masks from plprune's keep rule are always even"
            )
