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

Place the rewinder **after** its :class:`~plprune.pruners.base.PruningCallback` in the trainer's callback
list, so that an event at step s has run (on the trained weights) before the rewind at step s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.pruners.base import PruningCallback
from plprune.train.callbacks import Callback
from plprune.validation import check_non_negative_int

if TYPE_CHECKING:
    from plprune.train.loop import Trainer


class WeightRewinder(Callback):
    """After each pruning event of ``pruning``, rewind the model to its state at step ``rewind_step``
    (module docstring), keep pruned groups at zero and clear the optimizer state."""

    def __init__(self, groups: GroupSet, pruning: PruningCallback, rewind_step: int) -> None:
        if not isinstance(pruning, PruningCallback):
            raise PlpruneError(f"pruning must be a PruningCallback, got {type(pruning).__name__}")
        if groups is not pruning.groups:
            raise PlpruneError(
                "the rewinder's GroupSet must be the pruning callback's own GroupSet (pruning.groups): "
                "another GroupSet would not see the groups it prunes"
            )
        check_non_negative_int("rewind step", rewind_step)
        events = pruning.schedule.events()
        if not events:
            raise PlpruneError("the pruning schedule has no events, so there is nothing to rewind after")
        first = events[0].step
        if rewind_step >= first:
            allowed = f"0 <= rewind step < {first}" if first > 0 else "none (the first event is at step 0)"
            raise PlpruneError(
                f"rewind step {rewind_step} must come before the first pruning event (step {first}); "
                f"allowed: {allowed}. Rewinding needs a schedule whose first event is after step 0"
            )
        self.groups = groups
        self.pruning = pruning
        self.rewind_step = rewind_step
        self.snapshot: dict[str, Tensor] | None = None
        self.events_seen = 0
        self.rewinds = 0

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.model is not self.groups.model:
            raise PlpruneError("the WeightRewinder's GroupSet belongs to another model than the trainer's")
        callbacks = trainer.callbacks
        if self.pruning not in callbacks or callbacks.index(self.pruning) > callbacks.index(self):
            raise PlpruneError(
                "the WeightRewinder must come after its PruningCallback in the trainer's callback list"
            )

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        if step == self.rewind_step:
            self.snapshot = {
                name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()
            }
        if self.pruning.events_done > self.events_seen:
            self.rewind(trainer)
            self.events_seen = self.pruning.events_done

    def rewind(self, trainer: Trainer) -> None:
        """Restore the snapshot, re-apply the hard mask (pruned weights 0) and clear the optimizer state."""
        if self.snapshot is None:
            raise PlpruneError(
                f"no weight snapshot to rewind to: the rewinder did not see step {self.rewind_step} "
                "(was it added when resuming a run that had passed that step?)"
            )
        trainer.model.load_state_dict(self.snapshot)
        self.groups.apply_mask(self.groups.mask.clone())  # gate sites' hard masks, then enforce()
        trainer.optimizer.state.clear()
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
