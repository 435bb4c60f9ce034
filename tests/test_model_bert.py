"""BERT MLM: masked-only logits, head gates, validation."""

from __future__ import annotations

import pytest
import torch

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.models import BertConfig, BertForMaskedLM
from tiny_models import gate_site


def tiny_model(**overrides) -> BertForMaskedLM:
    config = dict(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_length=16)
    config.update(overrides)
    return BertForMaskedLM(BertConfig(**config)).eval()


def batch(n: int = 3, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 40, (n, length), generator=g)
    labels = torch.full_like(ids, -100)
    selected = torch.rand(ids.shape, generator=g) < 0.3
    labels[selected] = ids[selected]
    return ids, labels


@pytest.mark.parametrize("pre_ln", [False, True])
def test_masked_logits_equal_full_logits_at_masked_positions(pre_ln: bool) -> None:
    model = tiny_model(pre_layer_norm=pre_ln)
    ids, labels = batch()
    masked = model(ids, labels, logits_at="masked")
    full = model(ids, labels, logits_at="all")
    selected = labels != -100
    torch.testing.assert_close(masked.logits, full.logits[selected], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(masked.loss, full.loss, rtol=1e-5, atol=1e-6)
    per_sample = model.per_sample_loss(ids, labels)
    counts = selected.sum(1).float()
    torch.testing.assert_close((per_sample * counts).sum() / counts.sum(), full.loss, rtol=1e-5, atol=1e-6)


def test_all_ones_gates_give_exactly_the_ungated_output() -> None:
    model = tiny_model()
    ids, _ = batch()
    reference = model(ids).logits
    for site in GroupSet(model, kinds=("head",)).sites:
        site.set_gate(torch.ones(site.num_groups))
    assert torch.equal(model(ids).logits, reference)


def test_zero_gate_equals_zeroed_head_weights() -> None:
    model = tiny_model()
    ids, _ = batch()
    layer, head, size = 1, 2, 32 // 4
    gated = tiny_model()
    gated.load_state_dict(model.state_dict())
    gate = torch.ones(4)
    gate[head] = 0.0
    gate_site(gated, "head", layer).set_gate(gate)

    with torch.no_grad():
        attention = model.attention_layers[layer]
        rows = slice(head * size, (head + 1) * size)
        for projection in (attention.query, attention.key, attention.value):
            projection.weight[rows] = 0.0
            projection.bias[rows] = 0.0
        attention.output.weight[:, rows] = 0.0
    torch.testing.assert_close(gated(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    # and the gate really changes something compared with the intact model
    intact = tiny_model()
    intact.load_state_dict(gated.state_dict())
    assert not torch.allclose(intact(ids).logits, gated(ids).logits, atol=1e-4)


def test_model_is_thrice_differentiable_through_head_gates() -> None:
    model = tiny_model().double()
    ids, labels = batch(n=2)
    gate = torch.ones(4, dtype=torch.float64, requires_grad=True)
    gate_site(model, "head", 0).set_gate(gate)
    loss = model(ids, labels).loss
    params = [model.attention_layers[0].query.weight]
    (g1,) = torch.autograd.grad(loss, params, create_graph=True)
    probe = torch.ones_like(g1)
    (hv,) = torch.autograd.grad((g1 * probe).sum(), params, create_graph=True)
    (third,) = torch.autograd.grad((hv * probe).sum(), gate)
    assert torch.isfinite(third).all() and third.abs().sum() > 0


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(PlpruneError, match="must divide hidden_size"):
        BertConfig(vocab_size=10, hidden_size=30, num_heads=4)
    with pytest.raises(PlpruneError, match="positive integer"):
        BertConfig(vocab_size=0)
    model = tiny_model()
    with pytest.raises(PlpruneError, match=r"head gate of layers\.0\.attention must have shape"):
        gate_site(model, "head", 0).set_gate(torch.ones(3))
    with pytest.raises(PlpruneError, match="exceeds max_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_per_sample_true_logit_matches_a_hand_computation() -> None:
    model = tiny_model()
    ids, labels = batch()
    logits = model(ids).logits  # (B, T, V)
    expected = []
    for b in range(ids.shape[0]):
        positions = (labels[b] != -100).nonzero().flatten().tolist()
        expected.append(sum(float(logits[b, t, labels[b, t]]) for t in positions) / len(positions))
    torch.testing.assert_close(
        model.per_sample_true_logit(ids, labels), torch.tensor(expected), rtol=1e-5, atol=1e-5
    )
