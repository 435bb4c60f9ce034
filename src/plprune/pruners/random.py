"""Random scores: the sanity floor every criterion has to beat (same schedule, same protection)."""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.pruners.base import GroupScorer, PruneContext
from plprune.seeding import generator


class RandomScorer(GroupScorer):
    """Uniform random scores, seeded by (run seed, event index): reproducible, independent of the model."""

    name = "random"

    def scores(self, context: PruneContext) -> Tensor:
        return torch.rand(
            len(context.groups), generator=generator(context.seed, "random", context.event_index)
        )
