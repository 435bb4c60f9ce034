"""Proximal operators against their definitions (brute force on a grid), and proximal-gradient training."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.schedules import OneShot
from plprune.sparsity.base import Units
from plprune.sparsity.group_units import GroupUnits
from plprune.sparsity.prox import (
    PROX_OPERATORS,
    ProximalMethod,
    firm_penalty,
    firm_threshold,
    group_prox,
    hard_threshold,
    l0_penalty,
    l0_projection,
    l1_penalty,
    lq_penalty,
    lq_prox,
    lq_threshold,
    mcp_penalty,
    mcp_prox,
    q_shrinkage,
    scad_penalty,
    scad_prox,
    soft_threshold,
)
from plprune.sparsity.weights import WeightUnits

F64 = torch.float64
# 200 001 points on [−13, 13] ⊇ [−3|t| − 1, 3|t| + 1] for |t| ≤ 4; z = 0 is a grid point
H = 13.0 / 100_000
GRID = torch.arange(-100_000, 100_001, dtype=F64) * H


def sample_t(count: int = 200, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(count, generator=gen, dtype=F64) * 8.0 - 4.0


def brute_prox(penalty_on_grid: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Grid argmin and minimum of ``λR(z) + ½(z − t)²`` for each ``t`` (written ``c(z) − tz + ½t²``)."""
    c = penalty_on_grid + 0.5 * GRID * GRID
    argmins, minima = [], []
    buffer = torch.empty(4, GRID.numel(), dtype=F64)  # small chunks, one buffer: fast on one thread
    for chunk in t.split(4):
        objective = buffer[: chunk.numel()]
        torch.mul(chunk.unsqueeze(1), GRID.unsqueeze(0), out=objective)
        torch.sub(c.unsqueeze(0), objective, out=objective)
        value, index = objective.min(dim=1)
        argmins.append(GRID[index])
        minima.append(value + 0.5 * chunk * chunk)
    return torch.cat(argmins), torch.cat(minima)


# (name, prox(t, lam, **p), penalty(z, lam, **p), lam, params, tie thresholds (two minimisers))
CASES: list[
    tuple[str, Callable[..., Tensor], Callable[..., Tensor], float, dict[str, float], list[float]]
] = [
    *[("l1", soft_threshold, l1_penalty, lam, {}, []) for lam in (0.2, 1.0)],
    *[
        ("lq", lq_prox, lq_penalty, lam, {"q": q}, [lq_threshold(lam, q)[1]])
        for lam, q in ((0.3, 0.3), (0.3, 0.8), (1.0, 0.5), (2.0, 0.1))
    ],
    *[("scad", scad_prox, scad_penalty, lam, {"a": a}, []) for lam, a in ((0.5, 2.5), (1.0, 3.7))],
    *[("mcp", mcp_prox, mcp_penalty, lam, {"gamma": g}, []) for lam, g in ((0.5, 1.5), (1.0, 3.0))],
    *[
        ("firm", firm_threshold, firm_penalty, lam, {"mu": mu}, [])
        for lam, mu in ((0.5, 0.8), (1.0, 3.0), (0.0, 1.0))
    ],
    *[("l0", hard_threshold, l0_penalty, lam, {}, [math.sqrt(2 * lam)]) for lam in (0.5, 2.0)],
]


@pytest.mark.parametrize(
    ("name", "prox", "penalty", "lam", "params", "ties"),
    CASES,
    ids=[f"{c[0]}-lam{c[3]}-{c[4]}" for c in CASES],
)
def test_prox_is_the_argmin_of_its_definition(
    name: str,
    prox: Callable[..., Tensor],
    penalty: Callable[..., Tensor],
    lam: float,
    params: dict[str, float],
    ties: list[float],
) -> None:
    t = sample_t()
    pen = penalty(GRID, lam, **params)
    z_grid, best = brute_prox(pen, t)
    z = prox(t, lam, **params)
    # the operator is at least as good as the best grid point ...
    objective = penalty(z, lam, **params) + 0.5 * (z - t) ** 2
    assert bool((objective <= best + 1e-12).all()), name
    # ... and agrees with it to grid resolution away from ties
    away = torch.ones_like(t, dtype=torch.bool)
    for tie in ties:
        away &= (t.abs() - tie).abs() > 1e-6
    assert int(away.sum()) > 190
    assert (z - z_grid)[away].abs().max() <= H


def test_lq_threshold_formula_and_stationarity() -> None:
    for lam, q in ((0.3, 0.5), (1.0, 0.2), (2.0, 0.9)):
        beta, tau = lq_threshold(lam, q)
        assert beta == pytest.approx((2 * lam * (1 - q)) ** (1 / (2 - q)), rel=1e-15)
        assert tau == pytest.approx(beta + lam * q * beta ** (q - 1), rel=1e-15)
        below = lq_prox(torch.tensor([tau * (1 - 1e-9), -tau * (1 - 1e-9)], dtype=F64), lam, q)
        assert below.tolist() == [0.0, 0.0]
        above = lq_prox(torch.tensor([tau * (1 + 1e-9), -tau * (1 + 1e-9)], dtype=F64), lam, q)
        assert float(above[0]) >= beta and float(above[1]) <= -beta
        assert float(above[0]) == pytest.approx(beta, rel=1e-3)
        t = torch.linspace(tau * 1.0001, 50.0, 1000, dtype=F64)
        y = lq_prox(torch.cat([t, -t]), lam, q)
        assert torch.equal(y[:1000], -y[1000:])
        y = y[:1000]
        assert bool((y >= beta).all()) and bool((y <= t).all())
        residual = lam * q * y.pow(q - 1) + y - t
        assert residual.abs().max() <= 1e-12 * t.max()


def test_lq_keeps_dtype_and_shape_and_lam_zero_is_identity() -> None:
    t = torch.randn(3, 4)
    out = lq_prox(t, 0.1, 0.5)
    assert out.dtype == torch.float32 and out.shape == (3, 4)
    torch.testing.assert_close(out, lq_prox(t.double(), 0.1, 0.5).float())
    assert torch.equal(lq_prox(t, 0.0, 0.5), t)
    assert lq_prox(torch.zeros(0), 0.5).shape == (0,)


def test_q_shrinkage() -> None:
    t = sample_t(400)
    lam = 0.7
    torch.testing.assert_close(q_shrinkage(t, lam, 0.999), soft_threshold(t, lam), atol=1e-2, rtol=0)
    small = t[t.abs() <= lam]
    assert small.numel() > 0 and bool((q_shrinkage(small, lam, 0.4) == 0).all())
    hand = q_shrinkage(torch.tensor([2.0, -3.0, 0.5, 0.0], dtype=F64), 1.0, 0.5)
    torch.testing.assert_close(hand[[0, 2, 3]], torch.tensor([2 - 2**-0.5, 0.0, 0.0], dtype=F64))
    assert float(q_shrinkage(torch.tensor([-3.0], dtype=F64), 0.5, 0.5)) == pytest.approx(
        -(3 - 0.5**1.5 * 3**-0.5), rel=1e-14
    )
    zero_lam = q_shrinkage(torch.tensor([0.0, 1.5, -2.0]), 0.0, 0.5)
    assert zero_lam.tolist() == [0.0, 1.5, -2.0]


def test_firm_is_mcp_with_gamma_mu_over_lam() -> None:
    t = sample_t(500)
    for lam, mu in ((0.7, 2.1), (0.25, 0.4), (1.0, 10.0)):
        torch.testing.assert_close(firm_threshold(t, lam, mu), mcp_prox(t, lam, mu / lam))
        torch.testing.assert_close(firm_penalty(t, lam, mu), mcp_penalty(t, lam, mu / lam))


def test_scad_and_mcp_are_continuous_at_their_breakpoints() -> None:
    lam, a, gamma = 0.8, 3.7, 2.5
    for fn, points in (
        (lambda t: scad_prox(t, lam, a), (2 * lam, a * lam)),
        (lambda t: mcp_prox(t, lam, gamma), (lam, gamma * lam)),
        (lambda t: firm_threshold(t, lam, 2 * lam), (lam, 2 * lam)),
        (lambda t: scad_penalty(t, lam, a), (lam, a * lam)),
        (lambda t: mcp_penalty(t, lam, gamma), (gamma * lam,)),
    ):
        for p in points:
            for sign in (1.0, -1.0):
                side = fn(torch.tensor([sign * (p - 1e-10), sign * (p + 1e-10)], dtype=F64))
                assert abs(float(side[1] - side[0])) < 1e-8


def test_hard_threshold_values() -> None:
    t = torch.tensor([0.99, 1.0, 1.01, -1.01, -0.5, 0.0, 3.0], dtype=F64)
    assert hard_threshold(t, 0.5).tolist() == [0.0, 0.0, 1.01, -1.01, 0.0, 0.0, 3.0]


def test_l0_projection_keeps_the_n_largest_with_the_tie_rule() -> None:
    gen = torch.Generator().manual_seed(3)
    t = torch.randn(6, 7, generator=gen)
    for n in (0, 1, 5, 41, 42, 100):
        out = l0_projection(t, n)
        assert out.shape == t.shape
        assert int((out != 0).sum()) == min(n, 42)
        kept = out != 0
        assert torch.equal(out[kept], t[kept])
        if 0 < n < 42:
            assert float(t[kept].abs().min()) > float(t[~kept].abs().max())
    ties = torch.tensor([[1.0, -2.0, 2.0], [1.0, -1.0, 0.5]])
    assert l0_projection(ties, 2).tolist() == [[0.0, -2.0, 2.0], [0.0, 0.0, 0.0]]
    assert l0_projection(ties, 3).tolist() == [[1.0, -2.0, 2.0], [0.0, 0.0, 0.0]]
    assert l0_projection(ties, 4).tolist() == [[1.0, -2.0, 2.0], [1.0, 0.0, 0.0]]


def test_registry() -> None:
    assert list(PROX_OPERATORS) == ["l1", "lq", "q-shrink", "scad", "mcp", "firm", "l0"]
    t = sample_t(50)
    assert torch.equal(PROX_OPERATORS["l1"](t, 0.3), soft_threshold(t, 0.3))
    assert torch.equal(PROX_OPERATORS["lq"](t, 0.3), lq_prox(t, 0.3, 0.5))
    assert torch.equal(PROX_OPERATORS["q-shrink"](t, 0.3, q=0.2), q_shrinkage(t, 0.3, 0.2))
    assert torch.equal(PROX_OPERATORS["scad"](t, 0.3), scad_prox(t, 0.3, 3.7))
    assert torch.equal(PROX_OPERATORS["mcp"](t, 0.3), mcp_prox(t, 0.3, 3.0))
    assert torch.equal(PROX_OPERATORS["firm"](t, 0.3), firm_threshold(t, 0.3, 0.6))
    assert torch.equal(PROX_OPERATORS["l0"](t, 0.3, n=7), l0_projection(t, 7))
    assert PROX_OPERATORS["scad"].param_names == ("a",)
    assert PROX_OPERATORS["q-shrink"].penalty is None and PROX_OPERATORS["l0"].penalty is None
    assert PROX_OPERATORS["firm"].penalty is firm_penalty


def test_group_prox_l1_is_block_soft_threshold() -> None:
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(60, 5, generator=gen, dtype=F64) * torch.rand(60, 1, generator=gen, dtype=F64) * 2
    theta[7] = 0.0
    lam = 1.2
    norms = theta.norm(dim=1)
    factors = group_prox(norms, "l1", lam)
    expected = theta * torch.clamp_min(1 - lam / norms.clamp_min(1e-300), 0.0).unsqueeze(1)
    torch.testing.assert_close(theta * factors.unsqueeze(1), expected, rtol=1e-14, atol=1e-14)
    assert float(factors[7]) == 0.0 and bool((factors == 0).sum() > 5)


@pytest.mark.parametrize(
    ("operator", "lam", "params"),
    [
        ("l1", 0.8, {}),
        ("lq", 0.6, {"q": 0.5}),
        ("scad", 0.6, {"a": 3.0}),
        ("mcp", 0.7, {}),
        ("firm", 0.5, {}),
    ],
)
def test_group_prox_is_the_argmin_of_the_group_objective(
    operator: str, lam: float, params: dict[str, float]
) -> None:
    """2-D groups: ``θ_g·factor`` vs a grid argmin of ``λR(‖z‖) + ½‖z − θ_g‖²`` over ``[−5, 5]²``, which
    holds the minimiser: R is nondecreasing in ‖z‖, so ‖z*‖ ≤ ‖θ_g‖ < 3.6."""
    gen = torch.Generator().manual_seed(2)
    theta = (torch.rand(20, 2, generator=gen, dtype=F64) * 2 - 1) * 2.5
    norms = theta.norm(dim=1)
    op = PROX_OPERATORS[operator]
    penalty = op.penalty
    assert penalty is not None
    resolved = op.resolve(lam, params)
    h = 5.0 / 250
    axis = torch.arange(-250, 251, dtype=F64) * h
    grid = torch.cartesian_prod(axis, axis)  # (Z, 2)
    c = penalty(grid.norm(dim=1), lam, **resolved) + 0.5 * (grid * grid).sum(dim=1)
    objective = c.unsqueeze(0) - theta @ grid.T + 0.5 * (theta * theta).sum(dim=1, keepdim=True)
    best, index = objective.min(dim=1)
    z = theta * group_prox(norms, operator, lam, **params).unsqueeze(1)
    mine = penalty(z.norm(dim=1), lam, **resolved) + 0.5 * ((z - theta) ** 2).sum(dim=1)
    assert bool((mine <= best + 1e-12).all())
    away = torch.ones(20, dtype=torch.bool)
    if operator == "lq":
        away = (norms - lq_threshold(lam, 0.5)[1]).abs() > 1e-2
    assert (z - grid[index])[away].norm(dim=1).max() <= 2 * h


def test_group_prox_l0_keeps_the_n_largest_norms() -> None:
    norms = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0])
    assert group_prox(norms, "l0", 0.0, n=2).tolist() == [0.0, 1.0, 0.0, 0.0, 1.0]


# -- ProximalMethod --------------------------------------------------------------------------------------
def manual_prox(operator: str, flat: Tensor, lr: float, strength: float, n: int) -> Tensor:
    lam = lr * strength
    return {
        "l1": lambda: soft_threshold(flat, lam),
        "lq": lambda: lq_prox(flat, lam, 0.5),
        "q-shrink": lambda: q_shrinkage(flat, lam, 0.5),
        "scad": lambda: scad_prox(flat, lam, 3.7),
        "mcp": lambda: mcp_prox(flat, lam, 3.0),
        "firm": lambda: firm_threshold(flat, lam, lr * 2 * strength),
        "l0": lambda: l0_projection(flat, n),
    }[operator]()


@pytest.mark.parametrize("operator", list(PROX_OPERATORS))
def test_proximal_method_step_on_weights_matches_the_manual_computation(operator: str) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    units = WeightUnits(model)
    method = ProximalMethod(operator, strength=1.0)
    assert method.name == f"prox-{operator}"
    method.bind(units, OneShot(10, 0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 4)
    model(x).pow(2).mean().backward()
    after_sgd = {name: (p - 0.1 * p.grad).detach().clone() for name, p in model.named_parameters()}
    opt.step()
    method.after_update(0, 0.1)
    flat = torch.cat([after_sgd[name].flatten() for name in units.names])
    # l0: n = 18 − round-half-up(0.5 · 1/10 · 18) = 18 − 1
    expected = manual_prox(operator, flat, 0.1, 1.0, n=17)
    torch.testing.assert_close(units.magnitudes(), expected.abs())
    torch.testing.assert_close(
        torch.cat([p.detach().flatten() for p in units.params]), expected, rtol=1e-6, atol=1e-7
    )
    for name in ("0.bias", "2.bias"):
        torch.testing.assert_close(dict(model.named_parameters())[name].detach(), after_sgd[name])
    assert int((expected == 0).sum()) >= 1
    metrics = method.metrics()
    assert metrics[f"prox-{operator}_zero_fraction"] == pytest.approx(float((expected == 0).float().mean()))
    if operator != "l0":
        assert metrics[f"prox-{operator}_threshold"] == pytest.approx(0.1)
    assert method.state_dict() == {}


class RowUnits(Units):
    """The rows of one tensor as groups (test double)."""

    kind = "row"

    def __init__(self, theta: Tensor) -> None:
        self.theta = theta
        self.keep = torch.ones(theta.shape[0], dtype=torch.bool)

    def __len__(self) -> int:
        return self.theta.shape[0]

    def magnitudes(self) -> Tensor:
        return self.theta.norm(dim=1)

    def scale_(self, factors: Tensor) -> None:
        self.theta.mul_(factors.unsqueeze(1))

    def saliency(self) -> Tensor:
        return torch.zeros(len(self))

    def mask_gradients_(self, keep: Tensor) -> None:
        return None

    def set_gates(self, gates: Tensor | None) -> None:
        return None

    def alive(self) -> Tensor:
        return self.keep


def row_units(seed: int = 4, rows: int = 10) -> RowUnits:
    gen = torch.Generator().manual_seed(seed)
    return RowUnits(
        torch.randn(rows, 3, generator=gen, dtype=F64) * torch.linspace(0.1, 2, rows, dtype=F64)[:, None]
    )


def test_proximal_method_on_groups_is_block_soft_threshold() -> None:
    units = row_units()
    units.keep[2] = False
    units.theta[2] = 0.0
    method = ProximalMethod("l1", strength=2.0)
    method.bind(units, OneShot(3, 0.3))
    for step in range(5):
        before = units.theta.clone()
        method.after_update(step, 0.25)
        if step >= 3:  # the schedule's last event ends the regularisation
            assert torch.equal(units.theta, before)
            continue
        norms = before.norm(dim=1, keepdim=True)
        expected = before * torch.clamp_min(1 - 0.5 / norms.clamp_min(1e-300), 0.0)
        torch.testing.assert_close(units.theta, expected, rtol=1e-14, atol=1e-14)
        assert bool((units.theta[2] == 0).all())
    metrics = method.metrics()
    assert metrics["prox-l1_threshold"] == 0.5
    assert metrics["prox-l1_zero_fraction"] == pytest.approx(
        float((units.theta.norm(dim=1) == 0).double().mean())
    )
    assert metrics["prox-l1_zero_fraction"] > 0.1
    torch.testing.assert_close(method.scores(), units.theta.norm(dim=1))


def test_proximal_method_l0_ramps_the_kept_count() -> None:
    units = row_units(rows=10)
    order = units.theta.norm(dim=1).argsort()
    method = ProximalMethod("l0")
    method.bind(units, OneShot(4, 0.5))
    # r(t) = 0.5·(t + 1)/4: 0.125 → round-half-up(1.25) = 1 zeroed; 0.25 → 2.5 → 3; 0.375 → 3.75 → 4; 0.5 → 5
    for step, zeros in ((0, 1), (1, 3), (2, 4), (3, 5), (4, 5)):
        method.after_update(step, 0.1)
        norms = units.theta.norm(dim=1)
        assert int((norms == 0).sum()) == zeros, step
        assert bool((norms[order[:zeros]] == 0).all())  # the smallest rows go first
    assert method.metrics()["prox-l0_threshold"] > 0


def test_proximal_method_l0_counts_pruned_units_as_zeros() -> None:
    units = row_units(rows=10)
    units.keep[9] = False
    units.theta[9] = 0.0
    method = ProximalMethod("l0")
    method.bind(units, OneShot(4, 0.5))
    assert method.kept_count(0) == 9 and method.kept_count(3) == 5
    method.after_update(0, 0.1)
    assert int((units.theta.norm(dim=1) == 0).sum()) == 1


def test_proximal_method_zero_lr_and_firm_scaling() -> None:
    units = row_units()
    before = units.theta.clone()
    method = ProximalMethod("firm", strength=1.0, mu=3.0)
    method.bind(units, OneShot(5, 0.5))
    method.after_update(0, 0.0)
    assert torch.equal(units.theta, before)
    method.after_update(0, 0.5)
    norms = before.norm(dim=1)
    expected = before * group_prox(norms, "firm", 0.5, mu=1.5).unsqueeze(1)
    torch.testing.assert_close(units.theta, expected)


# -- bad input -------------------------------------------------------------------------------------------
T = torch.tensor([0.5, -1.0, 2.0])

BAD: list[tuple[str, Callable[[], Any], str]] = [
    ("negative lam", lambda: soft_threshold(T, -0.1), r"lam .*must be a finite number >= 0"),
    ("nan lam", lambda: mcp_prox(T, float("nan")), r"lam .*must be a finite number >= 0"),
    ("inf lam", lambda: l1_penalty(T, float("inf")), r"lam .*must be a finite number >= 0"),
    ("q = 1", lambda: lq_prox(T, 0.1, 1.0), r"q must lie in the open interval \(0, 1\)"),
    ("q = 0", lambda: lq_penalty(T, 0.1, 0.0), r"q must lie in the open interval \(0, 1\)"),
    ("q-shrink q > 1", lambda: q_shrinkage(T, 0.1, 1.5), r"q must lie in the open interval \(0, 1\)"),
    ("scad a = 2", lambda: scad_prox(T, 0.1, 2.0), r"a must be a finite number > 2"),
    ("mcp gamma = 1", lambda: mcp_prox(T, 0.1, 1.0), r"gamma must be a finite number > 1"),
    ("firm mu = lam", lambda: firm_threshold(T, 0.5, 0.5), r"mu > lam \(0 <= lam < mu\)"),
    ("firm mu < lam", lambda: firm_penalty(T, 0.5, 0.1), r"mu > lam \(0 <= lam < mu\)"),
    ("n < 0", lambda: l0_projection(T, -1), r"n .*must be an integer >= 0"),
    ("n float", lambda: l0_projection(T, 1.5), r"n .*must be an integer >= 0"),
    ("int tensor", lambda: soft_threshold(torch.tensor([1, 2]), 0.1), r"floating-point torch.Tensor"),
    (
        "unknown operator",
        lambda: group_prox(T.abs(), "l2", 0.1),
        r"unknown proximal operator 'l2'; valid: l1, lq, q-shrink, scad, mcp, firm, l0",
    ),
    ("negative norms", lambda: group_prox(T, "l1", 0.1), r"norms must be finite and >= 0"),
    ("unknown parameter", lambda: PROX_OPERATORS["lq"](T, 0.1, p=0.5), r"no parameter\(s\) p; allowed: q"),
    ("missing n", lambda: PROX_OPERATORS["l0"](T, 0.1), r"needs the parameter n"),
    ("method operator", lambda: ProximalMethod("nope"), r"valid: l1, lq, q-shrink, scad, mcp, firm, l0"),
    ("method strength", lambda: ProximalMethod("l1", strength=-1.0), r"strength .*finite number >= 0"),
    ("method scad a", lambda: ProximalMethod("scad", a=1.5), r"a must be a finite number > 2"),
    ("method l0 n", lambda: ProximalMethod("l0", n=3), r"prox-l0 takes no parameters"),
    ("method unbound", lambda: ProximalMethod("l1").after_update(0, 0.1), r"bind\(units, schedule\)"),
]


@pytest.mark.parametrize(("case", "call", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_raises(case: str, call: Callable[[], Any], match: str) -> None:
    with pytest.raises(PlpruneError, match=match):
        call()


# -- prox-l0 follows the keep rule: protection and allocation ---------------------------------------------
def _two_conv_filters() -> tuple[GroupUnits, Tensor]:
    """A Conv1d(1→8) → Conv1d(8→4) CNN's 12 filters, the second conv's all scaled far below the first's."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv1d(1, 8, 3), nn.ReLU(), nn.Conv1d(8, 4, 3), nn.Flatten(), nn.Linear(8, 2))
    units = GroupUnits(GroupSet(model, ["filter"], example_inputs=torch.randn(2, 1, 6)))
    layers = units.layer_index()
    assert layers.tolist() == [0] * 8 + [1] * 4
    units.scale_(torch.where(layers == 1, 1e-3, 1.0).double())
    norms = units.magnitudes()
    assert float(norms[layers == 1].max()) < float(norms[layers == 0].min())
    return units, layers


def test_prox_l0_on_filters_never_empties_a_layer() -> None:
    units, layers = _two_conv_filters()
    before = units.magnitudes()
    # OneShot(1, 0.75): r(0) = 0.75, n = 12 − round-half-up(9) = 3
    assert int((l0_projection(before, 3)[layers == 1] != 0).sum()) == 0  # the plain projection empties it
    method = ProximalMethod("l0")
    method.bind(units, OneShot(1, 0.75), "global")
    method.after_update(0, 0.1)
    after = units.magnitudes()
    # independent reference: the weak layer keeps its largest filter, the two other places go to layer 0
    expected = torch.zeros(12, dtype=torch.bool)
    expected[8 + int(before[8:].argmax())] = True
    expected[before[:8].topk(2).indices] = True
    assert torch.equal(after != 0, expected)
    torch.testing.assert_close(after[expected], before[expected])


def test_prox_l0_per_layer_projects_each_layer_onto_its_share() -> None:
    units, _ = _two_conv_filters()
    before = units.magnitudes()
    method = ProximalMethod("l0")
    method.bind(units, OneShot(1, 0.5), "per_layer")
    method.after_update(0, 0.1)
    after = units.magnitudes()
    # r = 0.5: layer 0 keeps 8 − 4 = 4, layer 1 keeps 4 − 2 = 2, each its own largest
    expected = torch.zeros(12, dtype=torch.bool)
    expected[before[:8].topk(4).indices] = True
    expected[8 + before[8:].topk(2).indices] = True
    assert torch.equal(after != 0, expected)
    global_method = ProximalMethod("l0")
    global_units, _ = _two_conv_filters()
    global_method.bind(global_units, OneShot(1, 0.5), "global")
    global_method.after_update(0, 0.1)
    assert int((global_units.magnitudes()[8:] != 0).sum()) == 1  # global: only the protected one


def test_prox_l0_on_weights_keeps_one_weight_per_tensor() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    units = WeightUnits(model)
    before = units.magnitudes()
    method = ProximalMethod("l0")
    method.bind(units, OneShot(1, 0.9))  # the weight driver's allocation: global
    method.after_update(0, 0.1)
    # n = 18 − round-half-up(16.2) = 2: the largest weight of each tensor
    expected = torch.zeros(18, dtype=torch.bool)
    expected[int(before[:12].argmax())] = True
    expected[12 + int(before[12:].argmax())] = True
    assert torch.equal(units.magnitudes() != 0, expected)


def test_bind_refuses_an_unknown_allocation() -> None:
    with pytest.raises(PlpruneError, match="allocation"):
        ProximalMethod("l0").bind(row_units(), OneShot(1, 0.5), "per-layer")
