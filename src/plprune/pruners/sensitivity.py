"""Gate sensitivity: the head-importance score of Michel, Levy & Neubig (NeurIPS 2019), for any group.

Michel et al. (Sec. 4.1) put a gate ξ_h on every attention head's output and score head h by the
expected absolute sensitivity of the loss to it at ξ = 1,

    I_h = E_x |∂L(x)/∂ξ_h|,

then normalise the importances of each layer by their L2 norm (following Molchanov et al. 2017)
before ranking across layers. Their code accumulates ``|∂L/∂ξ|`` per batch. The same score works for
every gated group (Att-Score for heads; Exp-Score for experts; filters), since every group of a
:class:`~plprune.gates.GroupSet` has a multiplicative gate:

1. soft gates g = 1 (a pruned group keeps gate 0: :meth:`GroupSet.set_soft_gates` multiplies by the mask);
2. ``I_i = Σ_b |∂L_b/∂g_i|`` over ``batches`` training batches (model in eval mode);
3. per layer (``GroupSet.layer_ids``, which also separates kinds): ``I_i / ‖I_layer‖_2``;
4. globally: divide by the largest score (the paper's final rescaling; ranking unchanged).

Pruned groups score 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ITERATIVE, ScoreBatchesConfig, loss_gradients, scoring_mode
from plprune.validation import check_positive_int


def normalise_per_layer(scores: Tensor, layer_ids: Tensor) -> Tensor:
    """``scores`` divided by the L2 norm of their layer's scores (a layer whose scores are all 0 stays
    0), then by the overall maximum (if positive)."""
    result = torch.zeros_like(scores)
    for layer in torch.unique(layer_ids):
        members = layer_ids == layer
        norm = torch.linalg.vector_norm(scores[members])
        if norm > 0:
            result[members] = scores[members] / norm
    top = result.max()
    return result / top if top > 0 else result


@register_method(
    "grad-score",
    description="Att-/Exp-Score (Michel et al. 2019): accumulated |dL/dgate|, per-layer L2 normalised",
    config=ScoreBatchesConfig,
    paper_schedule=ITERATIVE,
)
class GateSensitivityScorer(GroupScorer):
    """``Σ_b |∂L_b/∂g_i|`` at gates 1, L2-normalised per layer, then divided by the maximum
    (Michel et al. 2019 head importance; the module docstring has the steps)."""

    name = "grad-score"

    def __init__(self, batches: int = 4) -> None:
        self.batches = check_positive_int("gradient-score batches", batches)

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> GateSensitivityScorer:
        return cls(batches=settings.score_batches)

    def scores(self, context: PruneContext) -> Tensor:
        groups, model = context.groups, context.model
        dtype = groups.parameters()[0].dtype
        raw = torch.zeros(len(groups), dtype=torch.float64)
        with scoring_mode(model):
            for b in range(self.batches):
                batch = context.task.train_batch(context.step + b)
                gates = torch.ones(len(groups), dtype=dtype, requires_grad=True)
                with groups.soft_gates(gates):
                    loss = context.task.loss(model, batch)
                (grad,) = loss_gradients(loss, [gates])
                raw += grad.detach().abs().double()
        raw[~groups.mask] = 0.0
        context.log.update(score_batches=self.batches, raw_gate_sensitivity=raw.tolist())
        return normalise_per_layer(raw, groups.layer_ids)
