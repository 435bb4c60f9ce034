"""Hard-concrete ℓ0 gates (Louizos et al. 2018): the distribution's closed forms, and HardConcreteMethod."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from plprune.errors import PlpruneError
from plprune.schedules import OneShot
from plprune.sparsity.base import Units
from plprune.sparsity.hard_concrete import (
    HardConcreteMethod,
    hard_concrete_gate,
    hard_concrete_l0,
    hard_concrete_prob_one,
    hard_concrete_prob_zero,
    hard_concrete_sample,
)
from plprune.sparsity.weights import WeightUnits

BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# -- the distribution --------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta, gamma, zeta", [(BETA, GAMMA, ZETA), (0.5, -0.2, 1.05)])
def test_l0_penalty_matches_formula(beta: float, gamma: float, zeta: float) -> None:
    log_alpha = torch.linspace(-6, 6, 25, dtype=torch.float64)
    expected = _sigmoid(log_alpha.numpy() - beta * np.log(-gamma / zeta))
    got = hard_concrete_l0(log_alpha, beta, gamma, zeta)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    # P(z = 0) from the CDF of s: σ(β logit(−γ/(ζ−γ)) − log α), and the two add to one
    p = -gamma / (zeta - gamma)
    expected_zero = _sigmoid(beta * np.log(p / (1 - p)) - log_alpha.numpy())
    zero = hard_concrete_prob_zero(log_alpha, beta, gamma, zeta)
    np.testing.assert_allclose(zero.numpy(), expected_zero, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose((zero + got).numpy(), 1.0, rtol=0, atol=1e-12)


def test_samples_lie_in_unit_interval_and_are_seeded() -> None:
    log_alpha = torch.linspace(-4, 4, 1000)
    z = hard_concrete_sample(log_alpha, generator=torch.Generator().manual_seed(3))
    assert z.shape == log_alpha.shape and z.dtype == log_alpha.dtype
    assert bool(((z >= 0) & (z <= 1)).all())
    again = hard_concrete_sample(log_alpha, generator=torch.Generator().manual_seed(3))
    assert torch.equal(z, again)


@pytest.mark.parametrize("log_alpha", [-2.0, 0.0, 1.5])
def test_exact_zero_and_one_probabilities_match_closed_form(log_alpha: float) -> None:
    n = 200_000
    la = torch.full((n,), log_alpha, dtype=torch.float64)
    z = hard_concrete_sample(la, BETA, GAMMA, ZETA, generator=torch.Generator().manual_seed(11))
    for observed, closed in (
        (float((z == 0).double().mean()), float(hard_concrete_prob_zero(la[:1], BETA, GAMMA, ZETA))),
        (float((z == 1).double().mean()), float(hard_concrete_prob_one(la[:1], BETA, GAMMA, ZETA))),
    ):
        standard_error = math.sqrt(closed * (1 - closed) / n)
        assert abs(observed - closed) < 4 * standard_error, (observed, closed, standard_error)


def test_deterministic_gate_formula() -> None:
    log_alpha = torch.linspace(-5, 5, 41, dtype=torch.float64)
    expected = np.clip(_sigmoid(log_alpha.numpy()) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)
    np.testing.assert_allclose(hard_concrete_gate(log_alpha).numpy(), expected, rtol=1e-12, atol=1e-15)
    # exactly 0 below logit(−γ/(ζ−γ)) = log(−γ/ζ), exactly 1 above log((1−γ)/(ζ−1))
    low, high = math.log(-GAMMA / ZETA), math.log((1 - GAMMA) / (ZETA - 1))
    edges = torch.tensor([low - 1e-3, high + 1e-3], dtype=torch.float64)
    assert hard_concrete_gate(edges).tolist() == [0.0, 1.0]


def test_gradient_flows_to_log_alpha() -> None:
    log_alpha = torch.zeros(64, requires_grad=True)
    hard_concrete_sample(log_alpha, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert log_alpha.grad is not None and bool((log_alpha.grad > 0).any())
    assert bool(torch.isfinite(log_alpha.grad).all())
    log_alpha.grad = None
    hard_concrete_l0(log_alpha).sum().backward()
    p = float(hard_concrete_l0(torch.zeros(1)))
    torch.testing.assert_close(log_alpha.grad, torch.full((64,), p * (1 - p)))
    log_alpha.grad = None
    hard_concrete_gate(log_alpha).sum().backward()
    torch.testing.assert_close(log_alpha.grad, torch.full((64,), 0.25 * (ZETA - GAMMA)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"gamma": 0.0}, "gamma < 0 < 1 < zeta"),
        ({"gamma": 0.1}, "gamma < 0 < 1 < zeta"),
        ({"zeta": 1.0}, "gamma < 0 < 1 < zeta"),
        ({"zeta": 0.9}, "gamma < 0 < 1 < zeta"),
        ({"zeta": float("inf")}, "zeta"),
    ],
)
def test_bad_parameters_raise(kwargs: dict[str, float], message: str) -> None:
    log_alpha = torch.zeros(3)
    for fn in (hard_concrete_sample, hard_concrete_l0, hard_concrete_prob_zero, hard_concrete_prob_one):
        with pytest.raises(PlpruneError, match=message):
            fn(log_alpha, **kwargs)
    if "beta" not in kwargs:
        with pytest.raises(PlpruneError, match=message):
            hard_concrete_gate(log_alpha, **kwargs)
    with pytest.raises(PlpruneError, match=message):
        HardConcreteMethod(**kwargs)


def test_bad_log_alpha_and_method_arguments_raise() -> None:
    with pytest.raises(PlpruneError, match=r"floating-point torch\.Tensor"):
        hard_concrete_l0([0.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match="floating-point"):
        hard_concrete_gate(torch.zeros(3, dtype=torch.long))
    for kwargs, message in (
        ({"init_keep": 0.0}, "init_keep"),
        ({"init_keep": 1.0}, "init_keep"),
        ({"strength": -1.0}, "strength"),
        ({"gate_lr": 0.0}, "gate_lr"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(PlpruneError, match=message):
            HardConcreteMethod(**kwargs)
    with pytest.raises(PlpruneError, match="bind"):
        HardConcreteMethod().scores()


# -- the method ------------------------------------------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 6, generator=g)
    y = x[:, :1] - 0.5 * x[:, 1:2]
    return x, y


def _train(
    model: nn.Module, units: Units, method: HardConcreteMethod, steps: range, lr: float = 0.05
) -> None:
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


def test_large_penalty_drops_gates() -> None:
    model = _model()
    units = WeightUnits(model)
    method = HardConcreteMethod(strength=20.0, gate_lr=0.1, seed=1)
    method.bind(units, OneShot(40, 0.5))
    before = method.metrics()
    assert before["l0-gates_expected_l0_fraction"] == pytest.approx(
        float(hard_concrete_l0(torch.tensor(math.log(9.0)))), rel=1e-6
    )
    assert before["l0-gates_gate_zero_fraction"] == 0.0
    _train(model, units, method, range(40))
    after = method.metrics()
    assert after["l0-gates_expected_l0_fraction"] < 0.5 * before["l0-gates_expected_l0_fraction"]
    assert after["l0-gates_gate_zero_fraction"] > 0.5
    assert float(method.scores().mean()) < math.log(9.0) - 1.0
    # between steps the model sees the deterministic gates
    gate = model[0].parametrizations.weight[0].gate
    torch.testing.assert_close(gate.flatten(), method.deterministic_gates()[: gate.numel()], rtol=0, atol=0)


def test_zero_strength_leaves_only_the_task_gradient() -> None:
    model = _model()
    units = WeightUnits(model)
    method = HardConcreteMethod(strength=0.0, gate_lr=0.1)
    method.bind(units, OneShot(5, 0.5))
    _train(model, units, method, range(5))
    assert bool(torch.isfinite(method.scores()).all())
    assert not torch.equal(method.scores(), torch.full_like(method.scores(), math.log(9.0)))


def test_state_dict_round_trip_gives_identical_samples_and_updates() -> None:
    reference_model = _model()
    reference_units = WeightUnits(reference_model)
    reference = HardConcreteMethod(strength=1.0, gate_lr=0.05, seed=4)
    reference.bind(reference_units, OneShot(12, 0.5))
    _train(reference_model, reference_units, reference, range(6))
    saved = reference.state_dict()
    saved_log_alpha = saved["log_alpha"].clone()
    saved_model = {key: value.clone() for key, value in reference_model.state_dict().items()}
    assert "0.parametrizations.weight.original" in saved_model  # gates are on between steps

    resumed_model = _model()
    resumed_units = WeightUnits(resumed_model)
    resumed = HardConcreteMethod(strength=1.0, gate_lr=0.05, seed=4)
    resumed.bind(resumed_units, OneShot(12, 0.5))
    resumed.load_state_dict(saved)  # registers the gates again, so the model's keys match
    resumed_model.load_state_dict(saved_model)
    x, _ = _data()
    with torch.no_grad():
        assert torch.equal(resumed_model(x), reference_model(x))

    # the next sample is the same
    reference.on_step_start(6)
    resumed.on_step_start(6)
    for a, b in zip(reference_model, resumed_model, strict=True):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.parametrizations.weight[0].gate, b.parametrizations.weight[0].gate)
    _train(reference_model, reference_units, reference, range(6, 12))
    _train(resumed_model, resumed_units, resumed, range(6, 12))
    assert torch.equal(reference.log_alpha, resumed.log_alpha)
    for a, b in zip(reference_units.params, resumed_units.params, strict=True):
        assert torch.equal(a, b)
    # the saved state was not mutated by the training that followed
    assert torch.equal(saved["log_alpha"], saved_log_alpha)
    with pytest.raises(PlpruneError, match="shape"):
        resumed.load_state_dict({**saved, "log_alpha": torch.zeros(3)})


def test_finish_bakes_the_deterministic_gates_for_weights() -> None:
    model = _model()
    units = WeightUnits(model)
    method = HardConcreteMethod(strength=20.0, gate_lr=0.1)
    method.bind(units, OneShot(40, 0.5))
    _train(model, units, method, range(40))
    x, _ = _data()
    with torch.no_grad():
        gated = model(x)
    gates = method.deterministic_gates()
    assert bool((gates < 1).any()) and bool((gates == 0).any())
    method.finish()
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    with torch.no_grad():
        assert torch.equal(model(x), gated)
    zero = torch.cat([p.detach().flatten() for p in units.params])[gates == 0]
    assert bool((zero == 0).all())
    # later hooks do nothing
    method.on_step_start(3)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())


class _HiddenGroups(Units):
    """The 8 hidden units of ``_model()`` as groups; a gate multiplies each hidden unit's output."""

    kind = "neuron"

    def __init__(self, model: nn.Module) -> None:
        self.layer = model[0]
        self.gates: Tensor | None = None
        self.mask = torch.ones(8, dtype=torch.bool)
        self.layer.register_forward_hook(lambda _m, _i, out: out if self.gates is None else out * self.gates)

    def __len__(self) -> int:
        return 8

    def magnitudes(self) -> Tensor:
        return torch.cat([self.layer.weight, self.layer.bias[:, None]], 1).detach().norm(dim=1)

    @torch.no_grad()
    def scale_(self, factors: Tensor) -> None:
        self.layer.weight.mul_(factors[:, None])
        self.layer.bias.mul_(factors)

    def saliency(self) -> Tensor:
        return torch.zeros(8)

    def mask_gradients_(self, keep: Tensor) -> None:
        return None

    def set_gates(self, gates: Tensor | None) -> None:
        self.gates = None if gates is None else gates * self.mask

    def alive(self) -> Tensor:
        return self.mask.clone()


def test_group_units_gates_and_finish() -> None:
    model = _model()
    units = _HiddenGroups(model)
    units.mask[7] = False  # a pruned group: left out of the penalty, its log α never moves
    method = HardConcreteMethod(strength=10.0, gate_lr=0.1)
    method.bind(units, OneShot(20, 0.5))
    weight = model[0].weight.detach().clone()
    method.on_step_start(0)
    assert units.gates is not None and units.gates.requires_grad
    _train(model, units, method, range(20))
    assert float(method.scores()[:7].mean()) < math.log(9.0)
    assert float(method.scores()[7]) == pytest.approx(math.log(9.0))
    assert units.gates is not None and not units.gates.requires_grad
    trained = model[0].weight.detach().clone()
    assert not torch.equal(trained, weight)
    method.finish()
    assert units.gates is None
    assert torch.equal(model[0].weight, trained)  # groups: gates come off without baking
    metrics = method.metrics()
    assert 0.0 <= metrics["l0-gates_expected_l0_fraction"] <= 7 / 8
