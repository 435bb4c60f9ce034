"""Gating network FN_v (paper Sec. 3.2.3, Eq. 8) and the protected TopK of Alg. 2 line 8.

``g = p · softmax_i(FN_v(d̂_i))``: a 2-layer MLP scores each group from its normalised kernel
features d̂_i = (log λ_min, ρ) (standardised across groups), softmax over all p groups as in Eq. 8,
then **scaled by p so that the mean gate is 1**. A raw softmax would multiply every head's output by
≈1/p and shrink the network; with the scaling, the initial network (output layer initialised to 0,
so every score is equal) is exactly the ungated one (g ≡ 1). This is a documented deviation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.validation import check_positive_int, check_probability

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
    if not torch.isfinite(features).all():
        raise PlpruneError("kernel features contain NaN or Inf; cannot gate on them")
    x = features.double().clone()
    if log_min_eigenvalue:
        x[:, 0] = torch.log(x[:, 0].clamp_min(FEATURE_FLOOR))
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True)
    return torch.where(std > 1e-12, (x - mean) / std.clamp_min(1e-12), torch.zeros_like(x))


class GatingNetwork(nn.Module):
    """2-layer MLP over each group's 2 features → softmax over the p groups, scaled to mean 1."""

    def __init__(self, hidden: int = 16, scale_to_mean_one: bool = True) -> None:
        super().__init__()
        check_positive_int("gating hidden size", hidden)
        self.hidden = nn.Linear(2, hidden)
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


def prune_count(num_groups: int, ratio: float) -> int:
    """Number of groups removed at pruned ratio ``ratio`` (k = p − this; rounded to nearest)."""
    check_probability("prune ratio", ratio)
    return math.floor(ratio * num_groups + 0.5)


def protected_top_k(scores: Tensor, keep: int, layer_ids: Tensor, alive: Tensor | None = None) -> Tensor:
    """Boolean mask keeping ``keep`` groups of highest score, never emptying a layer (Alg. 2 line 8).

    Rules: only ``alive`` groups may be kept; first the best alive group of every layer is kept
    (protection), then the remaining places go to the highest scores. Ties go to the lower index
    (stable sort), so the result is deterministic. Raises if ``keep`` is smaller than the number of
    layers (a protected group would be removed) or larger than the number of alive groups.
    """
    p = scores.shape[0]
    if scores.dim() != 1 or layer_ids.shape != (p,):
        raise PlpruneError(
            f"scores must be (p,) and layer_ids (p,), got {tuple(scores.shape)}, {tuple(layer_ids.shape)}"
        )
    if not torch.isfinite(scores).all():
        raise PlpruneError("pruning scores contain NaN or Inf")
    alive = torch.ones(p, dtype=torch.bool) if alive is None else alive.to(torch.bool)
    layers = torch.unique(layer_ids)
    if keep < len(layers):
        raise PlpruneError(
            f"keeping {keep} of {p} groups would remove a protected group: {len(layers)} layers each keep at "
            f"least one, so the prune ratio must leave ≥ {len(layers)} groups"
        )
    if keep > int(alive.sum()):
        raise PlpruneError(f"cannot keep {keep} groups: only {int(alive.sum())} are not pruned already")
    # in score order: each layer's first alive group is protected; the next best alive groups fill the rest
    order = torch.sort(scores.detach().double(), descending=True, stable=True).indices
    ordered_alive = alive[order]
    ordered_layer = torch.unique(layer_ids, return_inverse=True)[1][order]
    positions = torch.arange(p)
    first = torch.full((len(layers),), p, dtype=torch.long)
    first.scatter_reduce_(0, ordered_layer[ordered_alive], positions[ordered_alive], reduce="amin")
    if bool((first == p).any()):
        empty = int(layers[int((first == p).nonzero()[0])])
        raise PlpruneError(f"layer {empty} has no alive group left to protect")
    protected = torch.zeros(p, dtype=torch.bool)
    protected[first] = True
    others = ordered_alive & ~protected
    kept = protected | (others & (torch.cumsum(others.long(), 0) <= keep - len(layers)))
    mask = torch.zeros(p, dtype=torch.bool)
    mask[order] = kept
    return mask
