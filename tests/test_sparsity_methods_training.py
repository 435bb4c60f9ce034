"""The course's sparsity methods as pruning methods: every method at weight level and on filters reaches the
schedule's exact sparsity, leaves removed units at exactly zero and no gate behind; filter masks compact to a
smaller model computing the same function; the built-in trainer resumes weight-level gates exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import plprune
from plprune.bench.suites import COURSE_METHODS
from plprune.errors import PlpruneError
from plprune.pruners.registry import BuildInfo, build_scorer, get_method, method_settings
from plprune.run_config import RunConfig
from plprune.runner import train_run
from plprune.schedules import Linear
from plprune.train.checkpoint import load_checkpoint
from plprune.weight_pruner import WeightPruner

STEPS = 14
SCHEDULE = Linear(3, 9, 3, 0.6)  # events at 3, 6, 9: ratios 0.2, 0.4, 0.6


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(16, 1, 12, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _scorer(method: str):
    settings = method_settings({}).get(method)
    return build_scorer(method, settings, BuildInfo(STEPS, 3))


def _train(model: nn.Module, pruner, optimizer: torch.optim.Optimizer) -> None:
    for step in range(STEPS):
        pruner.step(step)
        loss = _loss(model, _batch(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("method", COURSE_METHODS)
def test_weight_level_method_reaches_the_exact_ratio_and_leaves_no_gate(method: str) -> None:
    model = _cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner = WeightPruner(model, _scorer(method).weight_method(), SCHEDULE).attach(optimizer)
    _train(model, pruner, optimizer)
    n = len(pruner.units)
    assert [r["sparsity"] for r in pruner.records] == pytest.approx(
        [round(e.ratio * n) / n for e in SCHEDULE.events()]
    )
    weights = pruner.units.magnitudes()
    assert bool((weights[~pruner.units.alive()] == 0).all())
    assert not any("parametrizations" in name for name in model.state_dict())
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("method", COURSE_METHODS)
def test_filter_level_method_reaches_the_exact_ratio_and_compacts(method: str) -> None:
    model = _cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner = plprune.Pruner(
        model, _scorer(method), SCHEDULE, kinds="filter", example_inputs=_batch(0)[0]
    ).attach(optimizer)
    _train(model, pruner, optimizer)
    assert pruner.groups.pruned_ratio("filter") == pytest.approx(round(0.6 * 16) / 16)
    model.eval()
    x = _batch(99)[0]
    masked = model(x)
    pruner.compact()
    assert sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv1d)) < 16
    torch.testing.assert_close(model(x), masked, rtol=1e-5, atol=1e-5)


def test_every_course_method_is_registered_for_weights_and_groups() -> None:
    for method in COURSE_METHODS:
        assert set(get_method(method).kinds) == {"head", "expert", "filter", "neuron", "layer", "weight"}
    assert "weight" in get_method("magnitude").kinds and "weight" not in get_method("pl").kinds


@pytest.mark.parametrize(
    ("prune", "message"),
    [
        ({"method": "prox-l1", "prox-l1": {"strength": -1.0}}, "must be a finite number >= 0"),
        ({"method": "prox-lq", "prox-lq": {"q": 1.5}}, r"q must lie in the open interval \(0, 1\)"),
        ({"method": "prox-scad", "prox-scad": {"scad_a": 2.0}}, "a must be a finite number > 2"),
        ({"method": "prox-mcp", "prox-mcp": {"mcp_gamma": 1.0}}, "gamma must be a finite number > 1"),
        ({"method": "prox-firm", "prox-firm": {"strength": 0.1, "firm_mu": 0.05}}, "mu > lam"),
        ({"method": "l0-gates", "l0-gates": {"gate_temperature": 0.0}}, "beta"),
        ({"method": "cont-sparse", "cont-sparse": {"beta_final": 0.5}}, "beta_final"),
        ({"method": "gsm", "gsm": {"keep_fraction": 1.5}}, r"\(0, 1\]"),
        ({"method": "pl", "kinds": ["weight"]}, "prunes head/expert/filter/neuron/layer groups only"),
        ({"method": "prox-l1", "kinds": ["weight", "filter"]}, "not both"),
    ],
)
def test_bad_settings_give_one_clear_error(prune: dict, message: str) -> None:
    with pytest.raises(PlpruneError, match=message):
        config = RunConfig.from_dict({"task": "vgg-digits", "prune": prune})
        from plprune.runner import build_pruning_callbacks

        build_pruning_callbacks(config, _cnn(), 10, _batch(0)[0])


def test_trimmed_count_larger_than_the_units_is_refused() -> None:
    model = _cnn()
    scorer = build_scorer(
        "trimmed-l1", method_settings({"trimmed-l1": {"trimmed": 10**6}})["trimmed-l1"], None
    )
    with pytest.raises(PlpruneError, match="h"):
        WeightPruner(model, scorer.weight_method(), SCHEDULE)


def _digits_config(method: str) -> RunConfig:
    return RunConfig.from_dict(
        {
            "task": "vgg-digits",
            "train": {"steps": 24, "eval_every": 6, "checkpoint_every": 12, "eval_batches": 2, "seed": 3},
            "prune": {
                "method": method,
                "kinds": ["weight"],
                "ratio": 0.5,
                "schedule": "linear",
                "prune_at": "8",
                "prune_end": "16",
                "prune_every": "8",
                "diagnostics": False,
            },
        }
    )


@pytest.mark.parametrize("method", ["l0-gates", "prox-l1"])
def test_weight_level_run_resumes_exactly_through_the_trainer(method: str, tmp_path: Path) -> None:
    from test_training import _numbers, _run_until_checkpoint

    config = _digits_config(method)
    full = train_run(config, tmp_path / "full", progress=False)
    _run_until_checkpoint(config, tmp_path / "resumed", stop_after=12)  # gates are on at step 12
    resumed = train_run(config, tmp_path / "resumed", resume=True, progress=False)
    assert _numbers(resumed["history"]) == _numbers(full["history"])
    assert full["final"]["pruned_weight_ratio"] == pytest.approx(0.5, abs=1e-6)
    full_state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    resumed_state = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["model"]
    assert full_state.keys() == resumed_state.keys()
    for name, tensor in full_state.items():
        assert torch.equal(tensor, resumed_state[name]), name


@pytest.mark.parametrize("allocation", ["global", "per_layer"])
def test_prox_l0_filters_keep_every_conv_alive_during_training(allocation: str) -> None:
    model = _cnn()
    with torch.no_grad():  # the second conv's filters are all far weaker than the first's
        for module in (model[3], model[4]):
            module.weight.mul_(1e-3)
            module.bias.mul_(1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner = plprune.Pruner(
        model, _scorer("prox-l0"), Linear(3, 9, 3, 0.9), kinds="filter", example_inputs=_batch(0)[0],
        allocation=allocation,
    ).attach(optimizer)
    units = pruner.scorer.method.units
    assert pruner.scorer.method.allocation == allocation
    layers = units.layer_index()
    for step in range(10):
        pruner.step(step)
        optimizer.zero_grad()
        _loss(model, _batch(step)).backward()
        optimizer.step()
        alive = units.magnitudes() != 0
        assert all(bool(alive[layers == layer].any()) for layer in (0, 1)), step
        if allocation == "per_layer" and step < 9:  # r(t) = 0.9·(t + 1)/9 in each conv of 8 filters
            share = max(1, 8 - round(0.9 * (step + 1) / 9 * 8))
            assert [int(alive[layers == layer].sum()) for layer in (0, 1)] == [share, share]
