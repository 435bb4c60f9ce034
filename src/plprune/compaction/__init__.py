"""Physically smaller models from hard masks: :func:`compact` and the planners of each group kind."""

from plprune.compaction import experts as _experts  # noqa: F401  (registers the expert planner)
from plprune.compaction import filters as _filters  # noqa: F401  (registers the filter planner)
from plprune.compaction import heads as _heads  # noqa: F401  (registers the head planner)
from plprune.compaction import layers as _layers  # noqa: F401  (registers the layer planner)
from plprune.compaction import neurons as _neurons  # noqa: F401  (registers the neuron planner)
from plprune.compaction.core import CompactionReport, compact, plan, register_planner, strip_gate_hooks

__all__ = ["CompactionReport", "compact", "plan", "register_planner", "strip_gate_hooks"]
