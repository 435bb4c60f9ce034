"""GroupSet: discovery, soft gates, hard masks that stay zero, protection; TopK rules."""

from __future__ import annotations

import pytest
import torch

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import protected_top_k, prune_count
from plprune.models import BertConfig, BertForMaskedLM


def tiny_bert(layers: int = 2, heads: int = 4) -> BertForMaskedLM:
    return BertForMaskedLM(
        BertConfig(
            vocab_size=30, hidden_size=16, num_layers=layers, num_heads=heads, ffn_size=32, max_length=8
        )
    )


def test_groupset_discovers_every_head_with_its_slices() -> None:
    groups = GroupSet(tiny_bert(), kinds=("head",))
    assert len(groups) == 8
    assert groups.names[:2] == ["head:L0.0", "head:L0.1"]
    assert groups.layer_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    head = groups.groups[5]  # layer 1, head 1: rows/cols 4..8 of a 16-wide layer with 4 heads
    assert {(s.param_name.split(".")[-2], s.dim, s.start, s.stop) for s in head.slices} == {
        ("query", 0, 4, 8),
        ("key", 0, 4, 8),
        ("value", 0, 4, 8),
        ("output", 1, 4, 8),
    }
    assert len(head.slices) == 7  # weights + biases of Q/K/V, columns of O


def test_model_without_groups_is_rejected() -> None:
    with pytest.raises(PlpruneError, match="no discoverable groups"):
        GroupSet(torch.nn.Linear(3, 3))


def test_hard_mask_zeroes_weights_and_they_stay_zero_through_100_adamw_steps() -> None:
    model = tiny_bert()
    groups = GroupSet(model, kinds=("head",))
    mask = torch.ones(8, dtype=torch.bool)
    mask[[1, 2, 6]] = False
    groups.apply_mask(mask)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(5, 30, (4, 8))
    labels = ids.clone()
    params = dict(model.named_parameters())
    for _ in range(100):
        loss = model(ids, labels).loss
        optimizer.zero_grad()
        loss.backward()
        groups.mask_gradients()
        optimizer.step()
        groups.enforce()
    for index in (1, 2, 6):
        for piece in groups.groups[index].slices:
            assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
    kept = groups.groups[0].slices[0]
    assert torch.count_nonzero(kept.select(params[kept.param_name])) > 0


def test_masked_gradients_are_zero_before_the_step() -> None:
    model = tiny_bert()
    groups = GroupSet(model, kinds=("head",))
    groups.apply_mask(torch.tensor([0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool))
    ids = torch.randint(5, 30, (2, 8))
    model(ids, ids).loss.backward()
    groups.mask_gradients()
    params = dict(model.named_parameters())
    for piece in groups.groups[0].slices:
        assert torch.count_nonzero(piece.select(params[piece.param_name].grad)) == 0


def test_pruned_head_is_equivalent_to_gate_zero() -> None:
    model = tiny_bert().eval()
    ids = torch.randint(5, 30, (2, 8))
    groups = GroupSet(model, kinds=("head",))
    gates = torch.ones(8)
    gates[3] = 0.0
    with groups.soft_gates(gates):
        gated = model(ids).logits
    groups.apply_mask(gates.bool())
    torch.testing.assert_close(model(ids).logits, gated, rtol=0, atol=1e-6)


def test_protection_and_monotone_masks() -> None:
    groups = GroupSet(tiny_bert(), kinds=("head",))
    with pytest.raises(PlpruneError, match="every head of layer 1"):
        groups.apply_mask(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool))
    groups.apply_mask(torch.tensor([1, 0, 1, 1, 1, 1, 1, 1], dtype=torch.bool))
    with pytest.raises(PlpruneError, match="cannot revive"):
        groups.apply_mask(torch.ones(8, dtype=torch.bool))


def test_soft_gates_are_differentiable_and_cleared() -> None:
    model = tiny_bert().eval()
    groups = GroupSet(model, kinds=("head",))
    gates = torch.full((8,), 0.5, requires_grad=True)
    ids = torch.randint(5, 30, (2, 8))
    with groups.soft_gates(gates):
        model(ids, ids).loss.backward()
    assert gates.grad is not None and torch.count_nonzero(gates.grad) == 8
    assert all(site.gate is None for site in groups.sites)


def test_top_k_respects_k_protection_ties_and_alive() -> None:
    layer_ids = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([5.0, 4.0, 3.0, 1.0, 1.0, 0.5])
    # k = 3: the best of layer 1 (index 3: tie with 4 goes to the lower index) is protected
    assert protected_top_k(scores, 3, layer_ids).tolist() == [True, True, False, True, False, False]
    # all tied: protect the first of each layer (0, 3), then fill by index (1, 2)
    tied = torch.ones(6)
    assert protected_top_k(tied, 4, layer_ids).tolist() == [True, True, True, True, False, False]
    # pruned (not alive) groups are never chosen
    alive = torch.tensor([False, True, True, True, True, True])
    assert protected_top_k(scores, 3, layer_ids, alive).tolist() == [False, True, True, True, False, False]
    with pytest.raises(PlpruneError, match="protected group"):
        protected_top_k(scores, 1, layer_ids)
    with pytest.raises(PlpruneError, match="NaN"):
        protected_top_k(torch.tensor([float("nan")] * 6), 3, layer_ids)


def test_prune_count_rounding() -> None:
    assert prune_count(32, 0.75) == 24
    assert prune_count(8, 0.5) == 4
    assert prune_count(10, 0.25) == 3  # 2.5 rounds up
    assert prune_count(10, 0.0) == 0
    with pytest.raises(PlpruneError, match=r"\[0, 1\)"):
        prune_count(10, 1.0)


def test_kind_ratios_scale_with_the_schedule_and_reject_unknown_kinds() -> None:
    from plprune.pruners import RandomScorer
    from plprune.schedules import Linear
    from plprune.train.pruning import PruningCallback

    groups = GroupSet(tiny_bert(layers=2, heads=8), kinds=("head",))
    schedule = Linear(start=0, end=20, every=10, final_ratio=0.75)  # events at 0.25, 0.5, 0.75
    callback = PruningCallback(groups, RandomScorer(), schedule, kind_ratios={"head": 0.5})
    assert [callback.event_ratios(e)["head"] for e in schedule.events()] == pytest.approx([1 / 6, 1 / 3, 0.5])
    with pytest.raises(PlpruneError, match="does not have"):
        PruningCallback(groups, RandomScorer(), schedule, kind_ratios={"expert": 0.5})
    with pytest.raises(PlpruneError, match="protected group"):
        PruningCallback(groups, RandomScorer(), schedule, kind_ratios={"head": 0.95})
