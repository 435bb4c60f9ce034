"""SNIP: single-shot network pruning by connection sensitivity (Lee et al., ICLR 2019).

With an auxiliary multiplier c_j on every weight (``c ⊙ w``), the sensitivity of the loss to removing
connection j is ``g_j = ∂L(c ⊙ w)/∂c_j |_{c=1} = w_j · ∂L/∂w_j``; SNIP (Eq. 6) scores it by
``|g_j| / Σ_k |g_k|`` and keeps the largest. The normalisation is one positive constant for all weights
and does not change the ranking, so we score ``|w ⊙ ∂L/∂w|``, the gradient being that of the loss summed
over the scoring batches. The structured score of a group is the sum over its weights
(:func:`plprune.pruners.structured.group_sums`): higher = keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.pruners.structured import (
    LossFn,
    ScoreBatchesConfig,
    check_batches,
    group_sums,
    named_parameters,
    scoring_mode,
    summed_gradients,
)
from plprune.validation import check_positive_int


@torch.enable_grad()
def snip_weight_scores(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[tuple[Tensor, ...]], param_names: Sequence[str]
) -> dict[str, Tensor]:
    """Unstructured connection sensitivity ``|w ⊙ ∂L/∂w|`` (Lee et al. 2019, Eq. 6 without its constant
    normalisation), ``L = Σ_b loss_fn(model, batch_b)``, for the parameters ``param_names``.

    The model is used as it is (the caller picks train/eval mode); its weights and ``.grad`` attributes
    are left untouched.
    """
    params = named_parameters(model, param_names)
    batches = check_batches(batches)
    total = summed_gradients(model, loss_fn, batches, params)
    return {
        name: (param.detach() * grad).abs()
        for name, param, grad in zip(param_names, params, total, strict=True)
    }


@register_method(
    "snip",
    description="structured SNIP: group sums of |w * dL/dw| at initialisation",
    config=ScoreBatchesConfig,
    paper_schedule={"schedule": "at-init"},
)
class SnipScorer(GroupScorer):
    """Structured SNIP: the sum of ``|w ⊙ ∂L/∂w|`` over each group's weights, gradients summed over
    ``batches`` training batches (model in eval mode)."""

    name = "snip"

    def __init__(self, batches: int = 4) -> None:
        self.batches = check_positive_int("SNIP batches", batches)

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> SnipScorer:
        return cls(batches=settings.score_batches)

    def scores(self, context: PruneContext) -> Tensor:
        batches = [context.task.train_batch(context.step + b) for b in range(self.batches)]
        with scoring_mode(context.model):
            weight_scores = snip_weight_scores(
                context.model, context.task.loss, batches, context.groups.param_names
            )
        context.log["score_batches"] = self.batches
        return group_sums(context.groups, weight_scores)
