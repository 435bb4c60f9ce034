"""Random scores: the sanity floor every criterion has to beat (same schedule, same protection)."""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.pruners.base import GroupScorer, PruneContext
from plprune.pruners.registration import register_method
from plprune.seeding import generator


@register_method("random", description="random groups (sanity floor), same schedule")
class RandomScorer(GroupScorer):
    """Uniform random scores, seeded by (run seed, event index): reproducible, independent of the model."""

    needs_data = False

    name = "random"

    def scores(self, context: PruneContext) -> Tensor:
        return torch.rand(
            len(context.groups), generator=generator(context.seed, "random", context.event_index)
        )
