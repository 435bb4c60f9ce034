"""Models whose structured units (heads, experts, filters) plprune can gate and prune."""

from plprune.models.bert import BertConfig, BertForMaskedLM, MaskedLMOutput, MultiHeadSelfAttention

__all__ = ["BertConfig", "BertForMaskedLM", "MaskedLMOutput", "MultiHeadSelfAttention"]
