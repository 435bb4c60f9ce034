"""The callback hook pruners plug into; every method is a no-op by default."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plprune.train.loop import Trainer


class Callback:
    """Hook points of :class:`plprune.train.loop.Trainer`. ``step`` counts optimizer steps done so far."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_resume_start(self, trainer: Trainer) -> None:
        """Resuming: called before any state is loaded (the callbacks' own state is loaded next, then the
        model's and optimizer's)."""

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        """Before the forward pass of optimizer step ``step + 1`` (pruning decisions go here)."""

    def on_after_backward(self, trainer: Trainer, step: int) -> None:
        """Gradients are populated, the optimizer has not stepped (mask gradients here)."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After the optimizer step; ``step`` is now the number of steps done (re-apply masks here)."""

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After an evaluation; callbacks may add fields to ``record`` before it is logged."""

    def on_train_end(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Whatever the callback needs to resume exactly (tensors and plain containers only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
