"""General-purpose baselines: magnitude (IMP) with weight rewinding, gate sensitivity (Michel et al.), SNIP,
GraSP — each against an independent reference (hand-indexed slices, finite differences, plain autograd
on whole parameters, the exact Hessian)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from plprune.data.images import ClassificationData
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.models import BertConfig, BertForMaskedLM
from plprune.models.filters import GatedConvBN, global_average_pool
from plprune.models.switch import SwitchConfig, SwitchForMaskedLM
from plprune.pruner import Pruner
from plprune.pruners.base import PruneContext
from plprune.pruners.grasp import GraspScorer, grasp_weight_scores
from plprune.pruners.magnitude import MagnitudeScorer
from plprune.pruners.rewind import IMPScorer, WeightRewinder
from plprune.pruners.sensitivity import GateSensitivityScorer
from plprune.pruners.snip import SnipScorer, snip_weight_scores
from plprune.pruners.structured import group_sums
from plprune.schedules import AtInit, Linear, OneShot
from plprune.tasks.classification import ClassificationTask
from plprune.train.callbacks import Callback
from plprune.train.checkpoint import load_checkpoint
from plprune.train.config import TrainConfig
from plprune.train.loop import Trainer
from plprune.train.pruning import PruningCallback

VOCAB, SEQ = 20, 6


# -- tiny models and tasks -------------------------------------------------------------------------------
def bert(layers: int = 2, heads: int = 3, head_size: int = 2, dropout: float = 0.0) -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=heads * head_size,
        num_layers=layers,
        num_heads=heads,
        ffn_size=8,
        max_length=SEQ,
        dropout=dropout,
        attention_dropout=dropout,
        initializer_range=0.5,
    )
    return BertForMaskedLM(config).double()


def switch() -> SwitchForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=4, num_layers=1, num_heads=2, ffn_size=6, max_length=SEQ, dropout=0.0
    )
    return SwitchForMaskedLM(config, SwitchConfig(num_experts=3, expert_ffn_size=5)).double()


class TinyMlmTask:
    """Seeded MLM batches: batch s depends only on s; loss = the model's masked-token loss."""

    name = "tiny-mlm"
    steps_per_epoch = 10

    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(1000 + step)
        ids = torch.randint(0, VOCAB, (3, SEQ), generator=gen)
        masked = torch.rand(3, SEQ, generator=gen) < 0.4
        masked[:, 0] = True
        return ids, torch.where(masked, ids, torch.full_like(ids, -100))

    def loss(self, model: nn.Module, batch: tuple[Tensor, ...]) -> Tensor:
        return model(*batch).loss


class TinyCNN(nn.Module):
    """Two filter gate sites (8 + 8 filters) and a linear classifier, for 1-D inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = GatedConvBN(1, 8, dims=1)
        self.block2 = GatedConvBN(8, 8, dims=1)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(global_average_pool(self.block2(self.block1(x))))


CNN_INPUT = torch.zeros(2, 1, 16)  # what TinyCNN reads: (N, 1, 16), to trace its filters


def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


def toy_task() -> ClassificationTask:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    x = torch.randn(96, 1, 16, generator=gen) + labels.view(-1, 1, 1) * torch.linspace(-1, 1, 16)
    data = ClassificationData(x[:64], labels[:64], x[64:], labels[64:], 3, 1, "toy")
    return ClassificationTask(data, batch_size=8, seed=0, eval_batches=2)


def context(groups: GroupSet, task=None, step: int = 0) -> PruneContext:
    return PruneContext(groups, task or TinyMlmTask(), step=step, ratio=0.5, event_index=0, seed=0)


# -- hand-written group structure (independent of plprune.groups) -----------------------------------------
def head_parts(tensors: dict[str, Tensor], layer: int, head: int, head_size: int) -> list[Tensor]:
    """Head ``head`` of layer ``layer``: rows of Q/K/V weights and biases, columns of W_O."""
    rows = slice(head * head_size, (head + 1) * head_size)
    prefix = f"layers.{layer}.attention"
    parts = [
        tensors[f"{prefix}.{p}.{k}"][rows] for p in ("query", "key", "value") for k in ("weight", "bias")
    ]
    return [*parts, tensors[f"{prefix}.output.weight"][:, rows]]


def head_sums(tensors: dict[str, Tensor], layers: int, heads: int, head_size: int) -> Tensor:
    return torch.stack(
        [
            sum(part.sum() for part in head_parts(tensors, layer, head, head_size))
            for layer in range(layers)
            for head in range(heads)
        ]
    ).double()


def filter_parts(tensors: dict[str, Tensor], block: str, c: int) -> list[Tensor]:
    return [
        tensors[f"{block}.conv.weight"][c],
        tensors[f"{block}.bn.weight"][c],
        tensors[f"{block}.bn.bias"][c],
    ]


def params_of(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_model_untouched(model: nn.Module, before: dict[str, Tensor], training: bool) -> None:
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name} has a .grad left"
        assert torch.equal(param.detach(), before[name]), f"{name} changed"
    assert all(module.training == training for module in model.modules())


# -- group sums ---------------------------------------------------------------------------------------------
def test_group_sums_add_each_groups_slices_and_validate_their_input() -> None:
    model = bert()
    groups = GroupSet(model, kinds=("head",))
    gen = torch.Generator().manual_seed(3)
    scores = {
        name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for name, p in model.named_parameters()
    }
    torch.testing.assert_close(group_sums(groups, scores), head_sums(scores, 2, 3, 2), rtol=0, atol=1e-12)
    name = "layers.1.attention.output.weight"
    with pytest.raises(PlpruneError, match=r"missing.*output\.weight"):
        group_sums(groups, {k: v for k, v in scores.items() if k != name})
    with pytest.raises(PlpruneError, match="shape"):
        group_sums(groups, {**scores, name: scores[name].T[:-1]})
    with pytest.raises(PlpruneError, match="NaN or Inf"):
        group_sums(groups, {**scores, name: scores[name] * float("nan")})


# -- magnitude ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [1, 2, 3])
def test_magnitude_is_the_lp_norm_of_all_the_groups_weights(p: int) -> None:
    model = bert()
    groups = GroupSet(model, kinds=("head",))
    params = params_of(model)
    expected = torch.stack(
        [
            sum((part.abs() ** p).sum() for part in head_parts(params, layer, head, 2)) ** (1 / p)
            for layer in range(2)
            for head in range(3)
        ]
    )
    scores = MagnitudeScorer(p).scores(context(groups))
    assert scores.shape == (6,)
    torch.testing.assert_close(scores, expected, rtol=1e-12, atol=0)

    net = cnn()
    with torch.no_grad():  # BN γ, β are 1 and 0 at init: make them count
        for block in (net.block1, net.block2):
            block.bn.weight.uniform_(-2, 2)
            block.bn.bias.uniform_(-1, 1)
    filters = GroupSet(net, kinds=("filter",), example_inputs=CNN_INPUT)
    params = params_of(net)
    expected = torch.stack(
        [
            torch.cat([t.reshape(-1) for t in filter_parts(params, block, c)]).double().abs().pow(p).sum()
            ** (1 / p)
            for block in ("block1", "block2")
            for c in range(8)
        ]
    )
    torch.testing.assert_close(MagnitudeScorer(p).scores(context(filters, toy_task())), expected)


# -- gate sensitivity (Michel et al.) -----------------------------------------------------------------------
def test_grad_score_is_finite_difference_gate_sensitivity_normalised_per_layer() -> None:
    model = bert(dropout=0.3).train()  # scoring must switch dropout off (eval) and restore train mode
    groups = GroupSet(model, kinds=("head",))
    mask = torch.ones(6, dtype=torch.bool)
    mask[1] = False  # head 1 of layer 0 is pruned: score 0, gate 0 in the reference
    groups.apply_mask(mask)
    task = TinyMlmTask()
    before = params_of(model)
    ctx = context(groups, task, step=5)
    scores = GateSensitivityScorer(batches=3).scores(ctx)
    assert_model_untouched(model, before, training=True)

    reference = copy.deepcopy(model).eval()
    attention = GroupSet(reference, kinds=("head",)).sites
    base = mask.double().view(2, 3)
    raw = torch.zeros(6, dtype=torch.float64)
    eps = 1e-6
    for b in range(3):
        batch = task.train_batch(5 + b)
        for i in range(6):
            layer, head = divmod(i, 3)
            losses = []
            for sign in (1.0, -1.0):
                for site, gate in zip(attention, base.clone(), strict=True):
                    site.set_gate(gate)
                attention[layer].set_gate(base[layer] + sign * eps * torch.eye(3)[head].double())
                with torch.no_grad():
                    losses.append(reference(*batch).loss)
            raw[i] += ((losses[0] - losses[1]) / (2 * eps)).abs()
    raw[~mask] = 0.0
    torch.testing.assert_close(
        torch.tensor(ctx.log["raw_gate_sensitivity"], dtype=torch.float64), raw, rtol=1e-6, atol=1e-9
    )
    expected = torch.cat([raw[:3] / raw[:3].norm(), raw[3:] / raw[3:].norm()])
    expected = expected / expected.max()
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-9)
    assert scores[1] == 0 and scores.max() == 1
    assert all(site.gate is None or not site.gate.requires_grad for site in groups.sites)


# -- SNIP ---------------------------------------------------------------------------------------------------
def test_snip_is_the_group_sum_of_w_times_grad_of_the_whole_parameters() -> None:
    model = bert(dropout=0.3).train()
    groups = GroupSet(model, kinds=("head",))
    task = TinyMlmTask()
    before = params_of(model)
    scores = SnipScorer(batches=2).scores(context(groups, task, step=3))
    assert_model_untouched(model, before, training=True)

    reference = copy.deepcopy(model).eval()
    total = task.loss(reference, task.train_batch(3)) + task.loss(reference, task.train_batch(4))
    total.backward()
    unstructured = {name: (p.detach() * p.grad).abs() for name, p in reference.named_parameters()}
    torch.testing.assert_close(scores, head_sums(unstructured, 2, 3, 2), rtol=1e-10, atol=1e-14)

    model.eval()
    direct = snip_weight_scores(
        model, task.loss, [task.train_batch(3), task.train_batch(4)], groups.param_names
    )
    assert set(direct) == set(groups.param_names)
    for name, value in direct.items():
        torch.testing.assert_close(value, unstructured[name], rtol=1e-10, atol=1e-14)
    with pytest.raises(PlpruneError, match="at least one batch"):
        snip_weight_scores(model, task.loss, [], groups.param_names)
    with pytest.raises(PlpruneError, match="no parameters named"):
        snip_weight_scores(model, task.loss, [task.train_batch(0)], ["nope.weight"])


# -- GraSP --------------------------------------------------------------------------------------------------
def test_grasp_scores_use_the_exact_hessian_and_keep_the_smallest_removal_score() -> None:
    model = bert(layers=1, heads=2, head_size=2).eval()  # 2 heads of width 2: 4·(4·4) + 3·4 = 76 weights
    groups = GroupSet(model, kinds=("head",))
    task = TinyMlmTask()
    names = groups.param_names
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    theta = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss_of(flat: Tensor) -> Tensor:
        chunks = flat.split([s.numel() for s in shapes])
        weights = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return sum(functional_call(model, weights, task.train_batch(b)).loss for b in (7, 8))

    hessian = torch.autograd.functional.hessian(loss_of, theta)
    gradient = torch.autograd.functional.jacobian(loss_of, theta)
    removal = -theta * (hessian @ gradient)  # GraSP Eq. 8: S(−θ) = −θ ⊙ Hg

    scores = grasp_weight_scores(model, task.loss, [task.train_batch(7), task.train_batch(8)], names)
    flat = torch.cat([scores[n].reshape(-1) for n in names])
    torch.testing.assert_close(flat, removal, rtol=1e-8, atol=1e-12)

    before = params_of(model)
    model.train()
    keep = GraspScorer(batches=2).scores(context(groups, task, step=7))
    assert_model_untouched(model, before, training=True)
    chunks = dict(zip(names, (-removal).split([s.numel() for s in shapes]), strict=True))
    keep_reference = head_sums({n: c.view(params[n].shape) for n, c in chunks.items()}, 1, 2, 2)
    torch.testing.assert_close(keep, keep_reference, rtol=1e-8, atol=1e-12)  # keep = Σ θ ⊙ Hg


# -- all scorers ---------------------------------------------------------------------------------------------
SCORERS = [MagnitudeScorer(), GateSensitivityScorer(2), SnipScorer(2), GraspScorer(2)]


@pytest.mark.parametrize("scorer", SCORERS, ids=lambda s: s.name)
def test_scorers_on_experts_with_a_pruned_expert(scorer) -> None:
    model = switch().train()
    groups = GroupSet(model, kinds=("expert",))
    groups.apply_mask(torch.tensor([True, False, True]))  # no token reaches expert 1: unused parameters
    before = params_of(model)
    scores = scorer.scores(context(groups))
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    assert scores[1] == 0
    assert_model_untouched(model, before, training=True)
    assert groups.sites[0].gate is not None  # back to the hard mask, not a soft gate
    assert not groups.sites[0].gate.requires_grad


@pytest.mark.parametrize("scorer", SCORERS, ids=lambda s: s.name)
def test_scorers_on_filters_restore_batchnorm_mode_and_statistics(scorer) -> None:
    net = cnn().train()
    groups = GroupSet(net, kinds=("filter",), example_inputs=CNN_INPUT)
    buffers = {name: b.clone() for name, b in net.named_buffers()}
    before = params_of(net)
    scores = scorer.scores(context(groups, toy_task()))
    assert scores.shape == (16,) and torch.isfinite(scores).all()
    assert_model_untouched(net, before, training=True)
    for name, buffer in net.named_buffers():  # eval mode: running statistics are not updated
        assert torch.equal(buffer, buffers[name]), name


def test_bad_arguments_are_rejected() -> None:
    for make in (MagnitudeScorer, GateSensitivityScorer, SnipScorer, GraspScorer):
        for bad in (0, -1, 1.5, True, "4"):
            with pytest.raises(PlpruneError, match="positive integer"):
                make(bad)
    groups = GroupSet(cnn(), kinds=("filter",), example_inputs=CNN_INPUT)
    schedule = Linear(start=4, end=8, every=4, final_ratio=0.5)
    with pytest.raises(PlpruneError, match=r"0 <= rewind step < 4"):
        Pruner(groups.model, IMPScorer(4), schedule, groups=groups)
    with pytest.raises(PlpruneError, match="integer >= 0"):
        IMPScorer(-1)
    with pytest.raises(PlpruneError, match="integer >= 0"):
        WeightRewinder(-1)
    with pytest.raises(PlpruneError, match="first event is at step 0"):
        Pruner(groups.model, IMPScorer(0), AtInit(0.5), groups=groups)
    pruner = Pruner(groups.model, IMPScorer(2), schedule, groups=groups)
    for step in range(4):
        pruner.step(step)
    with pytest.raises(PlpruneError, match=r"call pruner.attach\(optimizer\) first"):
        pruner.step(4)  # the event runs, then the rewind needs the optimizer


# -- weight rewinding ----------------------------------------------------------------------------------------
class Recorder(Callback):
    """Clones the model state and the optimizer state size at given steps' ``on_step_start``."""

    def __init__(self, steps: tuple[int, ...]) -> None:
        self.steps = steps
        self.states: dict[int, dict[str, Tensor]] = {}
        self.optimizer_states: dict[int, int] = {}

    def on_step_start(self, trainer, step: int) -> None:
        if step in self.steps:
            self.states[step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            self.optimizer_states[step] = len(trainer.optimizer.state)


def rewinding_run(run_dir: Path, callbacks_before=(), callbacks_after=(), steps: int = 12):
    model = cnn()
    groups = GroupSet(model, kinds=("filter",), example_inputs=CNN_INPUT)
    schedule = Linear(start=4, end=8, every=4, final_ratio=0.5)
    pruning = PruningCallback(groups, IMPScorer(rewind_step=2), schedule)
    (rewinder,) = pruning.pruner.plugins
    assert isinstance(rewinder, WeightRewinder)
    config = TrainConfig(
        steps=steps, batch_size=8, lr=0.01, optimizer="adamw", grad_clip=0.0, eval_every=6, checkpoint_every=3
    )
    callbacks = [*callbacks_before, pruning, *callbacks_after]
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, toy_task(), config, run_dir, callbacks, progress=False)
    return trainer, groups, rewinder


def test_rewinding_restores_the_snapshot_keeps_pruned_weights_zero_and_clears_the_optimizer(
    tmp_path: Path,
) -> None:
    before = Recorder((2, 4, 8))  # before the pruning callback: the reference snapshot and trained weights
    after = Recorder((4, 5, 8))  # after the rewinder
    trainer, groups, rewinder = rewinding_run(tmp_path, [before], [after])
    masks = {}

    class MaskRecorder(Callback):
        def on_step_start(self, trainer, step):
            masks[step] = groups.mask.clone()

    trainer.callbacks.append(MaskRecorder())
    trainer.fit()
    assert rewinder.rewinds == 2 and groups.pruned_ratio("filter") == 0.5
    snapshot = before.states[2]
    for step in (4, 8):
        assert not torch.equal(before.states[step]["block1.conv.weight"], snapshot["block1.conv.weight"])
        expected = {k: v.clone() for k, v in snapshot.items()}
        pruned = (~masks[step]).nonzero().flatten().tolist()
        assert len(pruned) == (4 if step == 4 else 8)
        for index in pruned:
            block, c = ("block1", index) if index < 8 else ("block2", index - 8)
            for part in filter_parts(expected, block, c):
                part.zero_()
        state = after.states[step]
        assert state.keys() == expected.keys()
        for name, tensor in state.items():  # parameters and BN buffers alike
            assert torch.equal(tensor, expected[name]), (step, name)
        assert after.optimizer_states[step] == 0
    assert after.optimizer_states[5] > 0  # training goes on with a fresh optimizer state


class _StopError(Exception):
    pass


class StopAfter(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, step: int) -> None:
        if step == self.step + 1:  # the checkpoint at self.step is written; stop before the next one
            raise _StopError


@pytest.mark.parametrize("stop_after", [3, 6])  # after the snapshot / after the first rewind
def test_rewinder_state_round_trip_resumes_exactly(tmp_path: Path, stop_after: int) -> None:
    full, _, full_rewinder = rewinding_run(tmp_path / "full")
    full.fit()
    interrupted, _, _ = rewinding_run(tmp_path / "resumed", callbacks_after=[StopAfter(stop_after)])
    with pytest.raises(_StopError):
        interrupted.fit()
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")  # weights_only=True
    assert saved["step"] == stop_after
    (rewinder_state,) = saved["callbacks"]["PruningCallback#0"]["plugins"]
    assert rewinder_state["has_snapshot"] and rewinder_state["rewinds"] == (0 if stop_after < 4 else 1)

    resumed, _, resumed_rewinder = rewinding_run(tmp_path / "resumed")
    resumed.resume()
    resumed.fit()
    assert resumed_rewinder.rewinds == full_rewinder.rewinds == 2
    for name, tensor in full.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    numbers = [{k: v for k, v in r.items() if k != "wall_time" and "seconds" not in k} for r in full.history]
    resumed_numbers = [
        {k: v for k, v in r.items() if k != "wall_time" and "seconds" not in k} for r in resumed.history
    ]
    assert resumed_numbers == numbers[-len(resumed_numbers) :]
    with pytest.raises(PlpruneError, match="rewinds to step 2"):
        WeightRewinder(1).load_state_dict(rewinder_state)


def test_rewinding_a_switch_model_keeps_pruned_experts_unrouted() -> None:
    model = switch()
    groups = GroupSet(model, kinds=("expert",))
    task = TinyMlmTask()
    pruner = Pruner(model, IMPScorer(rewind_step=0), OneShot(2, 0.34), groups=groups)
    (rewinder,) = pruner.plugins
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner.attach(optimizer)
    pruner.step(0)  # the snapshot
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(2):  # "training": two SGD steps with momentum
        optimizer.zero_grad()
        task.loss(model, task.train_batch(step)).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    pruner.step(2)  # the event, then the rewind
    pruned = int((~groups.mask).nonzero())
    layer = model.layers[0].feed_forward
    assert layer.expert_keep.tolist() == [i != pruned for i in range(3)]  # not the snapshot's all-True
    assert len(optimizer.state) == 0 and rewinder.rewinds == 1
    for name, tensor in model.state_dict().items():
        if name.endswith("expert_keep"):
            continue
        if f"experts.{pruned}." in name:
            assert torch.count_nonzero(tensor) == 0, name
        else:
            assert torch.equal(tensor, snapshot[name]), name
    pruner.step(3)  # no new event: no second rewind
    assert rewinder.rewinds == 1


def test_scores_are_computed_even_when_called_under_no_grad() -> None:
    model = bert().eval()
    groups = GroupSet(model, kinds=("head",))
    task = TinyMlmTask()
    for scorer in (GateSensitivityScorer(1), SnipScorer(1), GraspScorer(1)):
        expected = scorer.scores(context(groups, task))
        with torch.no_grad():
            torch.testing.assert_close(scorer.scores(context(groups, task)), expected, rtol=0, atol=0)
    with torch.no_grad():
        direct = snip_weight_scores(model, task.loss, [task.train_batch(0)], groups.param_names)
    torch.testing.assert_close(group_sums(groups, direct), SnipScorer(1).scores(context(groups, task)))
