"""The ``"layer"`` kind: whole transformer blocks, masked as the identity, compacted away, reloaded.

References: a hand-built copy of the model with the block deleted from its list (exact, float64), the masked
model (compaction within 1e-5), Hugging Face's own ``from_pretrained`` (reload), the masked model's greedy
tokens (generation with a key/value cache), and ShortGPT's block influence computed by hand from the hidden
states (1 − mean cosine).
"""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import plprune
from hf_families import FAMILIES as HF_FAMILIES
from plprune.compaction import compact
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.keep import select_mask
from plprune.models import BertConfig, BertForMaskedLM
from plprune.pruners.block_influence import BlockInfluenceScorer

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 50, 8


@pytest.fixture(autouse=True)
def _quiet() -> None:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)


def _ids(seed: int = 5, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def _hf(cls: str, config: str, dtype: torch.dtype = torch.float64, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    cfg = getattr(transformers, config)(attn_implementation="eager", **kwargs)
    return getattr(transformers, cls)(cfg).to(dtype).eval()


def llama(dtype: torch.dtype = torch.float64, layers: int = 4) -> nn.Module:
    return _hf("LlamaForCausalLM", "LlamaConfig", dtype, vocab_size=VOCAB, hidden_size=32,
               num_hidden_layers=layers, intermediate_size=48, num_attention_heads=8, num_key_value_heads=2,
               pad_token_id=0)


def hf_bert(dtype: torch.dtype = torch.float64) -> nn.Module:
    return _hf("BertForMaskedLM", "BertConfig", dtype, vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
               num_attention_heads=4, intermediate_size=48, max_position_embeddings=16)


def gpt2() -> nn.Module:
    return _hf("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4,
               n_positions=16)


def own_bert() -> BertForMaskedLM:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_layers=4, num_heads=2, ffn_size=24,
                        max_length=SEQ, dropout=0.0, attention_dropout=0.0, initializer_range=0.3)
    return BertForMaskedLM(config).double().eval()


def _embed(model: BertForMaskedLM, ids: torch.Tensor) -> torch.Tensor:
    """plprune BERT's embeddings, by hand (dropout 0): the input of its first block."""
    positions = model.position_embedding.weight[None, : ids.shape[1]]
    return model.embedding_norm(model.token_embedding(ids) + positions)


def _logits(model: nn.Module, ids: torch.Tensor | None = None) -> torch.Tensor:
    ids = _ids() if ids is None else ids
    with torch.no_grad():
        if isinstance(model, BertForMaskedLM):
            return model(ids).logits
        return model(input_ids=ids).logits


def _blocks(model: nn.Module) -> nn.ModuleList:
    """The block list, read by each family's own attribute (not through plprune)."""
    if isinstance(model, BertForMaskedLM):
        return model.layers
    if hasattr(model, "transformer"):
        return model.transformer.h
    if hasattr(model, "bert"):
        return model.bert.encoder.layer
    return model.model.layers


def _hand_removed(model: nn.Module, removed: list[int]) -> nn.Module:
    """A copy with the blocks ``removed`` deleted by hand (and the survivors' cache indices renumbered)."""
    ref = copy.deepcopy(model)
    blocks = _blocks(ref)
    for index in sorted(removed, reverse=True):
        del blocks[index]
    for j, block in enumerate(blocks):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = j
    if not isinstance(ref, BertForMaskedLM):
        ref.config.num_hidden_layers = len(blocks)
    return ref


def _layer_mask(groups: GroupSet, removed: list[int]) -> torch.Tensor:
    mask = groups.mask.clone()
    layers = groups.kind_index("layer")
    mask[layers[removed]] = False
    return mask


FAMILIES = {"llama-gqa": llama, "hf-bert": hf_bert, "gpt2": gpt2, "plprune-bert": own_bert}
LISTS = {"llama-gqa": "model.layers", "hf-bert": "bert.encoder.layer", "gpt2": "transformer.h",
         "plprune-bert": "layers"}


# -- discovery -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_block_list_is_found_by_structure(family: str) -> None:
    model = FAMILIES[family]()
    sites = plprune.find_sites(model, ("layer",))
    assert [(s.module_name, s.num_groups) for s in sites] == [(LISTS[family], 4)]
    groups = sites[0].groups()
    params = dict(model.named_parameters())
    block = _blocks(model)[2]
    assert {p for g in groups[2:3] for p in g.param_names} == {
        f"{LISTS[family]}.2.{name}" for name, _ in block.named_parameters()
    }
    assert all(s.stop == params[s.param_name].shape[0] for s in groups[2].slices)


def test_layers_are_found_only_on_request() -> None:
    model = llama()
    assert {s.kind for s in plprune.find_sites(model)} == {"head"}
    assert GroupSet(model).kinds == ("head",)


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_every_known_family_compacts_its_last_block_and_keeps_a_describable_config(family: str) -> None:
    spec = HF_FAMILIES[family]
    model = spec.build()
    groups = GroupSet(model, ("layer",))
    mask = groups.mask.clone()
    mask[-1] = False  # the last block of the last list (T5's first block cannot go: its position bias)
    groups.apply_mask(mask)
    with torch.no_grad():
        masked = spec.forward(model)
        small, report = compact(groups)
        torch.testing.assert_close(spec.forward(small), masked, rtol=1e-5, atol=1e-5)
    assert report.groups_after["layer"] == len(groups) - 1
    assert all(sync.describable for sync in report.config_syncs.values()), report.config_syncs


# -- masking: the masked model is the model without the block --------------------------------------
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_masked_model_equals_the_model_with_the_block_deleted(family: str) -> None:
    model = FAMILIES[family]()
    reference = _hand_removed(model, [1, 3])
    groups = GroupSet(model, ("layer",))
    groups.apply_mask(_layer_mask(groups, [1, 3]))
    assert torch.equal(_logits(model), _logits(reference))
    # the pruned blocks' weights are zero, like every pruned group's
    assert all(float(p.abs().sum()) == 0 for p in _blocks(model)[1].parameters())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compacted_model_equals_the_masked_one(family: str) -> None:
    model = FAMILIES[family]()
    groups = GroupSet(model, ("layer",))
    groups.apply_mask(_layer_mask(groups, [0, 2]))
    masked = _logits(model)
    small, report = compact(groups)
    torch.testing.assert_close(_logits(small), masked, rtol=1e-5, atol=1e-5)
    assert len(_blocks(small)) == 2 and report.groups_after == {"layer": 2}
    kept_params = sum(p.numel() for b in _blocks(model)[1::2] for p in b.parameters())
    dropped = sum(p.numel() for b in _blocks(model)[0::2] for p in b.parameters())
    assert report.parameters_before - report.parameters_after == dropped
    assert sum(p.numel() for b in _blocks(small) for p in b.parameters()) == kept_params
    if not isinstance(small, BertForMaskedLM):
        assert small.config.num_hidden_layers == 2
        assert report.config_syncs[""].describable
    else:
        assert small.config.num_layers == 2


def test_soft_gate_mixes_the_block_output_with_its_input() -> None:
    """Gate g on block 1: its output becomes g·B(x) + (1 − g)·x, differentiable in g."""
    model = own_bert()
    ids = _ids()
    groups = GroupSet(model, ("layer",))
    gates = torch.ones(4, dtype=torch.float64)
    gates[1] = 0.3
    gates.requires_grad_(True)
    with groups.soft_gates(gates):
        out = model(ids).logits
    (grad,) = torch.autograd.grad(out.sum(), gates)
    assert float(grad[1].abs()) > 0
    with torch.no_grad():
        hidden = _embed(model, ids)
        for i, block in enumerate(model.layers):
            y = block(hidden)
            hidden = 0.3 * y + 0.7 * hidden if i == 1 else y
    torch.testing.assert_close(out.detach(), model.lm_logits(hidden), rtol=1e-12, atol=1e-12)


# -- with heads and neurons in one Pruner ----------------------------------------------------------
def test_heads_neurons_and_layers_in_one_pruner_compact_together() -> None:
    """A removed layer whose heads and neurons were masked too: the block goes whole (its head and neuron
    plans are skipped); the other layers lose their heads and neurons; generation with a cache still works."""
    model = llama()
    pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, 0.5), seed=3,
                            kinds=("head", "neuron", "layer"), allocation="per_layer",
                            kind_ratios={"head": 0.5, "neuron": 0.5, "layer": 0.25})
    pruner.step(0)
    groups = pruner.groups
    removed = [g.index for g, kept in zip(groups.groups, groups.mask.tolist(), strict=True)
               if g.kind == "layer" and not kept]
    assert len(removed) == 1
    assert any(g.kind == "head" and not kept and f"layers.{removed[0]}." in s.module_name
               for (s, a, b) in groups.site_ranges() for g, kept in
               zip(groups.groups[a:b], groups.mask[a:b].tolist(), strict=True))
    ids = _ids()
    masked = _logits(model, ids)
    with torch.no_grad():
        masked_tokens = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    report = pruner.compact()
    assert report.groups_after == {"head": 12, "neuron": 72, "layer": 3}
    torch.testing.assert_close(_logits(model, ids), masked, rtol=1e-5, atol=1e-5)
    assert model.config.num_hidden_layers == 3 and model.config.num_attention_heads == 4
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    with torch.no_grad():
        tokens = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, masked_tokens)


def test_generation_with_a_cache_after_compaction_matches_the_masked_model() -> None:
    model = llama()
    groups = GroupSet(model, ("layer",))
    groups.apply_mask(_layer_mask(groups, [1, 2]))
    ids = _ids()
    with torch.no_grad():
        masked_tokens = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        small, _ = compact(groups)
        out = small.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0,
                             return_dict_in_generate=True)
        uncached = small.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=False)
    assert torch.equal(out.sequences, masked_tokens) and torch.equal(uncached, masked_tokens)
    assert len(out.past_key_values.layers) == 2  # the cache has one layer per surviving block


def test_a_sliding_window_family_keeps_each_survivors_layer_type(tmp_path: Path) -> None:
    model = _hf("Qwen2ForCausalLM", "Qwen2Config", torch.float32, vocab_size=VOCAB, hidden_size=32,
                num_hidden_layers=4, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                use_sliding_window=True, sliding_window=4, max_window_layers=2)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    groups = GroupSet(model, ("layer",))
    groups.apply_mask(_layer_mask(groups, [1, 3]))
    ids = _ids()
    masked = _logits(model, ids)
    small, _ = compact(groups)
    assert small.config.layer_types == ["full_attention", "sliding_attention"]
    plprune.save_pretrained(small, tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert again.config.layer_types == ["full_attention", "sliding_attention"]
    torch.testing.assert_close(_logits(again.eval(), ids), masked, rtol=1e-5, atol=1e-5)


def test_optimizer_state_follows_a_compaction_that_removes_blocks() -> None:
    model = own_bert()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = _ids()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    pruner = plprune.Pruner(model, plprune.scorers.Magnitude(), plprune.OneShot(0, 0.5), kinds=("layer",))
    pruner.attach(optimizer)
    pruner.step(0)
    kept = [i for i, k in enumerate(pruner.mask.tolist()) if k]
    moments = [optimizer.state[p]["exp_avg"].clone() for i in kept for p in model.layers[i].parameters()]
    pruner.compact()
    assert len(model.layers) == 2
    after = [optimizer.state[p]["exp_avg"] for p in model.layers.parameters()]
    assert len(after) == len(moments) and all(torch.equal(a, b) for a, b in zip(after, moments, strict=True))
    model(ids, labels=ids).loss.backward()
    optimizer.step()


# -- reload with Hugging Face's own from_pretrained -----------------------------------------------
@pytest.mark.parametrize("family", ["llama-gqa", "hf-bert"])
def test_layers_removed_reload_with_from_pretrained(family: str, tmp_path: Path) -> None:
    model = FAMILIES[family](torch.float32)
    groups = GroupSet(model, ("layer",))
    groups.apply_mask(_layer_mask(groups, [0, 3]))
    ids = _ids()
    masked = _logits(model, ids)
    small, _ = compact(groups)
    sync = plprune.save_pretrained(small, tmp_path / "saved")
    assert sync.describable, sync.message
    auto = transformers.AutoModelForCausalLM if family == "llama-gqa" else transformers.AutoModelForMaskedLM
    again = auto.from_pretrained(tmp_path / "saved", attn_implementation="eager").eval()
    assert again.config.num_hidden_layers == 2 and len(_blocks(again)) == 2
    torch.testing.assert_close(_logits(again, ids), masked, rtol=1e-5, atol=1e-5)
    small.save_pretrained(tmp_path / "plain")  # Hugging Face's own save, no plprune
    plain = auto.from_pretrained(tmp_path / "plain", attn_implementation="eager").eval()
    torch.testing.assert_close(_logits(plain, ids), masked, rtol=1e-5, atol=1e-5)


# -- criteria --------------------------------------------------------------------------------------
def _bert_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch, labels=batch).loss


def test_block_influence_is_one_minus_the_mean_cosine_by_hand() -> None:
    model = own_bert()
    batches = [_ids(seed) for seed in (1, 2)]
    cosines: list[list[float]] = [[] for _ in range(4)]
    with torch.no_grad():
        for ids in batches:
            x = _embed(model, ids)
            for i, block in enumerate(model.layers):
                y = block(x)
                a, b = x.reshape(-1, x.shape[-1]).numpy(), y.reshape(-1, y.shape[-1]).numpy()
                cosines[i] += list((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
                x = y
    expected = [1.0 - float(np.mean(c)) for c in cosines]
    pruner = plprune.Pruner(model, BlockInfluenceScorer(batches=2), plprune.OneShot(0, 0.25),
                            kinds=("layer",), loss_fn=_bert_loss, batches=batches)
    record = pruner.step(0)[0]
    np.testing.assert_allclose(record["scores"], expected, rtol=1e-10, atol=1e-12)
    lowest = int(np.argmin(expected))
    assert pruner.mask.tolist() == [i != lowest for i in range(4)]


def test_block_influence_on_llama_matches_its_hidden_states() -> None:
    """Blocks 0..L-2 of a Llama: BI from Hugging Face's own hidden states (input of block i is
    hidden_states[i], its output hidden_states[i + 1]); an already removed block scores 0."""
    model = llama()
    batch = _ids(7, batch=3)
    loss = lambda m, b: m(input_ids=b, labels=b).loss  # noqa: E731
    with torch.no_grad():
        hidden = model(input_ids=batch, output_hidden_states=True).hidden_states
    expected = [
        1.0 - float(torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1).mean())
        for i in range(3)
    ]
    pruner = plprune.Pruner(model, BlockInfluenceScorer(batches=1), plprune.OneShot(0, 0.25),
                            kinds=("layer",), loss_fn=loss, batches=[batch])
    scores = pruner.step(0)[0]["scores"]
    np.testing.assert_allclose(scores[:3], expected, rtol=1e-9)
    removed = pruner.mask.tolist().index(False)
    context = plprune.PruneContext(pruner.groups, pruner.task, 0, 0.5, 1, 0)
    again = BlockInfluenceScorer(batches=1).scores(context)
    assert float(again[removed]) == 0.0


def test_magnitude_and_random_score_layers() -> None:
    model = own_bert()
    pruner = plprune.Pruner(model, plprune.scorers.Magnitude(), plprune.OneShot(0, 0.5), kinds=("layer",))
    norms = [float(torch.sqrt(sum((p.double() ** 2).sum() for p in block.parameters())))
             for block in model.layers]
    scores = pruner.step(0)[0]["scores"]
    np.testing.assert_allclose(scores, norms, rtol=1e-12)
    assert pruner.mask.tolist() == [n >= sorted(norms)[2] for n in norms]
    other = plprune.Pruner(own_bert(), plprune.scorers.Random(), plprune.OneShot(0, 0.5), kinds=("layer",))
    other.step(0)
    assert other.pruned_ratio("layer") == 0.5


def test_per_layer_allocation_means_the_same_fraction_of_every_block_list() -> None:
    """Global: one TopK over every block of the model. per_layer: each block list (an encoder's, a decoder's)
    loses the same fraction, ranked within the list; one list: the two are the same."""
    model = _hf("BartForConditionalGeneration", "BartConfig", vocab_size=VOCAB, d_model=16, encoder_layers=3,
                decoder_layers=3, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=24,
                decoder_ffn_dim=24, max_position_embeddings=16)
    groups = GroupSet(model, ("layer",))
    assert [s.module_name for s in groups.sites] == ["model.encoder.layers", "model.decoder.layers"]
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # the encoder's blocks score lowest
    assert select_mask(groups, scores, 1 / 3, "global").tolist() == [False, False, True, True, True, True]
    assert select_mask(groups, scores, 1 / 3, "per_layer").tolist() == [False, True, True, False, True, True]
    single = GroupSet(llama(), ("layer",))
    ranked = torch.tensor([3.0, 1.0, 4.0, 2.0])
    per_layer = select_mask(single, ranked, 0.5, "per_layer")
    assert torch.equal(select_mask(single, ranked, 0.5, "global"), per_layer)


# -- refusals ----------------------------------------------------------------------------------------
def test_a_model_without_a_block_list_is_refused_with_how_to_name_one() -> None:
    with pytest.raises(PlpruneError, match=r"no block list .*register_layers"):
        plprune.find_sites(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), ("layer",))


def test_removing_every_layer_is_refused() -> None:
    model = llama()
    with pytest.raises(PlpruneError, match=r"removes 4 of 4 layers .* largest allowed ratio here is 0\.750"):
        plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, 0.9), kinds=("layer",))
    groups = GroupSet(model, ("layer",))
    with pytest.raises(PlpruneError, match=r"every block \(layer\) of the block list model\.layers"):
        groups.apply_mask(torch.zeros(4, dtype=torch.bool))


def test_block_influence_refuses_other_kinds() -> None:
    model = own_bert()
    with pytest.raises(PlpruneError, match=r"block-influence.* layer groups only, not head"):
        pruner = plprune.Pruner(model, BlockInfluenceScorer(), plprune.OneShot(0, 0.5),
                                kinds=("head", "layer"), loss_fn=_bert_loss, batches=[_ids()])
        pruner.step(0)


class _Stack(nn.Module):
    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def test_a_registered_block_list_and_a_non_residual_block() -> None:
    adapter = plprune.LayerAdapter("stack", lambda m: isinstance(m, _Stack), "blocks")
    plprune.register_layers(adapter)
    try:
        model = _Stack([4, 4, 4]).double()
        groups = GroupSet(model, ("layer",))
        x = torch.randn(3, 4, dtype=torch.float64)
        groups.apply_mask(torch.tensor([True, False]))
        torch.testing.assert_close(model(x), model.blocks[0](x), rtol=0, atol=0)
        wrong = _Stack([4, 6, 6])
        groups = GroupSet(wrong, ("layer",))
        groups.apply_mask(torch.tensor([False, True]))
        with pytest.raises(PlpruneError, match=r"maps hidden states of shape \(3, 4\) to \(3, 6\)"):
            wrong(torch.randn(3, 4))
    finally:
        plprune.sites.layers.unregister_layers(adapter.name)


def test_t5_masks_its_first_block_but_refuses_to_compact_it() -> None:
    model = _hf("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=24,
                num_layers=2, num_heads=2)
    groups = GroupSet(model, ("layer",))
    assert [s.module_name for s in groups.sites] == ["encoder.block", "decoder.block"]
    groups.apply_mask(torch.tensor([False, True, True, True]))
    with torch.no_grad():
        model(input_ids=_ids(), decoder_input_ids=_ids().flip(1))  # tuple outputs pass their bias on
    with pytest.raises(PlpruneError, match="relative-position bias"):
        compact(groups)
