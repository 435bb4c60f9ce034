"""Global Sparse Momentum: the top-Q selection, the GSM optimizer against a hand-written reference of
z ← βz + η_wd θ + B(g), θ ← θ − αz, and GSMMethod + torch SGD(momentum, weight_decay) against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.keep import prune_count
from plprune.schedules import OneShot
from plprune.sparsity.gsm import GSM, GSMMethod, top_q_mask
from plprune.sparsity.weights import WeightUnits
from plprune.weight_pruner import WeightPruner


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.Tanh(), nn.Linear(4, 3, bias=False))


def _batch(step: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)


def _loss(model: nn.Module, step: int) -> Tensor:
    x, y = _batch(step)
    dtype = next(model.parameters()).dtype
    return ((model(x.to(dtype)) - y.to(dtype)) ** 2).mean()


# -- top_q_mask ----------------------------------------------------------------------------------------


def test_top_q_mask_picks_largest_with_ties_to_lower_index() -> None:
    saliency = torch.tensor([0.5, 2.0, 0.5, 3.0, 0.5, 0.1])
    assert top_q_mask(saliency, 2).tolist() == [False, True, False, True, False, False]
    assert top_q_mask(saliency, 3).tolist() == [True, True, False, True, False, False]
    assert top_q_mask(saliency, 4).tolist() == [True, True, True, True, False, False]
    assert not top_q_mask(saliency, 0).any()
    assert top_q_mask(saliency, 6).all()
    assert top_q_mask(torch.zeros(5), 2).tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("q", [-1, 7, 2.0, True, None])
def test_top_q_mask_rejects_q_outside_range(q: object) -> None:
    with pytest.raises(PlpruneError, match=r"\[0, 6\]"):
        top_q_mask(torch.ones(6), q)  # type: ignore[arg-type]


def test_top_q_mask_rejects_bad_saliency() -> None:
    with pytest.raises(PlpruneError, match="1-D"):
        top_q_mask(torch.ones(2, 2), 1)
    with pytest.raises(PlpruneError, match="NaN"):
        top_q_mask(torch.tensor([1.0, float("nan")]), 1)


# -- the GSM optimizer ---------------------------------------------------------------------------------


def test_only_top_q_by_saliency_receive_gradient() -> None:
    a = nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    b = nn.Parameter(torch.tensor([[0.2, -1.0], [4.0, 0.0]]))
    a.grad = torch.tensor([0.5, 0.5, -8.0, 0.1])  # |g·θ| = 0.5, 1.0, 4.0, 0.3
    b.grad = torch.tensor([[10.0, 0.9], [-0.5, 9.0]])  # |g·θ| = 2.0, 0.9, 2.0, 0.0
    before_a, before_b = a.detach().clone(), b.detach().clone()
    lr, wd = 0.1, 0.01
    opt = GSM([a, b], lr=lr, momentum=0.9, weight_decay=wd, keep=3)
    opt.step()
    # global ranking across both tensors: a[2] (4.0), then b[0,0] and b[1,0] (2.0; tie, lower index first)
    keep_a = torch.tensor([False, False, True, False])
    keep_b = torch.tensor([[True, False], [True, False]])
    for param, before, keep in ((a, before_a, keep_a), (b, before_b, keep_b)):
        decayed = before - lr * wd * before  # weight decay only (the buffer starts at 0)
        assert torch.equal(param.detach()[~keep], decayed[~keep])
        with_grad = before - lr * (param.grad + wd * before)
        torch.testing.assert_close(param.detach()[keep], with_grad[keep])
    torch.testing.assert_close(opt.state[a]["momentum_buffer"], (before_a - a.detach()) / lr)


def _reference_gsm(
    params: list[np.ndarray], grads_of, steps: int, lr: float, beta: float, wd: float, q: int
) -> list[np.ndarray]:
    """The update written out in numpy: z ← βz + wd θ + B(g), θ ← θ − lr z, B = top-q of |g θ| globally."""
    theta = [p.astype(np.float64).copy() for p in params]
    z = [np.zeros_like(t) for t in theta]
    for step in range(steps):
        grads = grads_of(theta, step)
        saliency = np.concatenate([np.abs(g * t).ravel() for g, t in zip(grads, theta, strict=True)])
        order = np.argsort(-saliency, kind="stable")
        keep = np.zeros(saliency.size, dtype=bool)
        keep[order[:q]] = True
        offset = 0
        for i, (g, t) in enumerate(zip(grads, theta, strict=True)):
            mask = keep[offset : offset + t.size].reshape(t.shape)
            offset += t.size
            z[i] = beta * z[i] + wd * t + np.where(mask, g, 0.0)
            theta[i] = t - lr * z[i]
    return theta


def _grads_at(model_fn, theta: list[np.ndarray], step: int) -> list[np.ndarray]:
    model = model_fn()
    with torch.no_grad():
        for param, value in zip(model.parameters(), theta, strict=True):
            param.copy_(torch.from_numpy(value))
    _loss(model, step).backward()
    return [p.grad.numpy().copy() for p in model.parameters()]


def test_gsm_equals_hand_written_reference_over_several_steps() -> None:
    def model_fn() -> nn.Module:
        return _model().double()

    model = model_fn()
    lr, beta, wd, q, steps = 0.2, 0.9, 0.05, 9, 8
    initial = [p.detach().numpy().copy() for p in model.parameters()]
    opt = GSM(model.parameters(), lr=lr, momentum=beta, weight_decay=wd, keep=q)
    for step in range(steps):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
    reference = _reference_gsm(
        initial, lambda theta, step: _grads_at(model_fn, theta, step), steps, lr, beta, wd, q
    )
    for param, expected in zip(model.parameters(), reference, strict=True):
        np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-12, atol=1e-14)


def test_gsm_closure_fraction_and_param_groups() -> None:
    model = _model()
    first, second = model[0].weight, model[2].weight
    opt = GSM([{"params": [first]}, {"params": [second], "lr": 0.01}], lr=0.1, keep=0.25)
    assert opt.keep_count() == round(0.25 * (20 + 12)) == 8

    def closure() -> Tensor:
        opt.zero_grad()
        loss = _loss(model, 0)
        loss.backward()
        return loss

    before = [first.detach().clone(), second.detach().clone()]
    loss = opt.step(closure)
    assert isinstance(loss, Tensor)
    moved = sum(int((p.detach() != b).sum()) for p, b in zip((first, second), before, strict=True))
    assert moved == 8  # no weight decay and a fresh buffer: exactly the top-Q moved
    # the second group's lr applies to it
    grad2 = second.grad
    changed = second.detach() != before[1]
    torch.testing.assert_close((before[1] - second.detach())[changed], 0.01 * grad2[changed])


def test_gsm_skips_parameters_without_gradient() -> None:
    a = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.ones(2))
    a.grad = torch.tensor([1.0, 2.0, 3.0])
    opt = GSM([a, b], lr=0.5, momentum=0.0, weight_decay=0.1, keep=5)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    torch.testing.assert_close(a.detach(), 1 - 0.5 * (a.grad + 0.1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0, "keep": 1}, "learning rate"),
        ({"lr": 0.1, "momentum": 1.0, "keep": 1}, "momentum"),
        ({"lr": 0.1, "momentum": -0.1, "keep": 1}, "momentum"),
        ({"lr": 0.1, "weight_decay": -1e-4, "keep": 1}, "weight decay"),
        ({"lr": 0.1, "keep": 33}, r"outside \[0, 32\]"),
        ({"lr": 0.1, "keep": -1}, r"outside \[0, 32\]"),
        ({"lr": 0.1, "keep": 0.0}, r"fraction must lie in \(0, 1\]"),
        ({"lr": 0.1, "keep": 1.5}, r"fraction must lie in \(0, 1\]"),
        ({"lr": 0.1, "keep": float("nan")}, r"fraction must lie in \(0, 1\]"),
        ({"lr": 0.1, "keep": True}, "int Q"),
        ({"lr": 0.1, "keep": "10"}, "int Q"),
    ],
)
def test_gsm_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(PlpruneError, match=message):
        GSM(_model().parameters(), **kwargs)


# -- GSMMethod -----------------------------------------------------------------------------------------


def test_method_with_sgd_matches_gsm_optimizer() -> None:
    lr, beta, wd, ratio, steps = 0.3, 0.9, 1e-2, 0.75, 10
    n = 20 + 12
    q = n - prune_count(n, ratio)

    model_a = _model()
    opt_a = GSM(model_a.parameters(), lr=lr, momentum=beta, weight_decay=wd, keep=q)
    model_b = _model()
    method = GSMMethod()
    pruner = WeightPruner(model_b, method, OneShot(50, ratio))
    opt_b = torch.optim.SGD(model_b.parameters(), lr=lr, momentum=beta, weight_decay=wd)
    pruner.attach(opt_b)
    assert method.keep_count() == q == 8
    for step in range(steps):
        for model, opt in ((model_a, opt_a), (model_b, opt_b)):
            if model is model_b:
                pruner.step(step)
            opt.zero_grad()
            _loss(model, step).backward()
            opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # bit-identical with torch 2.x's SGD
    # and the mask mattered: plain momentum SGD goes elsewhere
    model_c = _model()
    opt_c = torch.optim.SGD(model_c.parameters(), lr=lr, momentum=beta, weight_decay=wd)
    for step in range(steps):
        opt_c.zero_grad()
        _loss(model_c, step).backward()
        opt_c.step()
    assert not torch.allclose(model_c[0].weight, model_b[0].weight, atol=1e-3)
    assert method.metrics()["gsm_q"] == q


def test_method_masks_all_but_top_q_alive_units() -> None:
    model = _model()
    units = WeightUnits(model)
    method = GSMMethod(keep_fraction=0.25)
    method.bind(units, OneShot(5, 0.5))
    keep_units = torch.ones(len(units), dtype=torch.bool)
    _loss(model, 0).backward()
    saliency_order = units.saliency().argsort(descending=True, stable=True)
    dead = saliency_order[:3]  # prune the three most salient units: they must not be chosen
    keep_units[dead] = False
    units.apply_mask(keep_units)
    units.mask_pruned_gradients()
    saliency = units.saliency()
    method.before_update(0)
    grads = torch.cat([p.grad.flatten() for p in units.params])
    q = round(0.25 * 32)
    assert method.keep_count() == q
    expected = torch.zeros(len(units), dtype=torch.bool)
    alive_index = keep_units.nonzero().flatten()
    ranked = alive_index[saliency[alive_index].argsort(descending=True, stable=True)]
    expected[ranked[:q]] = True
    assert torch.equal(grads != 0, expected & (grads != 0))
    assert torch.equal(grads[~expected], torch.zeros(int((~expected).sum())))
    assert not bool((grads[dead] != 0).any())


def test_method_stops_masking_at_last_event() -> None:
    model = _model()
    units = WeightUnits(model)
    method = GSMMethod()
    method.bind(units, OneShot(3, 0.5))
    _loss(model, 0).backward()
    before = torch.cat([p.grad.flatten() for p in units.params]).clone()
    method.before_update(3)
    assert torch.equal(torch.cat([p.grad.flatten() for p in units.params]), before)
    method.before_update(2)
    after = torch.cat([p.grad.flatten() for p in units.params])
    assert int((after != 0).sum()) == 16
    assert torch.equal(method.scores(), units.magnitudes())


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("inf"), "half", True])
def test_method_rejects_bad_fraction(fraction: object) -> None:
    with pytest.raises(PlpruneError, match=r"keep_fraction must be a number in \(0, 1\]"):
        GSMMethod(keep_fraction=fraction)  # type: ignore[arg-type]
