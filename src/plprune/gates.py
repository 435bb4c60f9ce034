"""The one masking mechanism every method uses: soft gates, hard masks and layer protection.

A :class:`GroupSet` owns the groups of a model (found by :func:`plprune.groups.iter_gate_sites`):

* **soft gates** ``g ∈ R^p`` (differentiable; paper Eq. 6 ``g ⊙ w``) are pushed into the gate sites
  while the gating network trains;
* the **hard mask** ``m ∈ {0,1}^p`` (Alg. 2 line 9: ``w ← m ⊙ w``) zeroes every weight slice of a
  pruned group, sets its site gate to 0, zeroes its gradients before each optimizer step and re-zeroes
  its weights after each step (AdamW's moment estimates would otherwise move a zero weight again);
* **protection** (paper App. E.3): a layer never loses its last group.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.groups import GROUP_KINDS, GateSite, Group, check_kinds, iter_gate_sites


class GroupSet:
    """All prunable groups of ``model`` of the given kinds, with their gates and hard mask."""

    def __init__(self, model: nn.Module, kinds: tuple[str, ...] = GROUP_KINDS) -> None:
        check_kinds(tuple(kinds))
        self.model = model
        self.sites: list[GateSite] = []
        self.groups: list[Group] = []
        self._ranges: list[tuple[int, int]] = []
        for site, groups in iter_gate_sites(model, tuple(kinds)):
            self._ranges.append((len(self.groups), len(self.groups) + len(groups)))
            self.sites.append(site)
            self.groups.extend(groups)
        if not self.groups:
            raise PlpruneError(
                f"model {type(model).__name__} has no discoverable groups of kinds {tuple(kinds)} "
                "(attention heads: MultiHeadSelfAttention; experts/filters: modules with gate_groups())"
            )
        self._params = dict(model.named_parameters())
        missing = {n for g in self.groups for n in g.param_names} - set(self._params)
        if missing:
            raise PlpruneError(f"groups refer to parameters the model does not have: {sorted(missing)}")
        layer_keys = [(g.kind, g.layer) for g in self.groups]
        unique = list(dict.fromkeys(layer_keys))
        self.layer_ids = torch.tensor([unique.index(k) for k in layer_keys])
        self.kinds = tuple(dict.fromkeys(g.kind for g in self.groups))
        self.mask = torch.ones(len(self.groups), dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def kind_index(self, kind: str) -> Tensor:
        """Indices of the groups of ``kind``."""
        return torch.tensor([i for i, g in enumerate(self.groups) if g.kind == kind], dtype=torch.long)

    @property
    def param_names(self) -> list[str]:
        """Names of every parameter some group touches (the weights the curvature terms use)."""
        return list(dict.fromkeys(n for g in self.groups for n in g.param_names))

    def parameters(self) -> list[nn.Parameter]:
        return [self._params[n] for n in self.param_names]

    def pruned_ratio(self, kind: str | None = None) -> float:
        index = self.kind_index(kind) if kind else torch.arange(len(self))
        return float((~self.mask[index]).float().mean()) if len(index) else 0.0

    # -- gates -----------------------------------------------------------------------------------
    def _push_gates(self, gates: Tensor | None) -> None:
        for site, (start, stop) in zip(self.sites, self._ranges, strict=True):
            site.set_gate(None if gates is None else gates[start:stop])

    def set_soft_gates(self, gates: Tensor) -> None:
        """Apply soft gates ``g`` (shape ``(p,)``, may require grad); pruned groups stay at 0."""
        if gates.shape != (len(self),):
            raise PlpruneError(f"soft gates must have shape ({len(self)},), got {tuple(gates.shape)}")
        self._push_gates(gates * self.mask.to(gates.dtype))

    def clear_soft_gates(self) -> None:
        """Back to the hard mask alone (``None`` gates, the exact ungated model, if nothing is pruned)."""
        self._push_gates(None if bool(self.mask.all()) else self.mask.float())

    @contextmanager
    def soft_gates(self, gates: Tensor) -> Iterator[None]:
        self.set_soft_gates(gates)
        try:
            yield
        finally:
            self.clear_soft_gates()

    def check_ratio(self, ratio: float, kinds: tuple[str, ...] | None = None) -> None:
        """Raise if pruning a fraction ``ratio`` of every kind (or of ``kinds``) would empty a layer."""
        from plprune.gating import prune_count

        for kind in kinds or self.kinds:
            index = self.kind_index(kind)
            layers = len(torch.unique(self.layer_ids[index]))
            keep = len(index) - prune_count(len(index), ratio)
            if keep < layers:
                raise PlpruneError(
                    f"prune ratio {ratio} keeps {keep} of {len(index)} {kind}s, but each of the {layers} "
                    "layers keeps at least one, so it would remove a protected group; the largest allowed "
                    f"ratio here is {(len(index) - layers) / len(index):.3f}"
                )

    # -- hard masks ------------------------------------------------------------------------------
    def check_protection(self, mask: Tensor) -> None:
        """Raise if ``mask`` leaves some layer with no group (paper App. E.3)."""
        for layer in torch.unique(self.layer_ids):
            members = self.layer_ids == layer
            if not bool(mask[members].any()):
                name = self.groups[int(members.nonzero()[0])]
                raise PlpruneError(
                    f"mask would remove every {name.kind} of layer {name.layer}; at least one group per "
                    "layer is protected"
                )

    def apply_mask(self, mask: Tensor) -> None:
        """Set the hard mask (``True`` = keep) and zero the weights of pruned groups.

        Masks are monotone: a pruned group cannot be revived.
        """
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (len(self),):
            raise PlpruneError(f"mask must have shape ({len(self)},), got {tuple(mask.shape)}")
        if bool((mask & ~self.mask).any()):
            revived = [self.groups[i].name for i in (mask & ~self.mask).nonzero().flatten().tolist()]
            raise PlpruneError(f"cannot revive pruned groups {revived[:5]}; masks only remove groups")
        self.check_protection(mask)
        self.mask = mask.clone()
        for site, (start, stop) in zip(self.sites, self._ranges, strict=True):
            site.set_hard_mask(self.mask[start:stop])
        self.enforce()
        self.clear_soft_gates()

    @torch.no_grad()
    def enforce(self) -> None:
        """Re-zero every weight slice of every pruned group (call after each optimizer step)."""
        for index in (~self.mask).nonzero().flatten().tolist():
            for piece in self.groups[index].slices:
                piece.select(self._params[piece.param_name]).zero_()

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned groups' weights (call between backward and optimizer step)."""
        for index in (~self.mask).nonzero().flatten().tolist():
            for piece in self.groups[index].slices:
                grad = self._params[piece.param_name].grad
                if grad is not None:
                    piece.select(grad).zero_()

    def state_dict(self) -> dict:
        return {"mask": self.mask.clone(), "names": self.names}

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["names"]) != self.names:
            raise PlpruneError("saved group mask belongs to a model with different groups")
        self.mask = torch.ones(len(self), dtype=torch.bool)
        self.apply_mask(state["mask"])
