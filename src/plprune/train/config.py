"""Optimisation settings of one training run, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from plprune.devices import check_device_name
from plprune.errors import PlpruneError
from plprune.validation import (
    check_choice,
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_probability,
)

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """How to train: budget, optimiser, learning-rate schedule, evaluation and checkpoint cadence.

    Paper Table 4 (BERT on WikiText-2, GPU): peak LR 1e-4, weight decay 0, batch 8, sequence 512.
    Our CPU defaults shrink the model and sequence, so they use a larger peak LR (1e-3) and batch 16 at
    length 128; see docs/training.md.

    ``device``: where the model, its batches and the curvature work run (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``; :mod:`plprune.devices`); checkpoints load on any device.

    ``deterministic``: every determinism knob torch offers, and seeded Python/NumPy/torch RNGs, for the run
    (:func:`plprune.seeding.deterministic_mode`; its cost is measured in docs/training.md).
    """

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_fraction: float = 0.06
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    optimizer: str = "adamw"
    momentum: float = 0.9
    eval_every: int = 200
    checkpoint_every: int = 500
    eval_batches: int = 8
    seed: int = 0
    deterministic: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        check_positive_float("lr", self.lr)
        check_probability("warmup_fraction", self.warmup_fraction)
        check_non_negative_float("weight_decay", self.weight_decay)
        check_non_negative_float("grad_clip (0 disables clipping)", self.grad_clip)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_probability("momentum", self.momentum)
        check_positive_int("eval_every", self.eval_every)
        check_non_negative_int("checkpoint_every (0 disables periodic checkpoints)", self.checkpoint_every)
        check_positive_int("eval_batches", self.eval_batches)
        check_non_negative_int("seed", self.seed)
        check_device_name(self.device)
        if not isinstance(self.deterministic, bool):
            raise PlpruneError(f"deterministic must be true or false, got {self.deterministic!r}")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_fraction * self.steps)

    def to_dict(self) -> dict:
        return asdict(self)
