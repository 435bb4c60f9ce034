"""``pl+``: the PL gating network fed with other criteria as extra features (the paper's Sec. 5.4 outlook).

The paper's gating network sees only two kernel features per group, (log λ_min, ρ) (Sec. 3.2.2). Its
Sec. 5.4 suggests giving it other criteria too. ``pl+`` appends three per-group scores, each computed at the
pruning event exactly as its own method computes it, on ``score_batches`` training batches:

* magnitude: ``‖w_[i]‖_2`` over the group's weights (:class:`~plprune.pruners.magnitude.MagnitudeScorer`);
* gradient score: Michel et al.'s ``Σ_b |∂L_b/∂g_i|``, per-layer normalised
  (:class:`~plprune.pruners.sensitivity.GateSensitivityScorer`);
* SNIP: ``Σ_{j∈i} |w_j ∂L/∂w_j|`` (:class:`~plprune.pruners.snip.SnipScorer`).

Each is standardised across the groups of a kind on a log scale, like λ_min, and the gating network (same
hidden size, same seeded initialisation of its first layer, output layer at zero) is trained on the same
objective, loss + α·Tr(H) (Alg. 2). Everything else — the keep rule, the measurements — is PL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from plprune.pruners.base import PruneContext
from plprune.pruners.magnitude import MagnitudeScorer
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.pruners.registration import register_method
from plprune.pruners.sensitivity import GateSensitivityScorer
from plprune.pruners.snip import SnipScorer
from plprune.validation import check_positive_int

EXTRA_FEATURES = ("magnitude", "grad_score", "snip")


@dataclass
class PLPlusConfig(PLConfig):
    """PL's settings plus the batches the extra criteria are scored on."""

    score_batches: int = field(
        default=4, metadata={"help": "batches for the gradient-based scores (default 4)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("score_batches", self.score_batches)


@register_method(
    "pl+",
    description="PL's gating network on kernel features plus magnitude, gradient score and SNIP (Sec. 5.4)",
    config=PLPlusConfig,
)
class PLPlusScorer(PLScorer):
    """PL (Alg. 2) whose gating network also sees each group's magnitude, gradient score and SNIP score."""

    name = "pl+"

    def __init__(self, config: PLPlusConfig | None = None) -> None:
        super().__init__(config or PLPlusConfig())

    def extra_features(self, context: PruneContext) -> tuple[Tensor, tuple[str, ...]]:
        batches = self.config.score_batches
        scorers = (MagnitudeScorer(), GateSensitivityScorer(batches), SnipScorer(batches))
        # the other criteria write their own log entries; keep PL's record to its own keys
        sub = PruneContext(
            context.groups, context.task, context.step, context.ratio, context.event_index, context.seed
        )
        columns = [s.scores(sub).detach().double().cpu().clamp_min(0.0) for s in scorers]
        return torch.stack(columns, dim=1), EXTRA_FEATURES
