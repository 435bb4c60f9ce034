"""Continuous sparsification (Savarese et al. 2020): the temperature schedule and the method."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from plprune.errors import PlpruneError
from plprune.schedules import OneShot
from plprune.sparsity.continuous import ContinuousSparsificationMethod, temperature
from plprune.sparsity.weights import WeightUnits


def test_temperature_endpoints_monotone_and_geometric() -> None:
    assert temperature(0, 50, 200.0) == 1.0
    assert temperature(50, 50, 200.0) == pytest.approx(200.0, rel=1e-12)
    assert temperature(80, 50, 200.0) == pytest.approx(200.0, rel=1e-12)
    betas = [temperature(t, 50, 200.0) for t in range(61)]
    assert all(b <= c for b, c in itertools.pairwise(betas))
    ratios = [c / b for b, c in itertools.pairwise(betas[:51])]
    np.testing.assert_allclose(ratios, 200.0 ** (1 / 50), rtol=1e-12)
    assert temperature(7, 10, 1.0) == 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 10, 0.0), "must be > 0"),
        ((0, 10, -2.0), "must be > 0"),
        ((0, 10, 0.5), ">= 1"),
        ((0, 10, float("nan")), "finite"),
        ((0, 0, 200.0), "end_step"),
        ((-1, 10, 200.0), "step"),
        ((0, 10.5, 200.0), "end_step"),
    ],
)
def test_temperature_bad_input(args: tuple, message: str) -> None:
    with pytest.raises(PlpruneError, match=message):
        temperature(*args)


def test_method_bad_input() -> None:
    for kwargs, message in (
        ({"beta_final": 0.0}, "beta_final"),
        ({"beta_final": 0.9}, "beta_final"),
        ({"strength": -1.0}, "strength"),
        ({"gate_lr": 0.0}, "gate_lr"),
        ({"init_score": float("inf")}, "init_score"),
    ):
        with pytest.raises(PlpruneError, match=message):
            ContinuousSparsificationMethod(**kwargs)
    with pytest.raises(PlpruneError, match="bind"):
        ContinuousSparsificationMethod().scores()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 6, generator=g)
    return x, x[:, :1] - 0.5 * x[:, 1:2]


def _train(model: nn.Module, method: ContinuousSparsificationMethod, steps: range, lr: float = 0.05) -> None:
    """The driver's hook order around a plain SGD optimizer (no state, so resuming needs none)."""
    x, y = _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for step in steps:
        method.on_step_start(step)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        method.before_update(step)
        optimizer.step()
        method.after_update(step, lr)


def test_penalty_gradient_matches_formula() -> None:
    units = WeightUnits(_model())
    n = len(units)
    method = ContinuousSparsificationMethod(strength=0.3, beta_final=200.0)
    method.bind(units, OneShot(20, 0.5))
    with torch.no_grad():
        method.s.copy_(torch.randn(n, generator=torch.Generator().manual_seed(2)) * 0.2)
    keep = torch.ones(n, dtype=torch.bool)
    keep[:5] = False
    units.apply_mask(keep)
    step = 7
    method.on_step_start(step)  # zeroes s.grad; no task loss here
    method.before_update(step)
    beta = 200.0 ** (step / 20)
    s = method.s.detach().double().numpy()
    sig = 1.0 / (1.0 + np.exp(-beta * s))
    expected = 0.3 * beta * sig * (1 - sig) / n
    expected[:5] = 0.0  # removed units are left out of the penalty
    np.testing.assert_allclose(method.s.grad.double().numpy(), expected, rtol=1e-5, atol=1e-12)
    penalty = float(method.penalty(step).detach())
    assert penalty == pytest.approx(0.3 * float(sig[5:].sum()) / n, rel=1e-5)
    units.set_gates(None)


def test_masks_become_binary_at_the_final_temperature() -> None:
    model = _model()
    units = WeightUnits(model)
    n = len(units)
    method = ContinuousSparsificationMethod(beta_final=200.0)
    method.bind(units, OneShot(10, 0.5))
    magnitude = 0.05 + torch.rand(n, generator=torch.Generator().manual_seed(1))
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    with torch.no_grad():
        method.s.copy_(sign * magnitude)
    early = method.soft_mask(0)
    assert float((early - method.binary_mask()).abs().max()) > 0.4
    final = method.soft_mask(10)
    assert float((final - method.binary_mask()).abs().max()) <= 1e-3
    # after the last update, the gates the model sees are the near-binary σ(β_final s)
    method.on_step_start(9)
    method.after_update(9, 0.1)
    gate = model[0].parametrizations.weight[0].gate.flatten()
    assert float((gate - method.binary_mask()[: gate.numel()]).abs().max()) <= 1e-3
    method.finish()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_training_with_a_large_penalty_closes_masks() -> None:
    model = _model()
    method = ContinuousSparsificationMethod(strength=50.0, beta_final=200.0, gate_lr=0.05)
    method.bind(WeightUnits(model), OneShot(30, 0.5))
    assert method.metrics()["cont-sparse_mask_zero_fraction"] == 1.0  # s_0 = 0: 1[s > 0] is 0
    _train(model, method, range(30))
    scores = method.scores()
    assert float(scores.mean()) < -0.5
    assert method.metrics()["cont-sparse_mask_zero_fraction"] > 0.5
    x, _ = _data()
    with torch.no_grad():
        gated = model(x)
    method.finish()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    with torch.no_grad():
        ungated = model(x)
    assert not torch.equal(gated, ungated)  # the soft mask is gone, the driver's hard mask takes over
    method.on_step_start(3)  # finished: no gates come back
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


def test_state_dict_round_trip_is_exact() -> None:
    reference_model = _model()
    reference = ContinuousSparsificationMethod(strength=1.0, init_score=0.1, gate_lr=0.05)
    reference.bind(WeightUnits(reference_model), OneShot(12, 0.5))
    _train(reference_model, reference, range(6))
    saved = reference.state_dict()
    saved_s = saved["s"].clone()
    saved_model = {key: value.clone() for key, value in reference_model.state_dict().items()}
    assert "0.parametrizations.weight.original" in saved_model  # gates are on between steps

    resumed_model = _model()
    resumed = ContinuousSparsificationMethod(strength=1.0, init_score=0.1, gate_lr=0.05)
    resumed.bind(WeightUnits(resumed_model), OneShot(12, 0.5))
    resumed.load_state_dict(saved)  # registers the gates again, so the model's keys match
    resumed_model.load_state_dict(saved_model)
    x, _ = _data()
    with torch.no_grad():
        assert torch.equal(resumed_model(x), reference_model(x))
    _train(reference_model, reference, range(6, 12))
    _train(resumed_model, resumed, range(6, 12))
    assert torch.equal(reference.s, resumed.s)
    assert math.isfinite(float(resumed.s.detach().sum()))
    for a, b in zip(reference.units.params, resumed.units.params, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(saved["s"], saved_s)
    with pytest.raises(PlpruneError, match="shape"):
        resumed.load_state_dict({**saved, "s": torch.zeros(2)})
