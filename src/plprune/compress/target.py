"""From a parameter budget to pruning ratios: the one ratio, shared by the free kinds, that keeps at most the
requested fraction of the model's parameters.

A group's size is the number of entries its slices cover (:class:`plprune.groups.ParamSlice`); parameters
in no group (embeddings, norms, a grouped-query model's key/value projections) are never removed. Which
groups an allocation removes at a ratio does not depend on the scores in number (per layer:
``count − max(1, count − prune_count(count, r))`` of each layer; global: ``prune_count`` of the kind, by
the same rounding rules), so the removed size at ratio ``r`` is computed with equal scores and the smallest
``r`` on a grid of 1/1000 that meets the budget is chosen (the removed size is monotone in ``r``). Where
an ``acceptable`` test is given (``plprune compress``: the model's config must be able to describe the
head count, so that ``from_pretrained`` reloads the result), the ratio is raised step by step to the first
one it accepts — rounded up, so the budget still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import select_mask

GRID = 1000


def group_sizes(groups: GroupSet) -> torch.Tensor:
    """Entries of each group's slices (a float tensor, one per group)."""
    params = dict(groups.model.named_parameters())
    sizes = []
    for group in groups.groups:
        total = 0
        for piece in group.slices:
            shape = params[piece.param_name].shape
            total += (piece.stop - piece.start) * (shape.numel() // shape[piece.dim])
        sizes.append(total)
    return torch.tensor(sizes, dtype=torch.float64)


def removed_size(
    groups: GroupSet, ratios: Mapping[str, float], allocation: str, sizes: torch.Tensor
) -> float:
    """Parameters the groups of ``groups`` pruned at ``ratios`` hold (any scores: the count is the same)."""
    mask = select_mask(groups, torch.zeros(len(groups)), dict(ratios), allocation)
    return float(sizes[~mask].sum())


def _smallest_meeting(
    groups: GroupSet,
    fixed: Mapping[str, float],
    free: list[str],
    allocation: str,
    sizes: torch.Tensor,
    budget: float,
) -> int | None:
    """The smallest grid step whose shared ratio for ``free`` (with ``fixed``) removes ≥ ``budget``
    parameters; ``None`` when even the largest does not (``removed_size`` is monotone in the step)."""

    def removed(step: int) -> float:
        ratios = {**{k: float(v) for k, v in fixed.items()}, **dict.fromkeys(free, step / GRID)}
        return removed_size(groups, ratios, allocation, sizes)

    top = GRID - 1  # a ratio below 1: every layer keeps at least one group
    if removed(top) < budget:
        return None
    low, high = 0, top
    while low < high:
        middle = (low + high) // 2
        if removed(middle) >= budget:
            high = middle
        else:
            low = middle + 1
    return low


def solve_ratios(
    groups: GroupSet,
    total_params: int,
    keep_params: float | None,
    fixed: Mapping[str, float],
    allocation: str,
    acceptable: Callable[[dict[str, float]], bool] | None = None,
) -> tuple[dict[str, float], float, bool]:
    """``({kind: ratio}, expected fraction of parameters kept, rounded)``: the fixed ratios, and for every
    other kind of ``groups`` the smallest shared ratio on the grid whose removal keeps ≤ ``keep_params`` of
    ``total_params``. Raises when even the largest ratio cannot reach the budget (e.g. fewer parameters
    than the embeddings alone).

    When that solution fails ``acceptable`` (module docstring), one free kind at a time is set to each of
    its grid ratios that changes its kept counts, the other free kinds are solved for the budget again, and
    the acceptable solution that keeps the most parameters within the budget is taken (``rounded`` = True):
    e.g. the head ratio moves to a count the config can describe and the neuron ratio absorbs the rest.
    With no acceptable solution the first one is kept (``rounded`` = False)."""
    sizes = group_sizes(groups)
    free = [k for k in groups.kinds if k not in fixed]
    fixed = {k: float(v) for k, v in fixed.items()}

    def kept(ratios: dict[str, float]) -> float:
        return 1 - removed_size(groups, ratios, allocation, sizes) / total_params

    if keep_params is None or not free:
        ratios = {k: float(fixed.get(k, 0.0)) for k in groups.kinds}
        return ratios, kept(ratios), False
    budget = total_params * (1 - keep_params)
    low = _smallest_meeting(groups, fixed, free, allocation, sizes, budget)
    if low is None:
        top = {**fixed, **dict.fromkeys(free, (GRID - 1) / GRID)}
        named = ", ".join(free) + (
            f" (with {', '.join(f'{k} at {v:g}' for k, v in fixed.items())})" if fixed else ""
        )
        raise PlpruneError(
            f"cannot keep only {keep_params:.1%} of the parameters by pruning {named}: even removing all but "
            f"one group per layer leaves {kept(top):.1%} (embeddings, norms and ungrouped projections stay); "
            "ask for a larger --keep-params, lower a fixed ratio, or add kinds"
        )
    first = {**fixed, **dict.fromkeys(free, low / GRID)}
    if acceptable is None or acceptable(first):
        return first, kept(first), False
    best: tuple[float, dict[str, float]] | None = None
    for kind in free:
        others = [k for k in free if k != kind]
        index = groups.kind_index(kind)
        seen: set[tuple[bool, ...]] = set()
        for step in range(GRID):
            alone = select_mask(groups, torch.zeros(len(groups)), {kind: step / GRID}, allocation)[index]
            signature = tuple(bool(x) for x in alone)
            if signature in seen:
                continue
            seen.add(signature)
            trial_fixed = {**fixed, kind: step / GRID}
            if others:
                found = _smallest_meeting(groups, trial_fixed, others, allocation, sizes, budget)
                if found is None:
                    continue
                ratios = {**trial_fixed, **dict.fromkeys(others, found / GRID)}
            else:
                ratios = trial_fixed
                if removed_size(groups, ratios, allocation, sizes) < budget:
                    continue
            if acceptable(ratios):
                fraction = kept(ratios)
                if best is None or fraction > best[0]:
                    best = (fraction, ratios)
    if best is None:
        return first, kept(first), False
    return best[1], best[0], True
