"""Pruning criteria: each a :class:`GroupScorer` over a GroupSet, applied by :class:`PruningCallback`."""

from plprune.pruners.base import Diagnostics, GroupScorer, PruneContext, PruningCallback, select_mask
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.pruners.random import RandomScorer

__all__ = [
    "Diagnostics",
    "GroupScorer",
    "PLConfig",
    "PLScorer",
    "PruneContext",
    "PruningCallback",
    "RandomScorer",
    "select_mask",
]
