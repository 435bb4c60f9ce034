"""DPFPS: Dynamic and Progressive Filter Pruning from Scratch (Ruan et al., AAAI 2021), adapted to the
BN-scale ranking and the pruning schedules of plprune.

**The paper** (and its official code, github.com/taoxvzi/DPFPS) trains from scratch with a structured
sparsity penalty that acts only on the *expected pruning parameters*, and removes the near-zero filters once
at the end, without fine-tuning:

1. *dynamic sparsity allocation*: at each epoch, every layer's sparsity ratio is derived from how many of
   its filters are still non-zero (group norm above 1% of the layer's largest), scaled by one global
   coefficient searched so that the whole network meets the target pruned ratio of parameters (or FLOPs);
2. *expected pruning parameters*: in each layer, that many filters with the smallest first-order Taylor
   channel sensitivity ``|Σ w ⊙ ∂L/∂w|`` (summed over the filter and the next layer's input column),
   recomputed at every iteration;
3. *progressive penalty*: a group-ℓ2,1 penalty on those filters, applied by ISTA (proximal soft
   thresholding by ``lr · λ · s_e`` after each SGD step), ``s_e = 1 / (1 + exp(15 − 30 (e+1)/E₀))`` rising
   along a sigmoid in the epoch e until the first learning-rate decay E₀ (half of training on CIFAR),
   then 1.

**Here** the method is split into a scorer and a training callback, so that it runs on the same schedules
(one-shot, linear, iterative), layer protection and masks as every other method:

* :class:`DPFPSScorer` ranks filters by their BN scale ``|γ_c|`` **globally** across layers
  (``allocation = "global"``), so the per-layer sparsity is allocated dynamically by the ranking, as the
  paper's allocation follows where the penalty has already made filters small (a filter of convs coupled
  by residual additions, one :class:`~plprune.sites.FilterSite` with several conv → BN members, scores
  ``Σ |γ_c|`` over their BNs, and the penalty below acts on each of those γ_c);
* :class:`DPFPSRegulariser` adds, in ``on_after_backward``, the ℓ1 subgradient ``λ · s(t) · sign(γ_c)`` to
  ``γ_c.grad`` of exactly the *expected pruning* filters E(t), which it recomputes at every step:

  - per-layer counts (dynamic allocation): the alive filters of layer l that the global ``|γ|`` ranking
    would remove at the schedule's **final** ratio (``select_mask`` with global allocation and layer
    protection; already pruned filters count towards the ratio);
  - which filters (paper step 2): in each layer, that many alive filters of smallest first-order Taylor
    sensitivity ``T_c = |Σ_{slices of group c} Σ w ⊙ ∂L/∂w|`` over the group's own slices (conv ``weight[c]``,
    γ_c, β_c), from the current batch's gradients (ties: lower index first);
  - progressive factor (paper step 3, epochs → steps): ``s(t) = 1 / (1 + exp(15 − 30 (t+1)/T))`` where t is
    the number of optimizer steps done and T the step of the schedule's **last** pruning event; no penalty
    once every event has run (everything the final ratio removes is pruned by then).

  Pruned filters are never touched (their gradients are zeroed by the pruning callback anyway).

**Departures from the paper**, each deliberate:

* penalty on the BN scale γ_c with ℓ1 (as in network slimming, Liu et al. 2017) instead of group-ℓ2,1 on the
  conv filter and the next layer's input column: in conv → BN (e.g.
  :class:`~plprune.models.filters.GatedConvBN`) BN divides the conv filter's scale out again, so γ_c
  (with β_c) is what sets channel c's output size, and it is what the scorer ranks;
* a subgradient added to ``.grad`` (so it passes through the optimizer — momentum, Adam's rescaling — and
  any gradient clipping) instead of ISTA's proximal step after the optimizer step, which sets a group
  exactly to zero; a γ exactly at 0 gets no push (``sign(0) = 0`` is a valid subgradient);
* allocation from the global ``|γ|`` ranking at the target ratio of *filters*, instead of the non-zero
  count scaled by a searched coefficient to meet a ratio of *parameters/FLOPs*, and recomputed every step
  instead of every epoch;
* Taylor sensitivity over the group's own slices only (our filter group has no next-layer column); with
  batch-statistics BN the conv term vanishes (BN is invariant to the filter's scale), so ``T_c`` is in
  effect ``|γ_c ∂L/∂γ_c + β_c ∂L/∂β_c|``, the first-order loss change of zeroing the channel's BN output;
* the sigmoid ramps up to the last pruning event instead of the first learning-rate decay, and filters
  are removed at the schedule's events by the scorer (then training continues) instead of once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.pruners.base import GroupScorer, PruneContext, PrunerPlugin, select_mask
from plprune.pruners.fpgm import filter_site_ranges
from plprune.pruners.registration import register_method
from plprune.validation import check_non_negative_float, check_non_negative_int

__all__ = ["DPFPSRegulariser", "DPFPSScorer", "bn_scales", "progressive_factor"]


def bn_scales(groups: GroupSet, method: str = "DPFPS") -> list[tuple[nn.Parameter, int, int]]:
    """``(γ, start, stop)`` per norm of every filter site: the BN scale parameter of each of the site's
    convs (``site.members[i].norm.weight``; several when convs are coupled by residual additions), whose
    entry c belongs to group ``start + c``. Raises unless every group is a filter of conv → BN sites."""
    scales = []
    for site, start, stop in filter_site_ranges(groups, method):
        members = getattr(site, "members", None) or [None]
        for member in members:
            weight = getattr(getattr(member, "norm", None), "weight", None)
            if not isinstance(weight, nn.Parameter) or tuple(weight.shape) != (stop - start,):
                conv = getattr(member, "conv_name", None) or site.module_name
                raise PlpruneError(
                    f"{method} ranks BatchNorm scales: conv {conv!r} of filter site {site.module_name!r} "
                    f"needs a BatchNorm right after it with a weight of shape ({stop - start},)"
                )
            scales.append((weight, start, stop))
    return scales


def _gamma(scales: list[tuple[nn.Parameter, int, int]], p: int) -> Tensor:
    """``(p,)`` float64: Σ |γ_c| over the norms of each group (one norm per conv; coupled convs: the sum)."""
    gamma = torch.zeros(p, dtype=torch.float64)
    for weight, start, stop in scales:
        gamma[start:stop] += weight.detach().double().abs().cpu()
    return gamma


def _channel_params(groups: GroupSet, params: dict[str, nn.Parameter]) -> list[tuple[int, int, list[str]]]:
    """``(start, stop, parameter names)`` per filter site, after checking that group ``start + c`` is
    exactly channel c (dim 0) of each of those parameters, as in a GatedConvBN."""
    layout = []
    for site, start, stop in filter_site_ranges(groups, "the DPFPS regulariser"):
        names = [piece.param_name for piece in groups.groups[start].slices]
        for c in range(stop - start):
            slices = groups.groups[start + c].slices
            if [p.param_name for p in slices] != names or any(
                (p.dim, p.start, p.stop) != (0, c, c + 1) for p in slices
            ):
                raise PlpruneError(
                    f"the DPFPS regulariser expects filter c of site {site.module_name!r} to be channel c "
                    "(dim 0) of each of its parameters, as in GatedConvBN"
                )
        for name in names:
            if params[name].shape[0] != stop - start:
                raise PlpruneError(
                    f"parameter {name} has {params[name].shape[0]} channels, not {stop - start}"
                )
        layout.append((start, stop, names))
    return layout


def progressive_factor(step: int, end: int) -> float:
    """``s(t) = 1 / (1 + exp(15 − 30 (t+1)/T))`` with t = ``step``, T = ``end`` (Ruan et al. 2021's
    sparsity coefficient with epochs replaced by steps); 1 from t + 1 ≥ T on, or when T ≤ 0."""
    check_non_negative_int("step", step)
    if end <= 0 or step + 1 >= end:
        return 1.0
    return 1.0 / (1.0 + math.exp(15.0 - 30.0 * (step + 1) / end))


@dataclass
class DPFPSConfig:
    """DPFPS's setting: the strength of the progressive ℓ1 subgradient on BN scales."""

    sparsity_strength: float = field(default=1e-4, metadata={"help": "l1 strength on BN scales (1e-4)"})

    def __post_init__(self) -> None:
        check_non_negative_float("DPFPS sparsity strength", self.sparsity_strength)


@register_method(
    "dpfps",
    description="DPFPS: BN-scale ranking with dynamic sparsity allocation and l1 regulariser (filters)",
    kinds=("filter",),
    config=DPFPSConfig,
)
class DPFPSScorer(GroupScorer):
    """``|γ_c|``, the BN scale of filter c, ranked globally across layers (DPFPS's ranking, with the
    per-layer sparsity allocated dynamically by it; see the module docstring). Pruned filters score 0.
    Brings the :class:`DPFPSRegulariser` plugin (``strength`` 0: none)."""

    name = "dpfps"
    allocation = "global"
    needs_data = False
    kinds = ("filter",)

    def __init__(self, strength: float = 1e-4) -> None:
        self.strength = check_non_negative_float("DPFPS sparsity strength", strength)

    @classmethod
    def from_config(cls, settings: DPFPSConfig, info: Any) -> DPFPSScorer:
        return cls(settings.sparsity_strength)

    def plugins(self) -> list[PrunerPlugin]:
        return [DPFPSRegulariser(self.strength)] if self.strength > 0 else []

    @torch.no_grad()
    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        scores = _gamma(bn_scales(groups, "DPFPS"), len(groups)).abs()
        scores[~groups.mask] = 0.0
        return scores


class DPFPSRegulariser(PrunerPlugin):
    """Progressive ℓ1 subgradient ``strength · s(t) · sign(γ_c)`` on the BN scales of DPFPS's *expected
    pruning* filters, added to ``γ.grad`` after each backward pass (module docstring: which filters, which
    factor, and where this departs from Ruan et al. 2021).

    A :class:`~plprune.pruner.Pruner` plugin (``DPFPSScorer.plugins``): it acts when gradients are ready
    and before the optimizer steps (in the built-in trainer: after gradient clipping). It holds no state of
    its own: everything is recomputed from the weights, the gradients and the pruner's progress, so resuming
    is exact.
    """

    def __init__(self, strength: float = 1e-4) -> None:
        self.strength = check_non_negative_float("DPFPS sparsity strength", strength)
        self.last_penalised = 0
        self.last_penalty = 0.0

    def bind(self, pruner: Any) -> None:
        groups = pruner.groups
        self.scales = bn_scales(groups, "the DPFPS regulariser")
        self.groups = groups
        self.pruner = pruner
        self._params = dict(groups.model.named_parameters())
        self._channel_params = _channel_params(groups, self._params)

    def taylor_sensitivity(self) -> Tensor:
        """``(p,)`` float64: ``|Σ w ⊙ ∂L/∂w|`` over each group's slices, from the current ``.grad``
        (a missing gradient counts as 0). Vectorised per site: group c's slices are channel c of each
        parameter (checked at construction)."""
        sensitivity = torch.zeros(len(self.groups), dtype=torch.float64)
        for start, stop, names in self._channel_params:
            total = torch.zeros(stop - start, dtype=torch.float64)
            for name in names:
                param = self._params[name]
                if param.grad is not None:
                    product = (param.detach() * param.grad).double().reshape(stop - start, -1)
                    total += product.sum(dim=1).cpu()
            sensitivity[start:stop] = total.abs()
        return sensitivity

    def expected_pruned(self) -> Tensor:
        """``(p,)`` bool: the alive filters the penalty acts on now (none once every event has run)."""
        groups = self.groups
        target = torch.zeros(len(groups), dtype=torch.bool)
        events = self.pruner.schedule.events()
        if self.pruner.events_done >= len(events):
            return target
        ratio = self.pruner.event_ratios(events[-1]).get("filter", 0.0)
        removal = groups.mask & ~select_mask(groups, _gamma(self.scales, len(groups)).abs(), ratio)
        if not bool(removal.any()):
            return target
        sensitivity = self.taylor_sensitivity()
        for layer in torch.unique(groups.layer_ids):
            alive = ((groups.layer_ids == layer) & groups.mask).nonzero().flatten()
            count = int(removal[alive].sum())
            if count:
                order = torch.sort(sensitivity[alive], stable=True).indices[:count]
                target[alive[order]] = True
        return target

    @torch.no_grad()
    def before_update(self, pruner: Any, step: int) -> None:
        self.last_penalised, self.last_penalty = 0, 0.0
        events = self.pruner.schedule.events()
        if self.strength == 0 or self.pruner.events_done >= len(events):
            return
        penalty = self.strength * progressive_factor(step, events[-1].step)
        target = self.expected_pruned()
        for weight, start, stop in self.scales:
            chosen = target[start:stop]
            if not bool(chosen.any()):
                continue
            if weight.grad is None:
                weight.grad = torch.zeros_like(weight)
            chosen = chosen.to(weight.device)
            weight.grad[chosen] += penalty * torch.sign(weight.detach()[chosen])
        self.last_penalised, self.last_penalty = int(target.sum()), penalty

    def metrics(self) -> dict[str, Any]:
        return {"dpfps_penalised_filters": self.last_penalised, "dpfps_penalty": self.last_penalty}
