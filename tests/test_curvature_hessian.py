"""Hutchinson's Hessian-trace estimator (paper Alg. 1) against exact traces, and its third-order
differentiability w.r.t. soft head gates (Eq. 36)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plprune.curvature import (
    HutchinsonEstimate,
    exact_hessian_trace,
    hutchinson_trace,
    model_exact_hessian_trace,
    model_hessian_trace,
)
from plprune.errors import PlpruneError
from plprune.models.bert import BertForMaskedLM
from tiny_models import bert_batch, gate_site, tiny_bert


def tiny_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double().eval()


def mlp_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    return x, torch.randn(8, 2, generator=gen, dtype=torch.float64)


def mlp_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).sum(dim=1).mean() + (model(x) ** 4).mean()


def bert_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    return model.per_sample_loss(*batch).mean()


# --------------------------------------------------------------------------------------------------


def test_exact_trace_analytic() -> None:
    a = torch.tensor([[2.0, 1.0, 0.0], [1.0, -3.0, 0.5], [0.0, 0.5, 7.0]], dtype=torch.float64)
    w = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
    v = torch.tensor([[0.1, 0.4], [-0.5, 2.0]], dtype=torch.float64)

    def fn(ps: list[torch.Tensor]) -> torch.Tensor:
        return 0.5 * ps[0] @ a @ ps[0] + torch.sin(ps[1]).sum()

    expected = torch.trace(a) - torch.sin(v).sum()
    assert exact_hessian_trace(fn, [w, v]) == pytest.approx(expected.item(), rel=1e-12)


def test_rademacher_is_exact_for_diagonal_hessian() -> None:
    coefficients = torch.tensor([1.0, -2.0, 3.5, 0.25], dtype=torch.float64)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    scalar = 0.5 * (coefficients * w**2).sum()
    est = hutchinson_trace(scalar, [w], num_probes=7, generator=torch.Generator().manual_seed(0))
    assert isinstance(est, HutchinsonEstimate) and est.num_probes == 7
    torch.testing.assert_close(
        est.per_probe, torch.full((7,), coefficients.sum().item(), dtype=torch.float64)
    )
    assert est.standard_error == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_matches_exact_trace_on_mlp(distribution: str) -> None:
    model, batch = tiny_mlp(), mlp_batch()
    exact = model_exact_hessian_trace(model, mlp_loss, batch)
    est = model_hessian_trace(
        model,
        mlp_loss,
        batch,
        num_probes=2000,
        distribution=distribution,
        generator=torch.Generator().manual_seed(3),
    )
    assert est.mean.shape == () and est.per_probe.shape == (2000,)
    assert est.standard_error < 0.2 * abs(exact), "the test must be able to tell a wrong trace apart"
    assert abs(est.mean.item() - exact) < 3 * est.standard_error


def test_hutchinson_matches_exact_trace_on_tiny_bert_attention() -> None:
    model, batch = tiny_bert(), bert_batch(4)
    names = [name for name, _ in model.named_parameters() if name.startswith("layers.0.attention.")]
    exact = model_exact_hessian_trace(model, bert_loss, batch, params=names)
    for distribution in ("rademacher", "gaussian"):
        est = model_hessian_trace(
            model,
            bert_loss,
            batch,
            params=names,
            num_probes=200,
            distribution=distribution,
            generator=torch.Generator().manual_seed(4),
        )
        assert abs(est.mean.item() - exact) < 3 * est.standard_error


def test_exact_trace_matches_sum_of_hessian_diagonal() -> None:
    model, batch = tiny_mlp(), mlp_batch()
    params = list(model.parameters())
    diagonal = 0.0
    loss = mlp_loss(model, batch)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    for p, g in zip(params, grads, strict=True):  # e_iᵀ H e_i, one basis vector at a time
        flat = g.reshape(-1)
        for i in range(flat.numel()):
            (row,) = torch.autograd.grad(flat[i], p, retain_graph=True)
            diagonal += row.reshape(-1)[i].item()
    assert model_exact_hessian_trace(model, mlp_loss, batch) == pytest.approx(diagonal, rel=1e-10)


def test_probes_are_deterministic_and_leave_global_rng_alone() -> None:
    model, batch = tiny_mlp(), mlp_batch()
    state = torch.get_rng_state()
    first = model_hessian_trace(
        model, mlp_loss, batch, num_probes=5, generator=torch.Generator().manual_seed(9)
    )
    second = model_hessian_trace(
        model, mlp_loss, batch, num_probes=5, generator=torch.Generator().manual_seed(9)
    )
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.per_probe, second.per_probe)
    other = model_hessian_trace(
        model, mlp_loss, batch, num_probes=5, generator=torch.Generator().manual_seed(10)
    )
    assert not torch.equal(first.per_probe, other.per_probe)


def test_graph_of_scalar_retained_and_detached_without_create_graph() -> None:
    model, batch = tiny_mlp(), mlp_batch()
    loss = mlp_loss(model, batch)
    est = hutchinson_trace(
        loss, list(model.parameters()), num_probes=2, generator=torch.Generator().manual_seed(0)
    )
    assert not est.mean.requires_grad and not est.per_probe.requires_grad
    loss.backward()  # the caller can still backpropagate through the loss
    assert all(p.grad is not None for p in model.parameters())


def test_unused_parameter_contributes_zero() -> None:
    w = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    unused = torch.ones(3, dtype=torch.float64, requires_grad=True)
    linear = torch.ones(2, dtype=torch.float64, requires_grad=True)
    scalar = (w**3).sum() + (linear * 2.0).sum()
    est = hutchinson_trace(
        scalar, [w, unused, linear], num_probes=3, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(est.per_probe, torch.full((3,), (6 * w).sum().item(), dtype=torch.float64))
    zero = hutchinson_trace(linear.sum() * 3.0, [linear], num_probes=2)
    assert torch.equal(zero.per_probe, torch.zeros(2, dtype=torch.float64))


def gate_gradient_and_finite_differences(
    model: BertForMaskedLM, distribution: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """d Tr(H)/dθ for head gates g = 2·sigmoid(θ) by autograd (third order, create_graph=True) and by
    central finite differences of the estimate with the same fixed probes.

    Needs every op of the model to be exact at third order: BertForMaskedLM uses
    plprune.models.layers.LayerNorm because torch's fused layer_norm is not (pytorch/pytorch#175754)."""
    batch = bert_batch(4)
    attention = gate_site(model, "head", 0)
    names = [name for name, _ in model.named_parameters() if name.startswith("layers.0.")]

    def estimate(theta: torch.Tensor, create_graph: bool) -> torch.Tensor:
        attention.set_gate(2.0 * torch.sigmoid(theta))
        return model_hessian_trace(
            model,
            bert_loss,
            batch,
            params=names,
            num_probes=2,
            distribution=distribution,
            generator=torch.Generator().manual_seed(5),
            create_graph=create_graph,
        ).mean

    theta = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    value = estimate(theta, create_graph=True)
    assert value.requires_grad
    (gradient,) = torch.autograd.grad(value, theta)
    step = 1e-5
    finite_diff = torch.zeros(2, dtype=torch.float64)
    for k in range(2):
        shift = torch.zeros(2, dtype=torch.float64)
        shift[k] = step
        plus = estimate(theta.detach() + shift, create_graph=False)
        minus = estimate(theta.detach() - shift, create_graph=False)
        finite_diff[k] = (plus - minus) / (2 * step)
    attention.set_gate(None)
    return gradient, finite_diff


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_estimate_differentiable_wrt_head_gates(distribution: str) -> None:
    model = tiny_bert(dropout=0.1)
    model.train()  # model_hessian_trace runs the forward pass in eval mode and restores train mode
    gradient, finite_diff = gate_gradient_and_finite_differences(model, distribution)
    assert model.training
    assert torch.isfinite(gradient).all()
    assert (gradient.abs() > 1e-6).all()
    torch.testing.assert_close(gradient, finite_diff, rtol=1e-4, atol=1e-9)


def test_input_validation() -> None:
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    scalar = (w**3).sum()
    with pytest.raises(PlpruneError, match="num_probes must be a positive integer"):
        hutchinson_trace(scalar, [w], num_probes=0)
    with pytest.raises(PlpruneError, match="unknown distribution 'uniform'; valid: rademacher, gaussian"):
        hutchinson_trace(scalar, [w], distribution="uniform")
    with pytest.raises(PlpruneError, match=r"0-d tensor .* got shape \(3,\)"):
        hutchinson_trace(w**3, [w])
    with pytest.raises(PlpruneError, match="at least one tensor"):
        hutchinson_trace(scalar, [])
    with pytest.raises(PlpruneError, match="does not require grad"):
        hutchinson_trace(scalar, [w.detach()])
    with pytest.raises(PlpruneError, match="scalar does not require grad"):
        hutchinson_trace(scalar.detach(), [w])
    with pytest.raises(PlpruneError, match="generator"):
        hutchinson_trace(scalar, [w], generator=0)  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match="max_params"):
        exact_hessian_trace(lambda ps: (ps[0] ** 2).sum(), [torch.zeros(10)], max_params=5)
    with pytest.raises(PlpruneError, match="fn must return a 0-d tensor"):
        exact_hessian_trace(lambda ps: ps[0] ** 2, [torch.zeros(2)])
    model = tiny_mlp()
    with pytest.raises(PlpruneError, match="unknown parameter name"):
        model_hessian_trace(model, mlp_loss, mlp_batch(), params=["nope"])
    with pytest.raises(PlpruneError, match="loss_fn must be a callable"):
        model_hessian_trace(model, "loss", mlp_batch())  # type: ignore[arg-type]
