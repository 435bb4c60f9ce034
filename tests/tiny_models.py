"""Tiny float64 BERT and MLM batches shared by the curvature tests (exact references need tiny sizes)."""

from __future__ import annotations

import torch
from torch import nn

from plprune.gates import GroupSet
from plprune.groups import GateSite
from plprune.models import BertConfig, BertForMaskedLM

SEQ = 6
VOCAB = 20


def tiny_bert(dropout: float = 0.0) -> BertForMaskedLM:
    """1 layer, 2 heads, hidden 8, float64, eval mode; large init so curvature is not negligible."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=8,
        num_layers=1,
        num_heads=2,
        ffn_size=16,
        max_length=SEQ,
        dropout=dropout,
        attention_dropout=dropout,
        initializer_range=0.5,
    )
    return BertForMaskedLM(config).double().eval()


def bert_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded samples, ~40% of positions masked and always position 0 (no sample without a target)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=gen)
    masked = torch.rand(n, SEQ, generator=gen) < 0.4
    masked[:, 0] = True
    return ids, torch.where(masked, ids, torch.full_like(ids, -100))

def gate_site(model: nn.Module, kind: str, layer: int, example_inputs: object = None) -> GateSite:
    """The ``layer``-th gate site of ``kind`` in ``model`` (its hooks stay attached)."""
    return GroupSet(model, kinds=(kind,), example_inputs=example_inputs).sites[layer]


def tiny_hf_bert(
    vocab: int = 30, seq: int = 8, hidden: int = 16, layers: int = 2, heads: int = 4
) -> nn.Module:
    """A seeded Hugging Face ``BertForMaskedLM`` built from a config (no download), eager attention, no
    dropout."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=seq,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    return transformers.BertForMaskedLM(config)


def tiny_hf_switch_config(sparse_layers: int = 2):
    """A Hugging Face SwitchTransformers config: 2 + 2 layers, 4 experts in ``sparse_layers`` of each stack,
    capacity large enough that no token is dropped."""
    import transformers

    return transformers.SwitchTransformersConfig(
        vocab_size=50,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        num_experts=4,
        expert_capacity=64,
        num_sparse_encoder_layers=sparse_layers,
        num_sparse_decoder_layers=sparse_layers,
    )
