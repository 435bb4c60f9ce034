"""exact_norms: plain-op LayerNorm/BatchNorm and eager attention make a foreign model's third derivatives
exact (checked against finite differences on a Hugging Face BERT), and the model comes back untouched.

Measured on the tiny float64 BERT below (weights N(0, 0.2²), gates (0.8, 1.3), two Rademacher probes,
central differences with step 1e-5), as the largest relative error over the two gates:

* default (SDPA) attention: the Hessian-vector product itself raises (no double backward of the CPU
  flash-attention kernel);
* eager attention, torch's ``nn.LayerNorm``: off by 2.8 (278 %; 22 % with seed 1; ~3e-5 at Hugging
  Face's initial weight scale 0.02) — silently;
* inside ``exact_norms``: ~1e-10 (the finite-difference error).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from derivatives import hvp_through_layer
from plprune.curvature import model_hessian_trace
from plprune.exact_norms import ExactBatchNorm, ExactLayerNorm, exact_norms
from plprune.gates import GroupSet

transformers = pytest.importorskip("transformers")

VOCAB = 20


def tiny_hf_bert() -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=8,
        type_vocab_size=1,
        hidden_act="gelu",
        initializer_range=0.2,  # weights of a trained model's scale, not the 0.02 of initialisation
    )
    return transformers.BertForMaskedLM(config).double().eval()


def mlm_batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, VOCAB, (2, 6), generator=torch.Generator().manual_seed(1))
    labels = torch.full_like(ids, -100)
    labels[:, [1, 4]] = ids[:, [1, 4]]
    ids[:, 1] = 0
    return ids, labels


def mlm_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(input_ids=batch[0], labels=batch[1]).loss


def gate_gradient_error(model: nn.Module, groups: GroupSet) -> float:
    """Relative max error of d Tr(H)/d gates (autograd, third order) against central differences."""
    batch = mlm_batch()

    def trace(gates: torch.Tensor) -> torch.Tensor:
        groups.set_soft_gates(gates)
        return model_hessian_trace(
            model,
            mlm_loss,
            batch,
            params=groups.param_names,
            num_probes=2,
            generator=torch.Generator().manual_seed(3),
            create_graph=True,
        ).mean

    gates = torch.tensor([0.8, 1.3], dtype=torch.float64, requires_grad=True)
    (analytic,) = torch.autograd.grad(trace(gates), gates)
    step, numeric = 1e-5, torch.zeros(2, dtype=torch.float64)
    for i in range(2):
        shift = torch.zeros(2, dtype=torch.float64)
        shift[i] = step
        numeric[i] = (trace(gates.detach() + shift) - trace(gates.detach() - shift)).detach() / (2 * step)
    groups.clear_soft_gates()
    return float(((analytic - numeric).abs() / numeric.abs()).max())


def test_hessian_trace_gate_gradient_matches_finite_differences_only_with_the_swap() -> None:
    model = tiny_hf_bert()
    groups = GroupSet(model, kinds=("head",))
    assert model.config._attn_implementation == "sdpa"  # transformers' default
    with pytest.raises(RuntimeError, match="not implemented"):  # SDPA on CPU: no double backward
        gate_gradient_error(model, groups)
    model.config._attn_implementation = "eager"
    wrong = gate_gradient_error(model, groups)  # torch's LayerNorm: third derivatives silently off
    model.config._attn_implementation = "sdpa"
    with exact_norms(model):
        exact = gate_gradient_error(model, groups)
    assert exact < 1e-7
    assert wrong > 0.1


def test_swap_shares_parameters_and_restores_everything() -> None:
    model = tiny_hf_bert()
    originals = {name: m for name, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    params = dict(model.named_parameters())
    ids, labels = mlm_batch()
    before = model(input_ids=ids).logits
    with exact_norms(model) as swapped:
        assert sorted(swapped) == sorted(originals)
        assert model.config._attn_implementation == "eager"
        for name in originals:
            module = model.get_submodule(name)
            assert isinstance(module, ExactLayerNorm)
            assert module.weight is originals[name].weight and module.bias is originals[name].bias
        assert dict(model.named_parameters()).keys() == params.keys()
        assert all(p is params[n] for n, p in model.named_parameters())
        inside = model(input_ids=ids).logits
        mlm_loss(model, (ids, labels)).backward()
    torch.testing.assert_close(inside, before, rtol=1e-12, atol=1e-12)
    assert originals["bert.embeddings.LayerNorm"].weight.grad is not None  # landed on the user's tensor
    assert model.config._attn_implementation == "sdpa"
    assert all(model.get_submodule(name) is module for name, module in originals.items())
    with pytest.raises(ValueError, match="boom"), exact_norms(model):
        raise ValueError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert all(model.get_submodule(name) is module for name, module in originals.items())


@pytest.mark.parametrize(
    "options", [{}, {"momentum": None}, {"affine": False}, {"track_running_stats": False}]
)
@pytest.mark.parametrize(
    ("norm", "shape"),
    [(nn.BatchNorm1d, (6, 4)), (nn.BatchNorm1d, (6, 4, 5)), (nn.BatchNorm2d, (6, 4, 3, 2))],
)
def test_batch_norm_stand_in_has_torch_semantics_in_train_and_eval(norm, shape, options) -> None:
    ours = nn.Sequential(norm(4, **options)).double()
    if ours[0].weight is not None:
        with torch.no_grad():
            ours[0].weight.uniform_(0.5, 1.5)
            ours[0].bias.normal_()
    reference = copy.deepcopy(ours)
    for mode in ("train", "train", "eval", "train", "eval"):
        x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
        ours.train(mode == "train")
        reference.train(mode == "train")
        with exact_norms(ours):
            assert isinstance(ours[0], ExactBatchNorm)
            out = ours(x)
        torch.testing.assert_close(out, reference(x), rtol=1e-12, atol=1e-12)
        mine, theirs = ours.state_dict(), reference.state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], rtol=1e-12, atol=1e-12)
    assert type(ours[0]) is norm


def test_batch_norm_stand_in_keeps_hooks_and_has_exact_third_derivatives() -> None:
    model = nn.Sequential(nn.BatchNorm1d(4)).double()
    fired: list[int] = []
    handle = model[0].register_forward_hook(lambda m, a, out: out * 2.0)
    model[0].register_forward_pre_hook(lambda m, a: fired.append(1))
    x = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(5, 4, 3, dtype=torch.float64)
    probe = torch.randint(0, 2, (5, 4, 3)).double() * 2 - 1
    gate = (torch.rand(4, 3, dtype=torch.float64) + 0.5).requires_grad_()
    check = hvp_through_layer(model, x, weights, probe)
    assert not torch.autograd.gradcheck(check, (gate,), eps=1e-6, atol=1e-7, raise_exception=False)
    with exact_norms(model):
        doubled = model(x)
        assert fired and torch.autograd.gradcheck(check, (gate,), eps=1e-6, atol=1e-7)
        handle.remove()  # removing a hook inside the context removes it from the user's module
    assert not model[0]._forward_hooks
    torch.testing.assert_close(doubled, 2.0 * model(x))
