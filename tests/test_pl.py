"""PL method: gating network, third-order gradient through the Hutchinson trace, the PL scorer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plprune.curvature import compute_group_features, hutchinson_trace
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.gating import GatingNetwork, normalise_features
from plprune.models import BertConfig, BertForMaskedLM
from plprune.pruners.base import PruneContext, select_mask
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.run_config import RunConfig
from plprune.seeding import generator
from plprune.tasks.registry import build_task


def tiny_bert64() -> BertForMaskedLM:
    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=12,
        hidden_size=8,
        num_layers=2,
        num_heads=2,
        ffn_size=8,
        max_length=5,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return BertForMaskedLM(config).double().eval()


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 12, (4, 5), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, [1, 3]] = ids[:, [1, 3]]
    ids = ids.clone()
    ids[:, [1, 3]] = 4
    return ids, labels


def test_initial_gates_are_exactly_one() -> None:
    net = GatingNetwork(8)
    gates = net(torch.randn(6, 2))
    assert torch.equal(gates, torch.ones(6))


def test_normalise_features() -> None:
    features = torch.tensor([[1e-6, 0.5], [1e-4, 0.5], [1e-2, 0.5]], dtype=torch.float64)
    x = normalise_features(features)
    torch.testing.assert_close(x[:, 0].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(x[:, 1], torch.zeros(3, dtype=torch.float64))  # constant column → 0, not NaN
    log_spaced = torch.log(features[:, 0])
    expected = (log_spaced - log_spaced.mean()) / log_spaced.std(unbiased=False)
    torch.testing.assert_close(x[:, 0], expected)
    with pytest.raises(PlpruneError, match="NaN"):
        normalise_features(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(PlpruneError, match=r"\(p, 2\)"):
        normalise_features(torch.ones(3, 3))


def _trace_of_gated_model(net: GatingNetwork, inputs, groups: GroupSet, batch) -> torch.Tensor:
    with groups.soft_gates(net(inputs)):
        loss = groups.model(*batch).loss
        return hutchinson_trace(
            loss, groups.parameters(), num_probes=2, generator=generator(0, "fd"), create_graph=True
        ).mean


def test_trace_gradient_wrt_gating_network_matches_finite_differences() -> None:
    model = tiny_bert64()
    groups = GroupSet(model, kinds=("head",))
    batch = tiny_batch()
    features = compute_group_features(model, groups.groups, lambda m, b: m.per_sample_loss(*b), batch)
    inputs = normalise_features(features.as_matrix())
    net = GatingNetwork(4).double()
    with torch.no_grad():  # move away from the all-equal start so every parameter matters
        net.out.weight.copy_(torch.tensor([[0.7, -0.4, 0.3, 0.9]], dtype=torch.float64))
    trace = _trace_of_gated_model(net, inputs, groups, batch)
    analytic = torch.autograd.grad(trace, [net.hidden.weight, net.out.weight])
    assert all(torch.isfinite(g).all() for g in analytic)
    assert all(g.abs().sum() > 0 for g in analytic)
    step = 1e-6
    for param, grad in zip([net.hidden.weight, net.out.weight], analytic, strict=True):
        for index in [(0, 0), (0, 1)] if param.dim() == 2 and param.shape[0] > 1 else [(0, 0), (0, 2)]:
            with torch.no_grad():
                param[index] += step
            plus = float(_trace_of_gated_model(net, inputs, groups, batch).detach())
            with torch.no_grad():
                param[index] -= 2 * step
            minus = float(_trace_of_gated_model(net, inputs, groups, batch).detach())
            with torch.no_grad():
                param[index] += step
            assert (plus - minus) / (2 * step) == pytest.approx(float(grad[index]), rel=1e-4, abs=1e-9)


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


def test_pl_scorer_learns_gates_and_keeps_protected_top_k(tiny_task) -> None:
    model, task = tiny_task
    groups = GroupSet(model, kinds=("head",))
    scorer = PLScorer(PLConfig(gate_steps=3, feature_samples=4, gate_lr=0.1))
    context = PruneContext(groups, task, step=0, ratio=0.75, event_index=0, seed=0)
    scores = scorer.scores(context)
    assert scores.shape == (8,) and torch.isfinite(scores).all()
    assert scores.mean().item() == pytest.approx(1.0, rel=1e-5)  # scaled softmax: mean gate 1
    assert not torch.allclose(scores, torch.ones(8)), "gate training must move the gates"
    assert len(context.log["gate_training"]) == 3
    assert set(context.log["features"]) == {"min_eigenvalue", "max_eigenvalue", "condition_number", "entropy"}
    mask = select_mask(groups, scores, 0.75)
    assert int(mask.sum()) == 2 and mask[:4].any() and mask[4:].any()
    assert all(site.gate is None for site in groups.sites), "soft gates must be cleared"


def test_pl_scorer_is_finite_with_dead_heads(tiny_task) -> None:
    model, task = tiny_task
    groups = GroupSet(model, kinds=("head",))
    groups.apply_mask(torch.tensor([0, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool))
    scorer = PLScorer(PLConfig(gate_steps=2, feature_samples=4))
    context = PruneContext(groups, task, step=0, ratio=0.5, event_index=0, seed=0)
    scores = scorer.scores(context)
    assert torch.isfinite(scores).all()
    assert context.log["features"]["min_eigenvalue"][0] == 0.0
    mask = select_mask(groups, scores, 0.5)
    assert not mask[0] and not mask[4] and int(mask.sum()) == 4


def test_pl_config_validation() -> None:
    with pytest.raises(PlpruneError, match="alpha"):
        PLConfig(alpha=-1.0)
    with pytest.raises(PlpruneError, match="num_probes"):
        PLConfig(num_probes=0)
    with pytest.raises(PlpruneError, match="hessian_scalar"):
        PLConfig(hessian_scalar="weights")


def test_kernel_output_option_changes_the_features(tiny_task) -> None:
    model, task = tiny_task
    groups = GroupSet(model, kinds=("head",))
    logs = {}
    for kind in ("loss", "logit"):
        context = PruneContext(groups, task, step=0, ratio=0.5, event_index=0, seed=0)
        PLScorer(PLConfig(gate_steps=0, feature_samples=4, kernel_output=kind)).scores(context)
        logs[kind] = context.log["features"]["min_eigenvalue"]
    assert logs["loss"] != logs["logit"]


def test_nan_objective_in_every_gate_batch_is_a_clear_error(tiny_task, monkeypatch) -> None:
    from plprune.errors import TrainingDivergedError

    model, task = tiny_task
    groups = GroupSet(model, kinds=("head",))
    monkeypatch.setattr(task, "loss", lambda m, b: m(*b).loss * float("nan"))
    context = PruneContext(groups, task, step=0, ratio=0.5, event_index=0, seed=0)
    with pytest.raises(TrainingDivergedError, match="NaN/Inf"):
        PLScorer(PLConfig(gate_steps=2, feature_samples=4)).scores(context)
    assert all(site.gate is None for site in groups.sites)


def test_readme_own_loop_example(tiny_task) -> None:
    """The ≤10-line integration shown in README.md, run as written (with a tiny task)."""
    from plprune.gates import GroupSet
    from plprune.pruners import PLConfig, PLScorer, PruneContext, select_mask

    model, task = tiny_task
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    prune_step = 2
    groups = GroupSet(model, kinds=("head",))
    for step, batch in enumerate(task.train_batch(s) for s in range(5)):
        if step == prune_step:
            context = PruneContext(groups, task, step, ratio=0.75, event_index=0, seed=0)
            groups.apply_mask(select_mask(groups, PLScorer(PLConfig(gate_steps=2)).scores(context), 0.75))
        loss = task.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        groups.mask_gradients()
        optimizer.step()
        groups.enforce()
    assert groups.pruned_ratio("head") == 0.75
    params = dict(model.named_parameters())
    for index in (~groups.mask).nonzero().flatten().tolist():
        for piece in groups.groups[index].slices:
            assert torch.count_nonzero(piece.select(params[piece.param_name])) == 0
