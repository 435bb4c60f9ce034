"""Hugging Face models (built from small configs, no weights downloaded): heads of BERT and ViT, experts of
SwitchTransformers and Mixtral, the same results as plprune's own BERT, and the hf-bert CLI tasks."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plprune.cli import main
from plprune.curvature import compute_group_features
from plprune.errors import PlpruneError
from plprune.exact_norms import exact_norms
from plprune.gates import GroupSet
from plprune.keep import select_mask
from plprune.models import BertConfig, BertForMaskedLM
from plprune.models.hf_bert import HfBertForMaskedLM, copy_plprune_bert_weights, hf_bert_config
from plprune.pruners.base import PruneContext
from plprune.pruners.pl import PLConfig, PLScorer
from plprune.sites import heads as head_sites
from tiny_models import tiny_hf_switch_config

transformers = pytest.importorskip("transformers")

VOCAB = 24


def hf_bert(hidden: int = 32, layers: int = 2, heads: int = 4) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=8,
        type_vocab_size=1,
    )
    return transformers.BertForMaskedLM(config).eval()


def hf_vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config).eval()


def bert_output(model: nn.Module) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))
    return model(input_ids=ids).logits


def vit_output(model: nn.Module) -> torch.Tensor:
    return model(pixel_values=torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))).logits


# (model builder, output, attention module path of layer L, names of the Q/K/V/O projections)
FAMILIES = {
    "bert": (
        hf_bert,
        bert_output,
        "bert.encoder.layer.{}.attention",
        ("self.query", "self.key", "self.value", "output.dense"),
    ),
    "vit": (hf_vit, vit_output, "vit.layers.{}.attention", ("q_proj", "k_proj", "v_proj", "o_proj")),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_groupset_finds_the_heads_with_slices_on_the_right_parameters(family: str) -> None:
    build, _, path, projections = FAMILIES[family]
    groups = GroupSet(build(), kinds=("head",))
    assert groups.names == [f"head:L{layer}.{h}" for layer in range(2) for h in range(4)]
    head = groups.groups[5]  # layer 1, head 1: rows/columns 8..16 of a 32-wide layer with 4 heads
    q, k, v, o = (f"{path.format(1)}.{p}" for p in projections)
    assert {(s.param_name, s.dim, s.start, s.stop) for s in head.slices} == {
        *((f"{p}.{kind}", 0, 8, 16) for p in (q, k, v) for kind in ("weight", "bias")),
        (f"{o}.weight", 1, 8, 16),
    }


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hard_mask_equals_zeroing_the_head_by_hand_and_ones_gates_change_nothing(family: str) -> None:
    build, output, path, projections = FAMILIES[family]
    model = build()
    by_hand = copy.deepcopy(model)
    dense = output(model)
    groups = GroupSet(model, kinds=("head",))
    groups.set_soft_gates(torch.ones(len(groups)))
    assert torch.equal(output(model), dense)  # all-ones soft gates: bit-identical
    groups.clear_soft_gates()
    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[5] = False  # layer 1, head 1
    groups.apply_mask(mask)
    attention = by_hand.get_submodule(path.format(1))
    with torch.no_grad():
        for proj in projections[:3]:
            linear = attention.get_submodule(proj)
            linear.weight[8:16].zero_()
            linear.bias[8:16].zero_()
        attention.get_submodule(projections[3]).weight[:, 8:16].zero_()
    torch.testing.assert_close(output(model), output(by_hand), atol=1e-6, rtol=0)
    assert not torch.allclose(output(model), dense, atol=1e-6)


# -- the same weights in plprune's BERT and in Hugging Face's -------------------------------------


class _MlmTask:
    """The little a PLScorer needs of a task: batches, a loss, a per-sample loss."""

    def __init__(self, loss, per_sample) -> None:
        ids = torch.randint(1, VOCAB, (64, 8), generator=torch.Generator().manual_seed(2))
        labels = torch.full_like(ids, -100)
        chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.25
        chosen[:, 0] = True  # every sample has a masked token
        labels[chosen] = ids[chosen]
        self.ids, self.labels = ids.masked_fill(chosen, 0), labels
        self._loss, self._per_sample = loss, per_sample

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(8 * (step % 8), 8 * (step % 8) + 8)
        return self.ids[rows], self.labels[rows]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self._loss(model, batch)

    def per_sample_output(self, model: nn.Module, batch: tuple[torch.Tensor, ...], kind: str = "loss"):
        return self._per_sample(model, batch)


def _hf_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return model(input_ids=batch[0], labels=batch[1]).loss


def _hf_per_sample_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    ids, labels = batch
    logits = model(input_ids=ids).logits
    token = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return token.sum(dim=1) / (labels != -100).sum(dim=1)


def test_plprune_and_hf_bert_with_the_same_weights_agree_on_logits_features_and_pl_mask() -> None:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        ffn_size=32,
        max_length=8,
        dropout=0,
        attention_dropout=0,
    )
    ours = BertForMaskedLM(config).double().eval()
    with torch.no_grad():  # weights of a trained model's scale, so that heads differ
        for param in ours.parameters():
            param.add_(0.2 * torch.randn_like(param))
    theirs = transformers.BertForMaskedLM(hf_bert_config(config)).double().eval()
    copy_plprune_bert_weights(ours, theirs)
    tasks = {
        "ours": _MlmTask(lambda m, b: m(*b).loss, lambda m, b: m.per_sample_loss(*b)),
        "theirs": _MlmTask(_hf_loss, _hf_per_sample_loss),
    }
    ids, labels = tasks["ours"].train_batch(0)
    torch.testing.assert_close(ours(ids).logits, theirs(input_ids=ids).logits, rtol=1e-10, atol=1e-12)

    models = {"ours": ours, "theirs": theirs}
    groups = {name: GroupSet(model, kinds=("head",)) for name, model in models.items()}
    features = {
        name: compute_group_features(
            models[name], groups[name].groups, tasks[name].per_sample_output, (ids, labels)
        )
        for name in models
    }
    for field in ("min_eigenvalue", "max_eigenvalue", "entropy"):
        mine, hers = getattr(features["ours"], field), getattr(features["theirs"], field)
        torch.testing.assert_close(hers, mine, rtol=1e-8, atol=1e-14)
    assert features["ours"].entropy.unique().numel() == 8  # the heads are distinguishable

    theirs.set_attn_implementation("sdpa")  # transformers' default; PLScorer switches to eager itself
    scorer = PLScorer(PLConfig(gate_steps=3, feature_samples=8))
    scores = {
        name: scorer.scores(PruneContext(groups[name], tasks[name], step=0, ratio=0.5, event_index=0, seed=0))
        for name in models
    }
    torch.testing.assert_close(scores["theirs"], scores["ours"], rtol=1e-5, atol=1e-6)
    assert theirs.config._attn_implementation == "sdpa"
    masks = {name: select_mask(groups[name], scores[name], 0.5) for name in models}
    assert torch.equal(masks["ours"], masks["theirs"]) and int((~masks["ours"]).sum()) == 4


def test_hf_bert_wrapper_matches_plprune_bert() -> None:
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, ffn_size=32, max_length=8
    )
    ours, wrapped = BertForMaskedLM(config).eval(), HfBertForMaskedLM(config).eval()
    copy_plprune_bert_weights(ours, wrapped)
    ids, labels = _MlmTask(None, None).train_batch(1)
    assert wrapped.hf.config._attn_implementation == "eager"
    for method in ("per_sample_loss", "per_sample_true_logit"):
        torch.testing.assert_close(getattr(wrapped, method)(ids, labels), getattr(ours, method)(ids, labels))
    mine, hers = ours(ids, labels), wrapped(ids, labels)
    torch.testing.assert_close(hers.logits, mine.logits)  # logits at the masked positions only
    torch.testing.assert_close(hers.loss, mine.loss)
    assert [s.module_name for s in GroupSet(wrapped, kinds=("head",)).sites] == [
        "hf.bert.encoder.layer.0.attention"
    ]


# -- attention families plprune does not know ----------------------------------------------------


class TinyAttention(nn.Module):
    """A user's own multi-head self-attention."""

    def __init__(self, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.n_heads = heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, -1).transpose(1, 2)

        scores = split(self.wq(x)) @ split(self.wk(x)).transpose(-1, -2) / (w // self.n_heads) ** 0.5
        context = torch.softmax(scores, dim=-1) @ split(self.wv(x))
        return self.wo(context.transpose(1, 2).reshape(b, t, w))


def test_unknown_attention_says_how_to_register_an_adapter_and_the_adapter_works(monkeypatch) -> None:
    monkeypatch.setattr(head_sites, "_ATTENTION_ADAPTERS", list(head_sites._ATTENTION_ADAPTERS))
    model = nn.Sequential(TinyAttention(), TinyAttention())
    with pytest.raises(PlpruneError, match=r"TinyAttention with no adapter.*register_attention\("):
        GroupSet(model, kinds=("head",))

    # -- the snippet of docs/byom.md --
    import plprune

    plprune.register_attention(
        plprune.AttentionAdapter(
            name="tiny-attention",
            matches=lambda m: isinstance(m, TinyAttention),
            query="wq",
            key="wk",
            value="wv",
            output="wo",  # submodule paths of the Q/K/V/O nn.Linear layers
            num_heads=lambda m: m.n_heads,
        )
    )
    groups = plprune.GroupSet(model, kinds=("head",))  # 2 layers × 4 heads
    # -- end of snippet --

    assert groups.names == [f"head:L{layer}.{h}" for layer in range(2) for h in range(4)]
    x = torch.randn(2, 5, 16)
    dense = model(x)
    groups.apply_mask(torch.tensor([True, False, True, True, True, True, True, True]))
    assert float(model[0].wo.weight.detach()[:, 4:8].abs().sum()) == 0.0
    assert not torch.allclose(model(x), dense)


# -- mixture-of-experts ----------------------------------------------------------------------------


def _routed_counts(experts: list[nn.Module]) -> list[list[int]]:
    counts: list[list[int]] = [[] for _ in experts]
    for i, expert in enumerate(experts):
        expert.register_forward_hook(lambda m, args, out, i=i: counts[i].append(args[0].shape[0]))
    return counts


def test_switch_transformers_experts_are_found_gated_and_pruned() -> None:
    config = tiny_hf_switch_config(2)
    model = transformers.SwitchTransformersForConditionalGeneration(config).eval()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))

    def output(m: nn.Module) -> torch.Tensor:
        return m(input_ids=ids, decoder_input_ids=ids).logits

    dense, by_hand = output(model), copy.deepcopy(model)
    groups = GroupSet(model, kinds=("expert",))
    assert [s.module_name for s in groups.sites] == [
        "encoder.block.0.layer.1.mlp",
        "encoder.block.1.layer.1.mlp",
        "decoder.block.0.layer.2.mlp",
        "decoder.block.1.layer.2.mlp",
    ]
    assert groups.groups[1].param_names == (
        "encoder.block.0.layer.1.mlp.experts.expert_1.wi.weight",
        "encoder.block.0.layer.1.mlp.experts.expert_1.wo.weight",
    )
    experts = list(model.encoder.block[0].layer[1].mlp.experts.values())
    counts = _routed_counts(experts)
    output(model)
    before = [sum(c) for c in counts]
    target = 1
    assert sum(before) == 16 and before[target] > 0  # [7, 2, 1, 6] tokens at this seed

    gates = torch.ones(len(groups))
    gates[target] = 0.0
    groups.set_soft_gates(gates)
    soft = output(model)
    groups.clear_soft_gates()
    with torch.no_grad():
        for param in by_hand.encoder.block[0].layer[1].mlp.experts[f"expert_{target}"].parameters():
            param.zero_()
    torch.testing.assert_close(soft, output(by_hand), atol=1e-6, rtol=0)
    assert not torch.allclose(soft, dense, atol=1e-6)

    mask = torch.ones(len(groups), dtype=torch.bool)
    mask[target] = False
    groups.apply_mask(mask)
    for c in counts:
        c.clear()
    output(model)
    after = [sum(c) for c in counts]
    assert after[target] == 0 and sum(after) == 16  # rerouted, none dropped (capacity 64)


def test_mixtral_fused_experts_are_slices_and_gated_through_the_routing_weights() -> None:
    config = transformers.MixtralConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=16,
    )
    model = transformers.MixtralForCausalLM(config).eval()
    heads = GroupSet(model, kinds=("head",))  # multi-query attention: 2 query heads per layer, 1 KV head
    assert [s.num_groups for s in heads.sites] == [2, 2] and all(s.kv_heads == 1 for s in heads.sites)
    heads.remove_hooks()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
    dense, by_hand = model(input_ids=ids).logits, copy.deepcopy(model)
    groups = GroupSet(model, kinds=("expert",))
    assert len(groups) == 8
    fused = "model.layers.0.mlp.experts"
    assert [(s.param_name, s.dim, s.start, s.stop) for s in groups.groups[1].slices] == [
        (f"{fused}.gate_up_proj", 0, 1, 2),
        (f"{fused}.down_proj", 0, 1, 2),
    ]
    gates = torch.ones(8)
    gates[1] = 0.0
    groups.set_soft_gates(gates)
    soft = model(input_ids=ids).logits
    groups.clear_soft_gates()
    with torch.no_grad():
        by_hand.model.layers[0].mlp.experts.gate_up_proj[1].zero_()
        by_hand.model.layers[0].mlp.experts.down_proj[1].zero_()
    torch.testing.assert_close(soft, by_hand(input_ids=ids).logits, atol=1e-6, rtol=0)
    assert not torch.allclose(soft, dense, atol=1e-6)

    routed: list[torch.Tensor] = []
    model.model.layers[0].mlp.gate.register_forward_hook(lambda m, args, out: routed.append(out[2]))
    model(input_ids=ids)
    assert int((routed[-1] == 1).sum()) > 0
    groups.apply_mask(torch.tensor([True, False] + [True] * 6))
    model(input_ids=ids)
    assert int((routed[-1] == 1).sum()) == 0  # top-2 routing over the three experts left

    # transformers' default grouped_mm experts refuse float64; exact_norms switches them to eager
    model.double()
    assert model.config._experts_implementation != "eager"
    with pytest.raises(RuntimeError, match="Double"):
        model(input_ids=ids)
    with exact_norms(model):
        assert model(input_ids=ids).logits.dtype == torch.float64


# -- the CLI tasks ---------------------------------------------------------------------------------


def test_cli_trains_and_prunes_the_heads_of_a_hugging_face_bert(capsys, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    # fmt: off
    argv = [
        "train", "--task", "hf-bert-pydoc", "--method", "pl", "--steps", "30", "--prune-at", "10",
        "--prune-ratio", "0.5", "--layers", "1", "--hidden", "16", "--heads", "2", "--ffn", "32",
        "--seq-len", "16", "--batch-size", "4", "--eval-every", "15", "--eval-batches", "1",
        "--gate-steps", "2", "--feature-samples", "4", "--diagnostics", "--no-progress",
        "--out", str(out),
    ]
    # fmt: on
    assert main(argv) == 0, capsys.readouterr().err
    event = json.loads((out / "pruning.jsonl").read_text().splitlines()[0])
    assert event["groups"] == ["head:L0.0", "head:L0.1"] and event["pruned_ratio"] == {"head": 0.5}
    assert "before" in event and "after" in event  # diagnostics ran (inside exact_norms)
    pruned = event["mask"].index(False)
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    rows = slice(8 * pruned, 8 * pruned + 8)
    assert float(state["hf.bert.encoder.layer.0.attention.self.query.weight"][rows].abs().sum()) == 0.0
    assert float(state["hf.bert.encoder.layer.0.attention.output.dense.weight"][:, rows].abs().sum()) == 0.0


def test_hf_task_is_registered_with_heads_as_default_kind() -> None:
    from plprune.tasks.registry import DEFAULT_KINDS, TASKS

    assert DEFAULT_KINDS["hf-bert-wikitext2"] == DEFAULT_KINDS["hf-bert-pydoc"] == ("head",)
    assert {"hf-bert-wikitext2", "hf-bert-pydoc"} <= set(TASKS)
