"""A BERT encoder for masked-language modelling (Devlin et al., 2019), written for pruning research.

* Attention is plain ``matmul``/``softmax`` so the model stays twice- and thrice-differentiable
  (the PL regulariser differentiates a Hessian-vector product w.r.t. gates; fused attention kernels
  have no double backward).
* Heads are gated from outside: :mod:`plprune.sites` multiplies each head's context by its gate with a
  forward pre-hook on the output projection ``output`` (paper Eq. 6); the model has no pruning code.
* With labels, logits are computed only at masked positions (``logits_at="masked"``), which skips
  ~85% of the vocabulary projection; ``logits_at="all"`` gives full logits (and a fixed-shape path
  that works under ``torch.func.vmap``).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.architecture import register_architecture, token_ids
from plprune.models.layers import LayerNorm
from plprune.validation import check_positive_int, check_probability

IGNORE_INDEX = -100


@dataclass
class BertConfig:
    """Size and regularisation of a :class:`BertForMaskedLM`."""

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 8
    ffn_size: int = 512
    max_length: int = 128
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pre_layer_norm: bool = False
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_size", "max_length"):
            check_positive_int(name, getattr(self, name))
        if self.hidden_size % self.num_heads != 0:
            raise PlpruneError(
                f"num_heads ({self.num_heads}) must divide hidden_size ({self.hidden_size}); "
                f"valid head counts for this hidden size: "
                f"{[h for h in range(1, self.hidden_size + 1) if self.hidden_size % h == 0]}"
            )
        check_probability("dropout", self.dropout)
        check_probability("attention_dropout", self.attention_dropout)

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MaskedLMOutput:
    """``logits``: ``(n_masked, V)`` for ``logits_at="masked"``, else ``(B, T, V)``; ``loss`` is the mean
    cross-entropy over masked positions (``None`` without labels)."""

    logits: Tensor
    loss: Tensor | None


class MultiHeadSelfAttention(nn.Module):
    """Scaled dot-product self-attention: ``W_O [context_1, ..., context_H] + b_O`` with
    ``context_h = softmax(Q_h K_hᵀ / √d) V_h`` (a head group of paper Sec. 3.2.1 is head h's rows of
    W_Q, W_K, W_V and columns of W_O)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.head_size
        hidden = config.hidden_size
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)
        self.attention_dropout = nn.Dropout(config.attention_dropout)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        batch, length, _ = hidden.shape
        q = self._split_heads(self.query(hidden))
        k = self._split_heads(self.key(hidden))
        v = self._split_heads(self.value(hidden))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(torch.bool)
            scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        probs = self.attention_dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v)  # (B, H, T, d)
        # num_heads · head_size: the hidden width, unless heads were removed (plprune.compaction)
        context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)
        return self.output(context)


class FeedForward(nn.Module):
    """Position-wise FFN: ``W_2 GELU(W_1 x + b_1) + b_2``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.intermediate = nn.Linear(config.hidden_size, config.ffn_size)
        self.output = nn.Linear(config.ffn_size, config.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.output(F.gelu(self.intermediate(hidden)))


class TransformerLayer(nn.Module):
    """One encoder layer, post-LN as in BERT or pre-LN; the FFN is pluggable (e.g. an MoE layer)."""

    def __init__(self, config: BertConfig, feed_forward: nn.Module | None = None) -> None:
        super().__init__()
        self.pre_layer_norm = config.pre_layer_norm
        self.attention = MultiHeadSelfAttention(config)
        self.attention_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = feed_forward if feed_forward is not None else FeedForward(config)
        self.ffn_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        if self.pre_layer_norm:
            hidden = hidden + self.dropout(self.attention(self.attention_norm(hidden), attention_mask))
            return hidden + self.dropout(self.feed_forward(self.ffn_norm(hidden)))
        hidden = self.attention_norm(hidden + self.dropout(self.attention(hidden, attention_mask)))
        return self.ffn_norm(hidden + self.dropout(self.feed_forward(hidden)))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation, for ``model.apply``: Linear/Embedding weights ~ N(0, std²), biases 0, LayerNorm
    weight 1 and bias 0 (Devlin et al. 2019; Hugging Face's ``BertPreTrainedModel._init_weights``)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MaskedLMHead(nn.Module, ABC):
    """The masked-LM interface every plprune task and pruner uses, built on two methods a subclass provides:
    ``encode(input_ids, attention_mask) -> (B, T, hidden)`` and ``lm_logits(hidden) -> (..., V)``
    (plprune's :class:`BertForMaskedLM`; :class:`plprune.models.hf_bert.HfBertForMaskedLM` for a Hugging Face
    model)."""

    @abstractmethod
    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Hidden states ``(B, T, hidden)`` after the encoder stack."""

    @abstractmethod
    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for hidden states of any leading shape."""

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        logits_at: Literal["masked", "all"] = "masked",
    ) -> MaskedLMOutput:
        """MLM forward pass. ``labels`` hold the original token at masked positions and -100 elsewhere."""
        if logits_at not in ("masked", "all"):
            raise PlpruneError(f"logits_at must be 'masked' or 'all', got {logits_at!r}")
        hidden = self.encode(input_ids, attention_mask)
        if labels is None:
            return MaskedLMOutput(logits=self.lm_logits(hidden), loss=None)
        if labels.shape != input_ids.shape:
            raise PlpruneError(
                f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        if logits_at == "masked":
            selected = labels != IGNORE_INDEX
            logits = self.lm_logits(hidden[selected])
            loss = F.cross_entropy(logits, labels[selected]) if logits.shape[0] else logits.sum() * 0.0
            return MaskedLMOutput(logits=logits, loss=loss)
        logits = self.lm_logits(hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
        return MaskedLMOutput(logits=logits, loss=loss)

    def per_sample_true_logit(
        self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Mean logit of the true token over each sample's masked positions, shape ``(B,)``; vmap-safe."""
        logits = self.lm_logits(self.encode(input_ids, attention_mask))
        selected = (labels != IGNORE_INDEX).to(logits.dtype)
        true_logit = logits.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return (true_logit * selected).sum(dim=1) / selected.sum(dim=1).clamp_min(1.0)

    def per_sample_loss(
        self, input_ids: Tensor, labels: Tensor, attention_mask: Tensor | None = None
    ) -> Tensor:
        """Mean masked-token cross-entropy of each sample, shape ``(B,)``; fixed shapes, so vmap-safe.

        A sample with no masked token contributes 0.
        """
        logits = self.lm_logits(self.encode(input_ids, attention_mask))
        selected = (labels != IGNORE_INDEX).to(logits.dtype)
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")  # (B, T)
        return (token_loss * selected).sum(dim=1) / selected.sum(dim=1).clamp_min(1.0)


class BertForMaskedLM(MaskedLMHead):
    """BERT encoder + MLM head (dense → GELU → LayerNorm → decoder tied to the token embedding)."""

    def __init__(
        self,
        config: BertConfig,
        feed_forward_factory: Callable[[BertConfig, int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.token_embedding = nn.Embedding(config.vocab_size, hidden)
        self.position_embedding = nn.Embedding(config.max_length, hidden)
        self.embedding_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(config, feed_forward_factory(config, i) if feed_forward_factory else None)
            for i in range(config.num_layers)
        )
        self.final_norm = LayerNorm(hidden, eps=config.layer_norm_eps) if config.pre_layer_norm else None
        self.head_transform = nn.Linear(hidden, hidden)
        self.head_norm = LayerNorm(hidden, eps=config.layer_norm_eps)
        self.decoder_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.apply(functools.partial(init_bert_weights, std=config.initializer_range))

    @property
    def attention_layers(self) -> list[MultiHeadSelfAttention]:
        return [layer.attention for layer in self.layers]

    def encode(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Hidden states ``(B, T, hidden)`` after the encoder stack."""
        if input_ids.dim() != 2:
            raise PlpruneError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise PlpruneError(f"sequence length {length} exceeds max_length {self.config.max_length}")
        positions = torch.arange(length, device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)[None]
        hidden = self.embedding_dropout(self.embedding_norm(hidden))
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
        if self.final_norm is not None:
            hidden = self.final_norm(hidden)
        return hidden

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for hidden states of any leading shape."""
        transformed = self.head_norm(F.gelu(self.head_transform(hidden)))
        return F.linear(transformed, self.token_embedding.weight, self.decoder_bias)


# -- export: the family as data (plprune.models.architecture) -------------------------------------------
def bert_example_inputs(description: dict) -> tuple[Tensor, ...]:
    """Token ids within the recorded ``bert_config``'s vocabulary and length (BERT and Switch)."""
    config = description["bert_config"]
    return token_ids(config["vocab_size"], config["max_length"])


register_architecture(
    BertForMaskedLM,
    "plprune.BertForMaskedLM",
    describe=lambda model: {"bert_config": model.config.to_dict()},
    build=lambda description: BertForMaskedLM(BertConfig(**description["bert_config"])),
    example_inputs=bert_example_inputs,
)
