"""The built-in trainer's pruning callback: a thin adapter over :class:`plprune.pruner.Pruner`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plprune.gates import GroupSet
from plprune.pruner import Pruner
from plprune.pruners.base import Diagnostics, GroupScorer
from plprune.schedules import PruneEvent, Schedule
from plprune.task import Task
from plprune.train.callbacks import Callback

if TYPE_CHECKING:
    from plprune.train.loop import Trainer

PRUNING_LOG = "pruning.jsonl"


class _TrainerTaskPending:
    """Stands in for the trainer's task until :meth:`PruningCallback.on_train_start` supplies it."""

    name = "pending"
    steps_per_epoch = 1

    def _missing(self, *args: Any, **kwargs: Any) -> Any:
        from plprune.errors import PlpruneError

        raise PlpruneError("the pruning callback has no task yet: it takes the trainer's at on_train_start")

    train_batch = loss = per_sample_output = evaluate = _missing


class PruningCallback(Callback):
    """Prune ``groups`` by ``scorer`` on ``schedule`` in the built-in :class:`~plprune.train.loop.Trainer`.

    Everything is done by a :class:`~plprune.pruner.Pruner` (``self.pruner``): the trainer's task is its
    data, its optimizer is attached at the start, and events are logged to ``RUN_DIR/pruning.jsonl``.
    """

    def __init__(
        self,
        groups: GroupSet,
        scorer: GroupScorer,
        schedule: Schedule,
        *,
        seed: int = 0,
        diagnostics: Diagnostics | None = None,
        log_path: Path | None = None,
        kind_ratios: Mapping[str, float] | None = None,
        allocation: str | None = None,
        compact: bool = False,
    ) -> None:
        """``compact=True``: remove the pruned groups physically right after the schedule's last event
        (:meth:`plprune.pruner.Pruner.compact`); training goes on with the smaller model."""
        self.compact = compact
        self.compacted_at: int | None = None
        self.pruner = Pruner(
            groups.model,
            scorer,
            schedule,
            groups=groups,
            task=_TrainerTaskPending(),
            seed=seed,
            diagnostics=diagnostics,
            log_path=log_path,
            kind_ratios=kind_ratios,
            allocation=allocation,
        )

    # the pruner's state, under the names the trainer, reports and baselines read
    @property
    def groups(self) -> GroupSet:
        return self.pruner.groups

    @property
    def scorer(self) -> GroupScorer:
        return self.pruner.scorer

    @property
    def schedule(self) -> Schedule:
        return self.pruner.schedule

    @property
    def events_done(self) -> int:
        return self.pruner.events_done

    @property
    def records(self) -> list[dict[str, Any]]:
        return self.pruner.records

    @property
    def allocation(self) -> str:
        return self.pruner.allocation

    @property
    def prune_seconds(self) -> float:
        return self.pruner.prune_seconds

    def event_ratios(self, event: PruneEvent) -> dict[str, float]:
        return self.pruner.event_ratios(event)

    def prune(self, task: Task, event: PruneEvent, step: int) -> dict[str, Any]:
        """Run one pruning event now on ``task``'s data; returns its record."""
        self.pruner.use_task(task)
        return self.pruner.prune(event, step)

    def _attach(self, trainer: Trainer) -> None:
        pruner = self.pruner
        pruner.use_task(trainer.task)
        if pruner.optimizer is not trainer.optimizer:
            if pruner.optimizer is not None:
                pruner.detach()
            pruner.attach(trainer.optimizer)

    def on_resume_start(self, trainer: Trainer) -> None:
        self._attach(trainer)  # a compacted checkpoint compacts the model and this optimizer on load

    def on_train_start(self, trainer: Trainer) -> None:
        pruner = self.pruner
        pruner.schedule.validate(trainer.config.steps)
        self._attach(trainer)
        if pruner.log_path is None:
            pruner.log_path = trainer.run_dir / PRUNING_LOG
        from plprune.distributed import is_main

        if pruner.log_path.exists() and is_main():  # resumed: keep only the events the checkpoint has seen
            from plprune.train.checkpoint import atomic_write_text

            lines = pruner.log_path.read_text(encoding="utf-8").splitlines(keepends=True)
            atomic_write_text(pruner.log_path, "".join(lines[: pruner.events_done]))

    def on_step_start(self, trainer: Trainer, step: int) -> None:
        self.pruner.step(step)
        if self.compact and self.pruner.finished and not self.pruner.compacted:
            self.pruner.compact()
            self.compacted_at = step

    def on_after_backward(self, trainer: Trainer, step: int) -> None:
        if not self.pruner.compacted:
            self.pruner.groups.mask_gradients()  # before gradient clipping, as the optimizer hook does after

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        record.update(self.pruner.metrics())
        if self.pruner.compacted:
            record["compacted_at_step"] = self.compacted_at
            record["parameters"] = sum(p.numel() for p in trainer.model.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {**self.pruner.state_dict(), "compacted_at": self.compacted_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compacted_at = state.get("compacted_at")
        self.pruner.load_state_dict(state)
