"""What the optimisation-based sparsity methods share: the units they act on and their training hooks.

A method sees its model as a vector of *units* ``u_1..u_n`` (:class:`Units`): single weights
(unstructured sparsity, ``|θ_j|``) or structured groups (a conv filter, an attention head, an MoE expert:
``‖θ_g‖₂`` over the group's parameter slices). Each method is written once against this interface, so its
weight-level and group-level versions are the same code: a proximal step on a group acts on the group's
norm (``θ_g ← θ_g · prox(‖θ_g‖)/‖θ_g‖``), a saliency ranks groups instead of weights, a gate multiplies a
group's output instead of a weight.

A :class:`SparsityMethod` is driven by a pruning driver (:class:`plprune.weight_pruner.WeightPruner` for
weights, :class:`plprune.pruner.Pruner` for groups) around the caller's optimizer:

* :meth:`SparsityMethod.bind` once, with the units, the pruning schedule (its last event ends the
  regularisation; its final ratio is the target sparsity) and the driver's allocation;
* :meth:`SparsityMethod.on_step_start` before each forward pass (e.g. sample stochastic gates);
* :meth:`SparsityMethod.before_update` when gradients are ready (e.g. add a penalty's gradient, keep only
  the top-Q gradients);
* :meth:`SparsityMethod.after_update` after the optimizer step, with the learning rate η of that step
  (e.g. the proximal step ``θ ← prox_{ηλR}(θ)``);
* :meth:`SparsityMethod.scores` at each pruning event (higher = keep): the driver's keep rule turns them into
  a hard mask at exactly the schedule's ratio, so every method is compared at equal sparsity;
* :meth:`SparsityMethod.finish` after the last event (stop regularising, take gates off).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from plprune.keep import ALLOCATIONS
from plprune.schedules import Schedule
from plprune.validation import check_choice

__all__ = ["SparsityMethod", "Units"]


class Units(ABC):
    """The ``n`` units a method makes sparse, seen as a vector (weights, or groups through their norms).

    ``kind`` is ``"weight"`` or a group kind (``"filter"``, ``"head"``, ``"expert"``). Every tensor in or out
    is ``(n,)`` in unit order; pruned units (``alive()`` False) are left alone by the drivers and must stay 0.
    """

    kind: str = "weight"

    @abstractmethod
    def __len__(self) -> int:
        """The number of units ``n``."""

    @abstractmethod
    def magnitudes(self) -> Tensor:
        """``(n,)`` float, detached: ``|θ_j|`` per weight, ``‖θ_g‖₂`` over each group's slices."""

    @abstractmethod
    def scale_(self, factors: Tensor) -> None:
        """In place, without autograd: ``θ_u ← factors_u · θ_u`` for every unit."""

    @abstractmethod
    def saliency(self) -> Tensor:
        """``(n,)`` first-order saliency from the current ``.grad``: ``|θ_j ∂L/∂θ_j|`` per weight,
        ``|Σ_{i∈g} θ_i ∂L/∂θ_i|`` per group (missing gradients count as 0)."""

    @abstractmethod
    def mask_gradients_(self, keep: Tensor) -> None:
        """Zero the gradient of every unit where the bool ``keep`` is False."""

    @abstractmethod
    def set_gates(self, gates: Tensor | None) -> None:
        """Multiply each unit by a (differentiable) gate in the forward pass from now on; ``None``: no gates.
        Weights: ``θ_j g_j`` enters the layer; groups: the group's output is multiplied by ``g_g``."""

    @abstractmethod
    def alive(self) -> Tensor:
        """``(n,)`` bool: units not removed by the driver's hard mask."""

    def layer_index(self) -> Tensor:
        """``(n,)`` long: the layer of each unit, for the keep rule (a layer never loses its last unit;
        per-layer allocation ranks within it). Default: all units in one layer."""
        return torch.zeros(len(self), dtype=torch.long)

    def kind_indices(self) -> list[Tensor]:
        """The unit indices of each kind, ranked separately by the keep rule. Default: one kind."""
        return [torch.arange(len(self))]

    def kind_names(self) -> list[str | None]:
        """The kind of each entry of :meth:`kind_indices` (``None``: single weights, no group kind)."""
        return [None]

    @property
    def device(self) -> torch.device:
        return self.magnitudes().device


class SparsityMethod:
    """Training-time behaviour of one sparsity method (module docstring: the order of the hooks).

    The default hooks do nothing and the default score is the magnitude, so the base class with no
    overrides is gradual magnitude pruning. Subclasses keep their state in tensors returned by
    :meth:`state_dict`, so a resumed run continues exactly.
    """

    name: str = "magnitude"

    def bind(self, units: Units, schedule: Schedule, allocation: str = "global") -> None:
        """Called once by the driver before training starts (or resumes); ``allocation`` is the driver's
        keep rule (:data:`plprune.keep.ALLOCATIONS`), for methods that select units themselves."""
        self.units = units
        self.schedule = schedule
        self.allocation = check_choice("allocation", allocation, ALLOCATIONS)
        events = schedule.events()
        self.end_step = events[-1].step if events else 0
        self.target_ratio = events[-1].ratio if events else 0.0

    def on_step_start(self, step: int) -> None:
        """Before the forward pass of optimizer step ``step`` (0-based)."""

    def before_update(self, step: int) -> None:
        """Gradients are ready; the optimizer has not stepped yet."""

    def after_update(self, step: int, lr: float) -> None:
        """The optimizer has stepped with learning rate ``lr`` (the proximal step size η)."""

    def scores(self) -> Tensor:
        """``(n,)`` finite scores at a pruning event, higher = keep (default: the magnitudes)."""
        return self.units.magnitudes()

    def finish(self) -> None:
        """The last pruning event has run: stop regularising (gates off); the hard mask takes over."""

    def metrics(self) -> dict[str, Any]:
        """Values to add to an evaluation record (e.g. the fraction of units at exactly zero)."""
        magnitudes = self.units.magnitudes()
        return {f"{self.name}_zero_fraction": float((magnitudes == 0).float().mean())}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
