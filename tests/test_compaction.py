"""Compaction of heads and experts: the compacted model computes what the masked one did, its parameter
count is the expected arithmetic, and training goes on with the optimizer state carried over."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import plprune
from plprune.compaction import compact
from plprune.errors import PlpruneError
from plprune.models import BertConfig, BertForMaskedLM, SwitchConfig, SwitchForMaskedLM
from plprune.train.checkpoint import load_checkpoint
from tiny_models import tiny_hf_bert, tiny_hf_switch_config

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, HIDDEN, HEADS = 30, 8, 16, 4
HEAD_MASK = torch.tensor([1, 0, 0, 1, 0, 1, 1, 1], dtype=torch.bool)  # 3 of 8 heads pruned


def ours() -> BertForMaskedLM:
    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(
            vocab_size=VOCAB,
            hidden_size=HIDDEN,
            num_layers=2,
            num_heads=HEADS,
            ffn_size=32,
            max_length=SEQ,
            dropout=0.0,
            attention_dropout=0.0,
        )
    )


def ids(n: int = 3, seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


def head_parameters(pruned: int, hidden: int = HIDDEN, heads: int = HEADS) -> int:
    """A head owns d rows (+ d biases) of each of W_Q, W_K, W_V and d columns of W_O (d = hidden/heads)."""
    d = hidden // heads
    return pruned * (3 * (d * hidden + d) + hidden * d)


@pytest.mark.parametrize("build", [ours, tiny_hf_bert], ids=["plprune-bert", "hf-bert"])
def test_compacted_heads_compute_what_the_masked_model_did(build) -> None:
    model = build().eval()
    groups = plprune.GroupSet(model, kinds=("head",))
    groups.apply_mask(HEAD_MASK)
    compacted, report = compact(groups)
    x = ids()
    with torch.no_grad():
        masked_logits, compact_logits = model(x).logits, compacted(x).logits
    torch.testing.assert_close(compact_logits, masked_logits, rtol=0, atol=1e-5)
    assert report.parameters_before - report.parameters_after == head_parameters(3)
    assert report.parameters_after == sum(p.numel() for p in compacted.parameters())
    assert report.groups_after == {"head": 5}
    assert all(not m._forward_pre_hooks for m in compacted.modules())  # no gate hooks left
    assert [site.num_groups for site in plprune.GroupSet(compacted, kinds=("head",)).sites] == [2, 3]
    if isinstance(compacted, BertForMaskedLM):
        assert [layer.num_heads for layer in compacted.attention_layers] == [2, 3]
    else:
        counts = [layer.attention.self.num_attention_heads for layer in compacted.bert.encoder.layer]
        assert counts == [2, 3]
    assert sum(p.numel() for p in model.parameters()) == report.parameters_before  # the original is intact


def test_vit_heads_compact() -> None:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        num_labels=3,
        attn_implementation="eager",
    )
    model = transformers.ViTForImageClassification(config).eval()
    groups = plprune.GroupSet(model, kinds=("head",))
    groups.apply_mask(HEAD_MASK)
    compacted, report = compact(groups)
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(compacted(pixels).logits, model(pixels).logits, rtol=0, atol=1e-5)
    assert report.parameters_before - report.parameters_after == head_parameters(3)


def switch() -> SwitchForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_layers=2,
        num_heads=2,
        ffn_size=16,
        max_length=SEQ,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return SwitchForMaskedLM(config, SwitchConfig(num_experts=4, capacity_factor=1.0))


def test_compacted_switch_routes_as_the_masked_one_with_fewer_experts() -> None:
    model = switch().eval()
    groups = plprune.GroupSet(model, kinds=("expert",))
    groups.apply_mask(torch.tensor([1, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool))
    compacted, report = compact(groups)
    x = ids(4)
    with torch.no_grad():
        masked, small = model(x), compacted(x)
        torch.testing.assert_close(small.logits, masked.logits, rtol=0, atol=1e-5)
    layers = [layer.feed_forward for layer in compacted.layers]
    assert [len(f.experts) for f in layers] == [3, 2] and [f.num_experts for f in layers] == [3, 2]
    assert [f.router.weight.shape[0] for f in layers] == [3, 2]
    assert all(bool(f.expert_keep.all()) for f in layers)
    # capacity over the kept experts, as the masked layer computed it: the same tokens were dropped
    masked_layers = [m.feed_forward for m in model.layers]
    assert [f.last_dropped for f in layers] == [f.last_dropped for f in masked_layers]
    expert = (8 * 16 + 16) + (16 * 8 + 8) + 8  # its two linear layers with biases, and its router row
    assert report.parameters_before - report.parameters_after == 3 * expert


def test_compacted_hf_switch_transformers_routes_as_the_masked_one() -> None:
    torch.manual_seed(0)
    config = tiny_hf_switch_config(1)
    model = transformers.SwitchTransformersModel(config).eval()
    groups = plprune.GroupSet(model, kinds=("expert",))
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[1] = mask[len(groups) - 2] = False
    groups.apply_mask(mask)
    compacted, _ = compact(groups)
    x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(input_ids=x, decoder_input_ids=x).last_hidden_state
        out = compacted(input_ids=x, decoder_input_ids=x).last_hidden_state
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)
    sites = plprune.GroupSet(compacted, kinds=("expert",)).sites
    assert [s.num_groups for s in sites] == [3] * len(sites)


# -- training goes on -----------------------------------------------------------------------------------
def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return model(*batch).loss


def batch_at(step: int) -> tuple[Tensor, Tensor]:
    x = ids(4, seed=100 + step)
    masked = torch.rand(x.shape, generator=torch.Generator().manual_seed(step)) < 0.3
    masked[:, 0] = True
    return x, torch.where(masked, x, torch.full_like(x, -100))


def train(model, pruner, optimizer, scheduler, steps: range) -> list[float]:
    losses = []
    for step in steps:
        pruner.step(step)
        loss = loss_fn(model, batch_at(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("optimizer_name", ["adamw", "sgd"])
def test_training_after_compaction_follows_the_masked_run(optimizer_name: str) -> None:
    model = ours()
    make = {
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.01),
        "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    }[optimizer_name]
    optimizer = make(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + 0.05 * s))
    pruner = plprune.Pruner(
        model,
        plprune.scorers.Magnitude(),
        plprune.OneShot(3, 0.5),
        kinds="head",
        loss_fn=loss_fn,
        batches=batch_at,
    ).attach(optimizer)
    train(model, pruner, optimizer, scheduler, range(10))
    twin_model, twin_pruner, twin_optimizer, twin_scheduler = copy.deepcopy(
        (model, pruner, optimizer, scheduler)
    )
    masked_losses = train(twin_model, twin_pruner, twin_optimizer, twin_scheduler, range(10, 60))
    report = pruner.compact()
    assert report.parameters_before - report.parameters_after == head_parameters(4)
    assert pruner.compacted and len(optimizer.state) == len(list(model.parameters()))
    compact_losses = train(model, pruner, optimizer, scheduler, range(10, 60))
    for a, b in zip(compact_losses, masked_losses, strict=True):
        assert math.isclose(a, b, rel_tol=1e-5), (compact_losses, masked_losses)
    with torch.no_grad():
        x = ids()
        torch.testing.assert_close(model.eval()(x).logits, twin_model.eval()(x).logits, rtol=1e-4, atol=1e-5)
    assert scheduler.get_last_lr() == twin_scheduler.get_last_lr()


def test_compaction_refuses_what_it_cannot_do_and_says_when_nothing_is_pruned() -> None:
    model = ours()
    pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.Linear(2, 4, 2, 0.5), kinds="head")
    pruner.step(2)
    with pytest.raises(PlpruneError, match=r"events remain at steps \[4\]"):
        pruner.compact()
    pruner.step(4)
    pruner.compact()
    with pytest.raises(PlpruneError, match="already compacted"):
        pruner.compact()
    untouched = plprune.GroupSet(ours(), kinds=("head",))
    with pytest.warns(UserWarning, match="nothing is pruned"):
        copy_of, report = compact(untouched)
    assert report.parameters_after == report.parameters_before
    for (name, a), b in zip(untouched.model.state_dict().items(), copy_of.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(PlpruneError, match="optimizer can only follow an in-place compaction"):
        compact(untouched, optimizer=torch.optim.SGD(untouched.model.parameters(), lr=0.1))


# -- the built-in trainer: --compact, and resuming a compacted run ----------------------------------------
def run_config(data_dir: Path):
    from plprune.run_config import RunConfig

    return RunConfig.from_dict(
        {
            "task": "bert-wikitext2",
            "data": {"data_dir": str(data_dir), "seq_len": 16, "min_freq": 1},
            "model": {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32, "dropout": 0.0},
            "train": {"steps": 24, "batch_size": 4, "eval_every": 6, "checkpoint_every": 12, "seed": 3},
            "prune": {
                "method": "magnitude",
                "prune_at": "5",
                "ratio": 0.5,
                "compact": True,
                "diagnostics": False,
            },
        }
    )


def test_trainer_compacts_after_the_last_event_and_resumes_the_compacted_run(
    tiny_wikitext_dir: Path, tmp_path: Path
) -> None:
    from plprune.runner import train_run
    from test_training import _numbers, _run_until_checkpoint

    config = run_config(tiny_wikitext_dir)
    full = train_run(config, tmp_path / "full", progress=False)
    assert full["history"][-1]["compacted_at_step"] == 5
    state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    rows = [state[f"layers.{i}.attention.query.weight"].shape[0] for i in range(2)]
    assert sum(rows) == 16  # half of 2 × 4 heads of 4 rows each
    assert full["parameters"] == sum(v.numel() for v in state.values())  # what is left is what is counted
    _run_until_checkpoint(config, tmp_path / "resumed", stop_after=12)  # after the compaction
    resumed = train_run(config, tmp_path / "resumed", resume=True, progress=False)
    assert _numbers(resumed["history"]) == _numbers(full["history"])


def test_heads_and_experts_compact_together() -> None:
    model = switch().eval()
    groups = plprune.GroupSet(model, kinds=("head", "expert"))
    assert groups.kinds == ("head", "expert") and len(groups) == 4 + 8
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[groups.kind_index("head")[[0, 3]]] = False  # one head of each layer
    mask[groups.kind_index("expert")[[1, 6]]] = False  # one expert of each layer
    groups.apply_mask(mask)
    compacted, report = compact(groups)
    x = ids(4)
    with torch.no_grad():
        torch.testing.assert_close(compacted(x).logits, model(x).logits, rtol=0, atol=1e-5)
    assert report.groups_after == {"head": 2, "expert": 6}
    head = 3 * (4 * 8 + 4) + 8 * 4  # hidden 8, 2 heads of 4
    expert = (8 * 16 + 16) + (16 * 8 + 8) + 8
    assert report.parameters_before - report.parameters_after == 2 * head + 2 * expert
