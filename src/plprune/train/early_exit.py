"""Training multi-exit networks (:mod:`plprune.models.early_exit`) in a short plain loop.

* :func:`train_multi_exit_cnn` — BranchyNet (Teerapittayanon et al. 2016): AdamW with a one-cycle LR
  (``torch.optim.lr_scheduler.OneCycleLR``), loss ``Σ_i w_i CE_i`` (:func:`~plprune.models.early_exit.
  branchynet_loss`); ``exit_weights = [0, ..., 0, 1]`` trains the single-exit reference on the same batches.
* :func:`train_multi_exit_bert` — PABEE (Zhou et al. 2020): AdamW (weight decay on the matrices, not on
  embeddings, biases or norms), BERT's warm-up + linear-decay LR (:func:`plprune.train.lr_schedule.
  warmup_linear_decay`), gradient clipping, loss ``Σ_j j·L_j / Σ_j j`` (:func:`~plprune.models.early_exit.
  pabee_loss`) or the last layer's cross-entropy alone (the single-exit reference).

Both return the training wall time in seconds and leave the model in eval mode. Batches come from the
caller (a seeded ``torch.Generator`` for the order, a function of the step for generated batches), so two
models trained with the same generator seed see the same batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.models.early_exit import MultiExitBertClassifier, MultiExitCNN, branchynet_loss, pabee_loss
from plprune.train.lr_schedule import warmup_linear_decay
from plprune.validation import (
    check_non_negative_float,
    check_positive_float,
    check_positive_int,
    check_probability,
)

__all__ = [
    "decay_parameter_groups",
    "train_multi_exit_bert",
    "train_multi_exit_cnn",
    "warmup_decay_scheduler",
]


def _check_data(x: object, y: object) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise PlpruneError(
            "x and y must be tensors with one label per sample (y of shape (N,)), got "
            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__} and "
            f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}"
        )
    if x.shape[0] < 2:
        raise PlpruneError(f"training needs at least 2 samples, got {x.shape[0]}")


def train_multi_exit_cnn(
    model: MultiExitCNN,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    order_generator: torch.Generator,
    exit_weights: Sequence[float] | None = None,
) -> float:
    """Train ``model`` on ``(x, y)`` with the BranchyNet loss for ``epochs`` epochs; returns the seconds.

    Each epoch visits a permutation of the samples drawn from ``order_generator`` in batches of
    ``batch_size`` (a last batch of one sample is skipped: BatchNorm needs two). AdamW (``lr``,
    ``weight_decay``) with ``OneCycleLR(max_lr=lr)`` over ``epochs · ceil(N / batch_size)`` steps.
    ``exit_weights``: one weight per exit (default all 1; :func:`~plprune.models.early_exit.branchynet_loss`).
    """
    if not isinstance(model, MultiExitCNN):
        raise PlpruneError(f"model must be a MultiExitCNN, got {type(model).__name__}")
    _check_data(x, y)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_positive_float("lr", lr)
    check_non_negative_float("weight_decay", weight_decay)
    if not isinstance(order_generator, torch.Generator):
        raise PlpruneError(f"order_generator must be a torch.Generator, got {type(order_generator).__name__}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * math.ceil(n / batch_size)
    )
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=order_generator)
        for i in range(0, n, batch_size):
            index = order[i : i + batch_size]
            if index.numel() < 2:
                continue
            loss = branchynet_loss(model(x[index]), y[index], exit_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    return time.perf_counter() - start


def decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """AdamW parameter groups: ``weight_decay`` on matrices outside the embeddings, 0 on embeddings,
    biases and norm weights (BERT's convention)."""
    check_non_negative_float("weight_decay", weight_decay)
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() > 1 and "embedding" not in name else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_decay_scheduler(
    optimizer: torch.optim.Optimizer, steps: int, warmup_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """BERT's schedule over ``steps`` optimizer steps: :func:`~plprune.train.lr_schedule.warmup_linear_decay`
    with ``max(1, int(steps · warmup_fraction))`` warm-up steps."""
    check_positive_int("steps", steps)
    check_probability("warmup_fraction", warmup_fraction, inclusive_high=True)
    warm = max(1, int(steps * warmup_fraction))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_linear_decay(s, warm, steps))


def train_multi_exit_bert(
    model: MultiExitBertClassifier,
    batch: Callable[[int], tuple[Tensor, Tensor]],
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup_fraction: float,
    last_only: bool = False,
    grad_clip: float = 1.0,
    on_step: Callable[[int, Tensor], None] | None = None,
) -> float:
    """Train ``model`` for ``steps`` steps on ``batch(step) -> (input_ids, labels)``; returns the seconds.

    Loss: :func:`~plprune.models.early_exit.pabee_loss` over every layer's classifier, or with
    ``last_only`` the last layer's cross-entropy alone. AdamW (:func:`decay_parameter_groups`), the
    :func:`warmup_decay_scheduler` LR, gradient norm clipped to ``grad_clip`` (0: no clipping).
    ``on_step(step, loss)`` (optional) sees each step's detached loss.
    """
    if not isinstance(model, MultiExitBertClassifier):
        raise PlpruneError(f"model must be a MultiExitBertClassifier, got {type(model).__name__}")
    if not callable(batch):
        raise PlpruneError(
            f"batch must be a function step -> (input_ids, labels), got {type(batch).__name__}"
        )
    check_positive_int("steps", steps)
    check_positive_float("lr", lr)
    check_non_negative_float("grad_clip (0 disables clipping)", grad_clip)
    optimizer = torch.optim.AdamW(decay_parameter_groups(model, weight_decay), lr=lr)
    scheduler = warmup_decay_scheduler(optimizer, steps, warmup_fraction)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        ids, y = batch(step)
        logits = model(ids)
        loss = F.cross_entropy(logits[-1], y) if last_only else pabee_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        if on_step is not None:
            on_step(step, loss.detach())
    model.eval()
    return time.perf_counter() - start
