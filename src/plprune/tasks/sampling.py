"""Deterministic mini-batch order shared by every task: batch s depends only on (seed, s)."""

from __future__ import annotations

import torch
from torch import Tensor

from plprune.seeding import generator
from plprune.validation import check_non_negative_int, check_positive_int


class EpochSampler:
    """Each epoch is a permutation seeded by (seed, "epoch", epoch); the last partial batch is dropped.

    Because the indices of step s are a pure function of (seed, s), a run resumed at step s sees exactly
    the batches an uninterrupted run would have seen.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        self.num_samples = check_positive_int("number of training samples", num_samples)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = seed
        self.steps_per_epoch = num_samples // batch_size
        self._cached: tuple[int, Tensor] | None = None

    def _permutation(self, epoch: int) -> Tensor:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (
                epoch,
                torch.randperm(self.num_samples, generator=generator(self.seed, "epoch", epoch)),
            )
        return self._cached[1]

    def indices(self, step: int) -> Tensor:
        """Sample indices of batch ``step`` (0-based)."""
        check_non_negative_int("step", step)
        epoch, position = divmod(step, self.steps_per_epoch)
        return self._permutation(epoch)[position * self.batch_size : (position + 1) * self.batch_size]
