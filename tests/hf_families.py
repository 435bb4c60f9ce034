"""Tiny Hugging Face models of every attention layout plprune knows, built from configs (no download).

``FAMILIES[name] = (build, forward, expected)``: ``build()`` a seeded float64 model in eval mode,
``forward(model)`` its logits on fixed inputs, ``expected`` the layout facts a test checks: attention
modules, query heads and key/value heads per module, and the head size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

transformers = __import__("pytest").importorskip("transformers")

VOCAB, SEQ, HIDDEN = 50, 8, 32


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    forward: Callable[[nn.Module], torch.Tensor]
    modules: int  # attention modules (self- and cross-attention)
    heads: int
    kv_heads: int
    head_size: int


def _ids() -> torch.Tensor:
    return torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(5))


def _lm(model: nn.Module) -> torch.Tensor:
    return model(input_ids=_ids()).logits


def _seq2seq(model: nn.Module) -> torch.Tensor:
    return model(input_ids=_ids(), decoder_input_ids=_ids().flip(1)).logits


def _vision(model: nn.Module) -> torch.Tensor:
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return model(pixel_values=pixels).logits


def _make(cls_name: str, config_name: str, **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(attn_implementation="eager", **config)
        return getattr(transformers, cls_name)(cfg).double().eval()

    return build


_DECODER = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, intermediate_size=48)
FAMILIES: dict[str, Family] = {
    "llama-gqa": Family(
        _make("LlamaForCausalLM", "LlamaConfig", num_attention_heads=8, num_key_value_heads=2, **_DECODER),
        _lm, 2, 8, 2, 4,
    ),
    "llama-mqa": Family(
        _make("LlamaForCausalLM", "LlamaConfig", num_attention_heads=4, num_key_value_heads=1, **_DECODER),
        _lm, 2, 4, 1, 8,
    ),
    "qwen2-gqa": Family(
        _make("Qwen2ForCausalLM", "Qwen2Config", num_attention_heads=4, num_key_value_heads=2, **_DECODER),
        _lm, 2, 4, 2, 8,
    ),
    "gemma-head-dim": Family(  # head_dim independent of hidden / heads
        _make("GemmaForCausalLM", "GemmaConfig", num_attention_heads=4, num_key_value_heads=2, head_dim=6,
              **_DECODER),
        _lm, 2, 4, 2, 6,
    ),
    "phi3-fused-gqa": Family(
        _make("Phi3ForCausalLM", "Phi3Config", num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
              **_DECODER),
        _lm, 2, 4, 2, 8,
    ),
    "gpt2-conv1d": Family(
        _make("GPT2LMHeadModel", "GPT2Config", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4,
              n_positions=16),
        _lm, 2, 4, 4, 8,
    ),
    "gpt-neox": Family(
        _make("GPTNeoXForCausalLM", "GPTNeoXConfig", num_attention_heads=4, **_DECODER), _lm, 2, 4, 4, 8
    ),
    "falcon-new-arch": Family(
        _make("FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
              num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True),
        _lm, 2, 4, 2, 8,
    ),
    "falcon-multi-query": Family(
        _make("FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
              num_attention_heads=4, multi_query=True),
        _lm, 2, 4, 1, 8,
    ),
    "falcon-per-head": Family(
        _make("FalconForCausalLM", "FalconConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
              num_attention_heads=4, multi_query=False),
        _lm, 2, 4, 4, 8,
    ),
    "opt": Family(
        _make("OPTForCausalLM", "OPTConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2,
              num_attention_heads=4, ffn_dim=48, word_embed_proj_dim=HIDDEN, max_position_embeddings=16),
        _lm, 2, 4, 4, 8,
    ),
    "bart-self-and-cross": Family(
        _make("BartForConditionalGeneration", "BartConfig", vocab_size=VOCAB, d_model=HIDDEN,
              encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
              encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=16),
        _seq2seq, 6, 4, 4, 8,
    ),
    "t5": Family(
        _make("T5ForConditionalGeneration", "T5Config", vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=48,
              num_layers=2, num_heads=4),
        _seq2seq, 6, 4, 4, 8,
    ),
    "distilbert": Family(
        _make("DistilBertForMaskedLM", "DistilBertConfig", vocab_size=VOCAB, dim=HIDDEN, n_layers=2,
              n_heads=4, hidden_dim=48, max_position_embeddings=16),
        _lm, 2, 4, 4, 8,
    ),
    "roberta": Family(
        _make("RobertaForMaskedLM", "RobertaConfig", num_attention_heads=4, max_position_embeddings=20,
              **_DECODER),
        _lm, 2, 4, 4, 8,
    ),
    "electra": Family(
        _make("ElectraForMaskedLM", "ElectraConfig", vocab_size=VOCAB, embedding_size=HIDDEN,
              hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=16),
        _lm, 2, 4, 4, 8,
    ),
    "vit": Family(
        _make("ViTForImageClassification", "ViTConfig", image_size=8, patch_size=4, hidden_size=HIDDEN,
              num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, num_labels=3),
        _vision, 2, 4, 4, 8,
    ),
}
