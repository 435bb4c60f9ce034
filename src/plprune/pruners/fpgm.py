"""FPGM: Filter Pruning via Geometric Median (He et al., CVPR 2019), and the filter-group checks that the CNN
filter baselines (FPGM, CHIP, DPFPS) share.

FPGM prunes the filters that are most *replaceable*, not the smallest ones: within a layer, a filter close
to the layer's geometric median carries information the other filters already represent. The geometric
median ``argmin_x Σ_j ‖x − F_j‖₂`` has no closed form, so the paper (Sec. 3.4, Eqs. 5-6) restricts the
minimiser to the layer's own filters and scores every filter F_i by

    g(F_i) = Σ_{j alive in the layer} ‖F_i − F_j‖₂,

the filters with the **smallest** g being nearest the geometric median and removed first. Here the score
is g itself (higher = keep), computed on the weights alone (no data), and ranked **per layer**
(``allocation = "per_layer"``): FPGM removes the same fraction from every layer, and g is not comparable
across layers (different filter sizes and scales).

What a filter is here: group c of a filter site (:class:`~plprune.sites.FilterSite`) is conv ``weight[c]``
(and ``bias[c]``) plus BN ``weight[c]`` (γ_c) and ``bias[c]`` (β_c) of each of the site's convs (one conv,
or several coupled by residual additions). FPGM's F_i is the conv filter only: the group's slices whose
parameter has ≥ 2 dimensions, flattened (coupled convs: their kernels concatenated). **The BN affine
parameters γ_c, β_c and conv biases are excluded** (the paper's filters are the conv kernels; a CNN without
BN has no γ, β). Already pruned filters (zero weights) are left out of every sum and score 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.groups import GateSite
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method

__all__ = ["FPGMScorer", "check_filter_groups", "filter_site_ranges"]


def check_filter_groups(groups: GroupSet, method: str) -> None:
    """Raise :class:`PlpruneError` unless every group of ``groups`` is a conv filter (kind ``"filter"``)."""
    kinds = tuple(dict.fromkeys(g.kind for g in groups.groups))
    if kinds != ("filter",):
        raise PlpruneError(
            f"{method} is a conv-filter criterion: it scores groups of kind 'filter' only, but the GroupSet "
            f"has kinds {kinds}; build it with GroupSet(model, kinds=('filter',)) (allowed kinds: filter)"
        )


def filter_site_ranges(groups: GroupSet, method: str) -> list[tuple[GateSite, int, int]]:
    """``(site, start, stop)`` for every filter gate site: its groups are ``groups.groups[start:stop]``
    (group ``start + c`` is the site's output channel c). Checks :func:`check_filter_groups` first."""
    check_filter_groups(groups, method)
    ranges, start = [], 0
    for site in groups.sites:
        ranges.append((site, start, start + site.num_groups))
        start += site.num_groups
    if start != len(groups):
        raise PlpruneError(
            f"{method}: the gate sites hold {start} filters, but the GroupSet has {len(groups)}"
        )
    return ranges


@register_method(
    "fpgm", description="FPGM: distance to the layer's geometric median (filters)", kinds=("filter",)
)
class FPGMScorer(GroupScorer):
    """Sum of Euclidean distances from a conv filter to the other alive filters of its layer (He et al.
    2019, Sec. 3.4, Eq. 6); smallest = nearest the geometric median = pruned first. Per-layer allocation."""

    needs_data = False
    kinds = ("filter",)

    name = "fpgm"
    allocation = "per_layer"

    @torch.no_grad()
    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        check_filter_groups(groups, "FPGM")
        params = dict(context.model.named_parameters())
        filters: list[Tensor] = []
        for group in groups.groups:
            pieces = [
                piece.select(params[piece.param_name]).reshape(-1)
                for piece in group.slices
                if params[piece.param_name].dim() >= 2
            ]
            if not pieces:
                raise PlpruneError(
                    f"FPGM needs a conv kernel (a parameter with >= 2 dimensions) in every filter group; "
                    f"group {group.name} has only {[p.param_name for p in group.slices]}"
                )
            filters.append(torch.cat(pieces).double())
        scores = torch.zeros(len(groups), dtype=torch.float64)
        for layer in torch.unique(groups.layer_ids):
            members = ((groups.layer_ids == layer) & groups.mask).nonzero().flatten()
            if len(members) == 0:
                continue
            sizes = {filters[i].numel() for i in members.tolist()}
            if len(sizes) != 1:
                raise PlpruneError(
                    f"FPGM: filters of layer {int(layer)} have different sizes {sorted(sizes)}"
                )
            matrix = torch.stack([filters[i] for i in members.tolist()])
            # exact pairwise distances (no ‖a‖² + ‖b‖² − 2ab shortcut, which loses precision)
            distances = torch.cdist(matrix, matrix, compute_mode="donot_use_mm_for_euclid_dist")
            scores[members] = distances.sum(dim=1).cpu()
        return scores
