"""Weight rewinding for iterative magnitude pruning (IMP), inside one training budget.

Lottery-ticket IMP (Frankle & Carbin 2019) trains, prunes, resets the surviving weights to their values
at initialisation and trains again; "rewinding" resets them to their values at an early step k instead
(Frankle et al. 2020, "Linear mode connectivity and the lottery ticket hypothesis"; Chen et al. 2020 for
BERT). plprune runs every method within one step budget and one schedule, so here each pruning event is
followed by a rewind: the whole model state (parameters and buffers, e.g. BatchNorm statistics) goes back
to the snapshot taken before optimizer step ``rewind_step + 1`` (i.e. after ``rewind_step`` updates),
the pruned groups are zeroed again, and training continues from there with the new mask.

Choices, to document:

* the **optimizer state is cleared** at each rewind (momentum buffers / Adam moments and step counts start
  afresh, as in a new IMP round), but the **learning-rate schedule is not rewound**: it continues
  over the one training budget (a full IMP round would replay it from step ``rewind_step``);
* after restoring the snapshot the hard mask is re-applied to the gate sites (a snapshot from before
  pruning has e.g. a Switch layer's ``expert_keep`` buffer all True) and the pruned weights are zeroed.

:class:`IMPScorer` is the IMP method: group-weight magnitude scores plus a :class:`WeightRewinder` plugin,
which the :class:`~plprune.pruner.Pruner` runs right after the events of a step (so an event at step s
scores the trained weights before the rewind at step s). Clearing optimizer state needs the pruner to be
attached to the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from plprune.errors import PlpruneError
from plprune.pruners.base import PrunerPlugin
from plprune.pruners.magnitude import MagnitudeScorer
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ITERATIVE
from plprune.validation import check_non_negative_int


class WeightRewinder(PrunerPlugin):
    """After each pruning event, rewind the model to its state at step ``rewind_step`` (module
    docstring), keep pruned groups at zero and clear the optimizer state."""

    def __init__(self, rewind_step: int) -> None:
        self.rewind_step = check_non_negative_int("rewind step", rewind_step)
        self.snapshot: dict[str, Tensor] | None = None
        self.events_seen = 0
        self.rewinds = 0

    def bind(self, pruner: Any) -> None:
        events = pruner.schedule.events()
        if not events:
            raise PlpruneError("the pruning schedule has no events, so there is nothing to rewind after")
        first = events[0].step
        if self.rewind_step >= first:
            allowed = f"0 <= rewind step < {first}" if first > 0 else "none (the first event is at step 0)"
            raise PlpruneError(
                f"rewind step {self.rewind_step} must come before the first pruning event (step {first}); "
                f"allowed: {allowed}. Rewinding needs a schedule whose first event is after step 0"
            )

    def on_step_start(self, pruner: Any, step: int) -> None:
        if step == self.rewind_step:
            self.snapshot = {
                name: tensor.detach().clone() for name, tensor in pruner.model.state_dict().items()
            }
        if pruner.events_done > self.events_seen:
            self.rewind(pruner)
            self.events_seen = pruner.events_done

    def rewind(self, pruner: Any) -> None:
        """Restore the snapshot, re-apply the hard mask (pruned weights 0) and clear the optimizer state."""
        if self.snapshot is None:
            raise PlpruneError(
                f"no weight snapshot to rewind to: the rewinder did not see step {self.rewind_step} "
                "(call pruner.step(step) at every step from the start, or resume from a checkpoint)"
            )
        if pruner.optimizer is None:
            raise PlpruneError(
                "IMP's rewinding clears the optimizer state: call pruner.attach(optimizer) first"
            )
        pruner.model.load_state_dict(self.snapshot)
        pruner.groups.apply_mask(pruner.groups.mask.clone())  # gate sites' hard masks, then enforce()
        pruner.optimizer.state.clear()
        self.rewinds += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "rewind_step": self.rewind_step,
            "has_snapshot": self.snapshot is not None,
            "snapshot": dict(self.snapshot) if self.snapshot is not None else {},
            "events_seen": self.events_seen,
            "rewinds": self.rewinds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["rewind_step"]) != self.rewind_step:
            raise PlpruneError(
                f"the checkpoint rewinds to step {state['rewind_step']}, this run to step {self.rewind_step}"
            )
        snapshot = state["snapshot"]
        self.snapshot = {k: v.clone() for k, v in snapshot.items()} if state["has_snapshot"] else None
        self.events_seen = int(state["events_seen"])
        self.rewinds = int(state["rewinds"])


@dataclass
class IMPConfig:
    """IMP's settings: when to rewind to (steps ``800`` or epochs ``"0.5e"``; default 5% of training)."""

    rewind_at: str | int | None = field(
        default=None, metadata={"help": "rewinding time, steps or epochs (default 5%% of the steps)"}
    )

    def __post_init__(self) -> None:
        from plprune.schedules import check_time

        if self.rewind_at is not None:
            check_time("rewind_at", self.rewind_at)


@register_method(
    "imp",
    description="LTH/IMP: group weight magnitude, iterative rounds, rewinding to 5% of training",
    config=IMPConfig,
    paper_schedule=ITERATIVE,
    training_time=True,
)
class IMPScorer(MagnitudeScorer):
    """LTH/IMP: group-weight magnitude with weight rewinding to ``rewind_step`` after every event."""

    name = "imp"

    def __init__(self, rewind_step: int, p: int = 2) -> None:
        super().__init__(p)
        self.rewind_step = check_non_negative_int("rewind step", rewind_step)

    @classmethod
    def from_config(cls, settings: IMPConfig, info: Any) -> IMPScorer:
        """Rewind to ``settings.rewind_at`` (steps or epochs) or, by default, 5% of training (E.3)."""
        from plprune.schedules import parse_time

        if settings.rewind_at is None:
            return cls(round(0.05 * info.total_steps))
        return cls(parse_time(settings.rewind_at, info.steps_per_epoch))

    def plugins(self) -> list[PrunerPlugin]:
        return [WeightRewinder(self.rewind_step)]
