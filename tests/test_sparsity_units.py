"""Units of the sparsity methods: group units against a per-group loop over slices, weight units against the
tensors themselves, and the weight-level driver's exact sparsity, protection and resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.schedules import Linear, OneShot
from plprune.sparsity.base import SparsityMethod
from plprune.sparsity.group_units import GroupUnits
from plprune.sparsity.weights import WeightUnits
from plprune.weight_pruner import WeightPruner
from tiny_models import tiny_bert


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 6, 3, padding=1),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Conv1d(6, 5, 3, padding=1),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )


def _group_sets() -> list[GroupSet]:
    cnn = _cnn()
    return [GroupSet(cnn, ("filter",), example_inputs=torch.randn(2, 1, 8)), GroupSet(tiny_bert(), ("head",))]


def _reference_norms(groups: GroupSet, values: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(
        [
            torch.cat([piece.select(values[piece.param_name]).reshape(-1) for piece in g.slices])
            .double()
            .norm()
            for g in groups.groups
        ]
    )


@pytest.mark.parametrize("index", [0, 1], ids=["filters", "heads"])
def test_group_units_match_a_loop_over_each_groups_slices(index: int) -> None:
    groups = _group_sets()[index]
    units = GroupUnits(groups)
    params = dict(groups.model.named_parameters())
    for param in params.values():
        param.grad = torch.randn_like(param)
    assert len(units) == len(groups)
    torch.testing.assert_close(units.magnitudes(), _reference_norms(groups, params))
    products = {n: p.detach() * p.grad for n, p in params.items()}
    expected = torch.stack(
        [
            sum(piece.select(products[piece.param_name]).double().sum() for piece in g.slices)
            for g in groups.groups
        ]
    ).abs()
    torch.testing.assert_close(units.saliency(), expected)

    factors = torch.linspace(0.0, 2.0, len(units), dtype=torch.float64)
    before = {n: p.detach().clone() for n, p in params.items()}
    units.scale_(factors)
    for i, group in enumerate(groups.groups):
        for piece in group.slices:
            torch.testing.assert_close(
                piece.select(params[piece.param_name]).detach(),
                piece.select(before[piece.param_name]) * factors[i].float(),
            )
    keep = torch.arange(len(units)) % 2 == 0
    grads = {n: p.grad.clone() for n, p in params.items()}
    units.mask_gradients_(keep)
    for i, group in enumerate(groups.groups):
        for piece in group.slices:
            want = piece.select(grads[piece.param_name]) * float(keep[i])
            torch.testing.assert_close(piece.select(params[piece.param_name].grad), want)


def test_group_gates_are_the_group_sets_soft_gates() -> None:
    groups = _group_sets()[0]
    units = GroupUnits(groups)
    x = torch.randn(4, 1, 8)
    groups.model.eval()
    dense = groups.model(x)
    units.set_gates(torch.zeros(len(units)))
    assert not torch.allclose(groups.model(x), dense)
    units.set_gates(None)
    torch.testing.assert_close(groups.model(x), dense)
    assert bool(units.alive().all())


def test_weight_units_flatten_every_linear_and_conv_weight_and_gate_them() -> None:
    model = _cnn()
    units = WeightUnits(model)
    assert units.names == ["0.weight", "3.weight", "8.weight"]
    assert len(units) == sum(model.get_parameter(n).numel() for n in units.names)
    torch.testing.assert_close(
        units.magnitudes(), torch.cat([model.get_parameter(n).detach().abs().flatten() for n in units.names])
    )
    model.eval()
    x = torch.randn(3, 1, 8)
    dense = model(x)
    gates = torch.rand(len(units))
    units.set_gates(gates)
    assert "0.parametrizations.weight.original" in model.state_dict()
    gated = model(x)
    units.set_gates(None)
    assert "0.weight" in model.state_dict()
    units.scale_(gates)  # baking the gates into the weights gives the gated function exactly
    torch.testing.assert_close(model(x), gated)
    assert not torch.allclose(gated, dense)


def test_weight_units_refuse_bad_masks() -> None:
    units = WeightUnits(_cnn())
    with pytest.raises(PlpruneError, match="has no parameters"):
        WeightUnits(_cnn(), ["nope.weight"])
    with pytest.raises(PlpruneError, match="shape"):
        units.apply_mask(torch.ones(3, dtype=torch.bool))
    keep = torch.ones(len(units), dtype=torch.bool)
    keep[: units.sizes[0]] = False
    with pytest.raises(PlpruneError, match=r"every weight of 0\.weight"):
        units.apply_mask(keep)
    keep[0] = True
    units.apply_mask(keep)
    with pytest.raises(PlpruneError, match="revive"):
        units.apply_mask(torch.ones(len(units), dtype=torch.bool))


def _train(pruner: WeightPruner, model: nn.Module, steps: range, optimizer: torch.optim.Optimizer) -> None:
    generator = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(8, 1, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator))
        for _ in steps
    ]
    for step, (x, y) in zip(steps, data, strict=True):
        pruner.step(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_weight_pruner_reaches_each_events_ratio_exactly_and_keeps_the_largest() -> None:
    model = _cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = Linear(2, 6, 2, 0.9)
    pruner = WeightPruner(model, SparsityMethod(), schedule).attach(optimizer)
    _train(pruner, model, range(0, 10), optimizer)
    assert [r["step"] for r in pruner.records] == [2, 4, 6]
    n = len(pruner.units)
    for record, event in zip(pruner.records, schedule.events(), strict=True):
        assert record["sparsity"] == pytest.approx(round(event.ratio * n) / n)
    # removed weights are exactly zero after training went on, and a tensor never empties
    weights = pruner.units.magnitudes()
    assert bool((weights[~pruner.units.alive()] == 0).all())
    assert all(bool(m.any()) for m in pruner.units.mask)


def test_weight_pruner_resumes_exactly_from_its_state() -> None:
    def run(split: int | None) -> torch.Tensor:
        model = _cnn()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        pruner = WeightPruner(model, SparsityMethod(), OneShot(3, 0.5)).attach(optimizer)
        if split is None:
            _train(pruner, model, range(0, 8), optimizer)
            return torch.cat([p.detach().flatten() for p in model.parameters()])
        _train(pruner, model, range(0, split), optimizer)
        state = {"model": model.state_dict(), "opt": optimizer.state_dict(), "pruner": pruner.state_dict()}
        model2 = _cnn()
        optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
        pruner2 = WeightPruner(model2, SparsityMethod(), OneShot(3, 0.5)).attach(optimizer2)
        pruner2.load_state_dict(state["pruner"])
        model2.load_state_dict(state["model"])
        optimizer2.load_state_dict(state["opt"])
        generator_steps = range(0, 8)  # the same data stream, skipping what was done
        _train_from(pruner2, model2, generator_steps, split, optimizer2)
        return torch.cat([p.detach().flatten() for p in model2.parameters()])

    torch.testing.assert_close(run(5), run(None), rtol=0, atol=0)


def _train_from(pruner, model, steps, start, optimizer) -> None:
    generator = torch.Generator().manual_seed(1)
    data = [
        (torch.randn(8, 1, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator))
        for _ in steps
    ]
    for step, (x, y) in zip(steps, data, strict=True):
        if step < start:
            continue
        pruner.step(step)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_weight_pruner_refuses_bad_arguments() -> None:
    with pytest.raises(PlpruneError, match="SparsityMethod"):
        WeightPruner(_cnn(), "l1", OneShot(1, 0.5))  # type: ignore[arg-type]
    with pytest.raises(PlpruneError, match="schedule"):
        WeightPruner(_cnn(), SparsityMethod(), 0.5)  # type: ignore[arg-type]
    pruner = WeightPruner(_cnn(), SparsityMethod(), OneShot(1, 0.5))
    pruner.step(3)
    with pytest.raises(PlpruneError, match="backwards"):
        pruner.step(1)
