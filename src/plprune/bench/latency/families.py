"""The model families ``plprune bench-latency`` measures, built by the library's builders, and their inputs.

The transformers come from :func:`plprune.tasks.registry.mlm_model_for` (the builder ``plprune train``
uses) on a run config of the benchmark's sizes with dropout 0; the CNNs are plprune's :class:`VGG` and
:class:`ResNet` at the task defaults' widths. Inputs are seeded random tensors of the family's shape
(token ids, MNIST-1D-shaped sequences or CIFAR-shaped images): speed does not depend on their values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plprune.bench.latency.spec import DEFAULT_WIDTH, LatencySpec

__all__ = ["AttentionStack", "Family", "LogitsOf", "build_family", "unwrap"]

# BERT-family sizes: (vocab, hidden, layers, heads, FFN, sequence length); default = the CPU task defaults
SIZES = {"tiny": (101, 32, 2, 4, 64, 16), "default": (8000, 128, 4, 8, 512, 128)}
TASK = {"bert": "bert-pydoc", "hf-bert": "hf-bert-pydoc", "switch": "switch-pydoc"}


class LogitsOf(nn.Module):
    """A masked-LM model as a plain ``ids -> logits`` function (every position, the whole vocabulary)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids).logits


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a :class:`LogitsOf` wrapper (any other module as it is)."""
    return module.model if isinstance(module, LogitsOf) else module


class AttentionStack(nn.Module):
    """The attention blocks of every encoder layer, chained: ``h ← attention_l(h)`` (a tuple output's first
    element), nothing else of the layers (no FFN, no residual around the block)."""

    def __init__(self, attentions: Sequence[nn.Module]) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(attentions)

    def forward(self, hidden: Tensor) -> Tensor:
        for attention in self.attentions:
            out = attention(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


@dataclass
class Family:
    """A built model and how to feed it."""

    name: str
    description: str
    model: nn.Module  # what GroupSet sees
    example: Callable[[int], Tensor]  # batch size -> input batch (fixed by seed)
    wrap: Callable[[nn.Module], nn.Module]  # model -> module(input) -> Tensor
    attentions: Callable[[nn.Module], list[nn.Module]] | None = None  # model -> its attention modules
    hidden: Callable[[int], Tensor] | None = None  # batch size -> hidden states for the attention blocks


def _generator(seed: int, batch: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * seed + batch)


def _masked_lm(spec: LatencySpec) -> nn.Module:
    """plprune's BERT / Switch or Hugging Face's BERT, through the run-config builder of ``plprune train``."""
    from plprune.run_config import RunConfig
    from plprune.tasks.registry import mlm_model_for

    vocab, hidden, layers, heads, ffn, length = SIZES[spec.size]
    model = {"layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn, "dropout": 0.0}
    config = RunConfig.from_dict({"task": TASK[spec.model], "model": model, "data": {"seq_len": length}})
    return mlm_model_for(config, vocab, switch=spec.model == "switch", hf=spec.model == "hf-bert")


def _transformer(spec: LatencySpec) -> Family:
    model = _masked_lm(spec)
    config = model.config
    switch = getattr(model, "switch_config", None)

    def ids(batch: int) -> Tensor:
        shape = (batch, config.max_length)
        return torch.randint(config.vocab_size, shape, generator=_generator(spec.seed, batch))

    def hidden(batch: int) -> Tensor:
        shape = (batch, config.max_length, config.hidden_size)
        return torch.randn(shape, generator=_generator(spec.seed, batch))

    sizes = (
        f"{config.num_layers} layers × {config.num_heads} heads, hidden {config.hidden_size}, FFN "
        f"{config.ffn_size}, vocab {config.vocab_size}, sequence length {config.max_length}"
    )
    attentions: Callable[[nn.Module], list[nn.Module]] | None
    if spec.model == "bert":
        description = f"plprune BertForMaskedLM ({sizes}); output: logits at every position"
        attentions = lambda m: [layer.attention for layer in m.layers]  # noqa: E731
    elif spec.model == "hf-bert":
        description = (
            f"Hugging Face transformers.BertForMaskedLM, eager attention ({sizes}); output: logits at "
            "every position"
        )
        attentions = lambda m: [layer.attention for layer in m.hf.bert.encoder.layer]  # noqa: E731
    else:
        description = (
            f"plprune SwitchForMaskedLM ({sizes}; every FFN a top-1 mixture of {switch.num_experts} "
            f"experts, capacity factor {switch.capacity_factor}); output: logits at every position"
        )
        return Family(spec.model, description, model.eval(), ids, LogitsOf)
    return Family(spec.model, description, model.eval(), ids, LogitsOf, attentions, hidden)


def _cnn(spec: LatencySpec) -> Family:
    from plprune.models import VGG, ResNet

    dims, channels, shape = (1, 1, (40,)) if spec.input == "mnist1d" else (2, 3, (32, 32))
    layout = "MNIST-1D-shaped 1×40 sequences" if dims == 1 else "CIFAR-shaped 3×32×32 images"
    width = spec.width if spec.width is not None else DEFAULT_WIDTH[spec.model]
    model: nn.Module
    if spec.model == "vgg":
        cfg: Any = (16, "M", 32, "M") if spec.size == "tiny" else None
        kwargs = {"cfg": cfg} if cfg else {}
        model = VGG(width_multiplier=width, in_channels=channels, num_classes=10, dims=dims, **kwargs)
        name = "VGG (tiny: 2 convs)" if cfg else "VGG-16 (BN)"
    else:
        depth = 8 if spec.size == "tiny" else 56
        model = ResNet(depth=depth, width_multiplier=width, in_channels=channels, num_classes=10, dims=dims)
        name = f"ResNet-{depth} (CIFAR-style, option-A shortcuts)"
    description = f"plprune {name}, width × {width:g}, {dims}-D convolutions on {layout}"

    def images(batch: int) -> Tensor:
        return torch.randn((batch, channels, *shape), generator=_generator(spec.seed, batch))

    return Family(spec.model, description, model.eval(), images, lambda m: m)


def build_family(spec: LatencySpec) -> Family:
    """The model of ``spec`` (seeded by ``spec.seed``, eval mode, dropout 0) and its inputs."""
    torch.manual_seed(spec.seed)
    return _transformer(spec) if spec.model in TASK else _cnn(spec)
