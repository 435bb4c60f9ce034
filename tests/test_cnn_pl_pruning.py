"""End to end: the PL pruner (features, gating network, Hutchinson trace through filter gates) prunes a
tiny CNN's filters on a linear schedule inside the ordinary training loop, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plprune.data.images import ClassificationData
from plprune.gates import GroupSet
from plprune.models.resnet import ResNet
from plprune.models.vgg import VGG
from plprune.pruners.base import Diagnostics, PruneContext
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.schedules import Linear
from plprune.tasks.classification import ClassificationTask
from plprune.train.config import TrainConfig
from plprune.train.loop import Trainer
from plprune.train.pruning import PruningCallback


def toy_task(batch_size: int = 8) -> ClassificationTask:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    x = torch.randn(96, 1, 16, generator=gen) + labels.view(-1, 1, 1) * torch.linspace(-1, 1, 16)
    data = ClassificationData(x[:64], labels[:64], x[64:], labels[64:], 3, 1, "toy")
    return ClassificationTask(data, batch_size=batch_size, seed=0, eval_batches=2)


def test_pl_scorer_trains_gates_on_filter_groups() -> None:
    torch.manual_seed(0)
    model = VGG(width_multiplier=0.0625, in_channels=1, num_classes=3, dims=1)
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    scorer = PLScorer(PLConfig(gate_steps=2, feature_samples=4))
    context = PruneContext(groups, toy_task(), step=0, ratio=0.5, event_index=0, seed=0)
    scores = scorer.scores(context)
    assert scores.shape == (len(groups),) and torch.isfinite(scores).all()
    assert scores.mean().item() == pytest.approx(1.0, rel=1e-5)
    assert not torch.allclose(scores, torch.ones(len(groups))), "gate training must move the gates"
    assert all(site.gate is None for site in groups.sites), "soft gates must be cleared"


def test_linear_pl_filter_pruning_inside_the_training_loop(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ResNet(depth=8, width_multiplier=0.5, in_channels=1, num_classes=3, dims=1)  # 8+16+32 filters
    task = toy_task()
    groups = GroupSet(model, kinds=("filter",), example_inputs=task.train_batch(0)[0])
    callback = PruningCallback(
        groups,
        PLScorer(PLConfig(gate_steps=2, feature_samples=4)),
        Linear(start=2, end=6, every=2, final_ratio=0.5),
        seed=0,
        diagnostics=Diagnostics(),
    )
    config = TrainConfig(
        steps=12, batch_size=8, lr=0.05, optimizer="sgd", grad_clip=0.0, eval_every=6, checkpoint_every=0
    )
    final = Trainer(model, task, config, tmp_path, [callback], progress=False).fit()
    assert len(callback.records) == 3 and groups.pruned_ratio("filter") == pytest.approx(0.5)
    assert final["pruned_filter_ratio"] == pytest.approx(0.5)
    for layer in range(3):  # protection: every block keeps a filter
        assert bool(groups.mask[groups.layer_ids == layer].any())
    params = dict(model.named_parameters())
    for index in (~groups.mask).nonzero().flatten().tolist():
        for piece in groups.groups[index].slices:
            assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
    assert all(torch.isfinite(torch.tensor(final[k])) for k in ("test_loss", "test_accuracy"))
    assert (tmp_path / "pruning.jsonl").read_text().count("\n") == 3
