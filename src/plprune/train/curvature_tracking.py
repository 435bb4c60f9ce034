"""Curvature over training (paper Fig. 3/5): the model's NTK condition number and Hessian trace at
evaluations, for dense and pruned runs alike, measured on the same group weights the pruners act on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plprune.gates import GroupSet
from plprune.pruners.base import Diagnostics
from plprune.train.callbacks import Callback
from plprune.validation import check_positive_int

if TYPE_CHECKING:
    from plprune.train.loop import Trainer


class CurvatureTracker(Callback):
    """At every evaluation whose step is a multiple of ``every``, add ``ntk_condition_number`` and
    ``hessian_trace`` (:class:`~plprune.pruners.base.Diagnostics`: App. D's condition number over the group
    weights, Alg. 1's Hutchinson trace of the training-loss Hessian) to the metrics record.

    The measurement runs in evaluation, outside the timed training steps, on ``task.train_batch(step)``
    with probes seeded by the run seed, so it changes neither the training trajectory nor its wall time.
    """

    def __init__(self, groups: GroupSet, every: int, seed: int = 0, diagnostics: Diagnostics | None = None):
        check_positive_int("curvature_every", every)
        self.groups = groups
        self.every = every
        self.seed = seed
        self.diagnostics = diagnostics or Diagnostics()

    def on_evaluate(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.step % self.every or record.get("final"):
            return
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            batch = trainer.task.train_batch(trainer.step)
            record.update(self.diagnostics.measure(self.groups, trainer.task, batch, self.seed))
        finally:
            trainer.model.train(was_training)
