"""Heads of every mainstream attention layout (tiny Hugging Face models from configs, float64).

For each family: the heads found (query and key/value heads, head size) match the config; the masked
model's output equals an independent reference — the dense model with the pruned heads' output-projection
columns zeroed by hand, no hooks — and differs from the dense output; pruned weights are exactly zero; the
compacted model matches the masked one within 1e-5 and has exactly the parameters counted by hand.
Grouped-/multi-query attention keeps the same number of query heads per KV head, and says so when a mask
would not; T5's layers, which share one position bias, compact only when they keep the same heads.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import plprune
from hf_families import FAMILIES, Family
from plprune.compaction import compact
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import select_mask
from plprune.sites.heads import HeadSite
from plprune.sites.projections import in_features, out_dim, out_features

transformers = pytest.importorskip("transformers")


def _reference(model: nn.Module, groups: GroupSet, mask: torch.Tensor) -> nn.Module:
    """The dense model with each pruned head's W_O columns zeroed by hand (head j: inputs [j·d, (j+1)·d))."""
    reference = copy.deepcopy(model)
    plprune.compaction.strip_gate_hooks(reference)
    for site, start, stop in groups.site_ranges():
        output = reference.get_submodule(f"{site.module_name}.{site.paths['output']}")
        columns = output.weight.data if out_dim(output) == 0 else output.weight.data.T
        for j in (~mask[start:stop]).nonzero().flatten().tolist():
            columns[:, j * site.head_size : (j + 1) * site.head_size] = 0
    return reference


def _removed_parameters(groups: GroupSet, mask: torch.Tensor) -> int:
    """Per pruned query head: its rows of W_Q (+ bias), its columns of W_O, and under multi-head attention
    its rows of W_K, W_V (+ biases); counted from the projections' shapes, not from the groups."""
    total = 0
    for site, start, stop in groups.site_ranges():
        d, hidden = site.head_size, in_features(next(iter(site.linears.values())))
        fused = "fused" in site.linears
        q = site.linears["fused" if fused else "query"]
        per_proj = d * hidden + (d if q.bias is not None else 0)
        per_head = per_proj * (1 if site.grouped else 3) + d * out_features(site.linears["output"])
        total += per_head * int((~mask[start:stop]).sum())
        if site.head_tables():  # T5's relative bias: one column (num_buckets entries) per head
            (name, _), = site.head_tables()
            total += dict(groups.model.named_parameters())[name].shape[0] * int((~mask[start:stop]).sum())
    return total


def _same_heads_everywhere(groups: GroupSet) -> torch.Tensor:
    """Scores that rank heads by index only, so every layer keeps the same heads (what T5 needs)."""
    return torch.cat([torch.arange(stop - start, 0, -1).double() for _, start, stop in groups.site_ranges()])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_heads_are_found_masked_exactly_and_compacted(name: str) -> None:
    family: Family = FAMILIES[name]
    model = family.build()
    dense = family.forward(model).detach()
    groups = GroupSet(model, kinds=("head",))
    assert len(groups.sites) == family.modules and all(isinstance(s, HeadSite) for s in groups.sites)
    assert {(s.num_groups, s.kv_heads, s.head_size) for s in groups.sites} == {
        (family.heads, family.kv_heads, family.head_size)
    }
    assert torch.equal(family.forward(model), dense)  # hooks alone change nothing
    if name == "t5":
        scores = _same_heads_everywhere(groups)
    else:
        scores = torch.randn(len(groups), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mask = select_mask(groups, scores, 0.5, "per_layer")
    groups.apply_mask(mask)
    masked = family.forward(model).detach()
    assert not torch.allclose(masked, dense)
    torch.testing.assert_close(masked, family.forward(_reference(model, groups, mask)), rtol=0, atol=1e-10)
    params = dict(model.named_parameters())
    for index in (~mask).nonzero().flatten().tolist():
        for piece in groups.groups[index].slices:
            assert not piece.select(params[piece.param_name]).any()
    small, report = compact(groups)
    torch.testing.assert_close(family.forward(small), masked, rtol=0, atol=1e-5)
    assert report.parameters_before - report.parameters_after == _removed_parameters(groups, mask)
    again = GroupSet(small, kinds=("head",))  # the compacted model's counts are read from its shapes
    kept = [int(mask[a:b].sum()) for _, a, b in groups.site_ranges()]
    assert [s.num_groups for s in again.sites] == kept


@pytest.mark.parametrize("name", ["llama-gqa", "phi3-fused-gqa", "falcon-new-arch", "qwen2-gqa"])
@pytest.mark.parametrize("allocation", ["global", "per_layer"])
def test_grouped_query_attention_keeps_the_same_number_of_query_heads_per_kv_head(
    name: str, allocation: str
) -> None:
    family = FAMILIES[name]
    model = family.build()
    groups = GroupSet(model, kinds=("head",))
    for seed in range(5):
        scores = torch.randn(len(groups), generator=torch.Generator().manual_seed(seed))
        mask = select_mask(groups, scores, 0.5, allocation)
        for site, start, stop in groups.site_ranges():
            per_kv = [int(mask[start:stop][g * site.layout.per_kv : (g + 1) * site.layout.per_kv].sum())
                      for g in range(site.kv_heads)]
            assert len(set(per_kv)) == 1 and per_kv[0] >= 1, per_kv
            # within a KV group, the best-scored query heads stay
            for g in range(site.kv_heads):
                inside = scores[start:stop][g * site.layout.per_kv : (g + 1) * site.layout.per_kv]
                kept = mask[start:stop][g * site.layout.per_kv : (g + 1) * site.layout.per_kv]
                if (~kept).any():
                    assert inside[kept].min() >= inside[~kept].max()


def test_a_gqa_compaction_keeps_every_kv_head_and_updates_the_grouping() -> None:
    model = FAMILIES["llama-gqa"].build()  # 8 query heads, 2 KV heads per layer
    groups = GroupSet(model, kinds=("head",))
    mask = select_mask(groups, torch.arange(len(groups), dtype=torch.float64), 0.75, "per_layer")
    groups.apply_mask(mask)  # 2 query heads per layer: one per KV head
    masked = FAMILIES["llama-gqa"].forward(model)
    small, _ = compact(groups)
    for layer in small.model.layers:
        attention = layer.self_attn
        assert attention.q_proj.out_features == 2 * 4 and attention.k_proj.out_features == 2 * 4
        assert attention.num_key_value_groups == 1
    torch.testing.assert_close(FAMILIES["llama-gqa"].forward(small), masked, rtol=0, atol=1e-5)


def test_an_uneven_gqa_mask_is_refused_with_the_reason() -> None:
    groups = GroupSet(FAMILIES["llama-gqa"].build(), kinds=("head",))
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[0] = False  # layer 0 would keep 3 query heads for KV head 0 and 4 for KV head 1
    with pytest.raises(PlpruneError, match=r"keeps \[3, 4\] query heads.*same number in every group"):
        groups.apply_mask(mask)


def test_multi_query_attention_can_be_pruned_to_one_query_head() -> None:
    family = FAMILIES["llama-mqa"]
    model = family.build()
    groups = GroupSet(model, kinds=("head",))
    groups.apply_mask(select_mask(groups, torch.randn(len(groups)), 0.75, "per_layer"))
    masked = family.forward(model)
    small, _ = compact(groups)
    assert [layer.self_attn.q_proj.out_features for layer in small.model.layers] == [8, 8]
    torch.testing.assert_close(family.forward(small), masked, rtol=0, atol=1e-5)


def test_t5_layers_sharing_a_position_bias_compact_only_with_the_same_heads() -> None:
    family = FAMILIES["t5"]
    model = family.build()
    groups = GroupSet(model, kinds=("head",))
    scores = torch.randn(len(groups), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mask = select_mask(groups, scores, 0.5, "per_layer")
    groups.apply_mask(mask)
    with pytest.raises(PlpruneError, match=r"share one relative-position bias.*same heads"):
        compact(groups)
    table = model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert table.abs().sum(0).ne(0).all()  # the shared table is not zeroed by the mask


def test_pruner_on_a_gqa_decoder_with_an_optimizer_carries_state_over() -> None:
    family = FAMILIES["llama-gqa"]
    model = family.build()
    ids = torch.randint(3, 50, (4, 8), generator=torch.Generator().manual_seed(1))

    def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return m(input_ids=batch, labels=batch).loss

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pruner = plprune.Pruner(model, plprune.scorers.GradScore(), plprune.OneShot(2, 0.5), kinds=("head",),
                            loss_fn=loss_fn, batches=[ids], allocation="per_layer")
    pruner.attach(optimizer)
    for step in range(4):
        pruner.step(step)
        loss = loss_fn(model, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    before = loss_fn(model, ids).item()
    pruner.compact()
    assert abs(loss_fn(model, ids).item() - before) < 1e-9
    loss = loss_fn(model, ids)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()  # the transplanted AdamW state has the new shapes
    assert all(s["exp_avg"].shape == p.shape for p, s in optimizer.state.items())


def test_an_attention_module_without_a_readable_head_count_gets_the_recipe() -> None:
    class Opaque(nn.Module):  # q/k/v/o projections, but nothing says how many heads
        def __init__(self) -> None:
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(8, 8) for _ in range(4))

    class OpaqueAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Opaque()

    with pytest.raises(PlpruneError, match=r"class OpaqueAttention with no adapter.*register_attention"):
        GroupSet(nn.Sequential(OpaqueAttention()), kinds=("head",))


def test_a_user_adapter_for_grouped_query_attention() -> None:
    class MyGQA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wq, self.wo = nn.Linear(16, 16), nn.Linear(16, 16)
            self.wk, self.wv = nn.Linear(16, 8), nn.Linear(16, 8)
            self.n_heads, self.n_kv = 4, 2

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            d = self.wq.out_features // self.n_heads
            q = self.wq(x).view(b, t, -1, d).transpose(1, 2)
            k = self.wk(x).view(b, t, -1, d).transpose(1, 2).repeat_interleave(q.shape[1] // self.n_kv, dim=1)
            v = self.wv(x).view(b, t, -1, d).transpose(1, 2).repeat_interleave(q.shape[1] // self.n_kv, dim=1)
            context = torch.softmax(q @ k.transpose(-1, -2) / d**0.5, -1) @ v
            return self.wo(context.transpose(1, 2).reshape(b, t, -1))

    adapter = plprune.AttentionAdapter(
        name="test-my-gqa", matches=lambda m: isinstance(m, MyGQA), query="wq", key="wk", value="wv",
        output="wo", num_heads=lambda m: m.wq.out_features // 4,
        num_kv_heads=lambda m: m.wk.out_features // 4,
        set_num_heads=lambda m, heads, kv: setattr(m, "n_heads", heads),
    )
    plprune.register_attention(adapter)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(MyGQA(), MyGQA()).double()
        x = torch.randn(2, 5, 16, dtype=torch.float64)
        groups = GroupSet(model, kinds=("head",))
        assert [s.kv_heads for s in groups.sites] == [2, 2]
        groups.apply_mask(select_mask(groups, torch.randn(len(groups)), 0.5, "global"))
        masked = model(x)
        small, _ = compact(groups)
        torch.testing.assert_close(small(x), masked, rtol=0, atol=1e-10)
    finally:
        plprune.sites.heads.unregister_attention("test-my-gqa")


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_global_allocation_on_gqa_meets_the_ratio_with_whole_slots(ratio: float) -> None:
    """8 query / 2 KV heads, 2 layers: any even number of heads can be kept, so the ratio is met exactly;
    the kept slots are the best by mean score (checked against brute force over every split)."""
    groups = GroupSet(FAMILIES["llama-gqa"].build(), kinds=("head",))
    for seed in range(4):
        scores = torch.randn(len(groups), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        mask = select_mask(groups, scores, ratio, "global")
        assert int(mask.sum()) == round(16 * (1 - ratio))
        best, target = -float("inf"), int(mask.sum()) // 2  # slots to keep over both layers
        for first in range(1, 5):  # slots in layer 0 (each layer keeps ≥ 1 slot)
            second = target - first
            if not 1 <= second <= 4:
                continue
            total = 0.0
            for layer, slots in ((0, first), (1, second)):
                for kv in range(2):
                    inside = scores[layer * 8 + kv * 4 : layer * 8 + kv * 4 + 4]
                    total += float(inside.sort(descending=True).values[:slots].sum())
            best = max(best, total)
        assert float(scores[mask].sum()) == pytest.approx(best)
