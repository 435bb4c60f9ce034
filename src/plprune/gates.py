"""The one masking mechanism every method uses: soft gates, hard masks and layer protection.

A :class:`GroupSet` owns the groups of a model (its gate sites are found by :func:`plprune.sites.find_sites`,
or passed in) and the forward hooks that gate them:

* **soft gates** ``g ∈ R^p`` (differentiable; paper Eq. 6 ``g ⊙ w``) are pushed into the gate sites
  while the gating network trains;
* the **hard mask** ``m ∈ {0,1}^p`` (Alg. 2 line 9: ``w ← m ⊙ w``) zeroes every weight slice of a
  pruned group, sets its site gate to 0, zeroes its gradients before each optimizer step and re-zeroes
  its weights after each step (AdamW's moment estimates would otherwise move a zero weight again);
* **protection** (paper App. E.3, :mod:`plprune.keep`): a layer never loses its last group.

With nothing pruned and no soft gates every hook returns its input unchanged: the model computes exactly
what it computed before. :meth:`GroupSet.remove_hooks` takes every hook off again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError
from plprune.groups import GROUP_KINDS, GateSite, Group, check_kinds
from plprune.keep import check_even, check_protection, prune_count
from plprune.keep import check_ratio as check_kind_ratio


class GroupSet:
    """All prunable groups of ``model`` of the given kinds, with their gates and hard mask.

    ``kinds``: the group kinds to prune (``None``: every kind found; filters only with ``example_inputs``).
    ``example_inputs`` (``model(example_inputs)``; a tuple is unpacked) is needed to find conv filters.
    ``sites`` replaces discovery with explicit gate sites.
    """

    def __init__(
        self,
        model: nn.Module,
        kinds: Sequence[str] | None = None,
        *,
        example_inputs: Any = None,
        sites: Sequence[GateSite] | None = None,
    ) -> None:
        from plprune.sites import find_sites

        kinds = check_kinds(tuple(kinds)) if kinds is not None else GROUP_KINDS
        self.model = model
        self.example_inputs = example_inputs  # kept: compacting conv filters traces the model again
        if sites is not None:
            found = list(sites)
        else:
            found = find_sites(model, None if kinds == GROUP_KINDS else kinds, example_inputs)
        self.sites: list[GateSite] = []
        self.groups: list[Group] = []
        self._ranges: list[tuple[int, int]] = []
        for site in found:
            if site.kind not in kinds:
                continue
            groups = site.groups()
            self._ranges.append((len(self.groups), len(self.groups) + len(groups)))
            self.sites.append(site)
            self.groups.extend(groups)
        if not self.groups:
            raise PlpruneError(f"model {type(model).__name__} has no prunable groups of kinds {kinds}")
        self._params = dict(model.named_parameters())
        missing = {n for g in self.groups for n in g.param_names} - set(self._params)
        if missing:
            raise PlpruneError(f"groups refer to parameters the model does not have: {sorted(missing)}")
        layer_keys = [(g.kind, g.layer) for g in self.groups]
        unique = list(dict.fromkeys(layer_keys))
        self.layer_ids = torch.tensor([unique.index(k) for k in layer_keys])
        self.kinds = tuple(dict.fromkeys(g.kind for g in self.groups))
        self.mask = torch.ones(len(self.groups), dtype=torch.bool)
        self._pruned_for: Tensor | None = None  # the mask _pruned_index was built for
        self._pruned_index: dict[tuple[str, int], Tensor] = {}
        self._pruned_on_device: dict[tuple[str, int, str], Tensor] = {}
        self.even_ids = self._even_ids()
        for site in self.sites:
            site.attach()

    def _even_ids(self) -> Tensor | None:
        """Per group, its bucket (ids unique across sites; ``-1``: free) where a site asks that its buckets
        keep equal counts (grouped-query attention: a query head's KV head, ``HeadSite.even_ids``);
        ``None`` when no site does."""
        ids = torch.full((len(self.groups),), -1, dtype=torch.long)
        offset = 0
        for site, (start, stop) in zip(self.sites, self._ranges, strict=True):
            buckets = site.even_ids()
            if buckets is not None:
                ids[start:stop] = torch.tensor(buckets, dtype=torch.long) + offset
                offset += max(buckets) + 1
        return ids if offset else None

    def __len__(self) -> int:
        return len(self.groups)

    def remove_hooks(self) -> None:
        """Take every gate hook off the model (the GroupSet is unusable afterwards)."""
        for site in self.sites:
            site.remove()

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def kind_index(self, kind: str) -> Tensor:
        """Indices of the groups of ``kind``."""
        return torch.tensor([i for i, g in enumerate(self.groups) if g.kind == kind], dtype=torch.long)

    def site_ranges(self) -> list[tuple[GateSite, int, int]]:
        """``(site, start, stop)``: the groups ``start:stop`` belong to ``site``."""
        return [(site, a, b) for site, (a, b) in zip(self.sites, self._ranges, strict=True)]

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
        for kind in kinds or self.kinds:
            layer_ids = self.layer_ids[self.kind_index(kind)]
            if kind == "layer":  # the protection unit of a block is its block list: say so
                total, lists = len(layer_ids), len(torch.unique(layer_ids))
                keep = total - prune_count(total, ratio)
                if keep < lists:
                    raise PlpruneError(
                        f"prune ratio {ratio} removes {total - keep} of {total} layers (whole blocks), but "
                        f"each of the {lists} block lists keeps at least one block; the largest allowed "
                        f"ratio here is {(total - lists) / total:.3f}"
                    )
            check_kind_ratio(ratio, kind, layer_ids)

    # -- hard masks ------------------------------------------------------------------------------
    def check_protection(self, mask: Tensor) -> None:
        """Raise if ``mask`` leaves some layer with no group (paper App. E.3)."""
        check_protection(mask, self.layer_ids, [self._unit_name(g) for g in self.groups])

    def _unit_name(self, group: Group) -> str:
        """What a group's protection unit is, for messages ("head of layer 2", "block of block list 0")."""
        if group.kind == "layer":
            site = next(s for s in self.sites if s.kind == "layer" and s.layer == group.layer)
            return f"block (layer) of the block list {site.module_name or '(the model)'}"
        return f"{group.kind} of layer {group.layer}"

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
        if self.even_ids is not None:
            names = [f"{g.kind} layer {g.layer}" for g in self.groups]
            check_even(mask, self.even_ids, self.layer_ids, names)
        self.mask = mask.clone()
        for site, (start, stop) in zip(self.sites, self._ranges, strict=True):
            site.set_hard_mask(self.mask[start:stop])
        self.enforce()
        self.clear_soft_gates()

    def _pruned_entries(self, device: torch.device, name: str, dim: int) -> Tensor:
        """The indices along ``dim`` of parameter ``name`` that pruned groups own (on ``device``)."""
        key = (name, dim, str(device))
        if key not in self._pruned_on_device:
            self._pruned_on_device[key] = self._pruned_index[(name, dim)].to(device)
        return self._pruned_on_device[key]

    def _pruned_slices(self) -> dict[tuple[str, int], Tensor]:
        """Per (parameter, dim), every index a pruned group's slices cover, for the current mask: built once
        per mask (not per optimizer step), so enforcing costs one ``index_fill_`` per parameter and dim
        however many groups are pruned (thousands of neurons)."""
        if self._pruned_for is None or not torch.equal(self._pruned_for, self.mask):
            entries: dict[tuple[str, int], set[int]] = {}
            for index in (~self.mask).nonzero().flatten().tolist():
                for piece in self.groups[index].slices:
                    entries.setdefault((piece.param_name, piece.dim), set()).update(
                        range(piece.start, piece.stop)
                    )
            self._pruned_index = {k: torch.tensor(sorted(v), dtype=torch.long) for k, v in entries.items()}
            self._pruned_on_device = {}
            self._pruned_for = self.mask.clone()
        return self._pruned_index

    @torch.no_grad()
    def enforce(self) -> None:
        """Re-zero every weight slice of every pruned group (call after each optimizer step)."""
        for name, dim in self._pruned_slices():
            param = self._params[name]
            param.index_fill_(dim, self._pruned_entries(param.device, name, dim), 0)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of pruned groups' weights (call between backward and optimizer step)."""
        for name, dim in self._pruned_slices():
            grad = self._params[name].grad
            if grad is not None:
                grad.index_fill_(dim, self._pruned_entries(grad.device, name, dim), 0)

    def state_dict(self) -> dict:
        return {"mask": self.mask.clone(), "names": self.names}

    def load_state_dict(self, state: Mapping) -> None:
        if list(state["names"]) != self.names:
            raise PlpruneError("saved group mask belongs to a model with different groups")
        self.mask = torch.ones(len(self), dtype=torch.bool)
        self.apply_mask(state["mask"])
