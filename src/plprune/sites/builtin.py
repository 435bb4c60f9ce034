"""The adapters plprune ships: its own models and the Hugging Face families, matched by structure.

Imported by :mod:`plprune.sites` so that discovery knows them; a user's own families are added with
:func:`~plprune.sites.heads.register_attention` / :func:`~plprune.sites.experts.register_moe`.
Hugging Face models are matched by the attributes their modules have (no ``transformers`` import), so
every family that shares a layout is found by the same rule. Attention layouts:

* separate projections (:data:`SEPARATE_LAYOUTS`): ``q_proj/k_proj/v_proj/o_proj`` (Llama, Qwen2, Mistral,
  Gemma — grouped- and multi-query included —, ViT), ``q_proj/k_proj/v_proj/out_proj`` (OPT, BART, Whisper;
  self- and cross-attention), ``q_lin/k_lin/v_lin/out_lin`` (DistilBERT), ``q/k/v/o`` (T5, with its
  relative-position bias table sliced with the heads), ``self.query/key/value`` + ``output.dense`` (BERT,
  RoBERTa, ELECTRA, ...);
* fused QKV projections: GPT-2's ``c_attn`` (a ``Conv1D``, weight ``[in, out]``, blocks [Q|K|V]), Phi-3's
  ``qkv_proj`` (blocks, grouped-query), GPT-NeoX's ``query_key_value`` (interleaved per head), Falcon's
  ``query_key_value`` (per KV group [q.. k v] in the new decoder architecture, blocks with one KV head under
  multi-query, else per head).

Head counts are read from the projections' widths and the module's head size, so they stay true after
compaction; new counts are written back into the attributes each module's ``forward`` reads. MoE: Hugging
Face SwitchTransformers (one module per expert, ``router.classifier``) and the Mixtral family (fused
``gate_up_proj``/``down_proj`` experts, a top-k router returning ``(logits, scores, indices)``;
:class:`~plprune.sites.experts.FusedMoEAdapter`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from plprune.sites.experts import FusedMoEAdapter, MoEAdapter, register_moe
from plprune.sites.heads import AttentionAdapter, register_attention
from plprune.sites.projections import in_features, is_conv1d, is_projection, out_features


def _linears(module: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def _is_plprune_attention(module: nn.Module) -> bool:
    """plprune's ``MultiHeadSelfAttention`` (models/bert.py), recognised by its parts: ``query``, ``key``,
    ``value``, ``output`` projections and integer ``num_heads``/``head_size`` (no model import here)."""
    return (
        _linears(module, "query", "key", "value", "output")
        and isinstance(getattr(module, "num_heads", None), int)
        and isinstance(getattr(module, "head_size", None), int)
    )


def _is_plprune_switch(module: nn.Module) -> bool:
    """plprune's ``SwitchFeedForward`` (models/switch.py): a bias-free ``router``, an ``experts`` list and
    the ``set_hard_mask``/``expert_keep`` pair it routes around pruned experts with."""
    return (
        isinstance(getattr(module, "router", None), nn.Linear)
        and isinstance(getattr(module, "experts", None), nn.ModuleList)
        and callable(getattr(module, "set_hard_mask", None))
        and isinstance(getattr(module, "expert_keep", None), Tensor)
    )


def _is_hf_bert_attention(module: nn.Module) -> bool:
    inner, out = getattr(module, "self", None), getattr(module, "output", None)
    return (
        inner is not None
        and out is not None
        and _linears(inner, "query", "key", "value")
        and _linears(out, "dense")
        and hasattr(inner, "num_attention_heads")
        and not getattr(module, "is_cross_attention", False)
    )


# -- the Hugging Face attention layouts ------------------------------------------------------------------
#: (query, key, value, output) submodule names of the separate-projection layouts, matched by structure
SEPARATE_LAYOUTS = {
    "hf-qkvo": ("q_proj", "k_proj", "v_proj", "o_proj"),  # Llama, Qwen2, Mistral, Gemma, ViT, ...
    "hf-qkv-out": ("q_proj", "k_proj", "v_proj", "out_proj"),  # OPT, BART, Whisper, Marian, ...
    "hf-distilbert": ("q_lin", "k_lin", "v_lin", "out_lin"),  # DistilBERT
    "hf-t5": ("q", "k", "v", "o"),  # T5, mT5, SwitchTransformers
}
_HEAD_DIM_ATTRS = ("head_dim", "head_size", "attention_head_size", "key_value_proj_dim")
_HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads")
_KV_COUNT_ATTRS = ("num_key_value_heads", "num_kv_heads")


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _head_dim(module: nn.Module, output_width: int) -> int:
    """The head size: the module's own attribute, else its output width over its (or its config's) head
    count. Counts are then read from the projections' widths, so they stay true after compaction."""
    size = _int_attr(module, _HEAD_DIM_ATTRS)
    if size:
        return size
    heads = _int_attr(module, _HEAD_COUNT_ATTRS)
    if heads is None:
        heads = getattr(getattr(module, "config", None), "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        raise AttributeError(f"{type(module).__name__} says neither its head size nor its head count")
    return output_width // heads


def _separate_counts(names: tuple[str, str, str, str]) -> tuple:
    _, key, _, output = names

    def heads(module: nn.Module) -> int:
        width = in_features(getattr(module, output))
        return width // _head_dim(module, width)

    def kv_heads(module: nn.Module) -> int:
        width = in_features(getattr(module, output))
        return out_features(getattr(module, key)) // _head_dim(module, width)

    return heads, kv_heads


def _has_projections(module: nn.Module, *names: str) -> bool:
    return all(is_projection(getattr(module, n, None) or nn.Identity()) for n in names)


def _separate_matcher(names: tuple[str, str, str, str]):
    heads, _ = _separate_counts(names)

    def matches(module: nn.Module) -> bool:
        if not _has_projections(module, *names) or getattr(module, "is_cross_attention", False) is True:
            return False
        try:
            heads(module)
        except (AttributeError, ZeroDivisionError):
            return False
        return True

    return matches


def set_head_counts(module: nn.Module, heads: int, kv_heads: int) -> None:
    """Record new head counts wherever a Hugging Face attention module keeps them (the attributes its
    ``forward`` reads: ``num_heads``/``n_heads``, ``num_key_value_heads``/``num_kv_heads``,
    ``num_key_value_groups`` for ``repeat_kv``, GPT-2's ``split_size``, T5's ``inner_dim``)."""
    for name in _HEAD_COUNT_ATTRS:
        if _int_attr(module, (name,)) is not None:
            setattr(module, name, heads)
    for name in _KV_COUNT_ATTRS:
        if _int_attr(module, (name,)) is not None:
            setattr(module, name, kv_heads)
    if _int_attr(module, ("num_key_value_groups",)) is not None:
        module.num_key_value_groups = heads // kv_heads
    head_dim = _int_attr(module, _HEAD_DIM_ATTRS)
    if head_dim:
        for name in ("split_size", "inner_dim", "all_head_size"):
            if _int_attr(module, (name,)) is not None:
                setattr(module, name, heads * head_dim)


def _set_phi3_counts(module: nn.Module, heads: int, kv_heads: int) -> None:
    """Phi-3's forward reads the query width from ``config.num_attention_heads``: the module gets its own
    copy of the config with its counts (the model's own config is rewritten by ``compact()``, uniform counts
    only: :mod:`plprune.compaction.hf_config`)."""
    set_head_counts(module, heads, kv_heads)
    config = copy.copy(module.config)
    config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
    module.config = config


def _t5_stack(module_name: str) -> str | None:
    """T5 computes a position bias in the first layer of a stack and passes it to every layer: the
    self-attention (and, separately, the cross-attention) layers of one stack share it."""
    stack, sep, _ = module_name.partition(".block.")
    if not sep:
        return None
    return f"{stack} {'cross' if module_name.endswith('EncDecAttention') else 'self'}-attention"


def _fused_counts(output: str):
    def heads(module: nn.Module) -> int:
        width = in_features(getattr(module, output))
        return width // _head_dim(module, width)

    def kv_heads(module: nn.Module) -> int:
        kv = _int_attr(module, _KV_COUNT_ATTRS)
        if kv is not None and getattr(module, "new_decoder_architecture", True) is not False:
            return kv
        if getattr(module, "multi_query", False):
            return 1
        return kv if kv is not None else heads(module)

    return heads, kv_heads


def _is_gpt2_attention(module: nn.Module) -> bool:
    return (
        is_conv1d(getattr(module, "c_attn", nn.Identity()))
        and is_conv1d(getattr(module, "c_proj", nn.Identity()))
        and getattr(module, "is_cross_attention", False) is False
        and _int_attr(module, ("num_heads",)) is not None
    )


def _is_phi3_attention(module: nn.Module) -> bool:
    return (
        _has_projections(module, "qkv_proj", "o_proj")
        and _int_attr(module, ("head_dim",)) is not None
        and _int_attr(module, ("num_key_value_heads",)) is not None
    )


def _is_neox_attention(module: nn.Module) -> bool:
    return (
        _has_projections(module, "query_key_value", "dense")
        and _int_attr(module, ("head_size",)) is not None
        and not hasattr(module, "new_decoder_architecture")
    )


def _is_falcon_attention(layout: str):
    def matches(module: nn.Module) -> bool:
        if not _has_projections(module, "query_key_value", "dense") or not hasattr(
            module, "new_decoder_architecture"
        ):
            return False
        if module.new_decoder_architecture:
            return layout == "per_kv_group"
        return layout == ("blocked" if getattr(module, "multi_query", False) else "per_head")

    return matches


def _hf_switch_experts(module: nn.Module) -> list[nn.Module]:
    experts = module.experts
    return [experts[f"expert_{i}"] for i in range(len(experts))]


def _is_hf_switch_moe(module: nn.Module) -> bool:
    router, experts = getattr(module, "router", None), getattr(module, "experts", None)
    return (
        isinstance(getattr(router, "classifier", None), nn.Linear)
        and isinstance(experts, nn.ModuleDict)
        and all(f"expert_{i}" in experts for i in range(len(experts)))
    )


def _is_fused_topk_moe(module: nn.Module) -> bool:
    experts, router = getattr(module, "experts", None), getattr(module, "gate", None)
    return (
        isinstance(getattr(experts, "gate_up_proj", None), nn.Parameter)
        and isinstance(getattr(experts, "down_proj", None), nn.Parameter)
        and isinstance(getattr(router, "weight", None), nn.Parameter)
        and isinstance(getattr(router, "top_k", None), int)
    )


def _topk_reroute(router: nn.Module, logits: Tensor, output: tuple) -> tuple:
    """A Mixtral-style router's (logits, scores, indices) from masked logits: softmax in float32, top-k,
    scores renormalised to sum 1 (unless the router says ``norm_topk_prob = False``)."""
    probs = torch.softmax(logits.float(), dim=-1)
    scores, indices = torch.topk(probs, router.top_k, dim=-1)
    if getattr(router, "norm_topk_prob", True):
        scores = scores / scores.sum(dim=-1, keepdim=True)
    return (logits, scores.to(output[1].dtype), indices)


def _set_hf_bert_heads(module: nn.Module, heads: int) -> None:
    inner = module.self
    inner.num_attention_heads = heads
    inner.all_head_size = heads * inner.attention_head_size


def _compact_hf_switch(module: nn.Module, keep: Tensor) -> None:
    count = int(keep.sum())
    module.router.num_experts = count
    module.experts.num_experts = count


def _compact_plprune_switch(module: nn.Module, keep: Tensor) -> None:
    """The layer now has only its kept experts: counts and the routing buffer follow (all kept)."""
    count = int(keep.sum())
    module.num_experts = count
    module._buffers["expert_keep"] = torch.ones(count, dtype=torch.bool, device=module.expert_keep.device)


def _switch_hard_mask(module: nn.Module, keep: object) -> None:
    module.set_hard_mask(keep)


for _name, _names in SEPARATE_LAYOUTS.items():
    _heads, _kv_heads = _separate_counts(_names)
    register_attention(
        AttentionAdapter(
            name=_name,
            matches=_separate_matcher(_names),
            query=_names[0],
            key=_names[1],
            value=_names[2],
            output=_names[3],
            num_heads=_heads,
            num_kv_heads=_kv_heads,
            set_num_heads=set_head_counts,
            head_tables=(("relative_attention_bias.weight", 1),) if _name == "hf-t5" else (),
            shared_bias_key=_t5_stack if _name == "hf-t5" else None,
        )
    )
_FUSED = {
    # name: (matches, fused projection, output projection, layout, set counts)
    "hf-gpt2": (_is_gpt2_attention, "c_attn", "c_proj", "blocked", set_head_counts),
    "hf-phi3": (_is_phi3_attention, "qkv_proj", "o_proj", "blocked", _set_phi3_counts),
    "hf-gpt-neox": (_is_neox_attention, "query_key_value", "dense", "per_head", set_head_counts),
    # Falcon: the new decoder architecture groups [q.. k v] per KV head; else multi-query or per head
    **{
        f"hf-falcon-{layout}": (
            _is_falcon_attention(layout), "query_key_value", "dense", layout, set_head_counts
        )
        for layout in ("per_kv_group", "blocked", "per_head")
    },
}
for _name, (_matches, _fused, _output, _layout, _setter) in _FUSED.items():
    _heads, _kv_heads = _fused_counts(_output)
    register_attention(
        AttentionAdapter(
            name=_name,
            matches=_matches,
            query="",
            key="",
            value="",
            output=_output,
            num_heads=_heads,
            num_kv_heads=_kv_heads,
            set_num_heads=_setter,
            fused=_fused,
            fused_layout=_layout,
        )
    )
register_attention(
    AttentionAdapter(
        name="hf-bert",
        matches=_is_hf_bert_attention,
        query="self.query",
        key="self.key",
        value="self.value",
        output="output.dense",
        num_heads=lambda m: m.self.num_attention_heads,
        set_num_heads=_set_hf_bert_heads,
    )
)
register_attention(
    AttentionAdapter(
        name="plprune-bert",
        matches=_is_plprune_attention,
        query="query",
        key="key",
        value="value",
        output="output",
        num_heads=lambda m: m.num_heads,
        set_num_heads=lambda m, n: setattr(m, "num_heads", n),
    )
)
register_moe(
    MoEAdapter(
        name="hf-switch-transformers",
        matches=_is_hf_switch_moe,
        experts=_hf_switch_experts,
        router="router.classifier",
        container="experts",
        on_compact=_compact_hf_switch,
    )
)
register_moe(
    FusedMoEAdapter(
        name="hf-mixtral",
        matches=_is_fused_topk_moe,
        experts="experts",
        params=("gate_up_proj", "down_proj"),
        router="gate",
        num_experts=lambda m: m.experts.gate_up_proj.shape[0],
        reroute=_topk_reroute,
    )
)
register_moe(
    MoEAdapter(
        name="plprune-switch",
        matches=_is_plprune_switch,
        experts=lambda m: list(m.experts),
        router=None,  # SwitchFeedForward masks its router itself and recomputes capacity over K experts
        on_hard_mask=_switch_hard_mask,
        container="experts",
        router_linear="router",
        on_compact=_compact_plprune_switch,
    )
)
