"""Models whose structured units (heads, experts, filters) plprune can gate and prune."""

from plprune.models.bert import BertConfig, BertForMaskedLM, MaskedLMOutput, MultiHeadSelfAttention
from plprune.models.filters import GatedConvBN
from plprune.models.layers import BatchNorm, LayerNorm
from plprune.models.resnet import ResNet
from plprune.models.switch import SwitchConfig, SwitchFeedForward, SwitchForMaskedLM
from plprune.models.vgg import VGG

__all__ = [
    "VGG",
    "BatchNorm",
    "BertConfig",
    "BertForMaskedLM",
    "GatedConvBN",
    "LayerNorm",
    "MaskedLMOutput",
    "MultiHeadSelfAttention",
    "ResNet",
    "SwitchConfig",
    "SwitchFeedForward",
    "SwitchForMaskedLM",
]
