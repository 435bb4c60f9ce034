"""The CNN filter-pruning baselines of the PL paper's Tables 3 and 5: FPGM (He et al. 2019), CHIP (Sui et al.
2021) and DPFPS (Ruan et al. 2021), against independent references: numpy pairwise distances, numpy nuclear
norms of feature maps captured by calling the sub-modules by hand, and a hand-computed ℓ1 subgradient on the
expected-pruning filters; per-layer allocation; clear errors."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from plprune.data.images import ClassificationData
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import prune_count
from plprune.models.filters import GatedConvBN
from plprune.models.resnet import ResNet
from plprune.models.vgg import VGG
from plprune.pruners.base import PruneContext, select_mask
from plprune.pruners.chip import CHIPScorer
from plprune.pruners.dpfps import DPFPSRegulariser, DPFPSScorer, progressive_factor
from plprune.pruners.fpgm import FPGMScorer
from plprune.pruners.random import RandomScorer
from plprune.schedules import Linear, OneShot
from plprune.tasks.classification import ClassificationTask
from plprune.train.config import TrainConfig
from plprune.train.loop import Trainer
from plprune.train.pruning import PruningCallback
from tiny_models import tiny_bert

SMALL_CFG: tuple[int | str, ...] = (16, "M", 24, 32)  # × 0.25 → 4, 6, 8 filters


def toy_task(dims: int = 1, batch_size: int = 8) -> ClassificationTask:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    shape = (96, 1, 16) if dims == 1 else (96, 1, 6, 6)
    pattern = torch.linspace(-1, 1, 16) if dims == 1 else torch.linspace(-1, 1, 36).view(6, 6)
    x = torch.randn(shape, generator=gen) + labels.view(-1, *([1] * (dims + 1))) * pattern
    data = ClassificationData(x[:64], labels[:64], x[64:], labels[64:], 3, 1, "toy")
    return ClassificationTask(data, batch_size=batch_size, seed=0, eval_batches=2)


def tiny_vgg(dims: int = 1) -> VGG:
    torch.manual_seed(0)
    return VGG(width_multiplier=0.25, in_channels=1, num_classes=3, dims=dims, cfg=SMALL_CFG)


def tiny_resnet() -> ResNet:
    torch.manual_seed(0)
    return ResNet(depth=8, width_multiplier=0.25, in_channels=1, num_classes=3, dims=1)  # 4 + 8 + 16 filters


def warm_up(model: nn.Module, task: ClassificationTask) -> None:
    """Non-trivial BN running statistics (eval mode) and BN affine parameters."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for step in range(3):
            model(task.train_batch(step)[0] * 2 + 0.5)
        for module in gated_sites(model):
            module.bn.weight.copy_(torch.randn(module.bn.weight.shape, generator=gen))
            module.bn.bias.copy_(0.1 * torch.randn(module.bn.bias.shape, generator=gen))


def gated_sites(model: nn.Module) -> list[GatedConvBN]:
    """The filter gate sites in module order (group offsets follow this order)."""
    return [m for m in model.modules() if isinstance(m, GatedConvBN)]


def context(groups: GroupSet, task: ClassificationTask | None = None, step: int = 0) -> PruneContext:
    return PruneContext(groups, task, step=step, ratio=0.5, event_index=0, seed=0)  # type: ignore[arg-type]


def prune(groups: GroupSet, indices: list[int]) -> np.ndarray:
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[indices] = False
    groups.apply_mask(mask)
    return mask.numpy()


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed"


# -- FPGM ----------------------------------------------------------------------------------------------


def fpgm_reference(model: nn.Module, alive: np.ndarray) -> np.ndarray:
    """Σ_j ‖F_i − F_j‖₂ over the other alive conv filters of the same layer, with itertools and numpy."""
    out, offset = [], 0
    for module in gated_sites(model):
        w = module.conv.weight.detach().double().numpy().reshape(module.conv.weight.shape[0], -1)
        keep = alive[offset : offset + len(w)]
        sums = np.zeros(len(w))
        for i, j in itertools.product(range(len(w)), repeat=2):
            if keep[i] and keep[j]:
                sums[i] += np.sqrt(((w[i] - w[j]) ** 2).sum())
        out.append(sums)
        offset += len(w)
    return np.concatenate(out)


@pytest.mark.parametrize("build", [tiny_vgg, tiny_resnet])
def test_fpgm_is_the_sum_of_distances_to_the_alive_filters_of_the_layer(build) -> None:
    model = build()
    warm_up(model, toy_task())
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    alive = prune(groups, [1, 5, len(groups) - 2])
    before = state_copy(model)
    scorer = FPGMScorer()
    scores = scorer.scores(context(groups))
    assert scorer.name == "fpgm" and scorer.allocation == "per_layer"
    assert scores.shape == (len(groups),) and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), fpgm_reference(model, alive), rtol=1e-12, atol=1e-12)
    assert (scores[~groups.mask] == 0).all()
    assert_state_unchanged(model, before)
    with torch.no_grad():  # BN affine parameters are not part of FPGM's filters
        for module in gated_sites(model):
            module.bn.weight.mul_(-3.0)
            module.bn.bias.add_(1.0)
    assert torch.equal(scorer.scores(context(groups)), scores)


# -- CHIP ----------------------------------------------------------------------------------------------


def maps_by_hand(model: nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """Post-gate post-ReLU maps of every filter site, by running the sub-modules one by one."""
    maps = []
    if isinstance(model, VGG):
        for layer in model.features:
            x = layer(x)
            if isinstance(layer, GatedConvBN):
                maps.append(x.double().numpy())
        return maps
    x = model.stem(x)
    for block in model.blocks:
        inner = block.conv1(x)
        maps.append(inner.double().numpy())
        x = torch.relu(block.shortcut(x) + block.conv2(inner))
    return maps


def chip_reference(model: nn.Module, inputs: list[torch.Tensor], alive: np.ndarray) -> np.ndarray:
    """CI_c = ‖A‖_* − ‖A with row c zeroed‖_* (numpy) of the maps of :func:`maps_by_hand` in eval mode,
    averaged over every sample of every input batch."""
    model.eval()
    totals, count = 0.0, 0
    with torch.no_grad():
        for x in inputs:
            ci = []
            for fmap in maps_by_hand(model, x):
                per_sample = np.zeros((fmap.shape[0], fmap.shape[1]))
                for n in range(fmap.shape[0]):
                    a = fmap[n].reshape(fmap.shape[1], -1)
                    full = np.linalg.norm(a, "nuc")
                    for c in range(a.shape[0]):
                        zeroed = a.copy()
                        zeroed[c] = 0.0
                        per_sample[n, c] = full - np.linalg.norm(zeroed, "nuc")
                ci.append(per_sample)
            totals = totals + np.concatenate(ci, axis=1).sum(axis=0)
            count += x.shape[0]
    expected = totals / count
    expected[~alive] = 0.0
    return expected


@pytest.mark.parametrize(
    ("build", "dims"),
    [(tiny_vgg, 1), (tiny_vgg, 2), (tiny_resnet, 1)],  # maps (C, S) with S > C, S = C and S < C
    ids=["vgg-1d", "vgg-2d", "resnet-1d"],
)
def test_chip_matches_numpy_nuclear_norms_of_independently_captured_maps(build, dims: int) -> None:
    model, task = (build(dims) if build is tiny_vgg else build()), toy_task(dims)
    warm_up(model, task)
    groups = GroupSet(model, kinds=("filter",), example_inputs=task.train_batch(0)[0])
    alive = prune(groups, [2, 7])
    model.train()
    before = state_copy(model)
    hooks = hook_counts(model)
    scorer = CHIPScorer(batches=2, samples=3)
    scores = scorer.scores(context(groups, task, step=5))
    assert scorer.name == "chip" and scorer.allocation == "per_layer"
    assert model.training, "the previous mode must be restored"
    assert hook_counts(model) == hooks, "CHIP's hooks must be removed"
    assert_state_unchanged(model, before)  # eval mode: BN running statistics untouched too
    inputs = [task.train_batch(5 + b)[0][:3] for b in range(2)]
    expected = chip_reference(model, inputs, alive)
    assert scores.shape == (len(groups),) and torch.isfinite(scores).all()
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-9)
    assert (scores[~groups.mask] == 0).all() and (scores[groups.mask] >= 0).all()
    assert (scores[groups.mask] > 1e-6).float().mean() > 0.5  # not trivially zero


def hook_counts(model: nn.Module) -> list[int]:
    """Forward hooks per module (the GroupSet's gate hooks stay; a scorer's own must go)."""
    return [len(m._forward_hooks) for m in model.modules()]


class FailingTask:
    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 1, 16), torch.zeros(4, dtype=torch.long)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        model(batch[0])
        raise RuntimeError("boom")


def test_chip_removes_its_hooks_and_restores_the_mode_on_error() -> None:
    model = tiny_vgg()
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    model.train()
    hooks = hook_counts(model)
    with pytest.raises(RuntimeError, match="boom"):
        CHIPScorer().scores(context(groups, FailingTask()))  # type: ignore[arg-type]
    assert model.training
    assert hook_counts(model) == hooks


# -- per-layer allocation ------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", [FPGMScorer(), CHIPScorer(samples=4)], ids=["fpgm", "chip"])
def test_per_layer_allocation_removes_the_same_fraction_of_every_layer(scorer, tmp_path: Path) -> None:
    model, task = tiny_resnet(), toy_task()
    warm_up(model, task)
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    scores = scorer.scores(context(groups, task))
    mask = select_mask(groups, scores, 0.5, scorer.allocation)
    for layer in torch.unique(groups.layer_ids):
        members = groups.layer_ids == layer
        removed = int((~mask[members]).sum())
        assert removed == prune_count(int(members.sum()), 0.5)  # 2 of 4, 4 of 8, 8 of 16
        assert scores[members & ~mask].max() <= scores[members & mask].min()  # the lowest of the layer
    pruning = PruningCallback(
        groups, scorer, OneShot(0, 0.5), log_path=tmp_path / "pruning.jsonl"
    )  # the callback uses the scorer's allocation
    pruning.prune(task, OneShot(0, 0.5).events()[0], 0)
    assert torch.equal(groups.mask, mask)


def test_allocation_override_makes_a_global_scorer_prune_per_layer(tmp_path: Path) -> None:
    """``allocation="per_layer"`` on the callback (``--allocation``) overrides a global scorer's ranking."""
    model, task = tiny_resnet(), toy_task()
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    # global scores that favour the last layer: a global TopK would empty the others down to protection
    scores = groups.layer_ids.double() * 10 + torch.arange(len(groups)).double() / len(groups)

    class Fixed(RandomScorer):
        def scores(self, context):
            return scores

    assert Fixed().allocation == "global"
    pruning = PruningCallback(
        groups, Fixed(), OneShot(0, 0.5), log_path=tmp_path / "p.jsonl", allocation="per_layer"
    )
    record = pruning.prune(task, OneShot(0, 0.5).events()[0], 0)
    assert record["allocation"] == "per_layer"
    for layer in torch.unique(groups.layer_ids):
        members = groups.layer_ids == layer
        assert int((~groups.mask[members]).sum()) == prune_count(int(members.sum()), 0.5)
    with pytest.raises(PlpruneError, match="unknown allocation 'by-size'; valid: global, per_layer"):
        PruningCallback(groups, Fixed(), OneShot(0, 0.5), allocation="by-size")


# -- DPFPS ---------------------------------------------------------------------------------------------


def test_dpfps_scores_are_the_absolute_bn_scales() -> None:
    model = tiny_resnet()
    warm_up(model, toy_task())
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    alive = prune(groups, [0, 9])
    gamma = np.concatenate([m.bn.weight.detach().double().numpy() for m in gated_sites(model)])
    scorer = DPFPSScorer()
    scores = scorer.scores(context(groups))
    assert scorer.name == "dpfps" and scorer.allocation == "global"
    np.testing.assert_array_equal(scores.numpy(), np.where(alive, np.abs(gamma), 0.0))


def protected_removal(
    values: np.ndarray, layer_of: np.ndarray, alive: np.ndarray, ratio: float
) -> np.ndarray:
    """Independent global ranking with layer protection: keep the largest alive value of every layer, then
    the largest others until p − round(ratio · p) are kept; returns the alive filters not kept."""
    p = len(values)
    keep_count = p - math.floor(ratio * p + 0.5)
    order = sorted(range(p), key=lambda i: (-values[i], i))
    kept = set()
    for layer in np.unique(layer_of):
        kept.add(next(i for i in order if layer_of[i] == layer and alive[i]))
    for i in order:
        if len(kept) >= keep_count:
            break
        if alive[i]:
            kept.add(i)
    return np.array([alive[i] and i not in kept for i in range(p)])


def expected_penalty(
    model: nn.Module, grads: dict[str, torch.Tensor], alive: np.ndarray, ratio: float, factor: float
) -> np.ndarray:
    """The documented DPFPS rule by hand: per-layer counts from the global |γ| ranking at ``ratio``; in
    each layer that many alive filters of smallest |Σ w·∂L/∂w| (conv filter, γ, β); value factor·sign(γ)."""
    names = {module: name for name, module in model.named_modules()}
    sites = gated_sites(model)
    gamma = np.concatenate([m.bn.weight.detach().double().numpy() for m in sites])
    layer_of = np.concatenate([np.full(m.bn.weight.shape[0], k) for k, m in enumerate(sites)])
    removal = protected_removal(np.abs(gamma), layer_of, alive, ratio)
    taylor = []
    for m in sites:
        prefix = names[m]
        w = m.conv.weight.detach().double().numpy()
        gw = grads[f"{prefix}.conv.weight"].double().numpy()
        terms = (w * gw).reshape(w.shape[0], -1).sum(axis=1)
        terms += m.bn.weight.detach().double().numpy() * grads[f"{prefix}.bn.weight"].double().numpy()
        terms += m.bn.bias.detach().double().numpy() * grads[f"{prefix}.bn.bias"].double().numpy()
        taylor.append(np.abs(terms))
    taylor = np.concatenate(taylor)
    chosen = np.zeros(len(gamma), dtype=bool)
    for layer in np.unique(layer_of):
        members = np.nonzero((layer_of == layer) & alive)[0]
        count = int(removal[members].sum())
        chosen[members[np.argsort(taylor[members], kind="stable")[:count]]] = True
    return np.where(chosen, factor * np.sign(gamma), 0.0)


def backward(model: nn.Module, task: ClassificationTask, pruning: PruningCallback, step: int) -> dict:
    model.train()
    model.zero_grad(set_to_none=True)
    task.loss(model, task.train_batch(step)).backward()
    pruning.on_after_backward(None, step)  # type: ignore[arg-type]
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def gamma_grad_change(model: nn.Module, before: dict[str, torch.Tensor]) -> np.ndarray:
    """Change of every γ gradient; asserts that no other gradient changed."""
    names = {module: name for name, module in model.named_modules()}
    gamma_names = {f"{names[m]}.bn.weight" for m in gated_sites(model)}
    for name, p in model.named_parameters():
        if name not in gamma_names:
            assert torch.equal(p.grad, before[name]), f"{name}.grad changed"
    return np.concatenate(
        [(m.bn.weight.grad - before[f"{names[m]}.bn.weight"]).double().numpy() for m in gated_sites(model)]
    )


def test_dpfps_regulariser_adds_the_progressive_l1_subgradient_on_the_expected_pruning_filters(
    tmp_path: Path,
) -> None:
    model, task = tiny_resnet(), toy_task()
    warm_up(model, task)
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    schedule = Linear(start=4, end=8, every=2, final_ratio=0.5)  # events at steps 4, 6, 8
    log = tmp_path / "pruning.jsonl"
    pruning = PruningCallback(groups, DPFPSScorer(strength=0.5), schedule, log_path=log)
    (regulariser,) = pruning.pruner.plugins  # the scorer brings its regulariser
    assert isinstance(regulariser, DPFPSRegulariser)
    alive = np.ones(len(groups), dtype=bool)

    # step 3: s = σ(30·4/8 − 15) = 1/2, penalty 0.5 · 1/2
    grads = backward(model, task, pruning, 3)
    regulariser.before_update(pruning.pruner, 3)
    change = gamma_grad_change(model, grads)
    expected = expected_penalty(model, grads, alive, 0.5, 0.25)
    np.testing.assert_allclose(change, expected, rtol=1e-6, atol=1e-8)
    assert regulariser.last_penalised == int((expected != 0).sum()) == 14  # 28 filters, final ratio 1/2

    # after the first event: pruned filters untouched, counts are what is still to go
    pruning.prune(task, schedule.events()[0], 4)
    alive = groups.mask.numpy().copy()
    assert (~alive).sum() == 5
    grads = backward(model, task, pruning, 4)
    regulariser.before_update(pruning.pruner, 4)
    change = gamma_grad_change(model, grads)
    factor = 0.5 / (1 + math.exp(15 - 30 * 5 / 8))
    expected = expected_penalty(model, grads, alive, 0.5, factor)
    np.testing.assert_allclose(change, expected, rtol=1e-6, atol=1e-9)
    assert (change[~alive] == 0).all() and int((expected != 0).sum()) == 14 - 5

    # every event done: no penalty at all
    pruning.pruner.events_done = len(schedule.events())
    grads = backward(model, task, pruning, 9)
    regulariser.before_update(pruning.pruner, 9)
    assert (gamma_grad_change(model, grads) == 0).all() and regulariser.last_penalised == 0

    # strength 0: nothing either
    pruning.pruner.events_done = 0
    assert DPFPSScorer(strength=0.0).plugins() == []
    off = DPFPSRegulariser(strength=0.0)
    off.bind(pruning.pruner)
    grads = backward(model, task, pruning, 3)
    off.before_update(pruning.pruner, 3)
    assert (gamma_grad_change(model, grads) == 0).all()


def _greedy_protected_top_k(scores: torch.Tensor, keep: int, layer_ids: torch.Tensor, alive: torch.Tensor):
    """The rule of Alg. 2 line 8 written out as loops: in score order (ties to the lower index), each
    layer's best alive group first, then the best alive groups until ``keep``."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    mask = torch.zeros(len(scores), dtype=torch.bool)
    for layer in torch.unique(layer_ids).tolist():
        mask[next(i for i in order if int(layer_ids[i]) == layer and alive[i])] = True
    for i in order:
        if int(mask.sum()) >= keep:
            break
        mask[i] = mask[i] or bool(alive[i])
    return mask


def test_protected_top_k_equals_the_greedy_rule_on_filters() -> None:
    model = tiny_resnet()
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    gen = torch.Generator().manual_seed(5)
    for trial in range(40):
        if trial == 20:  # some filters already pruned, including most of the smallest layer
            prune(groups, [0, 1, 2, 6, 7, 20])
        scores = torch.randint(0, 6 if trial % 2 else 1000, (len(groups),), generator=gen).double()  # ties
        for ratio in (0.0, 0.3, 0.5, 0.8):
            keep = len(groups) - prune_count(len(groups), ratio)
            if ratio < groups.pruned_ratio():  # would revive filters: refused
                with pytest.raises(PlpruneError, match="cannot keep"):
                    select_mask(groups, scores, ratio, "global")
                continue
            expected = _greedy_protected_top_k(scores, keep, groups.layer_ids, groups.mask)
            assert torch.equal(select_mask(groups, scores, ratio, "global"), expected)


def test_progressive_factor_is_the_papers_sigmoid_over_steps() -> None:
    assert progressive_factor(3, 8) == pytest.approx(0.5)
    assert progressive_factor(0, 100) == pytest.approx(1 / (1 + math.exp(15 - 0.3)))
    values = [progressive_factor(t, 50) for t in range(60)]
    assert all(b >= a for a, b in itertools.pairwise(values)) and values[-1] == 1.0
    assert progressive_factor(0, 0) == 1.0


def test_dpfps_prunes_inside_the_training_loop(tmp_path: Path) -> None:
    model, task = tiny_resnet(), toy_task()
    groups = GroupSet(model, kinds=("filter",), example_inputs=torch.zeros(2, 1, 16))
    schedule = Linear(start=2, end=6, every=2, final_ratio=0.5)
    pruning = PruningCallback(groups, DPFPSScorer(strength=1e-2), schedule)
    config = TrainConfig(
        steps=8, batch_size=8, lr=0.05, optimizer="sgd", grad_clip=0.0, eval_every=4, checkpoint_every=0
    )
    final = Trainer(model, task, config, tmp_path, [pruning], progress=False).fit()
    assert groups.pruned_ratio("filter") == pytest.approx(0.5)
    assert final["dpfps_penalised_filters"] == 0  # nothing left to push after the last event
    assert trainer_history_has_penalty(tmp_path)
    for module, keep in zip(gated_sites(model), mask_per_site(groups), strict=True):
        assert (module.bn.weight.detach()[~keep] == 0).all()


def trainer_history_has_penalty(run_dir: Path) -> bool:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return any(r.get("dpfps_penalised_filters", 0) > 0 and r["dpfps_penalty"] > 0 for r in records)


def mask_per_site(groups: GroupSet) -> list[torch.Tensor]:
    sizes = [site.num_groups for site in groups.sites]
    return list(torch.split(groups.mask, sizes))


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", [FPGMScorer(), CHIPScorer(), DPFPSScorer()], ids=["fpgm", "chip", "dpfps"])
def test_non_filter_groups_are_rejected(scorer) -> None:
    groups = GroupSet(tiny_bert(), kinds=("head",))
    with pytest.raises(PlpruneError, match=r"kind 'filter' only.*allowed kinds: filter"):
        scorer.scores(context(groups))


def test_regulariser_rejects_bad_arguments(tmp_path: Path) -> None:
    heads = GroupSet(tiny_bert(), kinds=("head",))
    with pytest.raises(PlpruneError, match="scorer 'dpfps' scores filter groups only, not head"):
        PruningCallback(heads, DPFPSScorer(), OneShot(1, 0.5))
    head_pruning = PruningCallback(heads, RandomScorer(), OneShot(1, 0.5))
    with pytest.raises(PlpruneError, match="allowed kinds: filter"):
        DPFPSRegulariser().bind(head_pruning.pruner)
    for strength in (-1e-4, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(PlpruneError, match="strength must be a finite number >= 0"):
            DPFPSRegulariser(strength=strength)  # type: ignore[arg-type]
        with pytest.raises(PlpruneError, match="strength must be a finite number >= 0"):
            DPFPSScorer(strength=strength)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batches": 0}, "CHIP batches must be a positive integer"),
        ({"batches": 1.5}, "CHIP batches must be a positive integer"),
        ({"samples": 0}, "CHIP samples must be a positive integer"),
        ({"samples": True}, "CHIP samples must be a positive integer"),
    ],
)
def test_chip_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(PlpruneError, match=message):
        CHIPScorer(**kwargs)
