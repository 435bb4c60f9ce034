"""Gating network FN_v (paper Sec. 3.2.3, Eq. 8); the keep rule that turns gates into a mask is
:mod:`plprune.keep`.

``g = p · softmax_i(FN_v(d̂_i))``: a 2-layer MLP scores each group from its normalised kernel
features d̂_i = (log λ_min, ρ) (standardised across groups; the ``pl+`` variant appends other criteria as
further columns, paper Sec. 5.4, via :func:`standardise_columns`), softmax over all p groups as in Eq. 8,
then **scaled by p so that the mean gate is 1**. A raw softmax would multiply every head's output by
≈1/p and shrink the network; with the scaling, the initial network (output layer initialised to 0,
so every score is equal) is exactly the ungated one (g ≡ 1). This is a documented deviation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.validation import check_positive_int

FEATURE_FLOOR = 1e-30


def normalise_features(features: Tensor, log_min_eigenvalue: bool = True) -> Tensor:
    """Standardise each feature column across groups (zero mean, unit std; constant columns → 0).

    ``features`` is ``(p, 2)`` = [λ_min, entropy]; λ_min spans orders of magnitude, so by default it is
    taken as ``log(max(λ_min, 1e-30))`` first. Non-finite inputs raise.
    """
    if features.dim() != 2 or features.shape[1] != 2:
        raise PlpruneError(
            f"features must have shape (p, 2) = [min eigenvalue, entropy], got {tuple(features.shape)}"
        )
    return standardise_columns(features, (0,) if log_min_eigenvalue else ())


def standardise_columns(features: Tensor, log_columns: tuple[int, ...] = ()) -> Tensor:
    """``(p, k)`` features → each column standardised across the p groups (zero mean, unit std; a constant
    column → 0); the columns in ``log_columns`` (non-negative quantities spanning orders of magnitude)
    become ``log(max(x, 1e-30))`` first. Non-finite inputs raise."""
    if features.dim() != 2 or features.shape[1] < 1:
        raise PlpruneError(f"features must have shape (p, k) with k ≥ 1, got {tuple(features.shape)}")
    if any(not 0 <= c < features.shape[1] for c in log_columns):
        raise PlpruneError(f"log_columns {log_columns} out of range for {features.shape[1]} feature columns")
    if not torch.isfinite(features).all():
        raise PlpruneError("kernel features contain NaN or Inf; cannot gate on them")
    x = features.double().clone()
    for c in log_columns:
        x[:, c] = torch.log(x[:, c].clamp_min(FEATURE_FLOOR))
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    return torch.where(std > 1e-12, (x - mean) / std.clamp_min(1e-12), torch.zeros_like(x))


class GatingNetwork(nn.Module):
    """2-layer MLP over each group's ``in_features`` features (2: λ_min, ρ) → softmax over the p groups,
    scaled to mean 1."""

    def __init__(self, hidden: int = 16, scale_to_mean_one: bool = True, in_features: int = 2) -> None:
        super().__init__()
        check_positive_int("gating hidden size", hidden)
        check_positive_int("gating input features", in_features)
        self.hidden = nn.Linear(in_features, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.scale_to_mean_one = scale_to_mean_one

    def forward(self, normalised_features: Tensor) -> Tensor:
        scores = self.out(torch.tanh(self.hidden(normalised_features.to(self.hidden.weight.dtype)))).squeeze(
            -1
        )
        gates = torch.softmax(scores, dim=0)
        return gates * gates.shape[0] if self.scale_to_mean_one else gates
