"""Measuring multi-exit networks (:mod:`plprune.models.early_exit`) on labelled test data.

* :func:`exit_rows` / :func:`layer_rows` — each exit's (CNN) or layer's (BERT) classifier alone: accuracy
  and the MACs per sample of the truncated network;
* :func:`entropy_sweep` — BranchyNet's rule at each threshold τ with real early-exit inference
  (:meth:`~plprune.models.early_exit.MultiExitCNN.infer_early_exit`): accuracy, mean exit depth, mean MACs
  executed, the share of samples leaving at each exit, and whether the shrinking-batch inference gave
  exactly the predictions and exits of :func:`~plprune.models.early_exit.entropy_exit` on the full forward;
* :func:`patience_sweep` — the same for PABEE's patience rule
  (:meth:`~plprune.models.early_exit.MultiExitBertClassifier.infer_patience`,
  :func:`~plprune.models.early_exit.patience_exit`), optionally broken down by a per-sample group label
  (e.g. how many words a window had replaced).

Rows are plain dicts of floats, ints, lists and bools, ready for ``json.dump``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.models.early_exit import (
    EarlyExitResult,
    MultiExitBertClassifier,
    MultiExitCNN,
    entropy_exit,
    normalized_entropy,
    patience_exit,
)

__all__ = ["batched_logits", "by_group", "entropy_sweep", "exit_rows", "layer_rows", "patience_sweep"]


def _accuracy(predictions: Tensor, y: Tensor) -> float:
    return float((predictions == y).float().mean())


def _check_labels(y: object, n: int) -> Tensor:
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise PlpruneError(f"y must be a tensor (N,) with one label per sample (N = {n}), got {shape}")
    return y


def _exit_fractions(result: EarlyExitResult, exits: int) -> list[float]:
    return [float((result.exit_index == i).double().mean()) for i in range(exits)]


def _matches(predictions: Tensor, where: Tensor, result: EarlyExitResult) -> bool:
    return bool(torch.equal(predictions, result.predictions)) and bool(torch.equal(where, result.exit_index))


def exit_rows(model: MultiExitCNN, full: Sequence[Tensor], y: Tensor, length: int) -> list[dict[str, Any]]:
    """Per exit ``i`` of ``full = model(x)``: ``exit``, ``accuracy``, ``macs_alone`` (blocks ``0..i`` and
    head ``i``) and ``mean_normalized_entropy``."""
    y = _check_labels(y, full[0].shape[0])
    blocks, heads = model.block_macs(length), model.head_macs()
    return [
        {
            "exit": i,
            "accuracy": _accuracy(z.argmax(1), y),
            "macs_alone": sum(blocks[: i + 1]) + heads[i],
            "mean_normalized_entropy": float(normalized_entropy(z).mean()),
        }
        for i, z in enumerate(full)
    ]


def entropy_sweep(
    model: MultiExitCNN,
    x: Tensor,
    y: Tensor,
    thresholds: Sequence[float],
    full: Sequence[Tensor] | None = None,
) -> list[dict[str, Any]]:
    """One row per threshold: ``threshold``, ``accuracy``, ``mean_exit_depth``, ``mean_macs``,
    ``exit_fractions`` and ``matches_entropy_exit`` (``full``: ``model(x)`` if already computed)."""
    y = _check_labels(y, x.shape[0])
    if full is None:
        with torch.no_grad():
            full = model(x)
    rows = []
    for threshold in thresholds:
        result = model.infer_early_exit(x, threshold)
        predictions, where = entropy_exit(full, threshold)
        rows.append(
            {
                "threshold": threshold,
                "accuracy": _accuracy(result.predictions, y),
                "mean_exit_depth": float(result.exits_evaluated.double().mean()),
                "mean_macs": float(result.macs.double().mean()),
                "exit_fractions": _exit_fractions(result, model.num_exits),
                "matches_entropy_exit": _matches(predictions, where, result),
            }
        )
    return rows


def batched_logits(model: MultiExitBertClassifier, ids: Tensor, batch: int = 256) -> list[Tensor]:
    """``model(ids)`` (every layer's logits) computed ``batch`` rows at a time without gradients."""
    with torch.no_grad():
        parts = [model(ids[i : i + batch]) for i in range(0, ids.shape[0], batch)]
    return [torch.cat([p[j] for p in parts]) for j in range(model.num_layers)]


def layer_rows(model: MultiExitBertClassifier, full: Sequence[Tensor], y: Tensor, length: int) -> list[dict]:
    """Per layer ``j`` of ``full``: ``layer``, ``accuracy`` and ``macs_alone`` (layers and heads ``0..j``)."""
    y = _check_labels(y, full[0].shape[0])
    macs = model.exit_macs(length)
    return [
        {"layer": j, "accuracy": _accuracy(z.argmax(1), y), "macs_alone": macs[j]} for j, z in enumerate(full)
    ]


def by_group(result: EarlyExitResult, y: Tensor, groups: Tensor) -> dict[str, dict[str, float]]:
    """Per distinct value ``g`` of ``groups`` (keys ``str(g)``, ascending): ``windows`` (the count),
    ``accuracy`` and ``mean_exit_layer`` (layers run) of the samples in that group."""
    out = {}
    for group in sorted(set(groups.tolist())):
        pick = groups == group
        out[str(group)] = {
            "windows": int(pick.sum()),
            "accuracy": _accuracy(result.predictions[pick], y[pick]),
            "mean_exit_layer": float(result.exits_evaluated[pick].double().mean()),
        }
    return out


def patience_sweep(
    model: MultiExitBertClassifier,
    ids: Tensor,
    y: Tensor,
    patiences: Sequence[int],
    full: Sequence[Tensor] | None = None,
    groups: Tensor | None = None,
) -> list[dict[str, Any]]:
    """One row per patience: ``patience``, ``accuracy``, ``mean_exit_layer``, ``mean_macs``,
    ``speedup_layers`` (layers / mean layers run), ``exit_fractions``, ``matches_patience_exit``,
    ``infer_seconds_all_test`` (wall time of ``infer_patience`` on all of ``ids``) and, with ``groups``,
    ``by_corruption_size`` (:func:`by_group`)."""
    y = _check_labels(y, ids.shape[0])
    if full is None:
        full = batched_logits(model, ids)
    rows = []
    for patience in patiences:
        start = time.perf_counter()
        result = model.infer_patience(ids, patience)
        seconds = time.perf_counter() - start
        predictions, where = patience_exit(full, patience)
        depth = float(result.exits_evaluated.double().mean())
        row = {
            "patience": patience,
            "accuracy": _accuracy(result.predictions, y),
            "mean_exit_layer": depth,
            "mean_macs": float(result.macs.double().mean()),
            "speedup_layers": model.num_layers / depth,
            "exit_fractions": _exit_fractions(result, model.num_layers),
            "matches_patience_exit": _matches(predictions, where, result),
            "infer_seconds_all_test": seconds,
        }
        if groups is not None:
            row["by_corruption_size"] = by_group(result, y, groups)
        rows.append(row)
    return rows
