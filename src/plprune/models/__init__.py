"""Models whose structured units (heads, experts, filters) plprune can gate and prune."""

from plprune.models.bert import BertConfig, BertForMaskedLM, MaskedLMOutput, MultiHeadSelfAttention
from plprune.models.switch import SwitchConfig, SwitchFeedForward, SwitchForMaskedLM

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "MaskedLMOutput",
    "MultiHeadSelfAttention",
    "SwitchConfig",
    "SwitchFeedForward",
    "SwitchForMaskedLM",
]
