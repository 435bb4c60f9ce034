"""The adapters plprune ships: its own models and the Hugging Face families, matched by structure.

Imported by :mod:`plprune.sites` so that discovery knows them; a user's own families are added with
:func:`~plprune.sites.heads.register_attention` / :func:`~plprune.sites.experts.register_moe`.
Hugging Face models are matched by the attributes their modules have (no ``transformers`` import), so
every family copied from BERT (RoBERTa, ELECTRA, ...) or using ``q_proj/k_proj/v_proj/o_proj`` (ViT, ...)
is found. MoE: Hugging Face SwitchTransformers (one module per expert, ``router.classifier``) and the
Mixtral family (fused ``gate_up_proj``/``down_proj`` experts, a top-k router returning
``(logits, scores, indices)``; :class:`~plprune.sites.experts.FusedMoEAdapter`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plprune.sites.experts import FusedMoEAdapter, MoEAdapter, register_moe
from plprune.sites.heads import AttentionAdapter, register_attention


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


def _qkvo_heads(module: nn.Module) -> int:
    for attr in ("num_attention_heads", "num_heads", "n_heads"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return int(module.config.num_attention_heads)


def _is_qkvo_attention(module: nn.Module) -> bool:
    if not _linears(module, "q_proj", "k_proj", "v_proj", "o_proj"):
        return False
    try:
        _qkvo_heads(module)
    except AttributeError:
        return False
    return True


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


def _set_qkvo_heads(module: nn.Module, heads: int) -> None:
    for attr in ("num_attention_heads", "num_heads", "n_heads"):
        if isinstance(getattr(module, attr, None), int):
            setattr(module, attr, heads)


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


register_attention(
    AttentionAdapter(
        name="hf-qkvo",
        matches=_is_qkvo_attention,
        query="q_proj",
        key="k_proj",
        value="v_proj",
        output="o_proj",
        num_heads=_qkvo_heads,
        set_num_heads=_set_qkvo_heads,
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
