"""Structured groups as units: the heads, experts or filters of a :class:`~plprune.gates.GroupSet`.

Group g's magnitude is the ℓ2 norm of all its parameter slices, ``‖θ_g‖₂`` (the group lasso's norm; Yuan &
Lin 2006), so a method's proximal step on the norm, ``θ_g ← θ_g · prox(‖θ_g‖)/‖θ_g‖``, is the group version
of its element-wise operator. Gates are the GroupSet's soft gates: they multiply each group's output (a
head's context, an expert's output, a filter's channel), the same gates PL's gating network trains.

Vectorised per (parameter, dimension): for each parameter sliced along a dimension, an ``owner`` index says
which group owns each position along it (−1: none), so norms, scaling and saliencies are one reduction and
one broadcast per parameter instead of a Python loop over groups.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.gates import GroupSet
from plprune.sparsity.base import Units

__all__ = ["GroupUnits"]


class GroupUnits(Units):
    """The groups of ``groups`` (a :class:`~plprune.gates.GroupSet`) as units, in GroupSet order."""

    def __init__(self, groups: GroupSet) -> None:
        if not isinstance(groups, GroupSet):
            raise PlpruneError(f"GroupUnits takes a GroupSet, got {type(groups).__name__}")
        self.groups = groups
        self.kind = groups.kinds[0] if len(groups.kinds) == 1 else "group"
        params = dict(groups.model.named_parameters())
        owners: dict[tuple[str, int], Tensor] = {}
        for index, group in enumerate(groups.groups):
            for piece in group.slices:
                param = params[piece.param_name]
                owner = owners.setdefault(
                    (piece.param_name, piece.dim), torch.full((param.shape[piece.dim],), -1, dtype=torch.long)
                )
                owner[piece.start : piece.stop] = index
        self._entries: list[tuple[nn.Parameter, int, Tensor]] = [
            (params[name], dim, owner) for (name, dim), owner in owners.items()
        ]

    def __len__(self) -> int:
        return len(self.groups)

    @staticmethod
    def _reduce(tensor: Tensor, dim: int) -> Tensor:
        """Sum over every dimension but ``dim``: ``(size along dim,)``."""
        return tensor.movedim(dim, 0).reshape(tensor.shape[dim], -1).sum(dim=1)

    def _per_group(self, values: list[Tensor]) -> Tensor:
        """Scatter each entry's per-position values into per-group sums."""
        total = torch.zeros(len(self), dtype=torch.float64)
        for (_, _, owner), value in zip(self._entries, values, strict=True):
            owned = owner >= 0
            total.index_add_(0, owner[owned], value.detach().double().cpu()[owned])
        return total

    def _broadcast(self, per_group: Tensor, param: Tensor, dim: int, owner: Tensor, fill: float) -> Tensor:
        """Per-group values spread along ``dim`` of ``param`` (``fill`` where no group owns the position)."""
        values = torch.full((len(owner),), fill, dtype=per_group.dtype)
        owned = owner >= 0
        values[owned] = per_group.cpu()[owner[owned]]
        shape = [1] * param.dim()
        shape[dim] = len(owner)
        return values.view(shape).to(device=param.device, dtype=param.dtype)

    def magnitudes(self) -> Tensor:
        squares = [self._reduce(param.detach().double().pow(2), dim) for param, dim, _ in self._entries]
        return self._per_group(squares).sqrt()

    @torch.no_grad()
    def scale_(self, factors: Tensor) -> None:
        if factors.shape != (len(self),):
            raise PlpruneError(f"factors must have shape ({len(self)},), got {tuple(factors.shape)}")
        for param, dim, owner in self._entries:
            param.mul_(self._broadcast(factors.double(), param, dim, owner, 1.0))

    def saliency(self) -> Tensor:
        products = [
            self._reduce((param.detach() * param.grad).double(), dim)
            if param.grad is not None
            else torch.zeros(param.shape[dim], dtype=torch.float64)
            for param, dim, _ in self._entries
        ]
        return self._per_group(products).abs()

    @torch.no_grad()
    def mask_gradients_(self, keep: Tensor) -> None:
        if keep.shape != (len(self),):
            raise PlpruneError(f"keep must have shape ({len(self)},), got {tuple(keep.shape)}")
        for param, dim, owner in self._entries:
            if param.grad is not None:
                param.grad.mul_(self._broadcast(keep.double(), param.grad, dim, owner, 1.0))

    def set_gates(self, gates: Tensor | None) -> None:
        if gates is None:
            self.groups.clear_soft_gates()
        else:
            self.groups.set_soft_gates(gates)

    def alive(self) -> Tensor:
        return self.groups.mask.clone()

    def layer_index(self) -> Tensor:
        """The GroupSet's layer ids (one per site: a conv's filters, a block's heads)."""
        return self.groups.layer_ids.clone()

    def kind_indices(self) -> list[Tensor]:
        return [self.groups.kind_index(kind) for kind in self.groups.kinds]

    def kind_names(self) -> list[str | None]:
        return list(self.groups.kinds)
