"""Switch Transformer MoE layer and model: routing, capacity and dropping against a per-token numpy
reference, the load-balancing loss (Fedus et al. 2021, eq. 4), soft gates vs hard pruning of experts,
discovery by GroupSet, kernel features, and third-order gradients w.r.t. expert gates."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from plprune.curvature import compute_group_features, hutchinson_trace
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.gating import GatingNetwork, normalise_features
from plprune.models.bert import BertConfig, BertForMaskedLM
from plprune.models.switch import SwitchConfig, SwitchFeedForward, SwitchForMaskedLM
from tiny_models import gate_site

VOCAB, SEQ = 20, 6


# ------------------------------------------------------------------------------------------------
# Independent reference: one token at a time, in numpy
# ------------------------------------------------------------------------------------------------


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def hand_switch(layer: SwitchFeedForward, x: torch.Tensor) -> dict:
    """Loop over the flattened tokens in order: softmax over the kept experts' logits, argmax, count the
    expert's queue, keep the token if its place is within capacity, output = prob · expert FFN(x)."""
    tokens = x.detach().reshape(-1, layer.hidden_size).numpy()
    router = layer.router.weight.detach().numpy()
    keep = layer.expert_keep.numpy()
    experts = [
        (
            e.intermediate.weight.detach().numpy(),
            e.intermediate.bias.detach().numpy(),
            e.output.weight.detach().numpy(),
            e.output.bias.detach().numpy(),
        )
        for e in layer.experts
    ]
    n, num_experts, alive = tokens.shape[0], layer.num_experts, int(keep.sum())
    capacity = math.ceil(layer.config.capacity_factor * n / alive) if layer.config.drop_tokens else n
    out = np.zeros_like(tokens)
    routed = np.zeros(num_experts, dtype=np.int64)
    processed = np.zeros(num_experts, dtype=np.int64)
    dropped_rows = []
    prob_sum = np.zeros(num_experts)
    for j, token in enumerate(tokens):
        logits = router @ token
        exps = np.where(keep, np.exp(logits - logits[keep].max()), 0.0)
        probs = exps / exps.sum()
        prob_sum += probs
        i = int(np.argmax(probs))
        routed[i] += 1
        if routed[i] <= capacity:
            processed[i] += 1
            w1, b1, w2, b2 = experts[i]
            out[j] = probs[i] * (w2 @ _gelu(w1 @ token + b1) + b2)
        else:
            dropped_rows.append(j)
    aux = alive * float(np.sum(routed / n * prob_sum / n))
    return {
        "out": out.reshape(x.shape),
        "routed": routed,
        "processed": processed,
        "dropped_rows": dropped_rows,
        "capacity": capacity,
        "aux": aux,
    }


def moe_layer(capacity_factor: float, num_experts: int = 3) -> SwitchFeedForward:
    torch.manual_seed(0)
    layer = SwitchFeedForward(4, 6, SwitchConfig(num_experts=num_experts, capacity_factor=capacity_factor))
    layer = layer.double()
    with torch.no_grad():
        layer.router.weight.mul_(4.0)  # decisive routing
    return layer


def tiny_switch(capacity_factor: float = 1.5, num_layers: int = 2) -> SwitchForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_layers=num_layers,
        num_heads=2,
        ffn_size=16,
        max_length=SEQ,
        dropout=0.0,
        attention_dropout=0.0,
        initializer_range=0.5,
    )
    switch = SwitchConfig(num_experts=3, capacity_factor=capacity_factor, expert_ffn_size=12)
    return SwitchForMaskedLM(config, switch).double().eval()


def mlm_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    masked = torch.rand(n, SEQ, generator=gen) < 0.4
    masked[:, 0] = True
    return ids, torch.where(masked, ids, torch.full_like(ids, -100))


# ------------------------------------------------------------------------------------------------
# Routing, capacity, dropping, aux loss
# ------------------------------------------------------------------------------------------------


def test_routing_matches_per_token_reference_and_ones_gate_is_bit_identical() -> None:
    layer = moe_layer(capacity_factor=3.0)  # capacity = N: nothing dropped
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    ref = hand_switch(layer, x)
    out_none = layer(x)
    assert layer.last_dropped == 0 and not ref["dropped_rows"]
    assert (ref["routed"] > 0).sum() >= 2  # the test exercises more than one expert
    np.testing.assert_allclose(out_none.detach().numpy(), ref["out"], rtol=1e-12, atol=1e-14)
    assert layer.last_expert_counts.tolist() == ref["processed"].tolist()
    site = gate_site(layer, "expert", 0)
    site.set_gate(torch.ones(3, dtype=torch.float64))
    assert torch.equal(layer(x), out_none)
    site.set_gate(None)
    assert torch.equal(layer(x), out_none)


def test_overflowing_tokens_are_dropped_in_token_order_with_zero_output() -> None:
    layer = moe_layer(capacity_factor=0.5)  # capacity ceil(0.5 · 10 / 3) = 2 per expert
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    ref = hand_switch(layer, x)
    out = layer(x).detach()
    assert layer.last_capacity == ref["capacity"] == 2
    assert layer.last_dropped == len(ref["dropped_rows"]) >= 4
    assert layer.last_routed_counts.tolist() == ref["routed"].tolist()
    assert layer.last_expert_counts.tolist() == ref["processed"].tolist()
    flat = out.reshape(-1, 4)
    for row in ref["dropped_rows"]:
        assert torch.equal(flat[row], torch.zeros(4, dtype=torch.float64))
    kept_rows = [j for j in range(10) if j not in ref["dropped_rows"]]
    assert bool((flat[kept_rows] != 0).any(dim=1).all())
    np.testing.assert_allclose(out.numpy(), ref["out"], rtol=1e-12, atol=1e-14)


def test_drop_tokens_off_processes_every_token() -> None:
    torch.manual_seed(0)
    layer = SwitchFeedForward(4, 6, SwitchConfig(num_experts=3, capacity_factor=0.1, drop_tokens=False))
    layer(torch.randn(2, 5, 4))
    assert layer.last_dropped == 0 and layer.last_capacity == 10
    assert int(layer.last_expert_counts.sum()) == 10


def test_aux_loss_matches_eq4_by_hand_and_is_in_the_graph() -> None:
    layer = moe_layer(capacity_factor=0.5)
    x = torch.randn(3, 4, 4, dtype=torch.float64)
    ref = hand_switch(layer, x)
    layer(x)
    assert layer.aux_loss.dim() == 0 and layer.aux_loss.requires_grad
    assert float(layer.aux_loss.detach()) == pytest.approx(ref["aux"], rel=1e-12)
    (grad,) = torch.autograd.grad(layer.aux_loss, layer.router.weight)
    assert torch.count_nonzero(grad) > 0


def test_model_loss_is_mlm_plus_weighted_mean_aux_and_per_sample_loss_still_works() -> None:
    model = tiny_switch()
    assert isinstance(model, BertForMaskedLM)
    ids, labels = mlm_batch(3)
    out = model(ids, labels)
    aux = torch.stack([layer.aux_loss for layer in model.moe_layers]).mean()
    assert torch.equal(out.aux_loss, aux)
    expected_mlm = torch.nn.functional.cross_entropy(out.logits, labels[labels != -100])
    torch.testing.assert_close(out.mlm_loss, expected_mlm, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.loss, out.mlm_loss + 0.01 * aux, rtol=1e-14, atol=0)
    assert model(ids).loss is None
    single = model(ids[:1], labels[:1])
    torch.testing.assert_close(model.per_sample_loss(ids[:1], labels[:1])[0], single.mlm_loss)
    assert model.per_sample_loss(ids, labels).shape == (3,)
    assert model.per_sample_true_logit(ids, labels).shape == (3,)


# ------------------------------------------------------------------------------------------------
# Hard pruning vs soft gates; GroupSet discovery and protection
# ------------------------------------------------------------------------------------------------


def _expert_index(groups: GroupSet, layer: int, expert: int) -> int:
    return groups.names.index(f"expert:L{layer}.{expert}")


def test_groupset_finds_heads_and_experts_of_every_layer() -> None:
    model = tiny_switch()
    groups = GroupSet(model, kinds=("head", "expert"))
    assert groups.names == [
        "head:L0.0",
        "head:L0.1",
        "expert:L0.0",
        "expert:L0.1",
        "expert:L0.2",
        "head:L1.0",
        "head:L1.1",
        "expert:L1.0",
        "expert:L1.1",
        "expert:L1.2",
    ]
    expert = groups.groups[_expert_index(groups, 1, 2)]
    params = dict(model.named_parameters())
    assert expert.param_names == tuple(
        f"layers.1.feed_forward.experts.2.{p}"
        for p in ("intermediate.weight", "intermediate.bias", "output.weight", "output.bias")
    )
    for piece in expert.slices:  # whole tensors
        assert piece.select(params[piece.param_name]).shape == params[piece.param_name].shape
    assert len(GroupSet(model, kinds=("expert",))) == 6


def test_hard_pruned_expert_gets_no_tokens_and_router_renormalises() -> None:
    model = tiny_switch(capacity_factor=1.0)
    ids, labels = mlm_batch(4)
    moe = model.moe_layers[0]
    model(ids, labels)
    assert int(moe.last_routed_counts[1]) > 0  # expert 1 of layer 0 had tokens before pruning
    groups = GroupSet(model, kinds=("head", "expert"))
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[_expert_index(groups, 0, 1)] = False
    groups.apply_mask(mask)
    assert moe.expert_keep.tolist() == [True, False, True]

    captured = {}
    handle = moe.register_forward_hook(lambda m, args, out: captured.update(x=args[0], out=out))
    model(ids, labels)
    handle.remove()
    assert int(moe.last_routed_counts[1]) == 0 and int(moe.last_expert_counts[1]) == 0
    ref = hand_switch(moe, captured["x"])  # softmax over experts 0 and 2, capacity ceil(24 / 2)
    assert moe.last_capacity == ref["capacity"] == 12
    assert moe.last_expert_counts.tolist() == ref["processed"].tolist()
    np.testing.assert_allclose(captured["out"].detach().numpy(), ref["out"], rtol=1e-10, atol=1e-12)
    params = dict(model.named_parameters())
    for piece in groups.groups[_expert_index(groups, 0, 1)].slices:
        assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
    # a saved pruned model keeps routing around the pruned expert
    reloaded = tiny_switch(capacity_factor=1.0)
    reloaded.load_state_dict(model.state_dict())
    assert reloaded.moe_layers[0].expert_keep.tolist() == [True, False, True]


def test_soft_gate_zero_equals_zeroed_weights_but_not_hard_pruning() -> None:
    """Soft gate 0 scales the expert's output to 0 and leaves routing alone (its tokens come out as 0);
    hard pruning also sets its router logit to −∞, so its tokens are rerouted to other experts."""
    model = tiny_switch(capacity_factor=1.0)
    ids, labels = mlm_batch(4)
    groups = GroupSet(model, kinds=("head", "expert"))
    gates = torch.ones(len(groups), dtype=torch.float64)
    gates[_expert_index(groups, 0, 1)] = 0.0
    with groups.soft_gates(gates):
        gated = model(ids, labels).logits
    gated_counts = model.moe_layers[0].last_expert_counts.clone()
    assert int(gated_counts[1]) > 0  # still routed to, output zeroed

    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for p in zeroed.moe_layers[0].experts[1].parameters():
            p.zero_()
    torch.testing.assert_close(zeroed(ids, labels).logits, gated, rtol=0, atol=1e-13)
    assert torch.equal(zeroed.moe_layers[0].last_expert_counts, gated_counts)

    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[_expert_index(groups, 0, 1)] = False
    groups.apply_mask(mask)
    pruned = model(ids, labels).logits
    assert int(model.moe_layers[0].last_expert_counts[1]) == 0
    assert not torch.allclose(pruned, gated)


def test_protection_refuses_to_remove_every_expert_of_a_layer() -> None:
    model = tiny_switch()
    groups = GroupSet(model, kinds=("head", "expert"))
    mask = torch.ones(len(groups), dtype=torch.bool)
    for e in range(3):
        mask[_expert_index(groups, 1, e)] = False
    with pytest.raises(PlpruneError, match="every expert of layer 1"):
        groups.apply_mask(mask)
    with pytest.raises(PlpruneError, match="at least one expert must be kept"):
        model.moe_layers[0].set_hard_mask(torch.zeros(3, dtype=torch.bool))


def test_kernel_features_of_heads_and_experts_are_finite_and_feed_the_gating_network() -> None:
    model = tiny_switch()
    groups = GroupSet(model, kinds=("head", "expert"))
    features = compute_group_features(
        model, groups.groups, lambda m, b: m.per_sample_loss(*b), mlm_batch(4), chunk_size=1
    )
    assert features.num_groups == len(groups) == 10
    for field in (features.min_eigenvalue, features.max_eigenvalue, features.entropy):
        assert bool(torch.isfinite(field).all())
    heads, experts = groups.kind_index("head"), groups.kind_index("expert")
    assert bool((features.max_eigenvalue[heads] > 0).all())
    assert bool((features.max_eigenvalue[experts] > 0).any())
    gates = GatingNetwork(8).double()(normalise_features(features.as_matrix()))
    assert gates.shape == (10,) and bool(torch.isfinite(gates).all())
    assert float(gates.detach().sum()) == pytest.approx(10.0)


# ------------------------------------------------------------------------------------------------
# Third order: d/dg of a Hutchinson trace through soft expert gates
# ------------------------------------------------------------------------------------------------


def test_hutchinson_trace_gradient_wrt_expert_gates_matches_finite_differences() -> None:
    model = tiny_switch(capacity_factor=3.0)  # capacity = N tokens: nothing is ever dropped
    ids, labels = mlm_batch(3)
    groups = GroupSet(model, kinds=("head", "expert"))
    weights = groups.parameters()

    def trace(gates: torch.Tensor, create_graph: bool) -> torch.Tensor:
        with groups.soft_gates(gates):
            loss = model(ids, labels).loss
            estimate = hutchinson_trace(
                loss,
                weights,
                num_probes=2,
                generator=torch.Generator().manual_seed(3),
                create_graph=create_graph,
            )
        assert all(layer.last_dropped == 0 for layer in model.moe_layers)
        return estimate.mean

    base = 1.0 + 0.2 * torch.randn(
        len(groups), dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    gates = base.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(trace(gates, create_graph=True), gates)
    experts = groups.kind_index("expert")
    assert bool(torch.isfinite(grad).all()) and bool((grad[experts] != 0).all())
    step = 1e-5
    numeric = []
    for i in experts.tolist():
        shift = torch.zeros_like(base)
        shift[i] = step
        plus, minus = trace(base + shift, False), trace(base - shift, False)
        numeric.append((plus - minus) / (2 * step))
    torch.testing.assert_close(grad[experts], torch.stack(numeric), rtol=1e-4, atol=1e-9)


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_experts": 1}, "num_experts must be an integer >= 2"),
        ({"num_experts": 0}, "num_experts must be a positive integer"),
        ({"num_experts": 2.5}, "num_experts must be a positive integer"),
        ({"capacity_factor": 0.0}, "capacity_factor must be a finite number > 0"),
        ({"capacity_factor": -1.5}, "capacity_factor must be a finite number > 0"),
        ({"capacity_factor": float("inf")}, "capacity_factor must be a finite number > 0"),
        ({"aux_loss_weight": -0.1}, "aux_loss_weight must be a finite number >= 0"),
        ({"expert_ffn_size": 0}, "expert_ffn_size must be a positive integer"),
        ({"drop_tokens": "yes"}, "drop_tokens must be True or False"),
    ],
)
def test_invalid_switch_config_is_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(PlpruneError, match=message):
        SwitchConfig(**kwargs)


def test_invalid_gate_mask_and_input_are_rejected() -> None:
    layer = SwitchFeedForward(4, 6, SwitchConfig(num_experts=3))
    with pytest.raises(PlpruneError, match=r"expert gate of .* must have shape \(3,\)"):
        gate_site(layer, "expert", 0).set_gate(torch.ones(4))
    with pytest.raises(PlpruneError, match=r"bool tensor of shape \(3,\)"):
        layer.set_hard_mask(torch.ones(3))
    with pytest.raises(PlpruneError, match="hidden_size=4"):
        layer(torch.randn(2, 3, 5))
    with pytest.raises(PlpruneError, match="no forward pass yet"):
        _ = layer.last_dropped
    with pytest.raises(PlpruneError, match="switch_config must be a SwitchConfig"):
        SwitchFeedForward(4, 6, {"num_experts": 3})  # type: ignore[arg-type]
