"""ClassificationTask: deterministic batches, loss and kernel outputs, evaluation, a short real training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plprune.data.images import ClassificationData, load_digits
from plprune.errors import DataError, PlpruneError
from plprune.models.resnet import ResNet
from plprune.models.vgg import VGG
from plprune.tasks.classification import ClassificationTask, check_model_input
from plprune.train.config import TrainConfig
from plprune.train.loop import Trainer


def toy_data(n_train: int = 50, n_test: int = 30, classes: int = 3) -> ClassificationData:
    gen = torch.Generator().manual_seed(0)
    return ClassificationData(
        train_x=torch.randn(n_train, 1, 12, generator=gen),
        train_y=torch.arange(n_train) % classes,
        test_x=torch.randn(n_test, 1, 12, generator=gen),
        test_y=torch.arange(n_test) % classes,
        num_classes=classes,
        in_channels=1,
        source="toy",
    )


class ConstantClassifier(nn.Module):
    """Always predicts class 0 (logits [1, 0, 0, ...]); has the attributes ``check_model_input`` reads."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.in_channels, self.dims, self.num_classes = 1, 1, classes
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], self.num_classes)
        logits[:, 0] = 1.0
        return logits


def test_batches_are_seeded_epoch_permutations_without_the_partial_batch() -> None:
    task = ClassificationTask(toy_data(), batch_size=16, seed=3, eval_batches=1)
    assert task.steps_per_epoch == 3  # 50 // 16: the last 2 samples of each epoch are dropped
    epoch = [task.train_batch(s) for s in range(3)]
    rows = torch.cat([x for x, _ in epoch]).flatten(1)
    assert len({tuple(r.tolist()) for r in rows}) == 48  # distinct samples within an epoch
    again = ClassificationTask(toy_data(), batch_size=16, seed=3, eval_batches=1)
    for step in (4, 0, 7):  # any order: a batch depends only on (seed, step)
        for a, b in zip(task.train_batch(step), again.train_batch(step), strict=True):
            assert torch.equal(a, b)
    assert not torch.equal(task.train_batch(0)[0], task.train_batch(3)[0])  # a new epoch, a new order
    other = ClassificationTask(toy_data(), batch_size=16, seed=4, eval_batches=1)
    assert not torch.equal(other.train_batch(0)[0], task.train_batch(0)[0])


def test_too_small_training_set_and_bad_arguments() -> None:
    with pytest.raises(DataError, match="fewer than one batch of 64"):
        ClassificationTask(toy_data(n_train=50), batch_size=64, seed=0)
    with pytest.raises(PlpruneError, match="batch_size must be a positive integer"):
        ClassificationTask(toy_data(), batch_size=0, seed=0)
    with pytest.raises(PlpruneError, match="must be a ClassificationData"):
        ClassificationTask({"x": 1}, batch_size=4, seed=0)
    task = ClassificationTask(toy_data(), batch_size=4, seed=0)
    with pytest.raises(PlpruneError, match="unknown kernel output 'prob'"):
        task.per_sample_output(ConstantClassifier(), task.train_batch(0), kind="prob")


def test_loss_and_per_sample_outputs_match_cross_entropy() -> None:
    torch.manual_seed(0)
    model = VGG(width_multiplier=0.0625, in_channels=1, num_classes=3, dims=1).eval()
    task = ClassificationTask(toy_data(), batch_size=8, seed=0)
    x, y = task.train_batch(0)
    logits = model(x)
    assert torch.equal(task.logits(model, (x, y)), logits)
    per_sample = task.per_sample_output(model, (x, y))
    torch.testing.assert_close(per_sample, F.cross_entropy(logits, y, reduction="none"))
    torch.testing.assert_close(per_sample.mean(), task.loss(model, (x, y)))
    true_logit = task.per_sample_output(model, (x, y), kind="logit")
    torch.testing.assert_close(true_logit, logits[torch.arange(8), y])


def test_evaluate_metrics_full_test_set_and_mode_restoration() -> None:
    task = ClassificationTask(toy_data(n_test=30), batch_size=4, seed=0, eval_batches=2)
    model = ConstantClassifier()
    model.train()
    model.dropout.eval()  # mixed modes must come back exactly
    partial = task.evaluate(model)
    assert set(partial) == {"train_eval_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert model.training and not model.dropout.training
    first8 = task.data.test_y[:8]  # eval_batches × batch_size test samples
    assert partial["test_accuracy"] == pytest.approx(100.0 * float((first8 == 0).float().mean()))
    full = task.evaluate(model, full=True)
    assert full["test_accuracy"] == pytest.approx(100.0 * 10 / 30)  # labels 0,1,2,... → a third are 0
    expected_loss = float(F.cross_entropy(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1])))
    assert full["test_loss"] == pytest.approx((10 * (expected_loss - 1.0) + 20 * expected_loss) / 30)


def test_model_built_for_other_data_is_a_clear_error() -> None:
    data = toy_data()
    task = ClassificationTask(data, batch_size=4, seed=0)
    wrong_channels = VGG(width_multiplier=0.0625, in_channels=3, num_classes=3, dims=1)
    with pytest.raises(PlpruneError, match="VGG has in_channels=3, but the toy data has in_channels=1"):
        check_model_input(wrong_channels, data)
    with pytest.raises(PlpruneError, match="in_channels=1"):
        task.loss(wrong_channels, task.train_batch(0))
    with pytest.raises(PlpruneError, match="has dims=2"):
        check_model_input(ResNet(depth=8, width_multiplier=0.25, in_channels=1, num_classes=3, dims=2), data)
    with pytest.raises(PlpruneError, match="has num_classes=10"):
        check_model_input(VGG(width_multiplier=0.0625, in_channels=1, dims=1), data)
    check_model_input(VGG(width_multiplier=0.0625, in_channels=1, num_classes=3, dims=1), data)


def test_short_sgd_training_of_a_tiny_vgg_on_digits_learns(tmp_path: Path) -> None:
    data = load_digits(seed=0)
    torch.manual_seed(0)
    model = VGG(width_multiplier=0.25, in_channels=1, num_classes=10, dims=2)
    task = ClassificationTask(data, batch_size=32, seed=0, eval_batches=4)
    config = TrainConfig(
        steps=60, batch_size=32, lr=0.02, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
        grad_clip=0.0, eval_every=30, checkpoint_every=0,
    )  # fmt: skip
    before = task.evaluate(model, full=True)
    final = Trainer(model, task, config, tmp_path, progress=False).fit()
    assert before["test_accuracy"] < 25.0
    assert final["test_accuracy"] > 60.0  # chance is 10%
    assert final["train_loss"] < 2.0 and final["final"] is True
    assert (tmp_path / "metrics.jsonl").exists()
