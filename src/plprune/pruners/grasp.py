"""GraSP: gradient signal preservation (Wang, Zhang & Grosse, ICLR 2020).

GraSP keeps the weights whose removal would most reduce the gradient flow ``ΔL(θ) = gᵀg``. Removing a
perturbation δ changes it by ``S(δ) = 2 δᵀ H g + O(‖δ‖²)``, and removing weight q
(``δ_q = −θ_q``) scores, Eq. 8,

    S(−θ) = −θ ⊙ H g,        g = ∇_θ L,  H = ∇²_θ L.

**Sign.** GraSP *removes* the weights with the **largest** S(−θ) (their removal reduces the gradient
flow least, or even increases it; the authors' code keeps ``score <= threshold`` of the top-k
scores). plprune's scores mean "higher = keep", so the keep score of a group is the group sum of
``+θ ⊙ Hg``, i.e. ``−Σ_{q ∈ group} S_q(−θ)``: the group with the largest summed S(−θ) is pruned first.

``Hg`` is a Hessian-gradient product by double backward, ``∇_θ (∇_θ L · stopgrad(g))``, with H and g
taken w.r.t. the group parameters only (the weights that can be pruned; other parameters are fixed).
L is the training loss summed over the scoring batches (g and H of that sum). Differences from the
paper's code: no softmax temperature (the authors divide the logits by T = 200; a task's loss has no
such knob) and the batches are ordinary training batches, not class-balanced samples.
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
    loss_gradients,
    named_parameters,
    scoring_mode,
    summed_gradients,
)
from plprune.validation import check_positive_int


@torch.enable_grad()
def grasp_weight_scores(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[tuple[Tensor, ...]], param_names: Sequence[str]
) -> dict[str, Tensor]:
    """GraSP's per-weight score ``S(−θ) = −θ ⊙ Hg`` (Wang et al. 2020, Eq. 8) for the parameters
    ``param_names``: ``L = Σ_b loss_fn(model, batch_b)``, g = ∇L and H = ∇²L w.r.t. those parameters.

    These are the paper's scores: **larger = remove first** (see the module docstring). Two passes over
    ``batches``: first g (detached), then ``Hg = Σ_b ∇(∇L_b · g)``. The model is used as it is (the
    caller picks train/eval mode); its weights and ``.grad`` attributes are left untouched.
    """
    params = named_parameters(model, param_names)
    batches = check_batches(batches)
    gradient = summed_gradients(model, loss_fn, batches, params)
    hessian_gradient = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = loss_gradients(loss_fn(model, batch), params, create_graph=True)
        inner = sum((grad * g).sum() for grad, g in zip(grads, gradient, strict=True))
        for acc, hg in zip(hessian_gradient, loss_gradients(inner, params), strict=True):
            acc.add_(hg.detach())
    return {
        name: -param.detach() * hg
        for name, param, hg in zip(param_names, params, hessian_gradient, strict=True)
    }


@register_method(
    "grasp",
    description="structured GraSP: group sums of -(-w * Hg) at initialisation",
    config=ScoreBatchesConfig,
    paper_schedule={"schedule": "at-init"},
)
class GraspScorer(GroupScorer):
    """Structured GraSP: keep score ``Σ_{q ∈ group} θ_q (Hg)_q = −Σ S(−θ)`` (higher = keep), g and H of
    the training loss summed over ``batches`` training batches (model in eval mode)."""

    name = "grasp"

    def __init__(self, batches: int = 4) -> None:
        self.batches = check_positive_int("GraSP batches", batches)

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> GraspScorer:
        return cls(batches=settings.score_batches)

    def scores(self, context: PruneContext) -> Tensor:
        batches = [context.task.train_batch(context.step + b) for b in range(self.batches)]
        with scoring_mode(context.model):
            removal = grasp_weight_scores(
                context.model, context.task.loss, batches, context.groups.param_names
            )
        context.log["score_batches"] = self.batches
        return -group_sums(context.groups, removal)
