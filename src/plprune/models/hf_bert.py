"""A Hugging Face ``transformers.BertForMaskedLM`` behind plprune's masked-LM interface.

:class:`HfBertForMaskedLM` holds the Hugging Face model as ``self.hf`` and answers what
:class:`~plprune.tasks.mlm.MlmTask` and the pruners call on plprune's own
:class:`~plprune.models.bert.BertForMaskedLM`: ``model(input_ids, labels)`` → ``.loss``/``.logits``
(logits at the masked positions only, unless ``logits_at="all"``), ``per_sample_loss`` and
``per_sample_true_logit``. Its heads are found by the ``hf-bert`` attention adapter
(:mod:`plprune.sites.builtin`) inside ``self.hf``; plprune's code never reaches into the model beyond
that. :func:`copy_plprune_bert_weights` loads the weights of a plprune BERT into a Hugging Face one of the
same shape (the two then compute the same function; tests/test_hf_models.py).

``transformers`` is imported only when a model is built here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import (
    build_hf_model,
    describe_hf_model,
    hf_example_inputs,
    register_architecture,
)
from plprune.models.bert import BertConfig, BertForMaskedLM, MaskedLMHead
from plprune.models.hf_import import require_transformers

__all__ = ["HfBertForMaskedLM", "copy_plprune_bert_weights", "hf_bert_config"]


def hf_bert_config(config: BertConfig) -> Any:
    """The ``transformers.BertConfig`` of the same shape as plprune's ``config``: GELU, one token type,
    the same LayerNorm eps and initialiser range, eager attention (exact higher derivatives)."""
    if config.pre_layer_norm:
        raise PlpruneError("Hugging Face BERT is post-LN; a pre-LN plprune config has no HF counterpart")
    return require_transformers().BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.ffn_size,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attention_dropout,
        max_position_embeddings=config.max_length,
        type_vocab_size=1,
        layer_norm_eps=config.layer_norm_eps,
        initializer_range=config.initializer_range,
        pad_token_id=None,  # plprune's BERT has no padding row (its gradient would be dropped)
        attn_implementation="eager",
    )


class HfBertForMaskedLM(MaskedLMHead):
    """``transformers.BertForMaskedLM`` (``self.hf``) with the interface of plprune's BERT (module
    docstring): ``forward``, ``per_sample_loss`` and ``per_sample_true_logit`` come from
    :class:`~plprune.models.bert.MaskedLMHead`, on top of this class's ``encode`` and ``lm_logits``.
    Build it from a plprune :class:`BertConfig` or wrap an existing Hugging Face model."""

    def __init__(self, config: BertConfig | None = None, hf_model: nn.Module | None = None) -> None:
        super().__init__()
        if (config is None) == (hf_model is None):
            raise PlpruneError("HfBertForMaskedLM takes either a plprune BertConfig or a Hugging Face model")
        if hf_model is None:
            hf_model = require_transformers().BertForMaskedLM(hf_bert_config(config))
        for attr in ("bert", "cls"):
            if not hasattr(hf_model, attr):
                raise PlpruneError(
                    "expected a transformers BertForMaskedLM (with .bert and .cls), "
                    f"got {type(hf_model).__name__}"
                )
        self.hf = hf_model
        self.config = config

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Hidden states ``(B, T, hidden)`` after the encoder stack."""
        if input_ids.dim() != 2:
            raise PlpruneError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        return self.hf.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for hidden states of any leading shape."""
        return self.hf.cls(hidden)


def _plprune_to_hf_names(config: BertConfig) -> dict[str, str]:
    names = {
        "token_embedding.weight": "bert.embeddings.word_embeddings.weight",
        "position_embedding.weight": "bert.embeddings.position_embeddings.weight",
        "head_transform.weight": "cls.predictions.transform.dense.weight",
        "head_transform.bias": "cls.predictions.transform.dense.bias",
        "decoder_bias": "cls.predictions.bias",
    }
    modules = {
        "embedding_norm": "bert.embeddings.LayerNorm",
        "head_norm": "cls.predictions.transform.LayerNorm",
    }
    for i in range(config.num_layers):
        ours, theirs = f"layers.{i}", f"bert.encoder.layer.{i}"
        modules.update(
            {
                f"{ours}.attention.query": f"{theirs}.attention.self.query",
                f"{ours}.attention.key": f"{theirs}.attention.self.key",
                f"{ours}.attention.value": f"{theirs}.attention.self.value",
                f"{ours}.attention.output": f"{theirs}.attention.output.dense",
                f"{ours}.attention_norm": f"{theirs}.attention.output.LayerNorm",
                f"{ours}.feed_forward.intermediate": f"{theirs}.intermediate.dense",
                f"{ours}.feed_forward.output": f"{theirs}.output.dense",
                f"{ours}.ffn_norm": f"{theirs}.output.LayerNorm",
            }
        )
    for ours, theirs in modules.items():
        names[f"{ours}.weight"] = f"{theirs}.weight"
        names[f"{ours}.bias"] = f"{theirs}.bias"
    return names


@torch.no_grad()
def copy_plprune_bert_weights(source: BertForMaskedLM, target: nn.Module) -> None:
    """Copy a plprune (post-LN) :class:`BertForMaskedLM`'s weights into a ``transformers.BertForMaskedLM``
    (or :class:`HfBertForMaskedLM`) of the same shape; token-type embeddings are set to 0. The Hugging
    Face decoder is tied to the word embeddings (and its bias to ``cls.predictions.bias``), as plprune's."""
    if isinstance(target, HfBertForMaskedLM):
        target = target.hf
    if source.config.pre_layer_norm:
        raise PlpruneError("only a post-LN plprune BERT has a Hugging Face counterpart")
    ours = dict(source.named_parameters())
    theirs = dict(target.named_parameters())
    for name, hf_name in _plprune_to_hf_names(source.config).items():
        if hf_name not in theirs:
            raise PlpruneError(f"the Hugging Face model has no parameter {hf_name} (for plprune's {name})")
        if theirs[hf_name].shape != ours[name].shape:
            raise PlpruneError(
                f"shape mismatch: plprune {name} {tuple(ours[name].shape)} vs Hugging Face {hf_name} "
                f"{tuple(theirs[hf_name].shape)}"
            )
        theirs[hf_name].copy_(ours[name])
    theirs["bert.embeddings.token_type_embeddings.weight"].zero_()
    decoder = target.cls.predictions.decoder
    if decoder.weight is not target.bert.embeddings.word_embeddings.weight:
        decoder.weight.copy_(ours["token_embedding.weight"])
    if decoder.bias is not None and decoder.bias is not target.cls.predictions.bias:
        decoder.bias.copy_(ours["decoder_bias"])


# -- export: the family as data (plprune.models.architecture) -------------------------------------------
def _describe(model: HfBertForMaskedLM) -> dict[str, Any]:
    return {
        "bert_config": model.config.to_dict() if model.config is not None else None,
        "hf": describe_hf_model(model.hf),
    }


def _build(description: dict[str, Any]) -> HfBertForMaskedLM:
    wrapper = HfBertForMaskedLM(hf_model=build_hf_model(description["hf"]))
    if description.get("bert_config") is not None:
        wrapper.config = BertConfig(**description["bert_config"])
    return wrapper


register_architecture(
    HfBertForMaskedLM,
    "plprune.HfBertForMaskedLM",
    describe=_describe,
    build=_build,
    example_inputs=lambda description: hf_example_inputs(description["hf"]),
)
