"""Recovery fine-tuning of a compacted model: a few steps on the calibration text, all weights or LoRA.

The model is already compacted, so the pruned groups are gone and stay gone (nothing to hold at zero).
``mode="full"``: AdamW on every parameter. ``mode="lora"``: rank-``r`` adapters on every linear layer through
``peft`` (LoRA, Hu et al. 2022: ``W + (α/r)·B·A`` with ``B = 0`` at the start, α = 2r), trained, then merged
back into the weights (``merge_and_unload``), so the result is a plain model of the same shapes — LLM-Pruner's
recovery (Ma et al. 2023, Sec. 3.3). Batches are drawn in a seeded random order, cycling over the text;
a masked LM is re-masked every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from plprune.compress.inputs import TextCodec
from plprune.compress.measure import lm_loss, objective_batches
from plprune.errors import PlpruneError


def _lora(model: nn.Module, rank: int) -> nn.Module:
    try:
        import peft
    except ImportError as error:
        raise PlpruneError("LoRA recovery needs peft: pip install peft (or use --recovery full)") from error
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    return peft.get_peft_model(model, config)


def recover(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    objective: str,
    codec: TextCodec,
    steps: int,
    batch_size: int,
    lr: float,
    mode: str,
    rank: int,
    seed: int,
    progress: Callable[[float], None] | None = None,
) -> tuple[nn.Module, list[float]]:
    """``(fine-tuned model, training loss per step)``; with LoRA the returned model has the adapters "
    "merged."""
    generator = torch.Generator().manual_seed(seed)
    trained: Any = _lora(model, rank) if mode == "lora" else model
    parameters = [p for p in trained.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    trained.train()
    losses: list[float] = []
    order = torch.randperm(inputs.shape[0], generator=generator)
    position = 0
    for step in range(steps):
        if position + batch_size > order.numel():
            order, position = torch.randperm(inputs.shape[0], generator=generator), 0
        rows = order[position : position + batch_size]
        position += batch_size
        (batch,) = objective_batches(
            inputs[rows], labels[rows], objective, codec, batch_size, seed + 1 + step
        )
        loss = lm_loss(trained, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(losses[-1])
    trained.eval()
    if mode == "lora":
        trained = trained.merge_and_unload()
    return trained, losses
