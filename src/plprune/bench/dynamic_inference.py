"""Measuring an input-dependent channel-gated network (:class:`~plprune.models.dynamic.ChannelGatedCNN`).

:func:`gated_evaluation` runs the gated eval forward and the channel-skipping inference
(:meth:`~plprune.models.dynamic.ChannelGatedCNN.infer`) on labelled test data and reports accuracy (both
paths, and their largest logit difference), the MACs each sample actually executed (mean, spread, the
all-open and all-closed bounds, and the part spent in the gate FCs), how many channels each block keeps open,
and how input-dependent the gates are (distinct open patterns, gates strictly between 0 and 1, channels
never open, channels open for some samples but not others). MAC convention: :mod:`plprune.models.dynamic`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from plprune.errors import PlpruneError
from plprune.models.dynamic import ChannelGatedCNN

__all__ = ["conv_and_classifier_macs", "gated_evaluation"]


def conv_and_classifier_macs(model: ChannelGatedCNN, counts: Tensor, length: int) -> float:
    """Mean over samples of the conv and classifier MACs (gate FCs left out) for open-channel counts
    ``counts`` ``(N, blocks)`` on inputs of ``length``: ``Σ_b a_b · a_{b-1} · k · L_b + classes · a_last``."""
    total = torch.zeros(counts.shape[0], dtype=torch.float64)
    a_in = torch.full_like(total, float(model.in_channels))
    for b, conv_length in enumerate(model.block_lengths(length)):
        a_out = counts[:, b].double()
        total += a_out * a_in * model.kernel_size * conv_length
        a_in = a_out
    return float((total + model.num_classes * a_in).mean())


def gated_evaluation(model: ChannelGatedCNN, x: Tensor, y: Tensor) -> dict[str, Any]:
    """The measurements listed in the module docstring, as a JSON-ready dict (model put in eval mode)."""
    if not isinstance(model, ChannelGatedCNN):
        raise PlpruneError(f"gated_evaluation needs a ChannelGatedCNN, got {type(model).__name__}")
    if not isinstance(y, Tensor) or y.dim() != 1 or not isinstance(x, Tensor) or y.shape[0] != x.shape[0]:
        raise PlpruneError("x and y must be tensors with one label per sample (y of shape (N,))")
    model.eval()
    with torch.no_grad():
        logits = model(x)
    gates = model.last_gates()  # of the eval forward above
    result = model.infer(x)
    macs = result.macs.double()
    counts = result.active_channels
    length = x.shape[2]
    open_count = [(z > 0).sum(0) for z in gates]
    return {
        "test_accuracy": float((logits.argmax(1) == y).double().mean()),
        "infer_test_accuracy": float((result.logits.argmax(1) == y).double().mean()),
        "infer_max_abs_diff_vs_forward": float((result.logits - logits).abs().max()),
        "macs_mean": float(macs.mean()),
        "macs_min": int(macs.min()),
        "macs_max": int(macs.max()),
        "macs_std": float(macs.std()),
        "macs_all_open": model.max_macs(length),
        "macs_all_closed": model.min_macs(length),
        "gate_fc_macs_mean": float(macs.mean()) - conv_and_classifier_macs(model, counts, length),
        "active_channels_mean": [float(c) for c in counts.double().mean(0)],
        "active_channels_min": [int(c) for c in counts.min(0).values],
        "active_channels_max": [int(c) for c in counts.max(0).values],
        "distinct_active_patterns": len({tuple(r) for r in counts.tolist()}),
        "fractional_gates": float(torch.cat([((z > 0) & (z < 1)).flatten() for z in gates]).double().mean()),
        "channels_never_open": [int((c == 0).sum()) for c in open_count],
        "channels_open_for_some_but_not_all": [
            int(((c > 0) & (c < z.shape[0])).sum()) for c, z in zip(open_count, gates, strict=True)
        ],
    }
