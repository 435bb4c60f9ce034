"""Single weights as units (unstructured sparsity): the prunable weight tensors of a model and their masks.

:class:`WeightUnits` sees the ``weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of a model (or the
parameters named) as one flat vector ``θ ∈ R^n`` in parameter order, with a hard mask per weight (the
driver's; a tensor never loses its last weight). Gates on single weights (hard-concrete, continuous
sparsification) enter the forward pass through :mod:`torch.nn.utils.parametrize` (``weight = θ ⊙ g``);
they are registered while gates are set and removed again by ``set_gates(None)``, so the model's
state-dict keys are the usual ones whenever no gate is active.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from plprune.errors import PlpruneError
from plprune.sparsity.base import Units

__all__ = ["WeightUnits", "prunable_weight_names"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weight_names(model: nn.Module) -> list[str]:
    """Names of the ``weight`` of every Linear and Conv layer of ``model`` (biases, norms: not pruned)."""
    return [
        f"{name}.weight" if name else "weight"
        for name, module in model.named_modules()
        if isinstance(module, _LAYERS) and isinstance(getattr(module, "weight", None), nn.Parameter)
    ]


class _WeightGate(nn.Module):
    """A parametrization ``θ ↦ θ ⊙ gate`` (identity while ``gate`` is None)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Tensor | None = None

    def forward(self, weight: Tensor) -> Tensor:
        return weight if self.gate is None else weight * self.gate


class WeightUnits(Units):
    """Every weight of the named parameters (default: :func:`prunable_weight_names`) as one unit.

    ``mask`` holds one bool tensor per parameter (True = keep); :meth:`apply_mask` sets it from a flat
    ``(n,)`` vector and zeroes the removed weights, :meth:`enforce` re-zeroes them after an optimizer step,
    :meth:`mask_pruned_gradients` zeroes their gradients before it.
    """

    kind = "weight"

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise PlpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        names = list(prunable_weight_names(model) if names is None else names)
        if not names:
            raise PlpruneError(f"model {type(model).__name__} has no Linear or Conv weights to make sparse")
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in params]
        if missing:
            raise PlpruneError(
                f"model has no parameters {missing}; prunable weights: {prunable_weight_names(model)}"
            )
        self.model = model
        self.names = names
        self.params: list[nn.Parameter] = [params[n] for n in names]
        self._owners = [(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names]
        self.sizes = [p.numel() for p in self.params]
        self.offsets = [0]
        for size in self.sizes:
            self.offsets.append(self.offsets[-1] + size)
        self.mask = [torch.ones_like(p, dtype=torch.bool) for p in self.params]
        self.layer_ids = torch.cat([torch.full((s,), i, dtype=torch.long) for i, s in enumerate(self.sizes)])
        self._gates_on = False

    def __len__(self) -> int:
        return self.offsets[-1]

    def _split(self, flat: Tensor) -> list[Tensor]:
        bounds = zip(self.params, self.offsets[:-1], self.offsets[1:], strict=True)
        return [flat[a:b].view_as(p) for p, a, b in bounds]

    def _check(self, name: str, flat: Tensor) -> Tensor:
        if flat.shape != (len(self),):
            raise PlpruneError(f"{name} must have shape ({len(self)},), got {tuple(flat.shape)}")
        return flat

    def magnitudes(self) -> Tensor:
        return torch.cat([p.detach().abs().flatten() for p in self.params])

    @torch.no_grad()
    def scale_(self, factors: Tensor) -> None:
        for param, factor in zip(self.params, self._split(self._check("factors", factors)), strict=True):
            param.mul_(factor.to(param.dtype))

    def saliency(self) -> Tensor:
        return torch.cat(
            [
                (p.detach() * p.grad).abs().flatten() if p.grad is not None else torch.zeros_like(p).flatten()
                for p in self.params
            ]
        )

    @torch.no_grad()
    def mask_gradients_(self, keep: Tensor) -> None:
        for param, part in zip(self.params, self._split(self._check("keep", keep)), strict=True):
            if param.grad is not None:
                param.grad.mul_(part.to(param.grad.dtype))

    def set_gates(self, gates: Tensor | None) -> None:
        if gates is None:
            if self._gates_on:
                for module, attr in self._owners:
                    parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
                self._gates_on = False
            return
        parts = self._split(self._check("gates", gates))
        if not self._gates_on:
            for module, attr in self._owners:
                parametrize.register_parametrization(module, attr, _WeightGate(), unsafe=True)
            self._gates_on = True
        for (module, attr), part, keep in zip(self._owners, parts, self.mask, strict=True):
            module.parametrizations[attr][0].gate = part * keep.to(part.dtype)

    def alive(self) -> Tensor:
        return torch.cat([m.flatten() for m in self.mask])

    def layer_index(self) -> Tensor:
        """Each weight's tensor (a tensor never loses its last weight)."""
        return self.layer_ids.clone()

    # -- the hard mask (driven by plprune.weight_pruner.WeightPruner) ----------------------------------
    def apply_mask(self, keep: Tensor) -> None:
        """Set the hard mask from a flat bool ``(n,)`` vector (True = keep) and zero removed weights.
        Masks only remove weights, and every tensor keeps at least one."""
        keep = self._check("mask", torch.as_tensor(keep, dtype=torch.bool))
        parts = self._split(keep.to(self.mask[0].device))
        for name, part, old in zip(self.names, parts, self.mask, strict=True):
            if bool((part & ~old).any()):
                raise PlpruneError(f"cannot revive pruned weights of {name}; masks only remove weights")
            if not bool(part.any()):
                raise PlpruneError(f"mask would remove every weight of {name}; each tensor keeps one")
        self.mask = [part.clone() for part in parts]
        self.enforce()

    @torch.no_grad()
    def enforce(self) -> None:
        """Re-zero every removed weight (after each optimizer step)."""
        for param, keep in zip(self.params, self.mask, strict=True):
            if not bool(keep.all()):
                param.mul_(keep.to(param.dtype))

    @torch.no_grad()
    def mask_pruned_gradients(self) -> None:
        """Zero the gradients of removed weights (between backward and the optimizer step)."""
        for param, keep in zip(self.params, self.mask, strict=True):
            if param.grad is not None and not bool(keep.all()):
                param.grad.mul_(keep.to(param.grad.dtype))

    def sparsity(self) -> float:
        """The fraction of removed weights."""
        return 1.0 - float(self.alive().float().mean())

    def layer_sparsity(self) -> dict[str, float]:
        """The fraction of removed weights per tensor."""
        return {name: 1.0 - float(m.float().mean()) for name, m in zip(self.names, self.mask, strict=True)}

    def state_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mask": [m.clone() for m in self.mask]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != self.names:
            raise PlpruneError("saved weight masks belong to a model with other prunable weights")
        self.mask = [torch.ones_like(m) for m in self.mask]
        self.apply_mask(torch.cat([m.flatten() for m in state["mask"]]))
