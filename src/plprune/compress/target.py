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
    than the embeddings alone). ``rounded``: the ratio was raised past the smallest one to meet
    ``acceptable`` (module docstring); when no ratio is acceptable the smallest is kept, unrounded."""
    sizes = group_sizes(groups)
    free = [k for k in groups.kinds if k not in fixed]
    if keep_params is None or not free:
        ratios = {k: float(fixed.get(k, 0.0)) for k in groups.kinds}
        return ratios, 1 - removed_size(groups, ratios, allocation, sizes) / total_params, False
    budget = total_params * (1 - keep_params)

    def at(step: int) -> dict[str, float]:
        return {**{k: float(v) for k, v in fixed.items()}, **dict.fromkeys(free, step / GRID)}

    def removed(step: int) -> float:
        return removed_size(groups, at(step), allocation, sizes)

    top = GRID - 1  # a ratio below 1: every layer keeps at least one group
    if removed(top) < budget:
        most = removed(top) / total_params
        raise PlpruneError(
            f"cannot keep only {keep_params:.1%} of the parameters by pruning {', '.join(free)}: even "
            "removing "
            f"all but one group per layer leaves {1 - most:.1%} (embeddings, norms and ungrouped projections "
            "stay); ask for a larger --keep-params or add kinds"
        )
    low, high = 0, top
    while low < high:  # smallest step whose removal meets the budget (removed() is monotone)
        middle = (low + high) // 2
        if removed(middle) >= budget:
            high = middle
        else:
            low = middle + 1
    chosen = low
    if acceptable is not None:
        chosen = next((step for step in range(low, top + 1) if acceptable(at(step))), low)
    return at(chosen), 1 - removed(chosen) / total_params, chosen != low
