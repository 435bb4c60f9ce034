"""Pruning criteria: each a :class:`GroupScorer` registered by ``@register_method`` in its own module.

A new criterion is one new module here with a decorated scorer class; :mod:`plprune.pruners.registry`
finds it.
"""

from plprune.pruners.base import Diagnostics, GroupScorer, PruneContext, PrunerPlugin, select_mask
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.pruners.random import RandomScorer

__all__ = [
    "Diagnostics",
    "GroupScorer",
    "PLConfig",
    "PLScorer",
    "PruneContext",
    "PrunerPlugin",
    "RandomScorer",
    "select_mask",
]
