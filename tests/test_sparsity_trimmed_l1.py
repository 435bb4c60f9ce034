"""Trimmed ℓ1: the capped-simplex projection against independent references, the trimmed-weight projection,
the weighted soft threshold, and the block-coordinate-descent method on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.keep import prune_count
from plprune.schedules import OneShot
from plprune.sparsity.base import Units
from plprune.sparsity.trimmed_l1 import (
    TrimmedL1Method,
    project_capped_simplex,
    project_trimmed_weights,
    weighted_soft_threshold,
)
from plprune.sparsity.weights import WeightUnits

# -- independent references ----------------------------------------------------------------------------


def slsqp_projection(v: np.ndarray, total: float, *, at_least: bool = False) -> np.ndarray:
    """argmin ½‖w − v‖² over w ∈ [0, 1]^p with Σw = total (or Σw ≥ total), by SLSQP."""
    constraint = {
        "type": "ineq" if at_least else "eq",
        "fun": lambda w: w.sum() - total,
        "jac": lambda w: np.ones_like(w),
    }
    result = minimize(
        lambda w: 0.5 * np.sum((w - v) ** 2),
        x0=np.full(len(v), total / len(v)),
        jac=lambda w: w - v,
        bounds=[(0.0, 1.0)] * len(v),
        constraints=[constraint],
        method="SLSQP",
        options={"ftol": 1e-10, "maxiter": 500},
    )
    assert result.success, result.message
    return result.x


def bisection_projection(v: np.ndarray, total: float) -> np.ndarray:
    """w = clip(v − τ, 0, 1) with Σw = total, τ by bisection on the non-increasing Σ clip(v − τ, 0, 1)."""
    low, high = v.min() - 1.0, v.max()
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.clip(v - mid, 0.0, 1.0).sum() > total:
            low = mid
        else:
            high = mid
    return np.clip(v - 0.5 * (low + high), 0.0, 1.0)


def trimmed_reference(v: np.ndarray, h: int) -> np.ndarray:
    clipped = np.clip(v, 0.0, 1.0)
    return clipped if clipped.sum() >= len(v) - h else bisection_projection(v, len(v) - h)


def assert_kkt(v: np.ndarray, w: np.ndarray, total: float, tol: float = 1e-9) -> None:
    """Feasible, and some τ gives w_i = v_i − τ inside (0, 1), v_i ≤ τ at 0, v_i − 1 ≥ τ at 1."""
    assert np.all(w >= 0) and np.all(w <= 1)
    assert abs(w.sum() - total) <= tol * max(1.0, len(v))
    inner = (w > tol) & (w < 1 - tol)
    zero, one = w <= tol, w >= 1 - tol
    if inner.any():
        taus = v[inner] - w[inner]
        assert np.ptp(taus) <= 1e-8 * max(1.0, np.abs(v).max())
        tau = taus.mean()
        assert np.all(v[zero] <= tau + 1e-8)
        assert np.all(v[one] - 1 >= tau - 1e-8)
    elif zero.any() and one.any():
        assert v[zero].max() <= v[one].min() - 1 + 1e-8


# -- capped simplex ------------------------------------------------------------------------------------


def _case(seed: int, p: int, scale: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=p) * scale


@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
@pytest.mark.parametrize("total_kind", ["zero", "full", "fraction", "integer"])
def test_capped_simplex_matches_slsqp(scale: float, total_kind: str) -> None:
    for seed in range(3):
        p = 7 + seed
        v = _case(seed, p, scale) + 0.5
        total = {"zero": 0.0, "full": float(p), "fraction": 0.37 * p, "integer": float(p // 3)}[total_kind]
        w = project_capped_simplex(torch.tensor(v), total).numpy()
        np.testing.assert_allclose(w, slsqp_projection(v, total), atol=2e-6)
        assert_kkt(v, w, total)


@pytest.mark.parametrize("p", [1, 2, 50, 1000])
def test_capped_simplex_matches_bisection(p: int) -> None:
    rng = np.random.default_rng(p)
    for scale in (1e-3, 1.0, 1e3):
        v = rng.normal(size=p) * scale
        for total in (0.0, p * rng.uniform(), float(rng.integers(0, p + 1)), float(p)):
            w = project_capped_simplex(torch.tensor(v), total).numpy()
            np.testing.assert_allclose(w, bisection_projection(v, total), atol=1e-9)
            assert_kkt(v, w, total)


def test_capped_simplex_ties_and_integer_values() -> None:
    # repeated values and integer grids put many breakpoints on top of each other (flat pieces of f)
    for v in (np.array([3.0, 3.0, 3.0, 1.0, 1.0, 0.0, -2.0]), np.round(_case(4, 40, 3.0)), np.zeros(9)):
        for total in np.linspace(0, len(v), 13):
            w = project_capped_simplex(torch.tensor(v), float(total)).numpy()
            np.testing.assert_allclose(w, bisection_projection(v, total), atol=1e-9)
            assert_kkt(v, w, total)


def test_capped_simplex_keeps_dtype_and_device_and_leaves_input() -> None:
    v = torch.randn(100, dtype=torch.float32)
    before = v.clone()
    w = project_capped_simplex(v, 30)
    assert w.dtype == torch.float32 and w.shape == v.shape
    assert torch.equal(v, before)
    assert abs(float(w.double().sum()) - 30) < 1e-4
    reference = bisection_projection(v.double().numpy(), 30.0)
    np.testing.assert_allclose(w.double().numpy(), reference, atol=1e-6)


def test_capped_simplex_interior_is_shift() -> None:
    # v already inside the box with the right sum shifted by a constant: τ is that constant
    v = torch.tensor([0.2, 0.5, 0.7, 0.4], dtype=torch.float64)
    w = project_capped_simplex(v + 0.25, float(v.sum()))
    torch.testing.assert_close(w, v, atol=1e-12, rtol=0)


@pytest.mark.parametrize("total", [-0.1, 5.5, float("nan"), float("inf")])
def test_capped_simplex_rejects_total_outside_range(total: float) -> None:
    with pytest.raises(PlpruneError, match="total"):
        project_capped_simplex(torch.zeros(5), total)


def test_capped_simplex_total_message_names_range() -> None:
    with pytest.raises(PlpruneError, match=r"\[0, 5\]"):
        project_capped_simplex(torch.zeros(5), 6)


def test_capped_simplex_rejects_bad_vectors() -> None:
    with pytest.raises(PlpruneError, match="1-D"):
        project_capped_simplex(torch.zeros(2, 3), 1)
    with pytest.raises(PlpruneError, match="NaN"):
        project_capped_simplex(torch.tensor([0.0, float("nan")]), 1)
    with pytest.raises(PlpruneError, match="floating"):
        project_capped_simplex(torch.arange(4), 1)
    with pytest.raises(PlpruneError, match="Tensor"):
        project_capped_simplex([0.1, 0.2], 1)  # type: ignore[arg-type]


# -- trimmed-weight projection -------------------------------------------------------------------------


def test_trimmed_projection_clip_branch() -> None:
    v = torch.tensor([1.4, 0.9, -0.3, 0.8, 1.0], dtype=torch.float64)  # clip sums to 3.7 ≥ 5 − 2
    w = project_trimmed_weights(v, 2)
    assert torch.equal(w, v.clamp(0, 1))
    np.testing.assert_allclose(w.numpy(), slsqp_projection(v.numpy(), 3.0, at_least=True), atol=2e-6)


def test_trimmed_projection_simplex_branch() -> None:
    v = torch.tensor([0.2, 0.9, -0.3, 0.1, 0.6], dtype=torch.float64)  # clip sums to 1.8 < 5 − 2
    w = project_trimmed_weights(v, 2)
    assert abs(float(w.sum()) - 3.0) < 1e-12
    torch.testing.assert_close(w, project_capped_simplex(v, 3.0))
    np.testing.assert_allclose(w.numpy(), slsqp_projection(v.numpy(), 3.0, at_least=True), atol=2e-6)


@pytest.mark.parametrize("h", [0, 3, 17, 40])
def test_trimmed_projection_matches_reference(h: int) -> None:
    rng = np.random.default_rng(h)
    for shift in (-0.5, 0.3, 1.0):
        v = rng.normal(size=40) * 0.5 + shift
        w = project_trimmed_weights(torch.tensor(v), h).numpy()
        np.testing.assert_allclose(w, trimmed_reference(v, h), atol=1e-9)
        assert w.sum() >= 40 - h - 1e-9


def test_trimmed_projection_rejects_bad_h() -> None:
    with pytest.raises(PlpruneError, match="p = 4"):
        project_trimmed_weights(torch.zeros(4), 5)
    with pytest.raises(PlpruneError, match=">= 0"):
        project_trimmed_weights(torch.zeros(4), -1)
    with pytest.raises(PlpruneError, match="integer"):
        project_trimmed_weights(torch.zeros(4), 1.5)  # type: ignore[arg-type]


# -- weighted soft threshold ---------------------------------------------------------------------------


def test_weighted_soft_threshold_with_unit_weights_is_soft_threshold() -> None:
    t = torch.randn(50, dtype=torch.float64)
    out = weighted_soft_threshold(t, 0.3 * torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(out, torch.nn.functional.softshrink(t, 0.3))
    torch.testing.assert_close(weighted_soft_threshold(t, 0.3), out)


def test_weighted_soft_threshold_with_zero_weights_is_identity() -> None:
    t = torch.randn(50)
    assert torch.equal(weighted_soft_threshold(t, torch.zeros(50)), t)
    mixed = weighted_soft_threshold(t, torch.tensor([0.0, 10.0] * 25))
    assert torch.equal(mixed[0::2], t[0::2]) and torch.equal(mixed[1::2], torch.zeros(25))


def test_weighted_soft_threshold_rejects_negative_thresholds() -> None:
    with pytest.raises(PlpruneError, match="≥ 0"):
        weighted_soft_threshold(torch.ones(3), torch.tensor([0.1, -0.1, 0.0]))


# -- the method ----------------------------------------------------------------------------------------


def _tiny_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 2, bias=False))


def _flat(units: WeightUnits) -> Tensor:
    return torch.cat([p.detach().flatten() for p in units.params]).double()


def _loss(model: nn.Module) -> Tensor:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(6, 4, generator=gen)
    y = torch.randn(6, 2, generator=gen)
    return ((model(x) - y) ** 2).mean()


def test_one_step_equals_manual_computation() -> None:
    model = _tiny_model()
    units = WeightUnits(model)
    n = len(units)
    method = TrimmedL1Method(strength=0.8, weight_step=0.7)
    method.bind(units, OneShot(5, 0.5))
    h = n - prune_count(n, 0.5)
    assert method.h == h == 9
    assert torch.equal(method.w, torch.ones(n))
    lr = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    _loss(model).backward()
    opt.step()
    theta = _flat(units).numpy()
    method.after_update(0, lr)

    r = 0.8 * np.abs(theta)
    w = trimmed_reference(1.0 - 0.7 * r / r.max(), h)
    expected = np.sign(theta) * np.maximum(np.abs(theta) - lr * 0.8 * w, 0.0)
    np.testing.assert_allclose(method.w.double().numpy(), w, atol=1e-6)
    np.testing.assert_allclose(_flat(units).numpy(), expected, atol=1e-6)
    assert (expected == 0).any() and (expected != 0).any()  # the threshold bites somewhere, not everywhere
    metrics = method.metrics()
    assert metrics["trimmed-l1_zero_fraction"] == pytest.approx(float((expected == 0).mean()))
    assert metrics["trimmed-l1_penalised_fraction"] == pytest.approx(w.mean(), abs=1e-6)


def test_converges_to_trimmed_solution_on_quadratic() -> None:
    target = torch.tensor([[0.6, -1.5, 0.2, 2.0, -0.3, 1.2, 0.05, -1.0]])
    model = nn.Linear(8, 1, bias=False)
    nn.init.zeros_(model.weight)
    units = WeightUnits(model)
    method = TrimmedL1Method(strength=0.4)
    method.bind(units, OneShot(10_000, 0.5))  # h = 4
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(400):
        opt.zero_grad()
        (0.5 * ((model.weight - target) ** 2).sum()).backward()
        opt.step()
        method.after_update(step, 0.1)
    top = target.abs().flatten().argsort(descending=True)[:4]
    expect_w = torch.ones(8)
    expect_w[top] = 0.0
    torch.testing.assert_close(method.w, expect_w, atol=1e-6, rtol=0)
    # θ = soft(target, λw): the h largest are unpenalised, the rest shrink by λ (or to 0)
    expected = weighted_soft_threshold(target.flatten(), 0.4 * expect_w)
    torch.testing.assert_close(model.weight.detach().flatten(), expected, atol=1e-5, rtol=0)
    assert float(model.weight.detach()[0, 6]) == 0.0 and float(model.weight.detach()[0, 4]) == 0.0


def test_regularisation_stops_at_last_event_and_pruned_units_stay_zero() -> None:
    model = _tiny_model()
    units = WeightUnits(model)
    method = TrimmedL1Method(strength=0.5)
    method.bind(units, OneShot(3, 0.5))
    keep = torch.ones(len(units), dtype=torch.bool)
    keep[[0, 5, 14]] = False
    units.apply_mask(keep)
    before = _flat(units)
    method.after_update(3, 0.1)  # step ≥ end_step: nothing
    assert torch.equal(_flat(units), before)
    method.after_update(2, 0.1)
    after = _flat(units)
    assert torch.equal(after[~keep], torch.zeros(3, dtype=torch.float64))
    assert (after[keep].abs() < before[keep].abs()).any()


def test_state_dict_round_trip_continues_exactly() -> None:
    def run(method: TrimmedL1Method, model: nn.Module, steps: range) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in steps:
            opt.zero_grad()
            _loss(model).backward()
            opt.step()
            method.after_update(step, 0.1)

    model = _tiny_model()
    method = TrimmedL1Method(strength=0.3, weight_step=0.2)
    method.bind(WeightUnits(model), OneShot(50, 0.6))
    run(method, model, range(5))
    state = method.state_dict()
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    assert state["w"].min() < 1  # w has moved

    resumed_model = _tiny_model()
    resumed_model.load_state_dict(saved_model)
    resumed = TrimmedL1Method(strength=0.3, weight_step=0.2)
    resumed.bind(WeightUnits(resumed_model), OneShot(50, 0.6))
    resumed.load_state_dict(state)
    assert torch.equal(resumed.w, method.w)
    state["w"].fill_(-1)  # the method holds its own copy
    assert torch.equal(resumed.w, method.w)
    run(method, model, range(5, 10))
    run(resumed, resumed_model, range(5, 10))
    assert torch.equal(resumed.w, method.w)
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(PlpruneError, match="shape"):
        resumed.load_state_dict({"w": torch.ones(3)})


class _Rows(Units):
    """The rows of one matrix as groups (for the group trimmed lasso)."""

    kind = "row"

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def magnitudes(self) -> Tensor:
        return self.matrix.norm(dim=1)

    def scale_(self, factors: Tensor) -> None:
        self.matrix.mul_(factors[:, None])

    def saliency(self) -> Tensor:
        return torch.zeros(len(self))

    def mask_gradients_(self, keep: Tensor) -> None:
        return None

    def set_gates(self, gates: Tensor | None) -> None:
        return None

    def alive(self) -> Tensor:
        return torch.ones(len(self), dtype=torch.bool)


def test_group_version_is_group_soft_threshold() -> None:
    matrix = torch.tensor([[3.0, 4.0], [0.3, 0.4], [1.2, 1.6], [0.0, 0.0]], dtype=torch.float64)
    units = _Rows(matrix.clone())
    method = TrimmedL1Method(strength=1.0, trimmed=1, weight_step=1.0)
    method.bind(units, OneShot(10, 0.5))
    method.after_update(0, 1.0)
    norms = matrix.norm(dim=1)
    w = torch.tensor(trimmed_reference(1.0 - (norms / norms.max()).numpy(), 1))
    new_norms = (norms - w).clamp(min=0)
    expected = matrix * torch.where(norms > 0, new_norms / norms.clamp(min=1e-300), 0.0)[:, None]
    torch.testing.assert_close(units.matrix, expected)
    assert int(w.argmin()) == 0 and float(w.sum()) == pytest.approx(3.0)  # the largest group: least penalised


def test_method_rejects_bad_settings() -> None:
    with pytest.raises(PlpruneError, match="strength"):
        TrimmedL1Method(strength=-1e-4)
    with pytest.raises(PlpruneError, match="weight step"):
        TrimmedL1Method(weight_step=-1.0)
    with pytest.raises(PlpruneError, match="trimmed count"):
        TrimmedL1Method(trimmed=-2)
    method = TrimmedL1Method(trimmed=100)
    with pytest.raises(PlpruneError, match="n = 18"):
        method.bind(WeightUnits(_tiny_model()), OneShot(5, 0.5))
    with pytest.raises(PlpruneError, match="bind"):
        TrimmedL1Method().state_dict()
