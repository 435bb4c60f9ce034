"""The task interface the training loop and pruners use: batches, loss, per-sample output, evaluation."""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn


class Task(Protocol):
    """A supervised objective over a fixed dataset with a deterministic data order.

    ``train_batch(step)`` depends only on the run seed and ``step`` (so resuming from a checkpoint
    replays exactly the same batches); ``per_sample_output`` is the scalar per sample whose gradients
    define the tangent kernel (paper Sec. 3.2.2); ``evaluate`` returns the metrics logged at each
    evaluation.
    """

    name: str
    steps_per_epoch: int

    def train_batch(self, step: int) -> tuple[Tensor, ...]: ...

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor: ...

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        """``(n,)`` scalars: ``kind="loss"`` the per-sample loss, ``"logit"`` the true-token/class logit."""

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]: ...
