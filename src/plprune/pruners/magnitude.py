"""Magnitude pruning: the criterion of the lottery-ticket / iterative magnitude pruning (IMP) line of work.

Frankle & Carbin (2019) prune the weights of smallest magnitude |w| after training (and, with
:class:`~plprune.pruners.rewind.WeightRewinder`, rewind the survivors); Chen et al. (2020) apply IMP to
BERT. The structured version scores a group by the L_p norm of all its weights together (every slice:
e.g. a head's Q/K/V rows with biases and its W_O columns; a filter's conv kernel with its BN γ and β),

    score_i = ‖w_[i]‖_p = (Σ_j |w_j|^p)^{1/p},

ranked globally within a kind (the usual global-magnitude IMP variant), higher = keep.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.groups import WEIGHT_KIND
from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import ALL_KINDS, register_method
from plprune.sparsity.base import SparsityMethod
from plprune.validation import check_positive_int


@register_method(
    "magnitude",
    description="weight magnitude (groups: their norm), the task's schedule, no rewinding",
    kinds=(*ALL_KINDS, WEIGHT_KIND),
)
class MagnitudeScorer(GroupScorer):
    """``‖w_[i]‖_p`` over all of group i's parameter slices (LTH/IMP criterion, structured)."""

    needs_data = False

    name = "magnitude"

    def __init__(self, p: int = 2) -> None:
        self.p = check_positive_int("magnitude norm order p", p)

    def weight_method(self) -> SparsityMethod:
        """Unstructured (``--kinds weight``): the base sparsity method, gradual global magnitude pruning
        (Zhu & Gupta 2017) on the task's schedule."""
        return SparsityMethod()

    @torch.no_grad()
    def scores(self, context: PruneContext) -> Tensor:
        params = dict(context.model.named_parameters())
        scores = torch.zeros(len(context.groups), dtype=torch.float64)
        for i, group in enumerate(context.groups.groups):
            weights = torch.cat(
                [piece.select(params[piece.param_name]).reshape(-1) for piece in group.slices]
            )
            scores[i] = torch.linalg.vector_norm(weights.double(), ord=self.p).item()
        context.log["magnitude_p"] = self.p
        return scores
