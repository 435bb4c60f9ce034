"""PL's measurements and ablation settings, pl+, the per-layer default for filters, static MLM masking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from plprune.data import MlmMasker
from plprune.data.mlm import static_masking
from plprune.gates import GroupSet
from plprune.gating import standardise_columns
from plprune.keep import select_mask
from plprune.pruners.base import PruneContext
from plprune.pruners.magnitude import MagnitudeScorer
from plprune.pruners.pl import PLConfig, PLScorer, gate_spread, probe_noise, spearman
from plprune.pruners.pl_plus import PLPlusConfig, PLPlusScorer
from plprune.pruners.sensitivity import GateSensitivityScorer
from plprune.pruners.snip import SnipScorer
from plprune.run_config import RunConfig
from plprune.tasks.registry import build_task

_FAST = {"gate_steps": 2, "feature_samples": 4, "probe_check": 3, "probe_check_batches": 2}


@pytest.fixture
def tiny_task(tiny_wikitext_dir: Path, tmp_path: Path):
    config = RunConfig.from_dict(
        {
            "task": "bert-wikitext2",
            "data": {"data_dir": str(tiny_wikitext_dir), "seq_len": 16, "min_freq": 1},
            "model": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32},
            "train": {"batch_size": 4, "seed": 3},
        }
    )
    return build_task(config, tmp_path)


def _context(model, task) -> PruneContext:
    return PruneContext(GroupSet(model, kinds=("head",)), task, step=0, ratio=0.5, event_index=0, seed=0)


def test_spearman_and_spread_match_numpy() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=9)
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert spearman(torch.ones(4), torch.arange(4.0)) == 0.0
    g = torch.tensor([0.5, 1.0, 1.5])
    spread = gate_spread(g)
    assert spread["std"] == pytest.approx(np.std([0.5, 1.0, 1.5]))
    assert spread["max_over_min"] == pytest.approx(3.0)


def test_probe_noise_matches_numpy() -> None:
    values = [torch.tensor([1.0, 3.0, 2.0]), torch.tensor([4.0, 6.0, 8.0])]
    noise = probe_noise(values, [1.0, 2.0, 3.0])
    v = np.array([[1.0, 3.0, 2.0], [4.0, 6.0, 8.0]])
    assert noise["mean"] == pytest.approx(v.mean())
    assert noise["probe_std"] == pytest.approx(np.sqrt(v.var(axis=1, ddof=1).mean()))
    assert noise["batch_std"] == pytest.approx(np.std(v.mean(axis=1), ddof=1))
    assert noise["single_probe_rel"] == pytest.approx(noise["probe_std"] / v.mean())
    assert noise["training_trace_rel"] == pytest.approx(np.std([1, 2, 3], ddof=1) / 2)


def test_pl_logs_its_measurements(tiny_task) -> None:
    model, task = tiny_task
    context = _context(model, task)
    gates = PLScorer(PLConfig(**_FAST)).scores(context)
    log = context.log
    assert log["gate_batches"] == 2
    assert log["gate_spread"]["std"] == pytest.approx(float(gates.double().std(unbiased=False)), rel=1e-6)
    assert set(log["gate_feature_correlation"]) == {"log_min_eigenvalue", "entropy"}
    noise = log["probe_noise"]
    assert (noise["probes"], noise["batches"]) == (3, 2) and noise["probe_std"] > 0
    assert all(site.gate is None for site in context.groups.sites)


def test_feature_ablations_change_the_gate_inputs(tiny_task) -> None:
    model, task = tiny_task
    raw = torch.tensor([[1e-3, 0.5], [1e-1, 0.7], [1e-2, 0.2], [1.0, 0.9]] * 2, dtype=torch.float64)
    context = _context(model, task)
    both = PLScorer(PLConfig(features="both"))._gate_inputs(context, raw)
    reference = torch.cat([standardise_columns(raw[:8], (0,))])
    assert torch.allclose(both, reference)
    lmin = PLScorer(PLConfig(features="min_eigenvalue"))._gate_inputs(context, raw)
    assert torch.equal(lmin[:, 1], torch.zeros(8)) and torch.allclose(lmin[:, 0], both[:, 0])
    entropy = PLScorer(PLConfig(features="entropy"))._gate_inputs(context, raw)
    assert torch.equal(entropy[:, 0], torch.zeros(8)) and torch.allclose(entropy[:, 1], both[:, 1])
    shuffled = PLScorer(PLConfig(features="shuffled"))._gate_inputs(context, raw)
    # the same rows in another order (a permutation of the groups), not the original order
    assert sorted(map(tuple, shuffled.tolist())) == sorted(map(tuple, both.tolist()))
    assert not torch.equal(shuffled, both)


def test_full_pass_trains_gates_on_one_epoch_of_batches(tiny_task) -> None:
    model, task = tiny_task
    context = _context(model, task)
    PLScorer(PLConfig(**{**_FAST, "probe_check": 0}, gate_full_pass=True)).scores(context)
    assert context.log["gate_batches"] == task.steps_per_epoch == len(context.log["gate_training"])
    assert context.log["probe_noise"] is None


def test_pl_plus_feeds_the_other_criteria(tiny_task) -> None:
    model, task = tiny_task
    context = _context(model, task)
    scorer = PLPlusScorer(PLPlusConfig(**_FAST, score_batches=2))
    gates = scorer.scores(context)
    assert gates.shape == (8,) and torch.isfinite(gates).all()
    features = context.log["features"]
    reference = _context(model, task)
    expected = {
        "magnitude": MagnitudeScorer().scores(reference),
        "grad_score": GateSensitivityScorer(2).scores(reference),
        "snip": SnipScorer(2).scores(reference),
    }
    for name, values in expected.items():
        assert torch.allclose(torch.tensor(features[name], dtype=torch.float64), values.double())
    assert set(context.log["gate_feature_correlation"]) == {"log_min_eigenvalue", "entropy", *expected}


def test_per_layer_for_filters_allocation() -> None:
    class Groups:
        kinds = ("head", "filter")
        mask = torch.ones(8, dtype=torch.bool)
        layer_ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])

        def kind_index(self, kind: str) -> torch.Tensor:
            return torch.arange(4) if kind == "head" else torch.arange(4, 8)

    scores = torch.tensor([4.0, 3.0, 1.0, 0.5, 4.0, 3.0, 1.0, 0.5])
    mask = select_mask(Groups(), scores, 0.25, "per_layer_for_filters")
    # heads: global TopK of 3 (layer 0 keeps both, layer 1 its best); filters: 1 of 2 in every layer
    assert mask.tolist() == [True, True, True, False, True, False, True, False]
    assert PLScorer.allocation == "per_layer_for_filters"


def test_static_masking_is_per_block_and_fixed(tiny_task) -> None:
    _model, task = tiny_task
    masker = task.masker
    blocks = task.data.train_blocks
    masked, labels = static_masking(blocks, masker, seed=5)
    assert masked.shape == blocks.shape and bool((labels != -100).any(dim=1).all())
    fresh = MlmMasker.from_tokenizer(task.data.tokenizer)
    one, _ = static_masking(blocks, fresh, seed=5)
    assert torch.equal(one, masked) and torch.equal(labels[labels != -100], blocks[labels != -100])
    other, _ = static_masking(blocks, fresh, seed=6)
    assert not torch.equal(other, masked)


def test_static_masking_task_repeats_masks_across_epochs(tiny_wikitext_dir: Path, tmp_path: Path) -> None:
    config = RunConfig.from_dict(
        {
            "task": "bert-wikitext2",
            "data": {"data_dir": str(tiny_wikitext_dir), "seq_len": 16, "min_freq": 1, "masking": "static"},
            "model": {"layers": 1, "hidden": 8, "heads": 2, "ffn": 8},
            "train": {"batch_size": 4, "seed": 3},
        }
    )
    _, task = build_task(config, tmp_path)
    per_epoch = task.steps_per_epoch

    def masked_by_block(step: int) -> dict[int, tuple]:
        ids, labels = task.train_batch(step)
        index = task.sampler.indices(step)
        return {int(i): (tuple(ids[k].tolist()), tuple(labels[k].tolist())) for k, i in enumerate(index)}

    first = {}
    for s in range(per_epoch):
        first.update(masked_by_block(s))
    second = {}
    for s in range(per_epoch, 2 * per_epoch):
        second.update(masked_by_block(s))
    common = set(first) & set(second)  # an epoch drops its last partial batch: compare the blocks seen twice
    assert len(common) >= per_epoch * 4 // 2
    assert all(first[i] == second[i] for i in common)  # the same block has the same masking in every epoch
    with pytest.raises(Exception, match="masking"):
        RunConfig.from_dict({"task": "bert-wikitext2", "data": {"masking": "sometimes"}})
