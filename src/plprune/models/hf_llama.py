"""A Hugging Face ``transformers.LlamaForCausalLM`` (grouped-query attention) behind a causal-LM interface.

:class:`CausalLmConfig` holds the sizes plprune's run config maps onto a Llama-style decoder (pre-norm
RMSNorm, rotary positions, SwiGLU MLP, no biases, eager attention so that higher derivatives are exact):
``num_heads`` query heads of ``hidden_size // num_heads`` dimensions sharing ``num_kv_heads`` key/value heads
(grouped-query attention; ``num_kv_heads == num_heads`` is plain multi-head attention, ``1`` multi-query).
The input embedding and the output projection are tied by default (``tie_embeddings``): on a word-level
vocabulary of ~9k ids and hidden 128 an untied head would add 1.2 M parameters, more than the four layers
hold.

:class:`HfLlamaForCausalLM` holds the Hugging Face model as ``self.hf`` and answers what
:class:`~plprune.tasks.causal_lm.CausalLmTask` and the pruners call: ``model(input_ids, labels)`` →
``.logits`` ``(B, T, V)`` and ``.loss`` (mean cross-entropy over the positions whose label is not -100;
``labels`` are the *next* tokens, already shifted by the data, so nothing is shifted here),
``per_sample_loss`` and ``per_sample_true_logit`` (fixed shapes, vmap-safe). Its attention heads are found
by the ``q_proj/k_proj/v_proj/o_proj`` adapter (:mod:`plprune.sites.builtin`) inside ``self.hf``.

``transformers`` is imported only when a model is built here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import (
    build_hf_model,
    describe_hf_model,
    hf_example_inputs,
    register_architecture,
)
from plprune.models.hf_import import require_transformers
from plprune.validation import check_bool, check_positive_float, check_positive_int, check_probability

__all__ = ["IGNORE_INDEX", "CausalLmConfig", "CausalLmOutput", "HfLlamaForCausalLM", "hf_llama_config"]

IGNORE_INDEX = -100
"""Label of positions that are not predicted (the ``ignore_index`` of ``F.cross_entropy``)."""


@dataclass
class CausalLmConfig:
    """Sizes of a Llama-style decoder (module docstring). Defaults: the ``hf-llama-*`` tasks' CPU size."""

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 2
    ffn_size: int = 344
    max_length: int = 128
    attention_dropout: float = 0.0
    tie_embeddings: bool = True
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_size"):
            check_positive_int(name, getattr(self, name))
        check_positive_int("max_length", self.max_length)
        if self.hidden_size % self.num_heads:
            raise PlpruneError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}); each query head "
                f"has hidden_size / num_heads dimensions"
            )
        if self.num_heads % self.num_kv_heads:
            raise PlpruneError(
                f"num_kv_heads ({self.num_kv_heads}) must divide num_heads ({self.num_heads}): each "
                f"key/value head serves num_heads / num_kv_heads query heads; valid: "
                f"{[k for k in range(1, self.num_heads + 1) if self.num_heads % k == 0]}"
            )
        check_probability("attention_dropout", self.attention_dropout)
        check_bool("tie_embeddings", self.tie_embeddings)
        for name in ("rms_norm_eps", "initializer_range", "rope_theta"):
            check_positive_float(name, getattr(self, name))

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hf_llama_config(config: CausalLmConfig) -> Any:
    """The ``transformers.LlamaConfig`` of ``config``: eager attention, no KV cache, no special token ids
    (plprune's tokenizer has no BOS/EOS; nothing is padded)."""
    if not isinstance(config, CausalLmConfig):
        raise PlpruneError(f"expected a CausalLmConfig, got {type(config).__name__}")
    return require_transformers().LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_size,
        intermediate_size=config.ffn_size,
        hidden_act="silu",
        max_position_embeddings=config.max_length,
        attention_dropout=config.attention_dropout,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=config.rms_norm_eps,
        initializer_range=config.initializer_range,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_embeddings,
        use_cache=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="eager",
    )


@dataclass
class CausalLmOutput:
    """``logits`` ``(B, T, V)`` at every position; ``loss``: mean next-token cross-entropy over the labelled
    positions (``None`` without labels; 0 with a gradient path when no position is labelled)."""

    logits: Tensor
    loss: Tensor | None


class HfLlamaForCausalLM(nn.Module):
    """``transformers.LlamaForCausalLM`` (``self.hf``) with the causal-LM interface of the module docstring.
    Build it from a :class:`CausalLmConfig` or wrap an existing Hugging Face causal LM."""

    def __init__(self, config: CausalLmConfig | None = None, hf_model: nn.Module | None = None) -> None:
        super().__init__()
        if (config is None) == (hf_model is None):
            raise PlpruneError(
                "HfLlamaForCausalLM takes either a plprune CausalLmConfig or a Hugging Face model"
            )
        if hf_model is None:
            hf_model = require_transformers().LlamaForCausalLM(hf_llama_config(config))
        for attr in ("model", "lm_head"):
            if not hasattr(hf_model, attr):
                raise PlpruneError(
                    "expected a transformers causal LM such as LlamaForCausalLM (with .model and .lm_head), "
                    f"got {type(hf_model).__name__}"
                )
        self.hf = hf_model
        self.config = config

    def lm_logits(self, input_ids: Tensor) -> Tensor:
        """Vocabulary logits ``(B, T, V)``; position t sees tokens ``0..t`` only (causal attention)."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise PlpruneError(f"input_ids must have shape (batch, length), got {shape}")
        limit = getattr(self.hf.config, "max_position_embeddings", None)
        if limit is not None and input_ids.shape[1] > limit:
            raise PlpruneError(f"sequence length {input_ids.shape[1]} exceeds max_length {limit}")
        return self.hf(input_ids=input_ids, use_cache=False).logits

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> CausalLmOutput:
        """Logits and, with ``labels`` (next tokens, -100 where nothing is predicted), their mean loss."""
        logits = self.lm_logits(input_ids)
        if labels is None:
            return CausalLmOutput(logits=logits, loss=None)
        _check_labels(input_ids, labels)
        token_loss = F.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        count = (labels != IGNORE_INDEX).sum().clamp_min(1)
        return CausalLmOutput(logits=logits, loss=token_loss / count)

    def per_sample_loss(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy of each sample over its labelled positions, ``(B,)``; fixed shapes,
        so vmap-safe. A sample with no labelled position contributes 0."""
        _check_labels(input_ids, labels)
        logits = self.lm_logits(input_ids)
        selected = (labels != IGNORE_INDEX).to(logits.dtype)
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")  # (B, T)
        return (token_loss * selected).sum(dim=1) / selected.sum(dim=1).clamp_min(1.0)

    def per_sample_true_logit(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        """Mean logit of the true next token over each sample's labelled positions, ``(B,)``; vmap-safe."""
        _check_labels(input_ids, labels)
        logits = self.lm_logits(input_ids)
        selected = (labels != IGNORE_INDEX).to(logits.dtype)
        true_logit = logits.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return (true_logit * selected).sum(dim=1) / selected.sum(dim=1).clamp_min(1.0)


def _check_labels(input_ids: Tensor, labels: Tensor) -> None:
    if not isinstance(labels, Tensor) or labels.shape != input_ids.shape:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise PlpruneError(f"labels shape {shape} != input_ids shape {tuple(input_ids.shape)}")


# -- export: the family as data (plprune.models.architecture) -------------------------------------------
def _describe(model: HfLlamaForCausalLM) -> dict[str, Any]:
    return {
        "llama_config": model.config.to_dict() if model.config is not None else None,
        "hf": describe_hf_model(model.hf),
    }


def _build(description: dict[str, Any]) -> HfLlamaForCausalLM:
    llama = HfLlamaForCausalLM(hf_model=build_hf_model(description["hf"]))
    if description.get("llama_config") is not None:
        llama.config = CausalLmConfig(**description["llama_config"])
    return llama


register_architecture(
    HfLlamaForCausalLM,
    "plprune.HfLlamaForCausalLM",
    describe=_describe,
    build=_build,
    example_inputs=lambda description: hf_example_inputs(description["hf"]),
)
