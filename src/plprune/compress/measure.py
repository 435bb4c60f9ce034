"""What ``plprune compress`` measures at each stage: perplexity on held-out text, parameters, MACs, file size,
and CPU latency of the compressed model against the dense one, timed side by side.

* Causal LM: perplexity = exp(Σ −log p(next token) / #targets) over non-overlapping blocks (targets that
  are the unknown token are skipped). Masked LM: the same over the positions BERT-style masking selects
  (15%, 80/10/10; :class:`plprune.data.mlm.MlmMasker`) with a fixed seed, so every stage sees the same
  masked inputs.
* MACs of one forward pass of one sequence: ``torch.utils.flop_counter`` FLOPs / 2 (matmuls and linear
  layers, which is all but norms and activations).
* Latency: :func:`plprune.bench.harness.time_rounds` interleaves the two models round by round; the speed-up
  is the median over rounds of dense time / compressed time in the same round.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from plprune.bench.harness import paired_ratios, time_rounds
from plprune.compress.inputs import TextCodec
from plprune.data.causal_lm import IGNORE_INDEX
from plprune.data.mlm import MlmMasker

Batch = tuple[Tensor, Tensor]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def _logits(output: Any) -> Tensor:
    return output.logits if hasattr(output, "logits") else output[0] if isinstance(output, tuple) else output


def lm_loss(model: nn.Module, batch: Batch, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``model(input_ids)`` against ``labels`` (both ``(B, T)``; -100: not a target)."""
    inputs, labels = batch
    device = next(model.parameters()).device
    logits = _logits(model(input_ids=inputs.to(device)))
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        labels.to(device).flatten(),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


def objective_batches(
    inputs: Tensor, labels: Tensor, objective: str, codec: TextCodec, batch_size: int, seed: int
) -> list[Batch]:
    """Fixed ``(input_ids, labels)`` batches: next-token labels (causal) or a seeded BERT masking (masked)."""
    if objective == "causal":
        return list(zip(inputs.split(batch_size), labels.split(batch_size), strict=True))
    assert codec.mask_id is not None  # load_codec checked it
    masker = MlmMasker(codec.vocab_size, codec.mask_id, codec.special_ids | {codec.mask_id})
    generator = torch.Generator().manual_seed(seed)
    return [masker(block, generator) for block in inputs.split(batch_size)]


@torch.no_grad()
def perplexity(
    model: nn.Module, batches: Sequence[Batch], progress: Callable[[], None] | None = None
) -> float:
    """exp(mean cross-entropy over every target of ``batches``)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        total += float(lm_loss(model, batch, reduction="sum"))
        count += int((batch[1] != IGNORE_INDEX).sum())
        if progress is not None:
            progress()
    model.train(was_training)
    return math.exp(total / max(count, 1))


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model``, each shared tensor once (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def macs(model: nn.Module, seq_len: int) -> int:
    """Multiply-accumulates of one forward pass of one sequence of ``seq_len`` tokens."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids)
    return int(counter.get_total_flops() // 2)


def weight_bytes(directory: Path) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``, ``*.pt``) in ``directory``."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def latency(
    dense: nn.Module,
    compressed: nn.Module,
    seq_len: int,
    batch_sizes: Sequence[int],
    repeats: int,
    vocab: int,
) -> dict[str, dict[str, Any]]:
    """Per batch size: median seconds of each model's forward pass and the paired speed-up (module doc)."""
    results = {}
    generator = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
        calls = {
            "dense": lambda ids=ids: dense(input_ids=ids.to(next(dense.parameters()).device)),
            "compressed": lambda ids=ids: compressed(input_ids=ids.to(next(compressed.parameters()).device)),
        }
        times = time_rounds(calls, repeats=repeats, warmup=1)
        paired = paired_ratios(times, "dense", "compressed")
        results[f"batch {batch}"] = {
            "dense_s": statistics.median(times["dense"]),
            "compressed_s": statistics.median(times["compressed"]),
            "speedup": statistics.median(paired),
            "rounds": repeats,
        }
    return results
