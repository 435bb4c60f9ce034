"""FLAP: fluctuation-based structured pruning with bias compensation (An, Zhao, Yu, Tang & Wang, AAAI 2024,
"Fluctuation-based Adaptive Structured Pruning for Large Language Models").

**Fluctuation metric** (paper Eq. 6, "WIFV"). Removing input channel j of an output projection ``W``
(W_O for attention heads, ``down_proj``/``fc2``/``c_proj`` for FFN channels) changes the projection's output
by ``W_{:,j} x_j``; if x_j were constant over the data, a bias could absorb it exactly. So channel j is
scored by how much its input *fluctuates* around its mean, weighted by its column's energy:

    S_j = Var_t(x_{tj}) · ‖W_{:,j}‖₂² ,   Var_t = (1/(N−1)) Σ_t (x_{tj} − x̄_j)²

over the N calibration tokens. **Standardisation** (Sec. 3.2, the paper's "adaptive structure search"):
each structure's scores are standardised, ``Ŝ_j = (S_j − mean_layer S) / std_layer S`` over the channels of
one projection (one attention layer's W_O, one FFN's ``down_proj``; FLAP's code: ``(x − mean) / std`` along
each layer's channel axis, unbiased ``std``), which makes layers *and* modules comparable, so that a global
ranking allocates widths adaptively. A head scores the mean of its ``d`` channels' Ŝ (the code's
``reshape(-1, head_dim).mean``); a neuron its one channel's Ŝ. Allocation: **global** within each kind
(FLAP's "AL", adaptive across layers); FLAP's "AM" (one ranking across attention and MLP, weighted by
parameter counts) is the caller's cross-kind allocation (``kind_ratios`` of :class:`plprune.Pruner`, or
``plprune compress``'s parameter target), since the standardised scores of both kinds are on one scale.

**Bias compensation** (Sec. 3.3, Eq. 9). When channels ``P`` of ``W`` are removed, the projection's output
on average loses ``Σ_{j∈P} W_{:,j} x̄_j``; FLAP adds it to the projection's bias,

    b ← b + W_{:,P} x̄_P ,

so the compensated output equals the dense one *in expectation over the calibration tokens* (exactly, for
the projection's mean output). A projection without a bias (Llama's ``o_proj`` and ``down_proj``) gets one
(zeros first), as in FLAP's code. This happens in :meth:`FLAPScorer.before_mask` — the Pruner calls it with
the event's new mask *before* the pruned columns are zeroed — with the means x̄ measured while scoring the
same event. A later event compensates only the groups it newly removes. A created bias is frozen
(``requires_grad=False``, :func:`add_to_bias` says why); an existing one (BERT, GPT-2, OPT) keeps training.

Adaptations: x̄ and Var are exact over every calibration token (float64, batches merged with Chan's update;
FLAP's code keeps an approximate running update per sample); heads and channels are found from each group's
own parameter slices (:mod:`plprune.pruners.activations`), not by family; already pruned channels are left
out of the standardisation statistics (FLAP prunes once). The :class:`CreatedBiases` plugin records the
created biases in the Pruner's state, so a resumed run recreates them before the model's weights load. A
reload outside plprune needs a model config that declares the biases (e.g. Llama's
``attention_bias``/``mlp_bias``, with zero biases for the other projections those flags add).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.pruners.activations import (
    ChannelStats,
    ReaderSlice,
    calibration_input_stats,
    input_columns,
    reader_modules,
    reader_slices,
)
from plprune.pruners.base import GroupScorer, PruneContext, PrunerPlugin
from plprune.pruners.registration import register_method
from plprune.pruners.structured import ScoreBatchesConfig
from plprune.pruners.wanda_sp import READ_KINDS
from plprune.sites.projections import out_features
from plprune.validation import check_positive_int


def standardise(values: Tensor, members: Tensor) -> Tensor:
    """``(values − mean) / std`` with the mean and unbiased std of ``values[members]`` (all of ``values``
    transformed); fewer than two members, or a zero std, give ``values − mean`` (every member 0)."""
    chosen = values[members]
    if chosen.numel() == 0:
        return torch.zeros_like(values)
    mean = chosen.mean()
    std = chosen.std() if chosen.numel() > 1 else torch.zeros((), dtype=values.dtype)
    return (values - mean) / std if float(std) > 0 else values - mean


def add_to_bias(module: nn.Module, delta: Tensor) -> bool:
    """``module.bias += delta`` (in place, no autograd); a module without a bias gets a zero one first,
    **frozen** (``requires_grad=False``). Returns whether a bias was created.

    Why frozen: an optimizer built before pruning does not hold the new parameter, so it would never update
    it, but its gradient would still accumulate step after step (no ``zero_grad`` reaches it) and inflate
    every gradient-norm clip over ``model.parameters()``. A recovery fine-tuning that should train it calls
    ``module.bias.requires_grad_(True)`` and builds its optimizer after pruning."""
    created = module.bias is None
    with torch.no_grad():
        if created:
            weight = module.weight
            zeros = torch.zeros(out_features(module), dtype=weight.dtype, device=weight.device)
            module.bias = nn.Parameter(zeros, requires_grad=False)
        module.bias.add_(delta.to(module.bias.device, module.bias.dtype))
    return created


class CreatedBiases(PrunerPlugin):
    """The output-projection biases FLAP created, by module name, kept in the Pruner's state: loading that
    state (which happens before the model's own weights load) recreates them as zeros, so a resumed or
    reloaded model has the parameters its saved weights hold."""

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.names: list[str] = []

    def bind(self, pruner: Any) -> None:
        self.model = pruner.model

    def record(self, name: str) -> None:
        if name not in self.names:
            self.names.append(name)

    def state_dict(self) -> dict[str, Any]:
        return {"created_biases": list(self.names)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = list(state.get("created_biases", []))
        if names and self.model is None:
            raise PlpruneError("FLAP's created biases can only be restored through a Pruner (bind first)")
        for name in names:
            module = self.model.get_submodule(name)
            if module.bias is None:
                add_to_bias(module, torch.zeros(out_features(module)))
            self.record(name)


@register_method(
    "flap",
    description="FLAP (An et al. 2024): standardised fluctuation Var(x)*||W_col||^2, with bias compensation",
    kinds=READ_KINDS,
    config=ScoreBatchesConfig,
)
class FLAPScorer(GroupScorer):
    """Standardised fluctuation of a group's output-projection inputs, and bias compensation of the
    channels it removes (module docstring). ``compensate=False`` scores the same and skips the bias."""

    name = "flap"
    kinds = READ_KINDS

    def __init__(self, batches: int = 4, compensate: bool = True) -> None:
        self.batches = check_positive_int("FLAP calibration batches", batches)
        if not isinstance(compensate, bool):
            raise PlpruneError(f"FLAP's compensate must be True or False, got {compensate!r}")
        self.compensate = compensate
        self.created = CreatedBiases()
        # what scores() measured, for before_mask() at the same event
        self._event: tuple[int, list[tuple[ReaderSlice, ...]], dict[str, ChannelStats]] | None = None

    @classmethod
    def from_config(cls, settings: ScoreBatchesConfig, info: object) -> FLAPScorer:
        return cls(batches=settings.score_batches)

    def plugins(self) -> list[Any]:
        return [self.created]

    @torch.no_grad()
    def scores(self, context: PruneContext) -> Tensor:
        groups = context.groups
        readers = reader_slices(groups, "FLAP")
        modules = reader_modules(groups, readers)
        stats = calibration_input_stats(context, modules, self.batches)
        alive_channels = {name: torch.zeros(s.mean.numel(), dtype=torch.bool) for name, s in stats.items()}
        for group, alive in zip(readers, groups.mask.tolist(), strict=True):
            for r in group:
                alive_channels[r.module][r.start : r.stop] |= alive
        standardised = {}
        for name, module in modules.items():
            width = stats[name].mean.numel()
            energy = input_columns(module, 0, width).detach().double().pow(2).sum(dim=0).cpu()
            fluctuation = stats[name].variance * energy
            standardised[name] = standardise(fluctuation, alive_channels[name])
        scores = torch.zeros(len(groups), dtype=torch.float64)
        for i, group in enumerate(readers):
            channels = torch.cat([standardised[r.module][r.start : r.stop] for r in group])
            scores[i] = float(channels.mean())
        scores[~groups.mask] = 0.0
        self._event = (context.event_index, readers, stats)
        context.log["score_batches"] = self.batches
        return scores

    @torch.no_grad()
    def before_mask(self, context: PruneContext, mask: Tensor) -> None:
        """Bias compensation (Eq. 9): for every group that ``mask`` newly removes, add ``W_{:,P} x̄_P`` of
        its output-projection columns ``P`` to that projection's bias."""
        if not self.compensate:
            self._event = None
            return
        if self._event is None or self._event[0] != context.event_index:
            raise PlpruneError(
                "FLAP's bias compensation needs the activation means of this event: call scores(context) "
                "before before_mask(context, mask) at the same event"
            )
        _, readers, stats = self._event
        groups = context.groups
        removed = (groups.mask & ~torch.as_tensor(mask, dtype=torch.bool)).nonzero().flatten().tolist()
        deltas: dict[str, Tensor] = {}
        for i in removed:
            for r in readers[i]:
                module = groups.model.get_submodule(r.module)
                columns = input_columns(module, r.start, r.stop).detach().double()
                mean = stats[r.module].mean[r.start : r.stop].to(columns.device)
                delta = columns @ mean
                deltas[r.module] = deltas[r.module] + delta if r.module in deltas else delta
        for name, delta in deltas.items():
            if add_to_bias(groups.model.get_submodule(name), delta):
                self.created.record(name)
        context.log["flap_compensated"] = sorted(deltas)
        context.log["flap_created_biases"] = list(self.created.names)
        self._event = None
