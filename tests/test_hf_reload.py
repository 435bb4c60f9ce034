"""Compacted Hugging Face models reload with Hugging Face's own ``from_pretrained``.

After ``pruner.compact()`` the config says the new counts (``plprune.compaction.hf_config``), so
``model.save_pretrained(dir)`` + ``AutoModel...from_pretrained(dir)`` rebuild the compacted model with the
same outputs, without plprune. What a config cannot describe (pruned heads of BERT/GPT-2, per-layer counts
that differ, a count the config's own validation refuses) is refused by ``plprune.save_pretrained`` with the
per-layer counts and the alternative, and round-trips through ``plprune.export``/``plprune.load``.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import plprune
from plprune.compaction import compact, hf_config
from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.integrations import hf_save

transformers = pytest.importorskip("transformers")

NEURONS = importlib.util.find_spec("plprune.sites.neurons") is not None
needs_neurons = pytest.mark.skipif(not NEURONS, reason="the 'neuron' kind has not landed yet")
KINDS = ("head", "neuron") if NEURONS else ("head",)
VOCAB = 50


@pytest.fixture(autouse=True)
def _quiet() -> None:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=UserWarning)


def _build(cls: str, config: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        cfg = getattr(transformers, config)(attn_implementation="eager", **kwargs)
        return getattr(transformers, cls)(cfg).eval()

    return build


_DECODER = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=48, pad_token_id=0)
BUILD = {
    "llama-gqa": _build("LlamaForCausalLM", "LlamaConfig", num_attention_heads=8, num_key_value_heads=2,
                        **_DECODER),
    "qwen2-gqa": _build("Qwen2ForCausalLM", "Qwen2Config", num_attention_heads=8, num_key_value_heads=2,
                        **_DECODER),
    "phi3-gqa": _build("Phi3ForCausalLM", "Phi3Config", num_attention_heads=8, num_key_value_heads=2,
                       **_DECODER),
    "t5": _build("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48,
                 num_layers=2, num_heads=4),
    "bert": _build("BertForMaskedLM", "BertConfig", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                   num_attention_heads=4, intermediate_size=48, max_position_embeddings=16),
    "gpt2": _build("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                   n_positions=16),
}
AUTO = {
    "llama-gqa": "AutoModelForCausalLM",
    "qwen2-gqa": "AutoModelForCausalLM",
    "phi3-gqa": "AutoModelForCausalLM",
    "t5": "AutoModelForSeq2SeqLM",
    "bert": "AutoModelForMaskedLM",
    "gpt2": "AutoModelForCausalLM",
}


def _ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))


def _logits(model: nn.Module) -> torch.Tensor:
    extra = {"decoder_input_ids": _ids().flip(1)} if model.config.is_encoder_decoder else {}
    with torch.no_grad():
        return model(input_ids=_ids(), **extra).logits


def _prune(model: nn.Module, kinds: tuple[str, ...], ratio: float = 0.5) -> plprune.Pruner:
    pruner = plprune.Pruner(model, plprune.scorers.Random(), plprune.OneShot(0, ratio), kinds=kinds,
                            allocation="per_layer")
    pruner.step(0)
    return pruner


def _hf_reload(model: nn.Module, family: str, directory: Path) -> nn.Module:
    """Hugging Face's own save and load: no plprune involved."""
    model.save_pretrained(directory)
    auto = getattr(transformers, AUTO[family])
    return auto.from_pretrained(directory, attn_implementation="eager").eval()


def _head_counts(model: nn.Module) -> list[int]:
    return [site.num_groups for site in plprune.find_sites(model, ("head",))]


def _same_heads_mask(groups: GroupSet, keep: Callable[[int], bool]) -> torch.Tensor:
    """Keep head j (and neuron j) where ``keep(j)``, in every layer (T5 shares its position bias)."""
    mask = groups.mask.clone()
    for _, start, stop in groups.site_ranges():
        mask[start:stop] = torch.tensor([keep(j) for j in range(stop - start)])
    return mask


# -- configs that can describe the compacted model ----------------------------------------------------
@pytest.mark.parametrize("family", ["llama-gqa", "qwen2-gqa", "phi3-gqa"])
def test_gqa_families_reload_with_from_pretrained(family: str, tmp_path: Path) -> None:
    model = BUILD[family]()
    pruner = _prune(model, KINDS)
    report = pruner.compact()
    sync = report.config_syncs[""]
    assert sync.describable, sync.message
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 8)
    assert _head_counts(model) == [4, 4]  # 2 query heads kept per KV group, both KV heads kept
    if NEURONS:
        assert config.intermediate_size == 24 and sync.changed["intermediate_size"] == (48, 24)
    assert not hasattr(config, hf_config.NOTE_KEY)
    reloaded = _hf_reload(model, family, tmp_path / "hf")
    assert type(reloaded) is type(model)
    assert (_logits(reloaded) - _logits(model)).abs().max() <= 1e-5
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert saved["num_attention_heads"] == 4 and saved["num_key_value_heads"] == 2 and saved["head_dim"] == 8


def test_t5_with_the_same_heads_in_every_layer_reloads(tmp_path: Path) -> None:
    model = BUILD["t5"]()
    groups = GroupSet(model, KINDS)
    groups.apply_mask(_same_heads_mask(groups, lambda j: j % 2 == 0))
    _, report = compact(groups, inplace=True)
    assert report.config_syncs[""].describable
    config = model.config
    assert (config.num_heads, config.d_kv) == (2, 8)
    assert config.d_ff == (24 if NEURONS else 48)
    assert _head_counts(model) == [2] * 6  # encoder self, decoder self and cross attention
    reloaded = _hf_reload(model, "t5", tmp_path / "hf")
    assert (_logits(reloaded) - _logits(model)).abs().max() <= 1e-5


@needs_neurons
@pytest.mark.parametrize(("family", "key"), [("bert", "intermediate_size"), ("gpt2", "n_inner")])
def test_bert_and_gpt2_neurons_reload(family: str, key: str, tmp_path: Path) -> None:
    model = BUILD[family]()
    _prune(model, ("neuron",), 0.5).compact()
    width = 24 if family == "bert" else 64
    assert getattr(model.config, key) == width
    reloaded = _hf_reload(model, family, tmp_path / "hf")
    assert (_logits(reloaded) - _logits(model)).abs().max() <= 1e-5
    plprune.save_pretrained(model, tmp_path / "checked")  # verified reload: passes
    assert (tmp_path / "checked" / "config.json").is_file()


# -- configs that cannot ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_pruned_heads_of_families_without_head_dim_are_refused_with_the_reason(family: str, tmp_path: Path):
    model = BUILD[family]()
    pruner = _prune(model, ("head",))
    before = model.config.to_dict()
    sync = pruner.compact().config_syncs[""]
    assert not sync.describable and sync.counts["heads"] == [2, 2]
    assert "computes the head size as hidden size / heads" in sync.reasons[0]
    note = getattr(model.config, hf_config.NOTE_KEY)
    assert "plprune.load" in note and "plprune.export" in note
    after = {k: v for k, v in model.config.to_dict().items() if k != hf_config.NOTE_KEY}
    assert after == before  # counts left as they were: nothing rounded
    with pytest.raises(PlpruneError, match=r"heads per layer \[2, 2\].*plprune\.export.*plprune\.load"):
        plprune.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # refused before anything was written
    # Hugging Face's own save still writes; the saved config explains why from_pretrained fails
    model.save_pretrained(tmp_path / "hf")
    assert "plprune.load" in json.loads((tmp_path / "hf" / "config.json").read_text())[hf_config.NOTE_KEY]
    with pytest.raises(RuntimeError):
        getattr(transformers, AUTO[family]).from_pretrained(tmp_path / "hf")


def test_a_head_count_the_config_validation_refuses_is_reported_not_rounded(tmp_path: Path) -> None:
    model = BUILD["llama-gqa"]()  # hidden 64, 8 query heads: 6 heads are not a divisor of 64
    sync = _prune(model, ("head",), 0.25).compact().config_syncs[""]
    assert _head_counts(model) == [6, 6]
    assert not sync.describable and model.config.num_attention_heads == 8
    assert "LlamaConfig refuses" in sync.reasons[0] and "multiple" in sync.reasons[0]
    with pytest.raises(PlpruneError, match=r"LlamaConfig refuses.*heads per layer \[6, 6\]"):
        plprune.save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_family_plprune_has_no_keys_for_is_refused(monkeypatch) -> None:
    monkeypatch.delitem(hf_config.FAMILIES, "llama")
    model = BUILD["llama-gqa"]()
    sync = _prune(model, ("head",)).compact().config_syncs[""]
    assert not sync.describable and "model_type 'llama'" in sync.reasons[0] and "FAMILIES" in sync.reasons[0]


def _non_uniform(family: str) -> tuple[nn.Module, GroupSet, torch.Tensor]:
    """Layer 0 keeps 2 query heads per KV group, layer 1 keeps 3 (and 16 / 32 neurons)."""
    model = BUILD[family]()
    groups = GroupSet(model, KINDS)
    mask = groups.mask.clone()
    for site, start, stop in groups.site_ranges():
        keep = (2, 3) if site.kind == "head" else (16, 32)
        per = 4 if site.kind == "head" else stop - start
        count = keep[site.layer % 2] if site.kind == "head" else keep[int(site.module_name.split(".")[2])]
        mask[start:stop] = torch.tensor([j % per < count for j in range(stop - start)])
    groups.apply_mask(mask)
    return model, groups, _logits(model)


@pytest.mark.parametrize("family", ["llama-gqa", "phi3-gqa"])
def test_non_uniform_counts_are_refused_and_round_trip_through_export(family: str, tmp_path: Path) -> None:
    model, groups, masked = _non_uniform(family)
    plprune.export(model, groups, tmp_path / "export")
    _, report = compact(groups, inplace=True)
    sync = report.config_syncs[""]
    assert not sync.describable and sync.counts["heads"] == [4, 6]
    assert "different head counts" in sync.reasons[0]
    with pytest.raises(PlpruneError, match=r"heads per layer \[4, 6\].*plprune\.export"):
        plprune.save_pretrained(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    loaded = plprune.load(tmp_path / "export")
    assert _head_counts(loaded) == [4, 6]
    if NEURONS:
        assert [s.num_groups for s in plprune.find_sites(loaded, ("neuron",))] == [16, 32]
    assert (_logits(loaded) - masked).abs().max() <= 1e-5
    assert (_logits(loaded) - _logits(model)).abs().max() <= 1e-6


@pytest.mark.parametrize("family", ["llama-gqa", "t5"])
def test_export_of_a_model_whose_config_was_rewritten_loads(family: str, tmp_path: Path) -> None:
    """Compacted in place, the config describes the small model; load shrinks each layer to its recorded
    count (a layer the rebuilt config already gives that count keeps all) and loads the weights."""
    model = BUILD[family]()
    if family == "t5":
        groups = GroupSet(model, ("head",))
        groups.apply_mask(_same_heads_mask(groups, lambda j: j < 2))
        compact(groups, inplace=True)
        owner = groups
    else:
        owner = _prune(model, KINDS)
        owner.compact()
    manifest = plprune.export(model, owner, tmp_path / "export")
    assert manifest["architecture"]["config"]["num_attention_heads" if family != "t5" else "num_heads"] < 8
    loaded = plprune.load(tmp_path / "export")
    assert _head_counts(loaded) == _head_counts(model)
    assert (_logits(loaded) - _logits(model)).abs().max() <= 1e-6


# -- plprune.save_pretrained: checked and atomic --------------------------------------------------------
def test_save_pretrained_is_checked_and_atomic(tmp_path: Path, monkeypatch) -> None:
    model = BUILD["llama-gqa"]()
    _prune(model, KINDS).compact()
    sync = plprune.save_pretrained(model, tmp_path / "ok")
    assert sync.describable
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ok", attn_implementation="eager")
    assert (_logits(reloaded) - _logits(model)).abs().max() <= 1e-5

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep me")
    with pytest.raises(PlpruneError, match="already exists and is not empty; pass overwrite=True"):
        plprune.save_pretrained(model, existing)
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]

    monkeypatch.setattr(hf_save, "_compare", lambda *args: 0.5)  # a reload that does not match
    with pytest.raises(PlpruneError, match=r"differs from it by 0\.5 .*nothing was saved"):
        plprune.save_pretrained(model, tmp_path / "bad")
    with pytest.raises(PlpruneError, match="nothing was saved"):
        plprune.save_pretrained(model, existing, overwrite=True)
    assert [p.name for p in existing.iterdir()] == ["mine.txt"]  # a failed overwrite keeps the old one
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "ok"]  # no partial or temporary dirs

    plprune.save_pretrained(model, existing, overwrite=True)
    assert (existing / "config.json").is_file() and not (existing / "mine.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    plprune.save_pretrained(model, empty, verify=False)  # an empty directory may be used
    assert (empty / "config.json").is_file()
    with pytest.raises(PlpruneError, match="takes a Hugging Face model"):
        plprune.save_pretrained(nn.Linear(2, 2), tmp_path / "linear")


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
    reason="needs the deploy extra",
)
def test_llama_gqa_exports_to_onnx(tmp_path: Path) -> None:
    model = BUILD["llama-gqa"]()
    pruner = _prune(model, KINDS)
    manifest = plprune.export(model, pruner, tmp_path / "onnx", format="onnx")
    assert manifest["onnx"]["max_abs_diff"] <= 1e-4
    assert manifest["pruning"]["counts"]["head"]["per_layer"] == [4, 4]
