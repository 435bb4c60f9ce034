"""Every pruning method by name: its scorer, the group kinds it applies to, the paper's schedule for it,
and the extra callbacks it needs (IMP's weight rewinding, DPFPS's sparsity regulariser).

The runner builds methods from here; ``plprune compare`` applies each method's ``paper_schedule`` (the
setting the PL paper's App. E.3 uses for that baseline) on top of a task's base schedule. Scorer modules are
imported lazily so that ``plprune.run_config`` can list method names without importing every criterion.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from plprune.errors import PlpruneError

if TYPE_CHECKING:
    from plprune.gates import GroupSet
    from plprune.pruners.base import GroupScorer, PruningCallback
    from plprune.run_config import PruneConfig
    from plprune.train.callbacks import Callback

ALL_KINDS = ("head", "expert", "filter")

# the paper's iterative baselines (IMP, Att/Exp-Score) prune in rounds; ours: 3 rounds one epoch apart
ITERATIVE = {"schedule": "iterative", "rounds": 3, "prune_every": "1e"}


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method. ``build_scorer(prune_config)`` makes its :class:`GroupScorer` (``None``: dense);
    ``build_extras(prune_config, groups, pruning, total_steps, steps_per_epoch)`` its extra callbacks
    (placed after the pruning callback); ``paper_schedule``: prune-table overrides giving the paper's
    setting for the method."""

    name: str
    description: str
    kinds: tuple[str, ...]
    build_scorer: Callable[[PruneConfig], GroupScorer] | None
    paper_schedule: dict[str, Any] = field(default_factory=dict)
    build_extras: Callable[[PruneConfig, GroupSet, PruningCallback, int, int], list[Callback]] | None = None


def _pl(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.pl import PLScorer

    return PLScorer(config.pl)


def _random(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.random import RandomScorer

    return RandomScorer()


def _magnitude(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.magnitude import MagnitudeScorer

    return MagnitudeScorer()


def _rewinder(
    config: PruneConfig, groups: GroupSet, pruning: PruningCallback, total_steps: int, steps_per_epoch: int
) -> list[Callback]:
    """IMP rewinds the surviving weights to their values at ``rewind_at`` (default 5% of training, E.3)."""
    from plprune.pruners.rewind import WeightRewinder

    return [WeightRewinder(groups, pruning, rewind_step(config, total_steps, steps_per_epoch))]


def rewind_step(config: PruneConfig, total_steps: int, steps_per_epoch: int) -> int:
    """The rewinding step: ``config.rewind_at`` (steps or epochs) or, by default, 5% of ``total_steps``."""
    from plprune.schedules import parse_time

    if config.rewind_at is None:
        return round(0.05 * total_steps)
    return parse_time(config.rewind_at, steps_per_epoch)


def _grad_score(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.sensitivity import GateSensitivityScorer

    return GateSensitivityScorer(batches=config.score_batches)


def _snip(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.snip import SnipScorer

    return SnipScorer(batches=config.score_batches)


def _grasp(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.grasp import GraspScorer

    return GraspScorer(batches=config.score_batches)


def _fpgm(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.fpgm import FPGMScorer

    return FPGMScorer()


def _chip(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.chip import CHIPScorer

    return CHIPScorer(batches=config.score_batches)


def _dpfps(config: PruneConfig) -> GroupScorer:
    from plprune.pruners.dpfps import DPFPSScorer

    return DPFPSScorer()


def _dpfps_regulariser(
    config: PruneConfig, groups: GroupSet, pruning: PruningCallback, total_steps: int, steps_per_epoch: int
) -> list[Callback]:
    from plprune.pruners.dpfps import DPFPSRegulariser

    return [DPFPSRegulariser(groups, pruning, strength=config.sparsity_strength)]


_SPECS = [
    MethodSpec("dense", "no pruning (the reference)", ALL_KINDS, None),
    MethodSpec("pl", "PL-regularised gating network (the paper, Alg. 2)", ALL_KINDS, _pl),
    MethodSpec("random", "random groups (sanity floor), same schedule", ALL_KINDS, _random),
    MethodSpec(
        "imp",
        "LTH/IMP: group weight magnitude, iterative rounds, rewinding to 5% of training",
        ALL_KINDS,
        _magnitude,
        ITERATIVE,
        _rewinder,
    ),
    MethodSpec(
        "magnitude", "group weight magnitude, the task's schedule, no rewinding", ALL_KINDS, _magnitude
    ),
    MethodSpec(
        "grad-score",
        "Att-/Exp-Score (Michel et al. 2019): accumulated |dL/dgate|, per-layer L2 normalised, iterative",
        ALL_KINDS,
        _grad_score,
        ITERATIVE,
    ),
    MethodSpec(
        "snip",
        "structured SNIP: group sums of |w * dL/dw| at initialisation",
        ALL_KINDS,
        _snip,
        {"schedule": "at-init"},
    ),
    MethodSpec(
        "grasp",
        "structured GraSP: group sums of -(-w * Hg) at initialisation",
        ALL_KINDS,
        _grasp,
        {"schedule": "at-init"},
    ),
    MethodSpec("fpgm", "FPGM: distance to the layer's geometric median (filters)", ("filter",), _fpgm),
    MethodSpec("chip", "CHIP: channel independence of feature maps (filters)", ("filter",), _chip),
    MethodSpec(
        "dpfps",
        "DPFPS: BN-scale ranking with dynamic sparsity allocation and l1 regulariser (filters)",
        ("filter",),
        _dpfps,
        {},
        _dpfps_regulariser,
    ),
]

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> MethodSpec:
    """The method called ``name``; unknown names list the valid ones."""
    if name not in METHODS:
        raise PlpruneError(f"unknown method {name!r}; valid: {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def check_method_kinds(name: str, kinds: tuple[str, ...]) -> None:
    """Raise unless method ``name`` can score every kind in ``kinds``, naming the methods that can."""
    spec = get_method(name)
    unsupported = [k for k in kinds if k not in spec.kinds]
    if unsupported:
        able = [m for m, s in METHODS.items() if all(k in s.kinds for k in kinds) and m != "dense"]
        raise PlpruneError(
            f"method {name!r} prunes {'/'.join(spec.kinds)} groups only, not {'/'.join(unsupported)}; "
            f"methods for {'/'.join(kinds)}: {', '.join(able)}"
        )
