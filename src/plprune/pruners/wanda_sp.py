"""Wanda-sp: Wanda's |W|·‖X‖ importance made structured.

The structured Wanda baseline of An et al. (AAAI 2024, "Fluctuation-based Adaptive Structured Pruning for
Large Language Models", Sec. 4) for Wanda (Sun et al., ICLR 2024, "A Simple and Effective Pruning Approach
for Large Language Models").

Wanda scores weight W_ij of a linear layer by ``|W_ij| · ‖X_j‖₂``, ``X_j`` being input feature j over every
calibration token. Removing a head or an FFN channel removes input channels of the projection that reads it
(W_O's columns of the head, ``down_proj``'s column of the channel), so Wanda-sp scores input channel j of
that output projection by the sum of its column's Wanda scores,

    S_j = Σ_i |W_ij| · ‖X_j‖₂ ,

and a group (head: its ``d`` channels; neuron: its one channel) by the sum over its channels. ``X`` is the
projection's input on ``score_batches`` calibration batches (:mod:`plprune.pruners.activations`: forward
pre-hooks on the projections found from each group's own parameter slices, whatever the family);
``‖X_j‖₂ = (Σ_t x_{tj}²)^{1/2}`` over all tokens.

Allocation: **per layer** (every head/FFN layer loses the same fraction), as FLAP runs its Wanda-sp baseline
(its uniform "UL-UM" structure); ``Pruner(allocation="global")`` ranks across layers instead (the scores
carry each layer's scale). Kinds: heads and neurons (the groups a projection reads). Higher = keep; pruned
groups score 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.pruners.activations import (
    calibration_input_stats,
    input_columns,
    reader_modules,
    reader_slices,
)
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ScoreBatchesConfig
from plprune.validation import check_positive_int

#: the kinds whose groups are read through columns of a projection
READ_KINDS = ("head", "neuron")


@register_method(
    "wanda-sp",
    description="structured Wanda (FLAP's baseline): |W|*||X|| over a group's output-projection columns",
    kinds=READ_KINDS,
    config=ScoreBatchesConfig,
)
class WandaSPScorer(GroupScorer):
    """``Σ_{j ∈ group} Σ_i |W_ij| ‖X_j‖₂`` over the group's columns of its output projection (module
    docstring); per-layer allocation."""

    name = "wanda-sp"
    kinds = READ_KINDS
    allocation = "per_layer"

    def __init__(self, batches: int = 4) -> None:
        self.batches = check_positive_int("Wanda-sp calibration batches", batches)

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> WandaSPScorer:
        return cls(batches=settings.score_batches)

    @torch.no_grad()
    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        readers = reader_slices(groups, "wanda-sp")
        modules = reader_modules(groups, readers)
        stats = calibration_input_stats(context, modules, self.batches)
        channel = {}  # per projection, per input channel: Σ_i |W_ij| · ‖X_j‖₂
        for name, module in modules.items():
            weights = input_columns(module, 0, stats[name].mean.numel()).detach().double().abs().sum(dim=0)
            channel[name] = weights.cpu() * stats[name].sum_squares.sqrt()
        scores = torch.zeros(len(groups), dtype=torch.float64)
        for i, group in enumerate(readers):
            scores[i] = sum(float(channel[r.module][r.start : r.stop].sum()) for r in group)
        scores[~groups.mask] = 0.0
        context.log["score_batches"] = self.batches
        return scores
