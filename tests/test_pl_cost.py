"""PL's cost (issue 22): the timed feature stages compute what ``compute_group_features`` computes (the former
path, kept here as the reference), the ``gate_batch_size`` knob is gate training on the sliced batches, every
event logs where its time went, and the curvature diagnostics at pruning events are opt-in."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import torch

import plprune
from plprune.bench.suites import SUITES, variant_config
from plprune.cli import build_parser, resolve_config
from plprune.curvature import compute_group_features
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.pruners.base import PruneContext
from plprune.pruners.pl import PAPER_SETTINGS, STAGES, PLConfig, PLScorer
from plprune.pruners.registry import setting_flags
from plprune.run_config import RunConfig
from plprune.tasks.registry import build_task


@pytest.fixture
def tiny_task(tiny_wikitext_dir: Path, tmp_path: Path):
    config = RunConfig.from_dict(
        {
            "task": "bert-wikitext2",
            "data": {"data_dir": str(tiny_wikitext_dir), "seq_len": 16, "min_freq": 1},
            "model": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32, "dropout": 0.0},
            "train": {"batch_size": 6, "seed": 3},
        }
    )
    return build_task(config, tmp_path)


def _context(model: torch.nn.Module, task: Any, kind: str = "head") -> PruneContext:
    return PruneContext(GroupSet(model, kinds=(kind,)), task, step=2, ratio=0.5, event_index=0, seed=0)


def _former_features(self: PLScorer, context: PruneContext, seconds: dict[str, float]) -> Any:
    """The scorer's features as computed before the stages were timed: one ``compute_group_features``."""
    cfg = self.config
    return compute_group_features(
        context.model,
        context.groups.groups,
        functools.partial(context.task.per_sample_output, kind=cfg.kernel_output),
        self._feature_batch(context),
        chunk_size=cfg.chunk_size,
    )


@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_timed_features_and_gates_equal_the_former_path(tiny_task, monkeypatch, kind: str) -> None:
    model, task = tiny_task
    settings = PLConfig(gate_steps=2, feature_samples=4)
    new = _context(model, task, kind)
    gates = PLScorer(settings).scores(new)
    new.groups.remove_hooks()
    monkeypatch.setattr(PLScorer, "_features", _former_features)
    old = _context(model, task, kind)
    reference = PLScorer(settings).scores(old)
    for name, values in old.log["features"].items():
        torch.testing.assert_close(
            torch.tensor(new.log["features"][name]), torch.tensor(values), rtol=1e-6, atol=0.0
        )
    assert torch.equal(gates, reference)
    assert torch.equal(
        plprune.keep.select_mask(new.groups, gates, 0.5), plprune.keep.select_mask(old.groups, reference, 0.5)
    )


class _Sliced:
    """The task with every training batch cut to its first ``size`` samples (an independent reference)."""

    def __init__(self, task: Any, size: int) -> None:
        self._task, self._size = task, size

    def train_batch(self, step: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[: self._size] for t in self._task.train_batch(step))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


def test_gate_batch_size_is_gate_training_on_the_first_samples(tiny_task) -> None:
    model, task = tiny_task
    assert task.train_batch(0)[0].shape[0] == 6

    def gates(task: Any, **settings: Any) -> torch.Tensor:
        config = PLConfig(**{"gate_steps": 2, "feature_samples": 3, **settings})
        return PLScorer(config).scores(_context(model, task))

    knob, whole = gates(task, gate_batch_size=3), gates(task, gate_batch_size=0)
    assert torch.equal(knob, gates(_Sliced(task, 3), gate_batch_size=0))
    assert not torch.equal(knob, whole), "three samples of six must change the gate objective"
    assert torch.equal(gates(task, gate_batch_size=6), whole)
    assert torch.equal(gates(task, gate_batch_size=None), whole)  # None: the whole batch, as 0
    assert torch.equal(gates(task), gates(_Sliced(task, 4), gate_batch_size=0))  # the default: 4 samples


def test_gate_batch_size_is_validated_and_has_a_flag() -> None:
    with pytest.raises(PlpruneError, match="gate_batch_size"):
        PLConfig(gate_batch_size=-1)
    flag = next(f for f in setting_flags() if f.field == "gate_batch_size")
    assert flag.flag == "--gate-batch-size" and flag.type is int


def test_cheap_defaults_and_the_papers_budget() -> None:
    """The defaults are the cheap setting; PAPER_SETTINGS (the former defaults) is what the suites written
    before it pin, so their committed results stay reproducible; pl-cost compares the two."""
    default = PLConfig()
    assert (default.gate_steps, default.gate_batch_size, default.feature_samples) == (2, 4, 8)
    assert PAPER_SETTINGS == {"gate_steps": 10, "gate_batch_size": 0, "feature_samples": 16}
    plan = SUITES["transformer-units"].tasks[0]
    pinned = variant_config(plan, "pl", 0, None, ())["prune"]["pl"]
    assert {k: pinned[k] for k in PAPER_SETTINGS} == PAPER_SETTINGS
    plan = SUITES["overparam"].tasks[0]  # a plan's own settings stay above the paper's budget
    assert variant_config(plan, "pl", 0, None, ())["prune"]["pl"]["probe_check"] == 8
    cost = SUITES["pl-cost"].tasks[0]
    assert "pl" not in variant_config(cost, "pl", 0, None, ())["prune"]  # PL's defaults
    assert variant_config(cost, "pl@paper-gates", 0, None, ())["prune"]["pl"] == PAPER_SETTINGS
    config = RunConfig.from_dict(variant_config(cost, "pl@paper-gates", 0, None, ()))
    assert config.prune.method == "pl"


def test_every_event_logs_where_its_time_went(tiny_task) -> None:
    model, task = tiny_task
    pruner = plprune.Pruner(
        model, PLScorer(PLConfig(gate_steps=2, feature_samples=4)), plprune.OneShot(0, 0.5), task=task
    )
    record = pruner.step(0)[0]
    seconds = record["seconds"]
    assert tuple(seconds) == STAGES
    assert all(v >= 0.0 for v in seconds.values())
    for stage in ("per_sample_gradients", "gate_loss", "hessian_trace", "gate_backward"):
        assert seconds[stage] > 0.0, stage
    assert seconds["probe_noise"] == 0.0  # probe_check is off by default
    assert sum(seconds.values()) <= record["scoring_seconds"]
    assert record["diagnostics_seconds"] < 0.01 and "before" not in record  # no diagnostics asked for


def _train_args(*extra: str) -> Any:
    return build_parser().parse_args(["train", "--task", "bert-pydoc", "--out", "unused", *extra])


def test_diagnostics_at_pruning_events_are_opt_in() -> None:
    assert RunConfig().prune.diagnostics is False
    assert resolve_config(_train_args()).prune.diagnostics is False
    assert resolve_config(_train_args("--diagnostics")).prune.diagnostics is True
    assert resolve_config(_train_args("--no-diagnostics")).prune.diagnostics is False
