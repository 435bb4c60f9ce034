"""The built-in trainer's callback for unstructured pruning: a thin adapter over
:class:`plprune.weight_pruner.WeightPruner` (the counterpart of :mod:`plprune.train.pruning`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plprune.train.callbacks import Callback
from plprune.train.pruning import PRUNING_LOG
from plprune.weight_pruner import WeightPruner

if TYPE_CHECKING:
    from plprune.train.loop import Trainer


class WeightPruningCallback(Callback):
    """Drive ``pruner`` in the :class:`~plprune.train.loop.Trainer`: attach its optimizer, run the events
    at each step start, log them to ``RUN_DIR/pruning.jsonl`` and add its metrics to evaluations."""

    def __init__(self, pruner: WeightPruner) -> None:
        self.pruner = pruner

    def _attach(self, trainer: Trainer) -> None:
        if self.pruner.optimizer is not trainer.optimizer:
            if self.pruner.optimizer is not None:
                self.pruner.detach()
            self.pruner.attach(trainer.optimizer)

    def on_train_start(self, trainer: Trainer) -> None:
        pruner = self.pruner
        pruner.schedule.validate(trainer.config.steps)
        self._attach(trainer)
        if pruner.log_path is None:
            pruner.log_path = trainer.run_dir / PRUNING_LOG
        if pruner.log_path.exists():  # resumed: keep only the events the checkpoint has seen
            from plprune.train.checkpoint import atomic_write_text

            lines = pruner.log_path.read_text(encoding="utf-8").splitlines(keepends=True)
            atomic_write_text(pruner.log_path, "".join(lines[: pruner.events_done]))

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        self.pruner.step(step)

    def on_after_backward(self, trainer: Trainer, step: int) -> None:
        self.pruner.units.mask_pruned_gradients()  # before gradient clipping too

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record.update(self.pruner.metrics())

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pruner.load_state_dict(state)
