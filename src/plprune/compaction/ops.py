"""Structural edits a compaction is made of: plain data, applied to a model by module and tensor names.

Every compaction (heads, experts, filters) is first written down as a list of these operations and only then
applied. Because an operation names what it edits, the same list can be applied to the model and to an
"index twin" of it (every parameter replaced by its own element numbers, :mod:`plprune.compaction.core`):
what survives in the twin says, for each new parameter, which elements of which old parameter it holds —
exactly what is needed to carry optimizer state over.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plprune.errors import PlpruneError


class Op(ABC):
    """One edit of a model, by names; :meth:`apply` performs it on any model with those names."""

    @abstractmethod
    def apply(self, model: nn.Module) -> None: ...


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, attr = name.rpartition(".")
    try:
        return (model.get_submodule(module_name) if module_name else model), attr
    except AttributeError as error:
        raise PlpruneError(f"compaction refers to {name!r}, which the model does not have") from error


@dataclass(frozen=True)
class KeepSlices(Op):
    """Keep only the entries ``index`` along ``dim`` of the parameter or buffer ``name`` (a new tensor,
    ``requires_grad`` kept; a parameter stays a parameter)."""

    name: str
    dim: int
    index: tuple[int, ...]

    def apply(self, model: nn.Module) -> None:
        owner, attr = _owner(model, self.name)
        tensor = getattr(owner, attr, None)
        if not isinstance(tensor, Tensor):
            raise PlpruneError(f"compaction: {self.name} is not a tensor of the model")
        if self.dim >= tensor.dim() or (self.index and max(self.index) >= tensor.shape[self.dim]):
            raise PlpruneError(
                f"compaction: cannot keep entries {list(self.index)[:8]} of dim {self.dim} of {self.name} "
                f"{tuple(tensor.shape)}"
            )
        kept = tensor.detach().index_select(self.dim, torch.tensor(self.index, device=tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(owner, attr, nn.Parameter(kept, requires_grad=tensor.requires_grad))
        else:
            owner._buffers[attr] = kept


@dataclass(frozen=True)
class SetAttribute(Op):
    """``module.attr = value`` (a count kept in sync with the new shapes, e.g. ``num_heads``)."""

    module: str
    attr: str
    value: Any

    def apply(self, model: nn.Module) -> None:
        owner = model.get_submodule(self.module) if self.module else model
        setattr(owner, self.attr, self.value)


@dataclass(frozen=True)
class KeepChildren(Op):
    """Keep the children ``index`` of an ``nn.ModuleList`` or ``nn.ModuleDict`` ``container``, in order.
    A ModuleDict's keys ``prefix{i}`` are renumbered ``prefix0, prefix1, ...`` (Hugging Face's
    ``expert_{i}``); other keys are kept as they are."""

    container: str
    index: tuple[int, ...]
    prefix: str | None = None

    def apply(self, model: nn.Module) -> None:
        container = model.get_submodule(self.container)
        if isinstance(container, nn.ModuleList):
            kept = [container[i] for i in self.index]
            for key in list(container._modules):
                del container._modules[key]
            for i, module in enumerate(kept):
                container._modules[str(i)] = module
            return
        if isinstance(container, nn.ModuleDict):
            keys = list(container.keys())
            kept = [(keys[i], container[keys[i]]) for i in self.index]
            container.clear()
            for j, (key, module) in enumerate(kept):
                container[f"{self.prefix}{j}" if self.prefix is not None else key] = module
            return
        raise PlpruneError(f"compaction: {self.container} is a {type(container).__name__}, not a module list")


@dataclass(frozen=True)
class CallOnModule(Op):
    """``fn(module, argument)`` on the named module: a family's own step (e.g. a Torch-Pruning pruning
    function with the channel indices to remove, or plprune's Switch shrinking its routing buffers)."""

    module: str
    fn: Callable[[nn.Module, Any], Any]
    argument: Any

    def apply(self, model: nn.Module) -> None:
        self.fn(model.get_submodule(self.module) if self.module else model, self.argument)


def sync_sizes(module: nn.Module, _: Any = None) -> None:
    """A projection's (or embedding table's) size attributes from its weight's new shape: ``in_features``/
    ``out_features`` of an ``nn.Linear``, ``nx``/``nf`` of a Hugging Face ``Conv1D``, ``num_embeddings``/
    ``embedding_dim`` of an ``nn.Embedding``. Used after :class:`KeepSlices` as ``CallOnModule(path,
    sync_sizes, None)``."""
    weight = module.weight
    # a Conv1D by name and attribute: its ``nf`` no longer matches the sliced weight, so the structural
    # check of plprune.sites.projections.is_conv1d would not recognise it here
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):
        module.nx, module.nf = (int(s) for s in weight.shape)
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = (int(s) for s in weight.shape)
    elif isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = (int(s) for s in weight.shape)
