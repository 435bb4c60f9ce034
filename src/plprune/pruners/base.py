"""What every pruning criterion shares: the scorer interface, the context it scores in, diagnostics.

Data flow (docs/architecture.md): model → GroupSet → scorer.scores(context) → keep rule (:mod:`plprune.keep`)
→ hard mask → training continues with the mask enforced. Every method (PL, magnitude, SNIP, ...) is a
:class:`GroupScorer`; :class:`plprune.pruner.Pruner` drives all of them the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from plprune.gates import GroupSet
from plprune.keep import ALLOCATIONS, select_mask

__all__ = ["ALLOCATIONS", "Diagnostics", "GroupScorer", "PruneContext", "PrunerPlugin", "select_mask"]

if TYPE_CHECKING:
    from plprune.task import Task


@dataclass
class PruneContext:
    """What a scorer may use at a pruning event. ``log`` collects method-specific details to record.

    With ``distributed`` every rank calls the scorer at the same event on its own shard of the data; a
    scorer may use :mod:`plprune.distributed` to pool the ranks' samples (the Pruner then broadcasts rank 0's
    scores, so a scorer that does not pool scores on rank 0's shard)."""

    groups: GroupSet
    task: Task
    step: int
    ratio: float
    event_index: int
    seed: int
    log: dict[str, Any] = field(default_factory=dict)
    #: data-parallel ranks score together (``plprune.distributed``): each rank's ``task`` gives its own shard
    distributed: bool = False

    @property
    def model(self) -> torch.nn.Module:
        return self.groups.model


class GroupScorer(ABC):
    """Scores for groups: higher = more worth keeping. One subclass per pruning criterion.

    ``allocation`` says how scores are compared: ``"global"`` (default) ranks all groups of a kind together
    (layer sparsity emerges from the scores, as in PL, IMP, SNIP); ``"per_layer"`` removes the same
    fraction from every layer, ranking only within a layer (FPGM and CHIP, whose scores are not
    comparable across layers).
    """

    name: str = "scorer"
    allocation: str = "global"
    #: whether ``scores`` draws batches from ``context.task`` (a Pruner without data refuses such scorers)
    needs_data: bool = True

    @abstractmethod
    def scores(self, context: PruneContext) -> Tensor:
        """A finite ``(p,)`` tensor of scores for ``context.groups``."""

    @classmethod
    def from_config(cls, settings: Any, info: Any) -> GroupScorer:
        """Build from the method's settings dataclass (``None`` if it has none) and a
        :class:`~plprune.pruners.registration.BuildInfo`; override when the constructor differs."""
        return cls() if settings is None else cls(settings)

    def before_mask(self, context: PruneContext, mask: Tensor) -> None:
        """Called by :meth:`plprune.Pruner.prune` with the event's new hard mask (``True`` = keep), after
        the keep rule chose it and before :meth:`GroupSet.apply_mask` zeroes the newly pruned groups: their
        weights are still in place. ``context`` is the one :meth:`scores` received at this event. A
        criterion that edits the *surviving* weights when groups go does it here (FLAP's bias compensation,
        :mod:`plprune.pruners.flap`); no-op by default. Callers that apply masks themselves call it the
        same way."""
        return None

    def plugins(self) -> list[Any]:
        """:class:`PrunerPlugin` objects the method needs beyond a mask (IMP's rewinding,
        DPFPS's regulariser); none by default."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Diagnostics:
    """Model-level curvature measured around each pruning event: NTK condition number (App. D) over the
    group weights, and the Hutchinson trace of the training-loss Hessian w.r.t. the same weights."""

    def __init__(self, samples: int = 16, probes: int = 8, chunk_size: int | None = 1) -> None:
        self.samples = samples
        self.probes = probes
        self.chunk_size = chunk_size

    def measure(self, groups: GroupSet, task: Task, batch: tuple[Tensor, ...], seed: int) -> dict[str, float]:
        from plprune.curvature import model_condition_number, model_hessian_trace
        from plprune.exact_norms import exact_norms
        from plprune.seeding import generator

        with exact_norms(groups.model):  # exact HVPs on foreign models (LayerNorm, SDPA attention)
            small = tuple(t[: self.samples] for t in batch)
            condition = model_condition_number(
                groups.model,
                task.per_sample_output,
                small,
                params=groups.param_names,
                chunk_size=self.chunk_size,
            )
            trace = model_hessian_trace(
                groups.model,
                task.loss,
                small,
                params=groups.param_names,
                num_probes=self.probes,
                generator=generator(seed, "diagnostic-probes"),
            )
            return {
                "ntk_condition_number": condition,
                "hessian_trace": float(trace.mean),
                "hessian_trace_se": float(trace.standard_error),
            }


class PrunerPlugin:
    """Extra behaviour a scorer brings to a :class:`Pruner` (every method is a no-op by default).

    ``bind`` is called once by the pruner (validate and keep what you need); ``on_step_start`` after the
    pruner has run the events due at ``step``; ``before_update`` when gradients are ready and the optimizer
    has not stepped (after gradient clipping in the built-in trainer); ``after_update`` after the step.
    """

    def bind(self, pruner: Any) -> None: ...

    def on_step_start(self, pruner: Any, step: int) -> None: ...

    def before_update(self, pruner: Any, step: int) -> None: ...

    def after_update(self, pruner: Any, step: int) -> None: ...

    def metrics(self) -> dict[str, Any]:
        """Values to add to an evaluation record (e.g. the current penalty)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
