"""Image / sequence classification with cross-entropy (the CNN experiments, paper Tables 3 and 5).

Batches: each epoch is a seeded permutation of the training set (``generator(seed, "epoch", e)``); the
last partial batch is dropped, so step s depends only on (seed, s) and resume is exact. The kernel
output of Sec. 3.2.2 (``per_sample_output``) is the per-sample cross-entropy (``"loss"``) or the
true-class logit (``"logit"``). Evaluation (model in eval mode: BatchNorm uses running statistics)
reports ``train_eval_loss``/``train_accuracy`` on a fixed seeded sample of ``eval_batches`` training
batches and ``test_loss``/``test_accuracy`` on the first ``eval_batches`` test batches, or on the whole
test set with ``full=True``; accuracies are in percent.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.data.images import ClassificationData
from plprune.devices import to_device
from plprune.errors import DataError, PlpruneError
from plprune.seeding import generator
from plprune.tasks.sampling import EpochSampler
from plprune.validation import check_choice, check_non_negative_int, check_positive_int

__all__ = ["KERNEL_OUTPUTS", "ClassificationTask", "check_model_input"]

KERNEL_OUTPUTS = ("loss", "logit")


def check_model_input(model: nn.Module, data: ClassificationData) -> None:
    """Raise a clear error if ``model`` was not built for ``data``'s channels, dimensionality or classes.

    Checks the model attributes ``in_channels``, ``dims`` and ``num_classes`` where the model has them
    (as :class:`~plprune.models.vgg.VGG` and :class:`~plprune.models.resnet.ResNet` do).
    """
    expected = {"in_channels": data.in_channels, "dims": data.dims, "num_classes": data.num_classes}
    for attribute, value in expected.items():
        actual = getattr(model, attribute, None)
        if actual is not None and actual != value:
            raise PlpruneError(
                f"{type(model).__name__} has {attribute}={actual}, but the {data.source} data has "
                f"{attribute}={value} (inputs {tuple(data.input_shape)}, {data.num_classes} classes); build "
                f"the model with {attribute}={value}"
            )


class ClassificationTask:
    """Batches, loss, per-sample output and evaluation for classification; see the module docstring."""

    def __init__(self, data: ClassificationData, batch_size: int, seed: int, eval_batches: int = 8) -> None:
        if not isinstance(data, ClassificationData):
            raise PlpruneError(f"data must be a ClassificationData, got {type(data).__name__}")
        self.name = f"classification-{data.source}"
        self.data = data
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.seed = check_non_negative_int("seed", seed)
        self.eval_batches = check_positive_int("eval_batches", eval_batches)
        n_train = data.train_x.shape[0]
        if n_train < self.batch_size:
            raise DataError(
                f"the {data.source} training split has {n_train} samples, fewer than one batch of "
                f"{self.batch_size}; lower --batch-size or use more samples"
            )
        self.sampler = EpochSampler(n_train, self.batch_size, self.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        eval_size = self.eval_batches * self.batch_size
        sample = torch.randperm(n_train, generator=generator(seed, "train-eval-sample"))[:eval_size]
        self._train_eval = (data.train_x[sample], data.train_y[sample])
        self._test_eval = (data.test_x[:eval_size], data.test_y[:eval_size])
        self.device = torch.device("cpu")  # where batches are handed out (the data stay on the CPU)

    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Batch number ``step`` (0-based) of the epoch-wise seeded permutation: ``(inputs, labels)``."""
        index = self.sampler.indices(step)
        return to_device((self.data.train_x[index], self.data.train_y[index]), self.device)

    def _logits(self, model: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        if len(batch) != 2:
            raise PlpruneError(f"a classification batch is (inputs, labels), got {len(batch)} entries")
        check_model_input(model, self.data)
        inputs, labels = batch
        return model(inputs), labels

    def logits(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """``(n, num_classes)`` logits of the batch's inputs (e.g. for a Hessian of the summed logits)."""
        return self._logits(model, batch)[0]

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        """Mean cross-entropy of the batch (the training loss L_S)."""
        logits, labels = self._logits(model, batch)
        return F.cross_entropy(logits, labels)

    def per_sample_output(self, model: nn.Module, batch: tuple[Tensor, ...], kind: str = "loss") -> Tensor:
        """``(n,)``: per-sample cross-entropy (``kind="loss"``) or the true-class logit (``"logit"``)."""
        check_choice("kernel output", kind, KERNEL_OUTPUTS)
        logits, labels = self._logits(model, batch)
        if kind == "logit":
            return logits.gather(1, labels.unsqueeze(1)).squeeze(1)
        return F.cross_entropy(logits, labels, reduction="none")

    @torch.no_grad()
    def _loss_and_accuracy(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> tuple[float, float]:
        total, correct = 0.0, 0
        for start in range(0, inputs.shape[0], self.batch_size):
            rows = slice(start, start + self.batch_size)
            x, y = to_device((inputs[rows], labels[rows]), self.device)
            logits, _ = self._logits(model, (x, y))
            total += float(F.cross_entropy(logits.double(), y, reduction="sum"))
            correct += int((logits.argmax(dim=1) == y).sum())
        n = inputs.shape[0]
        return total / n, 100.0 * correct / n

    def evaluate(self, model: nn.Module, *, full: bool = False) -> dict[str, Any]:
        """``train_eval_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy`` (%), in eval mode;
        ``full=True`` uses the whole test set (final numbers). Every submodule's mode is restored."""
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            test = (self.data.test_x, self.data.test_y) if full else self._test_eval
            train_loss, train_accuracy = self._loss_and_accuracy(model, *self._train_eval)
            test_loss, test_accuracy = self._loss_and_accuracy(model, *test)
        finally:
            for module, training in modes:
                module.training = training
        return {
            "train_eval_loss": train_loss,
            "train_accuracy": train_accuracy,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
        }
