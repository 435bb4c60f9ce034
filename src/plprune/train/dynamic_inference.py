"""Training dynamic-inference networks (:mod:`plprune.models.dynamic`) in a short plain loop.

:func:`train_dynamic_network` trains a classifier ``(N, C, L) → (N, classes)`` with Adam and a one-cycle LR
(``torch.optim.lr_scheduler.OneCycleLR``, 15 % warm-up); the model's kind decides the extras:

* :class:`~plprune.models.dynamic.ChannelGatedCNN` — loss ``CE + λ · expected ℓ0 of the gates``
  (:meth:`~plprune.models.dynamic.ChannelGatedCNN.penalized_loss`; Louizos et al. 2018);
* :class:`~plprune.models.dynamic.DynamicConvCNN` — the attention temperature annealed linearly from
  ``temperature_start`` to 1 over the first ``anneal_fraction`` of the steps, then 1
  (:func:`annealed_temperature`; Chen et al., CVPR 2020);
* any other module (the static reference) — cross-entropy alone.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.dynamic import ChannelGatedCNN, DynamicConvCNN
from plprune.validation import (
    check_non_negative_float,
    check_non_negative_int,
    check_positive_float,
    check_positive_int,
    check_probability,
)

__all__ = ["annealed_temperature", "train_dynamic_network"]


def annealed_temperature(step: int, start: float, anneal_steps: int) -> float:
    """``max(1, start − (start − 1) · step / anneal_steps)``: linear from ``start`` at step 0 to 1 at
    ``anneal_steps``, 1 afterwards (Chen et al. 2020 anneal 30 → 1 over the first epochs)."""
    check_non_negative_int("step", step)
    check_positive_float("start (the initial temperature)", start)
    check_positive_int("anneal_steps", anneal_steps)
    return max(1.0, start - (start - 1.0) * step / anneal_steps)


def train_dynamic_network(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    order_generator: torch.Generator,
    gate_penalty: float | None = None,
    temperature_start: float = 30.0,
    anneal_fraction: float = 0.3,
) -> float:
    """Train ``model`` on ``(x, y)``; returns the training wall time in seconds, the model in eval mode.

    Each epoch visits ``N // batch_size`` full batches of a permutation drawn from ``order_generator``
    (the last partial batch is dropped). ``gate_penalty`` (λ ≥ 0) is required for a ``ChannelGatedCNN`` and
    refused otherwise; ``temperature_start`` and ``anneal_fraction`` act on a ``DynamicConvCNN`` only
    (anneal over ``max(1, int(anneal_fraction · total steps))`` steps; temperature 1 at the end).
    """
    if not isinstance(model, nn.Module):
        raise PlpruneError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise PlpruneError("x and y must be tensors with one label per sample (y of shape (N,))")
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_float("lr", lr)
    if not isinstance(order_generator, torch.Generator):
        raise PlpruneError(f"order_generator must be a torch.Generator, got {type(order_generator).__name__}")
    gated, dynconv = isinstance(model, ChannelGatedCNN), isinstance(model, DynamicConvCNN)
    if gated:
        if gate_penalty is None:
            raise PlpruneError("a ChannelGatedCNN is trained with a gate penalty: pass gate_penalty=λ >= 0")
        check_non_negative_float("gate_penalty (the weight λ of the expected ℓ0)", gate_penalty)
    elif gate_penalty is not None:
        raise PlpruneError(f"gate_penalty applies to a ChannelGatedCNN only, not a {type(model).__name__}")
    check_positive_float("temperature_start", temperature_start)
    check_probability("anneal_fraction", anneal_fraction, inclusive_high=True)
    n = x.shape[0]
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise PlpruneError(f"batch_size {batch_size} is larger than the {n} training samples")
    total = epochs * per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=total, pct_start=0.15)
    anneal = max(1, int(anneal_fraction * total))
    started, step = time.perf_counter(), 0
    for _ in range(epochs):
        model.train()
        permutation = torch.randperm(n, generator=order_generator)
        for i in range(per_epoch):
            index = permutation[i * batch_size : (i + 1) * batch_size]
            if dynconv:
                model.set_temperature(annealed_temperature(step, temperature_start, anneal))
            loss = F.cross_entropy(model(x[index]), y[index])
            if gated:
                loss = model.penalized_loss(loss, gate_penalty)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
    if dynconv:
        model.set_temperature(1.0)
    model.eval()
    return time.perf_counter() - started
