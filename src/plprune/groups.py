"""Structured groups: the units that plprune scores, gates and prunes (paper Sec. 3.2.1, ``w_[i]``).

A :class:`Group` is a set of parameter slices (e.g. head h of layer l: rows of W_Q, W_K, W_V and their
biases, columns of W_O). Groups live in *gate sites* (:class:`GateSite`): one place in a model where each
of its groups' outputs can be multiplied by a gate (an attention layer's heads, an MoE layer's experts,
a conv layer's filters). Sites apply their gates with forward (pre-)hooks on the model's own modules,
so a model needs no plprune code to be pruned; :mod:`plprune.sites` finds them.

This module is the bottom of the pruning stack: it imports no model, site finder or pruner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from plprune.errors import PlpruneError

#: every group kind: attention heads, MoE experts, conv filters, feed-forward neurons (intermediate channels),
#: whole transformer blocks (depth pruning)
GROUP_KINDS = ("head", "expert", "filter", "neuron", "layer")


@dataclass(frozen=True)
class ParamSlice:
    """``parameter.narrow(dim, start, stop - start)``: the part of one parameter that belongs to a group."""

    param_name: str
    dim: int
    start: int
    stop: int

    def select(self, tensor: Tensor) -> Tensor:
        """This slice of ``tensor`` (a parameter or anything of the parameter's shape, e.g. its gradient)."""
        return tensor.narrow(self.dim, self.start, self.stop - self.start)

    def select_batched(self, tensor: Tensor) -> Tensor:
        """The slice of a batched tensor ``(n, *param_shape)``, e.g. per-sample gradients."""
        return tensor.narrow(self.dim + 1, self.start, self.stop - self.start)


@dataclass(frozen=True)
class Group:
    """One structured unit. ``layer`` is the protection unit (a layer never loses all its groups)."""

    kind: str
    layer: int
    index: int
    slices: tuple[ParamSlice, ...]

    @property
    def name(self) -> str:
        return f"{self.kind}:L{self.layer}.{self.index}"

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.param_name for s in self.slices))


@dataclass(eq=False)
class GateSite(ABC):
    """One layer's groups and the hooks that multiply each group's output by its gate.

    ``gate`` is ``None`` (the untouched model: hooks return their input unchanged) or a ``(num_groups,)``
    tensor, possibly requiring grad (soft gates of the gating network, paper Eq. 6 ``g ⊙ w``). ``keep`` is
    the hard mask; subclasses may act on it beyond the zero gate (an MoE router stops sending tokens to a
    pruned expert). :meth:`attach` registers the hooks, :meth:`remove` takes them off again.
    """

    module_name: str
    module: nn.Module
    kind: str
    layer: int
    num_groups: int
    gate: Tensor | None = field(default=None, init=False)
    keep: Tensor | None = field(default=None, init=False)
    _handles: list[RemovableHandle] = field(default_factory=list, init=False, repr=False)

    @abstractmethod
    def groups(self) -> list[Group]:
        """The site's groups in index order, parameter names relative to the whole model."""

    @abstractmethod
    def _register_hooks(self) -> list[RemovableHandle]:
        """Register the forward (pre-)hooks that apply :attr:`gate` (and :attr:`keep`)."""

    def attach(self) -> None:
        if not self._handles:
            self._handles = self._register_hooks()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def set_gate(self, gate: Tensor | None) -> None:
        if gate is not None and not isinstance(gate, Tensor):
            raise PlpruneError(f"a {self.kind} gate must be a Tensor or None, got {type(gate).__name__}")
        if gate is not None and tuple(gate.shape) != (self.num_groups,):
            raise PlpruneError(
                f"{self.kind} gate of {self.module_name or 'the model'} must have shape "
                f"({self.num_groups},), got {tuple(gate.shape)}"
            )
        self.gate = gate

    def set_hard_mask(self, keep: Tensor) -> None:
        self.keep = torch.as_tensor(keep, dtype=torch.bool).clone()

    def removed_modules(self, keep: Tensor) -> list[str]:
        """Full names of the modules that compacting ``keep`` (one bool per group) deletes whole, e.g. the
        blocks a :class:`~plprune.sites.layers.LayerSite` removes: the sites inside them need no plan of
        their own. None by default."""
        return []

    def even_ids(self) -> list[int] | None:
        """Buckets whose groups must keep equal counts (one id per group; :func:`plprune.keep.
        even_within_buckets`), e.g. grouped-query attention's query heads per KV head; ``None``: no
        constraint (every site but :class:`~plprune.sites.heads.HeadSite` under GQA)."""
        return None


#: the pseudo-kind of unstructured pruning: single weights, not groups (plprune.weight_pruner)
WEIGHT_KIND = "weight"


def check_prune_kinds(kinds: tuple[str, ...] | str) -> tuple[str, ...]:
    """What a run may prune: group kinds (:func:`check_kinds`), or ``("weight",)`` alone (unstructured)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if WEIGHT_KIND in kinds:
        if kinds != (WEIGHT_KIND,):
            raise PlpruneError(
                f"prune either single weights (kinds = ['weight']) or groups {GROUP_KINDS}, not both; "
                f"got {kinds!r}"
            )
        return kinds
    return check_kinds(kinds)


def check_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    bad = [k for k in kinds if k not in GROUP_KINDS]
    if bad or not kinds:
        raise PlpruneError(f"group kinds must be a non-empty subset of {GROUP_KINDS}, got {kinds!r}")
    return tuple(kinds)
